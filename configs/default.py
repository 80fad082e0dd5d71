"""One training run: a residual MLP on scikit-learn's digits (no download).

    python -m experiments.train --config=configs/default.py --workdir=/tmp/run \
        --config.model.depth=64 --config.optimizer.name=sgd
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.setting = config_dict.placeholder(str)  # a sweep names each run's setting; None for a run alone
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
  # schedule: 'constant', 'cosine' (to 0 over the run) or 'piecewise' (times decay_factor at
  # each of decay_epochs); warmup_epochs > 0 ramps the rate up linearly from 0 first.
  # block_lr_scale: the identity blocks' learning rate relative to the others', '1', '1/sqrt(L)',
  # '1/L' or a number (depth-μP: '1/sqrt(L)' with branch_scale '1/sqrt(L)').
  config.optimizer = ml_collections.ConfigDict(
    dict(
      name="adam",
      learning_rate=1e-3,
      momentum=0.9,
      weight_decay=0.0,
      schedule="cosine",
      decay_epochs=(),
      decay_factor=0.1,
      warmup_epochs=0.0,
      block_lr_scale="1",
    )
  )
  config.augment = False  # random crops and flips (NHWC image data only)
  config.augment_padding = "zero"  # of the crops: 'zero' (Chainer original) or 'reflect' (PyTorch port)
  config.batch_size = 128
  # The run's length: num_steps, or num_epochs epochs of len(train split) // batch_size steps; the
  # other is 0 (--config.num_steps=0 --config.num_epochs=3).
  config.num_steps = 1000
  config.num_epochs = 0
  config.log_every = 100
  config.checkpoint_every = 500  # 0: never (SIGTERM still saves one)
  config.eval_every = config_dict.placeholder(int)  # steps between evaluations; None: once an epoch, 0: at the end
  config.eval_batch_size = 512
  config.prefetch = 2  # batches built ahead on a background thread (0: each when its step comes)
  config.tensorboard = True  # event files in workdir/tensorboard besides the JSONL logs
  config.progress_bar = config_dict.placeholder(bool)  # None: when stderr is a terminal, else a log line per log
  # Procrustes projection of the family's transition kernels after each optimizer step it acts
  # on (ProcResNet only): with `probability` per step, or every `every` steps when every > 0.
  config.procrustes = ml_collections.ConfigDict(dict(enabled=False, probability=0.5, every=0, stem="correct"))
  # Backward ratios are measured on this many held-out examples, at init and after training,
  # and every `every` steps in between (0: never; written to workdir/signal.jsonl); δ in every
  # direction (the block Jacobians' extreme singular values) on the first `direction_free_examples` of
  # them, at init and after training (0: never; families that extract their blocks). With
  # `train_batch`, every measurement during training also takes each layer's ratio of whole
  # mini-batch gradient norms in train mode on the next training batch (the reference
  # ProcResNet code's measure; it differs from eval mode where BatchNorm uses batch statistics).
  config.signal = ml_collections.ConfigDict(
    dict(num_examples=256, every=100, direction_free_examples=64, train_batch=False)
  )
  # 'random', or 'constructed': start from the theorem's network for the data's teacher (residual
  # MLPs on the teacher task: the Euler steps of its flow, resnorm.models.mlp.construct).
  config.init_from = "random"
  # A run is converged when its logged train loss fell by at most `tolerance` of its final value
  # over the last `window` of the run, and the trend of log loss over the second half, projected
  # over that window, is at most `trend_tolerance` (resnorm.train.convergence).
  config.convergence = ml_collections.ConfigDict(dict(window=0.25, tolerance=0.05, trend_tolerance=0.05))
  # A run diverged at the first step whose loss or parameters are not finite, or whose train loss
  # exceeds `divergence_factor` times its starting loss (the initial network's test loss, or for
  # regression the loss of predicting the targets' mean where that is larger).
  config.divergence_factor = 1000.0
  # The longest stretch of steps one dispatch runs (between logs, measurements, evaluations and
  # checkpoints; SIGTERM is answered at the end of a stretch).
  config.steps_per_dispatch = 100
  return config
