"""Backward ratios of an unedited Flax model (resnorm.unedited): against a hand-written chain of
jax.vjp through its blocks, against the probe path on a probed copy, and the selector's doors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnorm import probes, signal, unedited


class Block(nn.Module):
  """x + W₂ tanh(W₁ x): a residual block as a user writes it, no probe."""

  @nn.compact
  def __call__(self, x):
    return x + nn.Dense(x.shape[-1])(jnp.tanh(nn.Dense(x.shape[-1])(x)))


class Net(nn.Module):
  """A stem, ``depth`` blocks in a Python loop, a head: nothing in it knows of resnorm."""

  depth: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(6)(x)
    for _ in range(self.depth):
      x = Block()(x)
    return nn.Dense(3)(x)


class ProbedNet(nn.Module):
  """The same network with a probe at its stem and after every block (the probe protocol)."""

  depth: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    x = probes.probe(self, probes.site_name(0, "stem"), nn.Dense(6)(x))
    for k in range(self.depth):
      x = probes.probe(self, probes.site_name(k + 1, "block"), Block()(x))
    return nn.Dense(3)(x)


def _loss(outputs, targets):
  return jnp.mean(jnp.sum((outputs - targets) ** 2, axis=-1))


@pytest.fixture
def batch(x64):
  del x64
  inputs = jax.random.normal(jax.random.key(1), (5, 4))
  return inputs, jax.random.normal(jax.random.key(2), (5, 3))


def test_the_ratios_of_an_unedited_model_equal_a_hand_written_chain_of_vjps(batch):
  """Stream h_0 = stem(x), h_{k+1} = block_k(h_k); ∂E/∂h_k by jax.vjp of each block from the head
  backwards, per example (the loss is a mean over examples, so each example's gradient is its
  own); the ratio of block k is ‖∂E/∂h_k‖ / ‖∂E/∂h_{k+1}‖ (float64, 1e-10); the forward
  statistics of block k are those of h_{k+1} (‖h‖, q, c, and ‖h_{k+1} − h_k‖ / ‖h_k‖), from numpy."""
  inputs, targets = batch
  model = Net()
  variables = model.init(jax.random.key(0), inputs)
  measured = unedited.block_ratios(model, variables, inputs, targets, _loss)
  assert measured.paths == tuple(f"Block_{k}" for k in range(4)) and set(measured.kinds) == {"block"}

  params = variables["params"]
  stream = [nn.Dense(6).apply({"params": params["Dense_0"]}, inputs)]
  pullbacks = []
  for k in range(4):
    out, pullback = jax.vjp(lambda h, k=k: Block().apply({"params": params[f"Block_{k}"]}, h), stream[-1])
    stream.append(out)
    pullbacks.append(pullback)
  gradient = jax.grad(lambda h: _loss(nn.Dense(3).apply({"params": params["Dense_1"]}, h), targets))(stream[-1])
  gradients = [gradient]
  for pullback in reversed(pullbacks):
    gradients.insert(0, pullback(gradients[0])[0])
  norms = np.array([np.linalg.norm(g, axis=-1) for g in gradients])
  np.testing.assert_allclose(measured.grad_in, norms[:-1], rtol=1e-10)
  np.testing.assert_allclose(measured.grad_out, norms[1:], rtol=1e-10)
  np.testing.assert_allclose(measured.ratio, norms[:-1] / norms[1:], rtol=1e-10)
  # The forward statistics of each block's output, from the same stream in numpy (the probes keep
  # them in float32: 1e-6).
  h = np.array(stream)
  units = h[1:] / np.linalg.norm(h[1:], axis=-1, keepdims=True)
  grams = np.einsum("kbd,kcd->kbc", units, units)
  batch_size = h.shape[1]
  cosines = (grams.sum(axis=(1, 2)) - np.trace(grams, axis1=1, axis2=2)) / (batch_size * (batch_size - 1))
  np.testing.assert_allclose(measured.forward["norm"], np.linalg.norm(h[1:], axis=-1), rtol=1e-6)
  np.testing.assert_allclose(measured.forward["q"], np.mean(h[1:] ** 2, axis=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(measured.forward["c"], cosines, rtol=1e-6, atol=1e-7)  # a mean of cosines near 0
  branch = np.linalg.norm(h[1:] - h[:-1], axis=-1) / np.linalg.norm(h[:-1], axis=-1)
  np.testing.assert_allclose(measured.forward["branch_ratio"], branch, rtol=1e-6)


def test_the_ratios_equal_the_probe_paths_on_a_probed_copy(batch):
  """The probed copy (same parameters) measured by resnorm.signal: its ratios between the stem's
  site and each block's are the unedited model's block ratios, and every registered statistic of
  its blocks is the unedited model's."""
  inputs, targets = batch
  variables = Net().init(jax.random.key(0), inputs)
  measured = unedited.block_ratios(Net(), variables, inputs, targets, _loss)
  jitted = jax.jit(lambda v, x, y: unedited.block_ratios(Net(), v, x, y, _loss))(variables, inputs, targets)
  np.testing.assert_allclose(jitted.ratio, measured.ratio, rtol=1e-12)
  assert jitted.paths == measured.paths
  probed = signal.measure(ProbedNet(), {"params": variables["params"]}, inputs, targets, _loss, train=False)
  np.testing.assert_allclose(measured.ratio, probed.ratio, rtol=1e-12)
  ours, theirs = unedited.delta_statistics(measured), signal.delta_statistics(probed)
  assert sorted(ours) == sorted(theirs)
  for name, value in theirs.items():
    assert ours[name] == (value if value is None else pytest.approx(value, rel=1e-12, nan_ok=True)), name


