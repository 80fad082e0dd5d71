"""The depth sweep: δ(L) of residual and plain MLPs on the embedded teacher task.

    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/sweep
    python -m experiments.sweep --config=configs/depth_sweep.py:ladder --workdir=/tmp/ladder
    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/L64 --config.depths=64
    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/s \
        --config.settings=residual_inv_L --config.seeds=0

A sweep runs every *setting* (a family plus overrides, below) at every depth with every seed.
The settings ask whether training makes deeper residual networks more norm-preserving without
building the answer into the initialisation, and set what is achievable beside what is found:

* ``residual_zero_init`` (the reference, first): unscaled branches whose last layer starts at 0
  (SkipInit/Fixup style): δ = 0 at initialisation at every depth, so any depth dependence after
  training is learned, not built in;
* ``residual_constructed``: the same network started from the theorem's construction for the
  teacher (the Euler steps of its flow, :func:`resnorm.models.mlp.construct`): δ = O(1/L) and a
  test loss falling as O(1/L²) by construction, measured at "init"; then trained at the
  default budget, which makes it worse (Adam's first steps move every weight by about the
  learning rate whatever the gradient);
* ``residual_constructed_gentle``: the same start trained at a rate that does not make it worse
  (Adam at 1e-6 after a one-epoch warm-up: of 1e-3 … 1e-6, with or without the warm-up, the
  largest whose test loss at steps 25, 50, 75 and 100 stayed at or below the construction's at
  L = 2, 16 and 128, seed 0): what the optimizer does near the constructed network;
* ``residual_layer_norm``: unscaled branches, LayerNorm at the start of each branch;
* ``residual_inv_sqrt_L`` and ``residual_inv_L``: branches scaled by 1/√L and 1/L, which put
  depth into the initialisation (δ·L is about constant at 1/L *before* training);
* ``residual_depth_mup``: depth-μP (Yang et al. 2023, "Tensor Programs VI"; Bordelon et al. 2023):
  branches scaled by 1/√L and, with Adam, the blocks' learning rate by 1/√L, the parametrisation
  under which every block keeps learning as L grows;
* ``plain`` and ``plain_layer_norm``: the same blocks without the skip.

Budget: depths 2, 4, …, 128 (a factor 2 apart); 5 seeds for the reference and the constructed
network (the slope intervals need them), 3 for the others; 400 Adam steps on a cosine schedule.
Variants (``--config=...:variant``):

* ``ladder``: the reference setting at budgets of 400, 2,000 and 10,000 steps, each on the
  cosine schedule and at a constant learning rate, and at 40,000 steps at a constant rate:
  whether δ(L) moves with the budget, and at which budget the runs converge (a cosine schedule
  forces the loss to stop changing by sending the rate to zero; at a constant rate only
  training does);
* ``ladder_gpu``: the same at 400, 4,000 and 40,000 steps, for an accelerator;
* ``tasks``: the reference setting on three tasks — the teacher (a flow, which the residual
  blocks can represent by construction), ``random_mlp`` (a wide random tanh network: smooth, not
  a flow) and ``digits`` (scikit-learn's 8×8 digits, classification) — at the default budget
  and at 10,000 steps at a constant rate: what holds on every task;
* ``deep``: depths 2, 4, …, 1,024 at a short budget (100 steps, 3 seeds): the reference, 1/√L
  branches and the plain net, where the theorem's claim is about thousands of layers.
"""

import ml_collections
from ml_collections import config_dict

from configs import default

# Per ladder, the budgets (steps) of each schedule.
LADDERS = {
  "ladder": {"cosine": (400, 2_000, 10_000), "constant": (400, 2_000, 10_000, 40_000)},
  "ladder_gpu": {"cosine": (400, 4_000, 40_000), "constant": (400, 4_000, 40_000)},
}
VARIANTS = (*LADDERS, "tasks", "deep")
# The tasks of the `tasks` variant: the `data` section of each.
TASKS = {
  "teacher": dict(name="teacher"),  # the sweep's own data, named: the report groups the settings by task
  "random_mlp": dict(name="random_mlp", dim=16, hidden=1024, train_size=4096, test_size=1024),
  "digits": dict(name="digits", test_size=297),
}


