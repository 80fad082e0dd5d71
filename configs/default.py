"""One training run: a residual MLP on scikit-learn's digits (no download).

    python -m experiments.train --config=configs/default.py --workdir=/tmp/run \
        --config.model.depth=64 --config.optimizer.name=sgd
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict(dict(name="digits", test_size=297))
  config.model = ml_collections.ConfigDict(
      dict(
          name="mlp_residual",
          depth=16,
          width=64,
          hidden=128,
          # '1', '1/sqrt(L)', '1/L' or a positive number: x_{l+1} = x_l + s F(x_l).
          branch_scale="1/L",
          zero_init_last=False,
          layer_norm=False,
          remat=False,
      )
  )
  config.optimizer = ml_collections.ConfigDict(
      dict(name="adam", learning_rate=1e-3, momentum=0.9, weight_decay=0.0, schedule="cosine")
  )
  config.augment = False  # random crops and flips (NHWC image data only)
  config.batch_size = 128
  config.num_steps = 1000
  config.log_every = 100
  config.checkpoint_every = 500  # 0: never
  config.eval_batch_size = 512
  # Procrustes projection of the family's transition kernels after each optimizer step it acts
  # on (ProcResNet only): with `probability` per step, or every `every` steps when every > 0.
  config.procrustes = ml_collections.ConfigDict(dict(enabled=False, probability=0.5, every=0))
  # Backward ratios are measured on this many held-out examples, at init and after training,
  # and every `every` steps in between (0: never; written to workdir/signal.jsonl).
  config.signal = ml_collections.ConfigDict(dict(num_examples=256, every=100))
  return config
