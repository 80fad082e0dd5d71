"""Small configs for end-to-end tests: the real config files with tiny sizes."""

from configs import depth_sweep, image_depth_sweep


def tiny_sweep(depths=(2, 4), settings=("mlp_residual", "mlp_plain"), seeds=(0,)):
  """Bare family names as settings (the families as configured), one seed unless asked."""
  config = depth_sweep.get_config()
  config.depths, config.settings, config.seeds = depths, settings, seeds
  config.model.branch_scale = "1/L"
  config.data.train_size, config.data.test_size = 256, 64
  config.model.width, config.model.hidden = 8, 8
  config.batch_size, config.num_steps, config.log_every, config.checkpoint_every = 32, 20, 10, 10
  config.signal.num_examples, config.signal.every = 32, 10
  return config


def tiny_image_sweep(depths=(8,), settings=("resnet", "procresnet"), seeds=(0,)):
  config = image_depth_sweep.get_config()
  config.depths, config.settings, config.seeds = depths, settings, seeds
  config.overrides.procresnet.depths = (13,)
  config.data.image_size, config.data.train_size, config.data.test_size = 8, 64, 32
  config.model.width_multiplier = 0.25
  config.batch_size, config.num_steps, config.log_every, config.checkpoint_every = 16, 4, 2, 0
  config.eval_batch_size = 32
  config.signal.num_examples, config.signal.every = 16, 0
  return config
