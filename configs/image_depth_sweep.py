"""The convolutional depth sweep (the paper's design, by default on 8×8 digits): δ per kind of layer against depth.

    python -m experiments.sweep --config=configs/image_depth_sweep.py --workdir=/tmp/images
    python -m experiments.sweep --config=configs/image_depth_sweep.py:gpu --workdir=/tmp/images_gpu
    python -m experiments.sweep --config=configs/image_depth_sweep.py:cifar10 --workdir=/tmp/cifar \
        --config.data.data_dir=~/tensorflow_datasets

Settings: the pre-activation ResNet (``preact_resnet``, 9n+2, He et al. 2016: nothing after
the addition, so an identity block's Jacobian is the theorem's I + DF) and its plain twin
(``plain_preact``); ProcResNet (9n+4, identity bottlenecks, standalone 1×1 transitions projected
by Procrustes). The post-activation ResNet v1 (6n+2: a block returns ρ(x + F(x)), whose Jacobian
D·(I + DF) includes the ReLU) and its plain twin are the settings ``resnet_postact`` and
``plain_postact`` (``--config.settings=...``). BatchNorm in every network, as in practice; the
measurement at initialisation uses the BatchNorm statistics of the measured batch.

Depths are chosen by identity blocks, the L of Theorem 1 and of the bound reading
(``bound_L='layers'``). A pre-activation network of n blocks per stage holds 3(n − 1) identity
blocks (each stage's first block is a transition), ProcResNet 3n (its transitions are separate
layers), ResNet v1 3n − 2 (its first stage keeps its width). The CPU default runs 6, 12 and 24
identity blocks (2, 4 and 8 per stage): pre-activation at depths 29, 47, 83 and ProcResNet at 22,
40, 76; ResNet v1 at 20, 32, 56 (7, 13, 25).

Data: scikit-learn's handwritten digits as 3-channel images (no download), the first 512 of the
1500 training images, so that depth and skips show in the test loss and accuracy; ``:cifar10``
reads CIFAR-10 through TFDS with the usual crops and flips.

Budget: the default (CPU) variant trains at the digits' own 8×8 pixels and half width, with the
blocks unrolled (``scan=False``), one step per dispatch and every run its own program: XLA:CPU runs
convolutions slower inside a loop body (a scan over blocks or over steps), and vmapped over seeds as
grouped convolutions; each run's convergence verdict is in the tables. ``:gpu`` is 32×32 (bilinear
upsampling) at full width, scanned, up to ResNet-164 and ProcResNet-166.
"""

import ml_collections
from ml_collections import config_dict

from configs import default

PREACT_DEPTHS = (29, 47, 83)  # 9n+2 at n = 3, 5, 9: 6, 12, 24 identity blocks
PROCRESNET_DEPTHS = (22, 40, 76)  # 9n+4 at n = 2, 4, 8: the same identity blocks
POSTACT_DEPTHS = (20, 32, 56)  # 6n+2 at n = 3, 5, 9
GPU_PREACT_DEPTHS = (29, 47, 83, 164)
GPU_PROCRESNET_DEPTHS = (22, 40, 76, 166)
GPU_POSTACT_DEPTHS = (20, 32, 56, 110)


def get_config(arg=None):
  """``arg``: None (the CPU default), ``'gpu'`` (the full depth list) or ``'cifar10'``."""
  config = default.get_config()
  del config.seed  # a sweep runs `seeds`
  config.depths = PREACT_DEPTHS
  config.seeds = (0, 1)
  config.settings = ("preact_resnet", "plain_preact", "procresnet")
  config.overrides = ml_collections.ConfigDict(
    dict(
      preact_resnet=dict(name="preact_resnet"),
      plain_preact=dict(name="plain_preact"),
      procresnet=dict(name="procresnet", depths=PROCRESNET_DEPTHS, procrustes=dict(enabled=True)),
      resnet_postact=dict(name="resnet", depths=POSTACT_DEPTHS),
      plain_postact=dict(name="plain", depths=POSTACT_DEPTHS),
    )
  )
  config.data = ml_collections.ConfigDict(
    dict(name="digits_images", test_size=297, train_size=512, image_size=8, method="bilinear")
  )
  config.model = ml_collections.ConfigDict(
    dict(
      name=config_dict.placeholder(str),
      depth=config_dict.placeholder(int),
      width_multiplier=0.5,
      dtype="float32",
      bn_momentum=0.9,
      scan=False,
      remat=False,
    )
  )
  config.optimizer.update(dict(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine"))
  config.augment = False
  config.batch_size = 64
  config.num_steps = 300
  config.log_every = 25
  config.eval_every = 100
  config.checkpoint_every = 0
  config.eval_batch_size = 297
  config.signal.num_examples = 64
  config.signal.every = 100  # the ratio of every layer over training (the figure the paper draws)
  config.signal.train_batch = True  # in eval mode per example and in train mode per mini-batch
  config.parallel_runs = 2
  # Every run its own program: vmapped over seeds, a convolution's kernel gains a batch axis and
  # XLA runs it as a grouped convolution, slower per seed than separate runs side by side.
  config.group_seeds = False
  # One step per dispatch: XLA:CPU runs convolutions slower inside a loop body.
  config.steps_per_dispatch = 1
  config.placement = "mesh"
  # L in the bound reading: 'layers', the number of layers of the kind measured (identity blocks
  # for the theorem's statistic, 3(n−1) in a pre-activation ResNet of depth 9n+2), or 'depth',
  # the network's depth (--config.bound_L=depth).
  config.bound_L = "layers"
  if arg == "gpu" or arg == "cifar10":
    config.data.image_size, config.model.width_multiplier, config.model.scan = 32, 1.0, True
    config.depths = GPU_PREACT_DEPTHS
    config.overrides.procresnet.depths = GPU_PROCRESNET_DEPTHS
    config.overrides.resnet_postact.depths = config.overrides.plain_postact.depths = GPU_POSTACT_DEPTHS
    # parallel_runs 4: the host compiles the next runs (16 cores) while the accelerator trains one.
    config.num_steps, config.log_every, config.parallel_runs = 500, 100, 4
    config.steps_per_dispatch = 100  # on a GPU the loop body is the same kernels
    config.signal.num_examples = 128
  if arg == "cifar10":
    config.data = ml_collections.ConfigDict(
      dict(
        name="tfds",
        dataset="cifar10",
        train_split="train",
        test_split="test",
        data_dir=config_dict.placeholder(str),
        train_size=config_dict.placeholder(int),
        test_size=config_dict.placeholder(int),
      )
    )
    config.augment, config.eval_batch_size = True, 500
    config.num_steps = 5000
  elif arg is not None and arg != "gpu":
    raise ValueError(f"config argument = {arg!r}: expected none, 'gpu' or 'cifar10'")
  return config