def get_config(variant: str | None = None):
  config = default.get_config()
  del config.seed  # a sweep runs `seeds`; each run's config.seed is one of them
  config.depths = tuple(2**k for k in range(1, 8))
  config.seeds = (0, 1, 2)
  residual = dict(name="mlp_residual", branch_scale="1", zero_init_last=False, layer_norm=False)
  reference = dict(residual, zero_init_last=True, seeds=(0, 1, 2, 3, 4))
  config.settings = (
    "residual_zero_init",
    "residual_constructed",
    "residual_constructed_gentle",
    "residual_layer_norm",
    "residual_inv_sqrt_L",
    "residual_inv_L",
    "residual_depth_mup",
    "plain",
    "plain_layer_norm",
  )
  config.overrides = ml_collections.ConfigDict(
    dict(
      residual_zero_init=reference,
      residual_constructed=dict(residual, init_from="constructed", seeds=(0, 1, 2, 3, 4)),
      residual_constructed_gentle=dict(
        residual,
        init_from="constructed",
        seeds=(0, 1, 2, 3, 4),
        optimizer=dict(learning_rate=1e-6, warmup_epochs=1.0),
      ),
      residual_layer_norm=dict(residual, layer_norm=True),
      residual_inv_sqrt_L=dict(residual, branch_scale="1/sqrt(L)"),
      residual_inv_L=dict(residual, branch_scale="1/L"),
      residual_depth_mup=dict(residual, branch_scale="1/sqrt(L)", optimizer=dict(block_lr_scale="1/sqrt(L)")),
      plain=dict(name="mlp_plain", layer_norm=False),
      plain_layer_norm=dict(name="mlp_plain", layer_norm=True),
    )
  )
  # Set per run from `settings` and `depths`; a value here is refused rather than overwritten.
  config.model.name = config_dict.placeholder(str)
  config.model.depth = config_dict.placeholder(int)
  config.data = ml_collections.ConfigDict(
    dict(name="teacher", dim=16, num_maps=4, strength=0.5, hidden=64, train_size=4096, test_size=1024)
  )
  config.model.width = 32
  config.model.hidden = 64
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 64
  config.num_steps = 400
  # Groups of runs (the seeds of a setting and depth) trained at once (threads) by one process:
  # one compiles while another trains.
  config.parallel_runs = 2
  # Runs that differ only in seed, branch scale, initialisation or skip (residual MLP or plain) train as
  # one program (vmapped).
  config.group_seeds = True
  # With several processes (--distributed): 'mesh' trains each run on every device of every
  # process, one run after another; 'spread' deals the runs out, each on one process's devices.
  config.placement = "mesh"
  # L in the bound reading: 'layers' (the blocks a statistic is taken over, Theorem 1's L; here
  # equal to the depth) or 'depth' (the network's depth).
  config.bound_L = "layers"
  config.log_every = 50
  config.eval_every = 0  # the test loss at the start and the end
  config.checkpoint_every = 0  # runs are short: a finished run is reused, an unfinished one rerun
  config.signal.every = 100
  if variant is not None:
    _variant(config, variant)
  return config


def _variant(config, variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"variant = {variant!r}: expected one of {list(VARIANTS)}")
  reference = dict(config.overrides.residual_zero_init)
  if variant in LADDERS:
    settings = _ladder(reference, LADDERS[variant])
  elif variant == "tasks":
    settings = _tasks(reference)
  else:
    config.depths = tuple(2**k for k in range(1, 11))
    config.num_steps, config.log_every, config.signal.every = 100, 10, 0
    settings = {
      name: dict(config.overrides[name], seeds=(0, 1, 2))
      for name in ("residual_zero_init", "residual_inv_sqrt_L", "plain")
    }
  config.settings = tuple(settings)
  config.overrides = ml_collections.ConfigDict(settings)


def _ladder(reference: dict, budgets: dict) -> dict:
  """The reference setting at each budget of each schedule."""
  ladder = {}
  for steps in sorted({steps for by_schedule in budgets.values() for steps in by_schedule}):
    every = dict(log_every=steps // 16, signal=dict(every=steps // 4))
    for schedule in ("cosine", "constant"):
      if steps in budgets[schedule]:
        ladder[f"zero_init_{schedule}_{steps}"] = dict(
          reference, num_steps=steps, optimizer=dict(schedule=schedule), seeds=(0, 1, 2), **every
        )
  return ladder


def _tasks(reference: dict) -> dict:
  """The reference setting on each of :data:`TASKS`, at the default budget and at 10,000 steps
  at a constant rate."""
  settings = {}
  for task, data in TASKS.items():
    on_task = dict(reference, data=data)
    settings[f"zero_init_{task}"] = on_task
    long = dict(num_steps=10_000, log_every=625, optimizer=dict(schedule="constant"), signal=dict(every=2_500))
    settings[f"zero_init_{task}_constant_10000"] = dict(on_task, **long)
  return settings
