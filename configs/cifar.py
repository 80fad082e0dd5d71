r"""The CIFAR recipe of the published ProcResNet results, with variants as in big_vision.

    python -m experiments.train --config=configs/cifar.py --workdir=/tmp/procresnet166 \
        --config.data.data_dir=~/tensorflow_datasets
    python -m experiments.train --config=configs/cifar.py:preact1001 --workdir=/tmp/preact1001
    python -m experiments.train --config=configs/cifar.py:preact164 --workdir=/tmp/c100 \
        --config.data.dataset=cifar100

The recipe is the Chainer original's (zaeemzadeh/ProcResNet, ``train.py`` and its README's
command): 300 epochs of batch 128, momentum SGD 0.9, weight decay 1e-4, learning rate 0.1
divided by 10 at epochs 150 and 225; per-channel standardisation with the training split's mean
and std; random horizontal flips and random 32×32 crops of the images zero-padded by 4;
Procrustes projection with probability 0.5 after every optimizer step (ProcResNet only);
evaluation on the test split every epoch. The PyTorch port (zaeemzadeh/ProcResNet_PyTorch)
differs in two options: ``--config.augment_padding=reflect`` and
``--config.data.normalization=pytorch`` (fixed constants (125.3, 123.0, 113.9)/255 and
(63.0, 62.1, 66.7)/255).

Variants (``:name``) and the CIFAR-10 test error each targets:

    procresnet166   ProcResNet-166        4.75%  (Zaeemzadeh et al., TPAMI 2020)       the default
    procresnet1003  ProcResNet-1003       —      (the same recipe at ResNet-1001's depth)
    preact164       pre-act ResNet-164    5.46%  (He et al., ECCV 2016)
    preact1001      pre-act ResNet-1001   4.62%  (He et al., ECCV 2016)
    resnet110       ResNet-110 (v1)       6.43%  (He et al., CVPR 2016), with 1 epoch of linear warm-up

CIFAR-10 is read with ``tfds.data_source`` from a prepared TFDS directory (``tfds build cifar10
--data_dir=DIR --file_format=array_record`` on a machine with network access); nothing is
downloaded at run time. ``--config=configs/cifar.py:procresnet166,synthetic`` trains on random
CIFAR-shaped data instead (timing without a dataset).
"""

import ml_collections
from ml_collections import config_dict

from configs import default

# variant -> (registry family, depth, Procrustes projection, warm-up epochs)
VARIANTS = {
  "procresnet166": ("procresnet", 166, True, 0.0),
  "procresnet1003": ("procresnet", 1003, True, 0.0),
  "preact164": ("preact_resnet", 164, False, 0.0),
  "preact1001": ("preact_resnet", 1001, False, 0.0),
  "resnet110": ("resnet", 110, False, 1.0),
}


def get_config(arg: str = "procresnet166"):
  """``arg``: a variant, optionally followed by ``,synthetic`` (random CIFAR-shaped data: the
  input pipeline and the step timed without a dataset, benchmarks/end_to_end.py)."""
  variant, *options = arg.split(",")
  if variant not in VARIANTS or set(options) - {"synthetic"}:
    raise ValueError(f"configs/cifar.py:{arg}: expected one of {sorted(VARIANTS)}, optionally with ',synthetic'")
  name, depth, project, warmup_epochs = VARIANTS[variant]
  config = default.get_config()
  config.data = ml_collections.ConfigDict(
    dict(
      name="tfds",
      dataset="cifar10",  # cifar100: the same recipe on CIFAR-100
      train_split="train",
      test_split="test",
      data_dir=config_dict.placeholder(str),
      train_size=config_dict.placeholder(int),  # None: the whole split
      test_size=config_dict.placeholder(int),
      normalization="train_split",  # or 'pytorch': the PyTorch port's fixed constants
    )
  )
  # The pre-activation networks and ProcResNet as the Chainer original builds and initialises
  # them (its layout: BN-ReLU after the stem, projection shortcuts with their own BN; He-normal
  # fan-in, x sqrt(1/2) for ProcResNet's stem and transitions, 0.01 for projection shortcuts);
  # 'pytorch' gives the port's, 'he2016'/'he_fan_out' He et al.'s. ResNet-110 (post-activation)
  # has He et al.'s only.
  # remat=True with remat_policy='dots_saveable' keeps the convolutions' outputs and recomputes
  # BatchNorm and ReLU in the backward pass; 'nothing_saveable' recomputes whole blocks.
  reference = name != "resnet"
  config.model = ml_collections.ConfigDict(
    dict(
      name=name,
      depth=depth,
      width_multiplier=1.0,
      dtype="float32",
      bn_momentum=0.9,
      scan=True,
      remat=False,
      remat_policy="nothing_saveable",
      preact_layout="chainer" if reference else "he2016",
      init="chainer" if reference else "he_fan_out",
    )
  )
  config.optimizer.update(
    name="sgd",
    learning_rate=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    schedule="piecewise",
    decay_epochs=(150, 225),
    decay_factor=0.1,
    warmup_epochs=warmup_epochs,
  )
  # procrustes.stem='chainer' (or 'pytorch') reads the stem's projection back as the reference
  # codes do, which collapses the 3x3 stem onto one tap; 'correct' (the default) does not.
  config.procrustes.enabled = project
  config.augment = True
  config.augment_padding = "zero"
  config.batch_size = 128
  config.num_steps = 0  # the length is in epochs
  config.num_epochs = 300
  config.eval_every = config_dict.placeholder(int)  # once an epoch
  config.log_every = 100
  config.checkpoint_every = 2_000  # about 5 epochs; SIGTERM saves one at the current step
  config.eval_batch_size = 500
  config.signal.num_examples = 128
  config.signal.every = 1_000  # the per-block ratios during training (signal.jsonl, the heatmap)
  config.signal.train_batch = True  # and the reference's train-mode mini-batch ratios beside them
  if "synthetic" in options:
    config.data = ml_collections.ConfigDict(dict(name="synthetic", train_size=50_000, test_size=10_000))
  return config
