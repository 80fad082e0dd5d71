"""The depth sweep: δ(L) of residual and plain MLPs on the embedded teacher task.

    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/sweep
    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/L64 --config.depths=64
    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/s \
        --config.settings=residual_inv_L --config.seeds=0

A sweep runs every *setting* (a family plus overrides of ``config.model``, below) at every depth
with every seed. The settings ask whether training makes deeper residual networks more
norm-preserving without building the answer into the initialisation:

* ``residual_zero_init`` (the reference, first): unscaled branches whose last layer starts at 0
  (SkipInit/Fixup style): δ = 0 at initialisation at every depth, so any depth dependence after
  training is learned, not built in;
* ``residual_layer_norm``: unscaled branches, LayerNorm at the start of each branch;
* ``residual_inv_sqrt_L`` and ``residual_inv_L``: branches scaled by 1/√L and 1/L, which put
  depth into the initialisation (δ·L is about constant at 1/L *before* training);
* ``plain`` and ``plain_layer_norm``: the same blocks without the skip.

Budget: depths 2, 8, 32, 128 (a factor 4 apart), 3 seeds per depth for the spread, 400 Adam steps,
which bring every residual setting but LayerNorm's to a test loss of under 10% of the target
variance: 72 runs, 4 min 17 s on 2 otherwise idle CPU cores (most of it per-run compilation;
12.8 minutes on the same cores shared with other jobs); ``--config.seeds='(0,1)'`` takes two thirds.
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config():
  config = default.get_config()
  del config.seed  # a sweep runs `seeds`; each run's config.seed is one of them
  config.depths = (2, 8, 32, 128)
  config.seeds = (0, 1, 2)
  config.settings = ("residual_zero_init", "residual_layer_norm", "residual_inv_sqrt_L", "residual_inv_L", "plain",
                     "plain_layer_norm")
  residual = dict(name="mlp_residual", branch_scale="1", zero_init_last=False, layer_norm=False)
  config.overrides = ml_collections.ConfigDict(dict(
      residual_zero_init=dict(residual, zero_init_last=True),
      residual_layer_norm=dict(residual, layer_norm=True),
      residual_inv_sqrt_L=dict(residual, branch_scale="1/sqrt(L)"),
      residual_inv_L=dict(residual, branch_scale="1/L"),
      plain=dict(name="mlp_plain", layer_norm=False),
      plain_layer_norm=dict(name="mlp_plain", layer_norm=True),
  ))
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
  # Runs trained at once (threads) by one process: one compiles while another trains.
  config.parallel_runs = 2
  # With several processes (--distributed): 'mesh' trains each run on every device of every
  # process, one run after another; 'spread' deals the runs out, each on one process's devices.
  config.placement = "mesh"
  config.log_every = 100
  config.checkpoint_every = 0  # runs are short: a finished run is reused, an unfinished one rerun
  config.signal.every = 100
  return config
