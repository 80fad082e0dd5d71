"""Procrustes ResNet-166 on CIFAR-10, as in Zaeemzadeh et al. (TPAMI 2020).

    python -m experiments.train --config=configs/cifar.py --workdir=/tmp/procresnet166 \
        --config.data.data_dir=~/tensorflow_datasets
    python -m experiments.train --config=configs/cifar.py --workdir=/tmp/preact1001 \
        --config.model.name=preact_resnet --config.model.depth=1001 --config.procrustes.enabled=False

CIFAR-10 is read with ``tfds.data_source`` from a prepared TFDS directory (``tfds build cifar10``
on a machine with network access); nothing is downloaded at run time.
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config():
  config = default.get_config()
  config.data = ml_collections.ConfigDict(
      dict(
          name="tfds",
          dataset="cifar10",
          train_split="train",
          test_split="test",
          data_dir=config_dict.placeholder(str),
          train_size=config_dict.placeholder(int),  # None: the whole split
          test_size=config_dict.placeholder(int),
      )
  )
  config.model = ml_collections.ConfigDict(
      dict(name="procresnet", depth=166, width_multiplier=1.0, dtype="float32", bn_momentum=0.9, scan=True,
           remat=False)
  )
  config.optimizer = ml_collections.ConfigDict(
      dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine")
  )
  config.procrustes = ml_collections.ConfigDict(dict(enabled=True, probability=0.5, every=0))
  config.augment = True
  config.batch_size = 128
  config.num_steps = 64_000  # about 164 epochs
  config.log_every = 500
  config.checkpoint_every = 5_000
  config.eval_batch_size = 500
  config.signal.num_examples = 128
  return config