def test_a_selector_picks_modules_by_path_or_class_and_shapes_name_the_kind(batch):
  """Every Dense of the model (stem and head change the shape: transitions), in the order the
  forward pass calls them (a block's inner Dense, created second, is called first)."""
  inputs, targets = batch
  model = Net(depth=2)
  variables = model.init(jax.random.key(0), inputs)
  measured = unedited.block_ratios(
    model, variables, inputs, targets, _loss, select=lambda module, x, y: isinstance(module, nn.Dense)
  )
  assert measured.paths == (
    "Dense_0",
    "Block_0/Dense_1",
    "Block_0/Dense_0",
    "Block_1/Dense_1",
    "Block_1/Dense_0",
    "Dense_1",
  )
  assert measured.kinds == ("transition", "block", "block", "block", "block", "transition")


class Pairs(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x, x


class ReturnsPairs(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return Pairs()(x)[0]


def test_a_selector_that_picks_nothing_nested_modules_or_a_tuple_is_one_line_saying_what_to_do(batch):
  inputs, targets = batch
  model = Net(depth=1)
  variables = model.init(jax.random.key(0), inputs)
  with pytest.raises(ValueError, match="picks Block_0/Dense_0 inside Block_0: .*select modules of one level"):
    unedited.block_ratios(model, variables, inputs, targets, _loss, select=lambda module, x, y: x.shape == y.shape)
  with pytest.raises(ValueError, match="the selector picks no module call of Net: .*pass select= to pick others"):
    unedited.block_ratios(model, variables, inputs, targets, _loss, select=lambda module, x, y: False)
  pairs = ReturnsPairs()
  with pytest.raises(ValueError, match="module Pairs_0 takes or returns something other than one array.*tuple"):
    unedited.block_ratios(pairs, {}, inputs, inputs, _loss, select=lambda module, x, y: True)


def test_the_readmes_example_runs_as_written():
  """README's "Measure your own model, unedited" snippet, executed as it stands."""
  import contextlib
  import io
  import pathlib

  readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
  section = readme[readme.index("**Measure your own model, unedited.**") :]
  code = section[section.index("```python\n") + len("```python\n") : section.index("\n```", section.index("```python"))]
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
  path, shape, delta_max = printed.getvalue().split(" ", 2)
  assert path == "Block_0" and shape == "(8," and float(delta_max.split()[-1]) > 0


class NormBlock(nn.Module):
  """x + W relu(BN(x)), its BatchNorm reducing over the data-parallel axis ``axis_name``."""

  axis_name: str | None

  @nn.compact
  def __call__(self, x, train):
    h = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name)(x)
    return x + nn.Dense(x.shape[-1])(nn.relu(h))


class NormNet(nn.Module):
  axis_name: str | None = "batch"

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(6)(x)
    for _ in range(3):
      x = NormBlock(self.axis_name)(x, train)
    return nn.Dense(3)(x)


def test_a_data_parallel_batch_norm_model_is_measured_in_train_mode_under_a_bound_axis(batch):
  """BatchNorm with ``axis_name='batch'`` in train mode (batch statistics, a mutable collection):
  without ``axis_name`` one line says to pass it; with it, the ratios are those of the same model
  whose BatchNorm reduces over the batch with no axis name (1e-10)."""
  inputs, targets = batch
  variables = NormNet(None).init(jax.random.key(0), inputs)
  train = dict(train=True, mutable=["batch_stats"])
  with pytest.raises(ValueError, match="reduces over an axis that nothing binds.*pass axis_name="):
    unedited.block_ratios(NormNet("batch"), variables, inputs, targets, _loss, **train)
  bound = unedited.block_ratios(NormNet("batch"), variables, inputs, targets, _loss, axis_name="batch", **train)
  alone = unedited.block_ratios(NormNet(None), variables, inputs, targets, _loss, **train)
  assert bound.paths == alone.paths == ("NormBlock_0", "NormBlock_1", "NormBlock_2")
  np.testing.assert_allclose(bound.ratio, alone.ratio, rtol=1e-10)
  for key, value in alone.forward.items():
    np.testing.assert_allclose(bound.forward[key], value, rtol=1e-10, err_msg=key)
  eval_mode = unedited.block_ratios(NormNet(None), variables, inputs, targets, _loss, train=False)
  assert not np.allclose(eval_mode.ratio, alone.ratio)  # train mode's batch statistics are not the running ones
