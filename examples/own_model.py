"""Sweeping a model of your own: a gated residual MLP, registered as a family, on a dataset
registered the same way, through the same command as the built-in sweeps:

    python -m experiments.sweep --config=examples/own_model.py --workdir=/tmp/own

A config file is Python: importing it defines the model and the data and registers them
(``resnorm.models.register``, ``resnorm.data.register``); ``get_config`` then names them in
``config.settings`` / ``config.overrides`` and ``config.data`` like any built-in family. What the
model owes the measurement is the probe protocol (README, "Sweeping your own model"): a probe at
the input, the stem and after every block, numbered along the stream, and the identical blocks
in one ``nn.scan`` whose probe is called ``probes.SCANNED_PROBE``.

The block: x ← x + g(x) ⊙ W₂ tanh(W₁ x), the gate g(x) = σ(W_g x) (a highway-style residual);
W₂ starts at 0, so every block is the identity at initialisation and δ = 0 at every depth
there: any depth dependence after training is learned. The data: two interleaved spirals in the
plane (:func:`spirals`), a classification that needs a curved boundary.
"""

import flax.linen as nn
import ml_collections
import numpy as np
from ml_collections import config_dict

from configs import depth_sweep
from resnorm import data, models, probes

FAMILY, DATASET = "gated_mlp", "spirals"


class GatedBlock(nn.Module):
  """x ← x + σ(W_g x) ⊙ W₂ tanh(W₁ x), probed after the addition."""

  hidden: int

  @nn.compact
  def __call__(self, x, _=None):
    width = x.shape[-1]
    gate = nn.sigmoid(nn.Dense(width, name="gate")(x))
    branch = gate * nn.Dense(width, kernel_init=nn.initializers.zeros, name="out")(
      nn.tanh(nn.Dense(self.hidden, name="in")(x))
    )
    out = x + branch
    return probes.probe(self, probes.SCANNED_PROBE, out, x_in=x, branch=branch), None


class GatedStack(nn.Module):
  """Stem, ``depth`` scanned :class:`GatedBlock`s, head; a probe at every stream site."""

  depth: int
  num_outputs: int
  width: int = 16
  hidden: int = 32

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    del train  # nothing differs between training and evaluation
    x = probes.probe(self, probes.site_name(0, "input"), inputs)
    x = nn.Dense(self.width, name="stem")(x)
    x = probes.probe(self, probes.site_name(1, "stem"), x, x_in=inputs, branch=x)
    scanned = nn.scan(GatedBlock, variable_axes=probes.SCAN_AXES, split_rngs={"params": True}, length=self.depth)
    blocks = scanned(hidden=self.hidden, name=probes.site_name(2, "block"))
    x, _ = blocks(x, None)
    return nn.Dense(self.num_outputs, name="head")(x)


def spirals(seed=0, train_size=2048, test_size=512, noise=0.1) -> data.Dataset:
  """Two interleaved spirals in the plane, one per class; Gaussian noise of std ``noise``."""
  rng = np.random.default_rng(seed)
  count = train_size + test_size
  labels = rng.integers(0, 2, count).astype(np.int32)
  angle = rng.uniform(0.25, 3.0 * np.pi, count)
  points = np.stack([angle * np.cos(angle + np.pi * labels), angle * np.sin(angle + np.pi * labels)], axis=1)
  points = (points / (3.0 * np.pi) + noise * rng.standard_normal(points.shape)).astype(np.float32)
  return data.Dataset(
    points[:train_size], labels[:train_size], points[train_size:], labels[train_size:], "classification", 2
  )


if FAMILY not in models.FAMILIES:  # a config file may be loaded more than once in a process
  models.register(
    FAMILY,
    models.Family(
      build=lambda depth, num_classes, **options: GatedStack(depth=depth, num_outputs=num_classes, **options),
      defaults=dict(width=16, hidden=32),
    ),
  )
if DATASET not in data.LOADERS:
  data.register(DATASET, spirals)


def get_config():
  config = depth_sweep.get_config()
  config.settings = ("gated",)
  config.overrides = ml_collections.ConfigDict(dict(gated=dict(name=FAMILY)))
  config.model = ml_collections.ConfigDict(
    dict(name=config_dict.placeholder(str), depth=config_dict.placeholder(int), width=16, hidden=32)
  )
  config.data = ml_collections.ConfigDict(dict(name=DATASET, train_size=2048, test_size=512, noise=0.1))
  config.depths = (2, 8, 32)
  config.seeds = (0, 1)
  config.num_steps = 300
  config.signal.direction_free_examples = 0  # direction-free δ needs the family's block_stack hook (not given here)
  return config
