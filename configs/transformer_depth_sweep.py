"""The Transformer depth sweep: δ(L) of the residual stream of Transformer variants.

    python -m experiments.sweep --config=configs/transformer_depth_sweep.py --workdir=/tmp/transformers
    python -m experiments.sweep --config=configs/transformer_depth_sweep.py:gpu --workdir=/tmp/transformers_gpu
    python -m experiments.sweep --config=configs/transformer_depth_sweep.py --workdir=/tmp/copy \
        --config.data.name=copy_sequences  # the synthetic task (fields: vocab_size, tokens, sizes)

Every layer holds two residual sub-blocks (attention, then MLP: :mod:`resnorm.models.transformer`),
each with a probe, so a network of L layers has 2L blocks on its stream: the blocks δ and the bound
reading are taken over (``bound_L='layers'``). The settings, each named after its source:

* ``pre_ln_zero_init`` (the reference, first): pre-LN with every branch's output projection
  starting at 0 (SkipInit style): every sub-block is the identity at initialisation, δ = 0 at
  every depth, so any depth dependence after training is learned, not built in;
* ``rezero``: x + α·F(x) with α = 0 at initialisation and no LayerNorm (Bachlechner et al. 2020):
  also the identity at initialisation;
* ``pre_ln``, ``pre_ln_inv_sqrt_L``, ``pre_ln_inv_L``: pre-LN with branches scaled by 1, 1/√L,
  1/L (Xiong et al. 2020); the last two put depth into the initialisation;
* ``post_ln``: the original layout, LN(x + F(x)) (Vaswani et al. 2017);
* ``deepnorm``: LN(a·x + F(x)) with a = (2L)^¼ and initial weights scaled by (8L)^-¼ (Wang et al.
  2022), whose initialisation depends on L by design.

Data: next-character prediction on the Python standard library's own source (no download;
:func:`resnorm.data.python_source`), 32-character windows. Each site also records the tokens'
mean cosine similarity (rank collapse; Noci et al. 2022), at initialisation and after training,
in the runs' profiles.

Budget (CPU default): layers 2, 4, 8, 16; width 32, 2 heads, MLP 64; 3 seeds for the reference, 2
for the others; 200 Adam steps at batch 32 on a cosine schedule (each run's convergence verdict:
docs/findings/transformers.md). ``:gpu``: width 128, 4 heads,
layers up to 64, 2,000 steps, 64-character windows, batch 64.
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config(variant: str | None = None):
  config = default.get_config()
  del config.seed  # a sweep runs `seeds`; each run's config.seed is one of them
  config.depths = (2, 4, 8, 16)
  config.seeds = (0, 1)
  pre_ln = dict(name="transformer", layout="pre_ln", branch_scale="1", zero_init=False)
  config.settings = ("pre_ln_zero_init", "rezero", "pre_ln", "pre_ln_inv_sqrt_L", "pre_ln_inv_L", "post_ln", "deepnorm")
  config.overrides = ml_collections.ConfigDict(
    dict(
      pre_ln_zero_init=dict(pre_ln, zero_init=True, seeds=(0, 1, 2)),
      rezero=dict(pre_ln, layout="rezero"),
      pre_ln=pre_ln,
      pre_ln_inv_sqrt_L=dict(pre_ln, branch_scale="1/sqrt(L)"),
      pre_ln_inv_L=dict(pre_ln, branch_scale="1/L"),
      post_ln=dict(pre_ln, layout="post_ln"),
      deepnorm=dict(pre_ln, layout="deepnorm"),
    )
  )
  config.model = ml_collections.ConfigDict(
    dict(
      name=config_dict.placeholder(str),
      depth=config_dict.placeholder(int),
      width=32,
      heads=2,
      hidden=64,
      layout="pre_ln",
      branch_scale="1",
      zero_init=False,
      causal=True,
      vocab_size=128,
      max_length=32,
      pool="none",
      dtype="float32",
    )
  )
  config.data = ml_collections.ConfigDict(dict(name="python_source", tokens=32, train_size=4096, test_size=512))
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 32
  config.num_steps = 200
  config.log_every = 25
  config.eval_every = 0  # the test loss at the start and the end
  config.checkpoint_every = 0
  config.eval_batch_size = 512
  config.signal.num_examples = 64
  config.signal.every = 100
  config.signal.direction_free_examples = 0  # the sub-blocks' Jacobians are (tokens × width)²: not formed
  config.parallel_runs = 2
  config.group_seeds = True
  config.placement = "mesh"
  config.bound_L = "layers"
  config.tensorboard = False
  if variant == "gpu":
    config.depths = (2, 4, 8, 16, 32, 64)
    config.model.update(dict(width=128, heads=4, hidden=512, max_length=64))
    config.data.tokens, config.batch_size, config.num_steps, config.log_every = 64, 64, 2_000, 100
    config.signal.every, config.signal.num_examples = 500, 128
    config.parallel_runs = 4
  elif variant is not None:
    raise ValueError(f"variant = {variant!r}: expected none or 'gpu'")
  return config
