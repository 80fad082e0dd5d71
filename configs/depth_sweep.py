"""The depth sweep: δ(L) of residual and plain MLPs on the embedded teacher task.

    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/sweep
    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/L64 --config.depths=64
    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/s \
        --config.model.branch_scale=1 --config.model.zero_init_last=True

Each (model, depth) pair is one run of ``configs/default.py``'s shape with ``model.name`` and
``model.depth`` filled in. The first entry of ``models`` is the residual family whose trained
δ's fill the top level of ``summary.json`` and are fitted to c·log(2L)/L.
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config():
  config = default.get_config()
  config.depths = (2, 4, 8, 16, 32, 64, 128, 256)
  config.models = ("mlp_residual", "mlp_plain")
  # Set per run from `depths` and `models`; a value here is refused rather than overwritten.
  config.model.name = config_dict.placeholder(str)
  config.model.depth = config_dict.placeholder(int)
  config.data = ml_collections.ConfigDict(
      dict(name="teacher", dim=16, num_maps=4, strength=0.5, hidden=64, train_size=4096, test_size=1024)
  )
  # Near-identity at initialisation: each block adds (1/L)·F, the shape of Theorem 1's solution.
  config.model.width = 32
  config.model.hidden = 64
  config.model.branch_scale = "1/L"
  config.model.zero_init_last = False
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 64
  config.num_steps = 500
  # Runs trained at once (threads) by one process: one compiles while another trains.
  config.parallel_runs = 2
  # With several processes (--distributed): 'mesh' trains each run on every device of every
  # process, one run after another; 'spread' deals the runs out, each on one process's devices.
  config.placement = "mesh"
  config.log_every = 100
  config.checkpoint_every = 250
  return config
