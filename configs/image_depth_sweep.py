"""The convolutional depth sweep (the paper's experiment): δ per kind of layer against depth.

    python -m experiments.sweep --config=configs/image_depth_sweep.py --workdir=/tmp/images
    python -m experiments.sweep --config=configs/image_depth_sweep.py:gpu --workdir=/tmp/images_gpu
    python -m experiments.sweep --config=configs/image_depth_sweep.py:cifar10 --workdir=/tmp/cifar \
        --config.data.data_dir=~/tensorflow_datasets

Settings: ResNet v1 (6n+2, post-activation basic blocks, option-A shortcuts at the two
transitions) and its plain twin at the same depths; ProcResNet (9n+4, identity bottlenecks,
standalone 1×1 transitions projected by Procrustes) at its own depths of n = 1, 2, 3, …;
``preact_resnet`` and ``plain_preact`` (9n+2) are defined here too and run by
``--config.settings=resnet,preact_resnet,...``. BatchNorm in every network, as in practice;
the measurement at initialisation uses the BatchNorm statistics of the measured batch.

Data: scikit-learn's handwritten digits resized to 32×32×3 (no download), the first 512 of the
1500 training images, so that depth and skips show in the test loss and accuracy; ``:cifar10``
reads CIFAR-10 through TFDS with the usual crops and flips.

Budget: the default (CPU) variant trains at 16×16 pixels, half width, ResNet/plain at depths
8, 14, 20 and ProcResNet at 13, 22, 2 seeds each, 150 SGD steps of 64 images: 16 runs,
3 min 54 s measured on 2 cores (16.7 minutes under a load of 8–12), with the blocks unrolled (``scan=False``: XLA:CPU runs scanned convolution
gradients on a slow path). ``:gpu`` is the full list at 32×32 and full width, scanned:
ResNet and plain at 8, 14, 20, 32, 56, 110 and ResNet at 1202; ProcResNet at 13 … 166.
"""

import ml_collections
from ml_collections import config_dict

from configs import default

RESNET_DEPTHS = (8, 14, 20)
PROCRESNET_DEPTHS = (13, 22)
GPU_RESNET_DEPTHS = (8, 14, 20, 32, 56, 110)
GPU_PROCRESNET_DEPTHS = (13, 22, 31, 58, 112, 166)


def get_config(arg=None):
  """``arg``: None (CPU, a few minutes), ``'gpu'`` (the full depth list) or ``'cifar10'``."""
  config = default.get_config()
  del config.seed  # a sweep runs `seeds`
  config.depths = RESNET_DEPTHS
  config.seeds = (0, 1)
  config.settings = ("resnet", "plain", "procresnet")
  config.overrides = ml_collections.ConfigDict(dict(
      resnet=dict(name="resnet"),
      plain=dict(name="plain"),
      procresnet=dict(name="procresnet", depths=PROCRESNET_DEPTHS, procrustes=dict(enabled=True)),
      preact_resnet=dict(name="preact_resnet", depths=(11, 20, 29)),
      plain_preact=dict(name="plain_preact", depths=(11, 20, 29)),
  ))
  config.data = ml_collections.ConfigDict(
      dict(name="digits_images", test_size=297, train_size=512, image_size=16, method="bilinear"))
  config.model = ml_collections.ConfigDict(dict(
      name=config_dict.placeholder(str), depth=config_dict.placeholder(int), width_multiplier=0.5,
      dtype="float32", bn_momentum=0.9, scan=False, remat=False))
  config.optimizer.update(dict(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine"))
  config.augment = False
  config.batch_size = 64
  config.num_steps = 150
  config.log_every = 50
  config.checkpoint_every = 0
  config.eval_batch_size = 297
  config.signal.num_examples = 128
  config.signal.every = 0
  config.parallel_runs = 2
  config.placement = "mesh"
  if arg == "gpu" or arg == "cifar10":
    config.data.image_size, config.model.width_multiplier, config.model.scan = 32, 1.0, True
    config.depths = GPU_RESNET_DEPTHS
    config.overrides.resnet.depths = GPU_RESNET_DEPTHS + (1202,)
    config.overrides.procresnet.depths = GPU_PROCRESNET_DEPTHS
    # parallel_runs 4: the host compiles the next runs (16 cores) while the accelerator trains one.
    config.num_steps, config.log_every, config.parallel_runs = 500, 100, 4
  if arg == "cifar10":
    config.data = ml_collections.ConfigDict(dict(
        name="tfds", dataset="cifar10", train_split="train", test_split="test",
        data_dir=config_dict.placeholder(str), train_size=config_dict.placeholder(int),
        test_size=config_dict.placeholder(int)))
    config.augment, config.eval_batch_size = True, 500
    config.num_steps = 5000
  elif arg is not None and arg != "gpu":
    raise ValueError(f"config argument = {arg!r}: expected none, 'gpu' or 'cifar10'")
  return config
