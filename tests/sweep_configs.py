"""Small configs for end-to-end tests: the real config files with tiny sizes."""

from configs import depth_sweep


def tiny_sweep(depths=(2, 4), models=("mlp_residual", "mlp_plain")):
  config = depth_sweep.get_config()
  config.depths = depths
  config.models = models
  config.data.train_size, config.data.test_size = 256, 64
  config.model.width, config.model.hidden = 8, 8
  config.batch_size, config.num_steps, config.log_every, config.checkpoint_every = 32, 20, 10, 10
  config.signal.num_examples, config.signal.every = 32, 10
  return config
