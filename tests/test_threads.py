"""Threads tracing models together: lifted classes are defined once and before the sweep's threads
start, and a model that defines a class at every trace trains its groups one at a time.

Defining a flax subclass (what ``nn.scan`` or ``nn.remat`` does) edits its bases' dataclass fields in
place for a moment; a thread instantiating the same block meanwhile fails ("dictionary changed size
during iteration", ``KeyError: 'parent'``). The race itself is too rare to test by running it; the
tests check the invariant that rules it out: after the sweep's first trace, nothing defines a class.
"""

import contextlib
import functools
import gc

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from helpers import tiny_sweep
from resnorm import config_validation, loop, models, sweep
from resnorm.models import lifted, mlp, resnet


@contextlib.contextmanager
def no_class_defined():
  """Fails if a flax module class is defined inside the block (none is freed meanwhile: the cycle
  collector is off)."""
  gc.disable()
  try:
    before = loop._module_classes()
    yield
    new = loop._module_classes() - before
    assert not new, f"defined {sorted(c.__name__ for c in new)}"
  finally:
    gc.enable()


def fresh_scan(module, *, length, variable_axes, unroll=1):
  """nn.scan as a model calls it inside __call__: a new class at every call."""
  return nn.scan(module, variable_axes=dict(variable_axes), split_rngs={"params": True}, length=length, unroll=unroll)


def test_lifted_classes_are_defined_once_and_equal_flax_s():
  scanned = lifted.scan(mlp.MLPBlock, length=3, variable_axes=mlp.SCAN_AXES)
  assert lifted.scan(mlp.MLPBlock, length=3, variable_axes=dict(reversed(mlp.SCAN_AXES.items()))) is scanned
  assert lifted.scan(mlp.MLPBlock, length=4, variable_axes=mlp.SCAN_AXES) is not scanned
  block = functools.partial(resnet.BasicBlock, features=8, strides=1)
  rematted = lifted.remat(block, prevent_cse=False)
  assert lifted.remat(functools.partial(resnet.BasicBlock, features=4), prevent_cse=False).func is rematted.func
  assert lifted.remat(block).func is not rematted.func  # prevent_cse=True: another class
  assert rematted.keywords == block.keywords and issubclass(rematted.func, resnet.BasicBlock)
  # The same network as flax's own nn.scan builds: same parameters from the same key, same outputs.
  x, key = jax.random.normal(jax.random.key(1), (2, 6)), jax.random.key(0)
  options = dict(hidden=5, residual=True, linear=False, branch_scale=0.5, zero_init_last=False, layer_norm=False)
  ours = lifted.scan(mlp.MLPBlock, length=3, variable_axes=mlp.SCAN_AXES)(**options)
  flax_s = fresh_scan(mlp.MLPBlock, length=3, variable_axes=mlp.SCAN_AXES)(**options)
  variables = ours.init(key, x, None)
  chex.assert_trees_all_equal(variables, flax_s.init(key, x, None), strict=True)
  chex.assert_trees_all_equal(ours.apply(variables, x, None), flax_s.apply(variables, x, None), strict=True)


def tiny_runs(**model):
  config = tiny_sweep(depths=(2, 3))
  config.model.update(model)
  return config, [run[3] for run in sweep.plan(config)], config_validation.load_data(config)


def test_after_the_first_trace_training_a_group_defines_no_class(tmp_path):
  _, runs, dataset = tiny_runs(remat=True)
  assert loop.models_define_no_class(runs, dataset)
  with no_class_defined():  # creates, trains, measures (direction-free δ too), evaluates, checkpoints
    loop.train_group(runs[:1], [tmp_path / "run"], dataset)


@pytest.mark.parametrize(
  "name, depth, options",
  [
    ("preact_resnet", 20, dict(remat=True)),
    ("preact_resnet", 20, dict(scan=False, remat=True)),
    ("procresnet", 13, dict(scan_unroll=2)),
    ("transformer", 3, dict(width=8, heads=2, hidden=8, max_length=4, pool="mean")),
  ],
)
def test_after_the_first_trace_tracing_again_defines_no_class(name, depth, options):
  images = name != "transformer"
  model = models.create_model(name, depth, num_classes=3, **options)
  inputs = jnp.ones((2, 8, 8, 3)) if images else jnp.ones((2, 4, 5))
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), inputs)

  def loss(params, variables):  # a training step's trace: BatchNorm in training mode, a backward pass
    out, _ = model.apply({**variables, "params": params}, inputs, train=True, mutable=["batch_stats"])
    return jnp.sum(out)

  with no_class_defined():
    jax.eval_shape(jax.grad(loss), variables["params"], variables)
    jax.eval_shape(functools.partial(model.apply, train=False), variables, inputs)


def test_a_model_that_defines_a_class_per_trace_trains_its_groups_one_at_a_time(tmp_path, monkeypatch, caplog):
  config, runs, dataset = tiny_runs()
  assert config.parallel_runs == 2
  threads = []

  class Stop(Exception):
    pass

  def run_all(groups_, workdir, dataset, count, progress):
    threads.append(count)
    raise Stop

  monkeypatch.setattr(sweep, "_run_all", run_all)
  with pytest.raises(Stop):
    sweep.run_sweep(config, str(tmp_path / "lifted"), progress=False)
  monkeypatch.setattr(lifted, "scan", fresh_scan)  # the MLP stack's nn.scan inside __call__
  assert not loop.models_define_no_class(runs, dataset)
  with pytest.raises(Stop):
    sweep.run_sweep(config, str(tmp_path / "fresh"), progress=False)
  assert threads == [2, 1]
  assert "groups train one at a time instead of parallel_runs = 2" in caplog.text
