"""Backward ratios from the probes against independent oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnorm import signal
from resnorm.models import create_model


def _mse(outputs, targets):
  return jnp.mean(jnp.square(outputs - targets))


def _float64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _explicit_stream(params, inputs, residual, scale):
  """x_0 … x_L and the head, written out by hand from the parameter arrays (no Flax)."""
  blocks = params["02_block"]
  kernel_1, bias_1 = blocks["Dense_0"]["kernel"], blocks["Dense_0"]["bias"]
  kernel_2, bias_2 = blocks["Dense_1"]["kernel"], blocks["Dense_1"]["bias"]

  def block(l, x):
    f = jnp.maximum(x @ kernel_1[l] + bias_1[l], 0.0) @ kernel_2[l] + bias_2[l]
    return x + scale * f if residual else f

  def head(x):
    return x @ params["head"]["kernel"] + params["head"]["bias"]

  xs = [inputs @ params["stem"]["kernel"] + params["stem"]["bias"]]
  for l in range(kernel_1.shape[0]):
    xs.append(block(l, xs[-1]))
  return xs, block, head


@pytest.mark.parametrize("name", ["mlp_residual", "mlp_plain"])
def test_probe_gradients_equal_grad_wrt_explicit_stream(x64, name):
  depth = 5
  model = create_model(
    name, depth, num_classes=3, width=8, hidden=12, **({"branch_scale": "1/sqrt(L)"} if name == "mlp_residual" else {})
  )
  inputs = jax.random.normal(jax.random.key(0), (6, 4), jnp.float64)
  targets = jax.random.normal(jax.random.key(1), (6, 3), jnp.float64)
  params = _float64(jax.jit(model.init)(jax.random.key(2), inputs)["params"])
  names = [site for site, _ in signal.stream_gradients(model, {"params": params}, inputs, targets, _mse)[0]]
  assert names == ["00_input", "01_stem", "02_block"]
  gradients = jax.jit(
    lambda p: [g for _, g in signal.stream_gradients(model, {"params": p}, inputs, targets, _mse)[0]]
  )(params)
  probe = dict(zip(names, gradients))

  residual, scale = name == "mlp_residual", 1 / np.sqrt(depth)
  xs, block, head = _explicit_stream(params, inputs, residual, scale)

  def loss_from(l):
    def loss(x):
      for k in range(l, depth):
        x = block(k, x)
      return _mse(head(x), targets)

    return loss

  # Probe "01_stem" is x_0; probe "02_block"[l] is x_{l+1}.
  oracle = jax.jit(lambda xs: [jax.grad(loss_from(l))(xs[l]) for l in range(depth + 1)])(xs)
  measured = [probe["01_stem"][0]] + list(probe["02_block"])
  for l, (got, want) in enumerate(zip(measured, oracle)):
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert error <= 1e-10, f"x_{l}: relative error {error:.2e}"
  # The input probe is ∂E/∂inputs.
  want = jax.grad(lambda x: loss_from(0)(x @ params["stem"]["kernel"] + params["stem"]["bias"]))(inputs)
  np.testing.assert_allclose(probe["00_input"][0], want, rtol=1e-10, atol=1e-14)


def test_linear_residual_ratios_lie_within_singular_values_of_each_block(x64):
  depth, width = 6, 7
  model = create_model("linear_residual", depth, num_classes=5, width=width, branch_scale=0.5)
  inputs = jax.random.normal(jax.random.key(3), (32, 9), jnp.float64)
  targets = jax.random.normal(jax.random.key(4), (32, 5), jnp.float64)
  params = _float64(jax.jit(model.init)(jax.random.key(5), inputs)["params"])
  report = jax.jit(lambda p: signal.measure(model, {"params": p}, inputs, targets, _mse))(params)
  blocks = np.array([k == "block" for k in report.kinds])
  ratios = np.asarray(report.ratio)[blocks]
  assert ratios.shape == (depth, 32)
  kernels = np.asarray(params["02_block"]["Dense_0"]["kernel"])  # x_{l+1} = x_l (I + 0.5 W_l) in row form
  for l in range(depth):
    sigma = np.linalg.svd(np.eye(width) + 0.5 * kernels[l], compute_uv=False)
    assert sigma.max() / sigma.min() > 1.5  # the blocks are far from orthogonal: the bound has content
    assert np.all(ratios[l] >= sigma.min() * (1 - 1e-12)), (l, ratios[l].min(), sigma.min())
    assert np.all(ratios[l] <= sigma.max() * (1 + 1e-12)), (l, ratios[l].max(), sigma.max())


def test_ratios_are_per_example(x64):
  model = create_model("mlp_residual", 4, num_classes=2, width=8, hidden=8, branch_scale=1.0)
  inputs = jax.random.normal(jax.random.key(6), (5, 3), jnp.float64)
  targets = jax.random.normal(jax.random.key(7), (5, 2), jnp.float64)
  variables = _float64(jax.jit(model.init)(jax.random.key(8), inputs))
  measure = jax.jit(lambda x, y: signal.measure(model, variables, x, y, _mse))
  batch = measure(inputs, targets)
  for i in range(5):
    single = measure(inputs[i : i + 1], targets[i : i + 1])
    np.testing.assert_allclose(single.ratio[:, 0], batch.ratio[:, i], rtol=1e-10)


def test_zero_initialised_branches_preserve_norms_exactly():
  model = create_model("mlp_residual", 8, num_classes=2, zero_init_last=True, branch_scale="1")
  inputs = jax.random.normal(jax.random.key(9), (16, 3))
  targets = jax.random.normal(jax.random.key(10), (16, 2))
  variables = jax.jit(model.init)(jax.random.key(11), inputs)
  report = jax.jit(lambda v: signal.measure(model, v, inputs, targets, _mse))(variables)
  summary = signal.delta_statistics(report)
  assert summary["delta_max"] <= 1e-6 and summary["num_ratios"] == 8 * 16  # float32 rounding only
  assert report.kinds == ("stem",) + ("block",) * 8


def test_summary_statistics_match_numpy():
  ratio = np.array([[1.1, 0.5, np.nan], [1.0, 2.0, 0.9], [0.7, 1.3, 1.2]])
  report = signal.SignalReport(
    grad_norm=np.ones((4, 3)),
    ratio=ratio,
    stream_norm=np.ones((4, 3)),
    branch_ratio=np.ones((3, 3)),
    q=np.ones(4),
    c=np.zeros(4),
    kinds=("stem", "block", "block"),
  )
  summary = signal.delta_statistics(report)
  delta = np.abs(ratio[1:].ravel() - 1)
  assert summary["delta_max"] == pytest.approx(delta.max())
  assert summary["delta_mean"] == pytest.approx(delta.mean())
  assert summary["delta_p90"] == pytest.approx(np.percentile(delta, 90))
  assert summary["log_gain"] == pytest.approx(np.mean(np.log(ratio[1:]).sum(axis=0)))
  stem = signal.delta_statistics(report, "stem")
  assert stem["num_undefined"] == 1 and stem["delta_max"] == pytest.approx(0.5)
  with pytest.raises(ValueError, match="transition"):
    signal.delta_statistics(report, "transition")


def test_forward_statistics():
  model = create_model("mlp_plain", 3, num_classes=2, width=4, hidden=4)
  inputs = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
  variables = jax.jit(model.init)(jax.random.key(12), inputs)
  report = jax.jit(lambda v: signal.measure(model, v, inputs, jnp.zeros((3, 2)), _mse))(variables)
  np.testing.assert_allclose(report.stream_norm[0], [1.0, 2.0, np.sqrt(2)], rtol=1e-6)
  assert float(report.q[0]) == pytest.approx(np.mean(np.square(inputs)))
  unit = inputs / np.linalg.norm(inputs, axis=1, keepdims=True)
  gram = unit @ unit.T
  assert float(report.c[0]) == pytest.approx((gram.sum() - np.trace(gram)) / 6, rel=1e-6)
  # Plain blocks: the branch is the whole output, so ‖F(x_l)‖/‖x_l‖ = ‖x_{l+1}‖/‖x_l‖.
  np.testing.assert_allclose(report.branch_ratio[1:], report.stream_norm[2:] / report.stream_norm[1:-1], rtol=1e-5)


def _report(ratio, grad_norm=None):
  layers, batch = ratio.shape
  return signal.SignalReport(
    grad_norm=np.ones((layers + 1, batch)) if grad_norm is None else grad_norm,
    ratio=ratio,
    stream_norm=np.ones((layers + 1, batch)),
    branch_ratio=np.ones((layers, batch)),
    q=np.ones(layers + 1),
    c=np.zeros(layers + 1),
    kinds=("block",) * layers,
  )


def test_per_layer_statistics_have_a_sample_size_independent_of_depth():
  """Every block sees the same 64 ratios (shuffled): the per-block statistics over examples are
  the same at every depth, while δ_max, a max over L·64 ratios, grows with L (an outlier here)."""
  rng = np.random.default_rng(0)
  values = 1 + rng.normal(0, 0.1, 64)
  stats = {}
  for depth in (2, 16, 128):
    ratio = np.stack([rng.permutation(values) for _ in range(depth)])
    ratio[-1, 0] = 1 + 0.01 * depth  # one outlier whose size grows with depth, in one block
    stats[depth] = signal.delta_statistics(_report(ratio))
    assert stats[depth]["num_examples"] == 64 and stats[depth]["num_layers"] == depth
    # The oracle, row by row: each block's statistic over its 64 examples, then max or mean over blocks.
    delta = np.abs(ratio - 1)
    means, p90 = delta.mean(axis=1), np.percentile(delta, 90, axis=1)
    assert stats[depth]["layer_mean_max"] == pytest.approx(means.max(), rel=1e-12)
    assert stats[depth]["layer_p90_max"] == pytest.approx(p90.max(), rel=1e-12)
    assert stats[depth]["layer_p90_mean"] == pytest.approx(p90.mean(), rel=1e-12)
    assert means.max() > means.mean()  # the outlier's block: max and mean over blocks differ
  delta = np.abs(values - 1)
  for depth, s in stats.items():
    assert s["layer_p90_mean"] == pytest.approx(np.percentile(delta, 90), abs=0.02)  # one row differs by an outlier
  assert stats[2]["layer_p90_max"] == pytest.approx(stats[128]["layer_p90_max"], rel=0.05)
  assert stats[2]["delta_max"] < stats[128]["delta_max"]  # the outlier: sample-max statistics track it
  # Each block's max over its 64 examples, then the median over blocks: the one outlier block
  # cannot move it once there are three blocks, so it is the same worst case at L = 16 and 128.
  for depth in (16, 128):
    assert stats[depth]["layer_max_median"] == np.abs(values - 1).max()


def test_whole_batch_ratio_is_the_ratio_of_root_sums_of_squares():
  grad_norm = np.array([[3.0, 4.0], [1.0, 1.0], [2.0, 0.0]])  # sites × examples
  ratio = grad_norm[:-1] / np.where(grad_norm[1:] > 0, grad_norm[1:], np.nan)
  stats = signal.delta_statistics(_report(ratio, grad_norm))
  batch = np.sqrt([25.0, 2.0, 4.0])  # ‖∂E/∂x_k‖_B
  expected = np.abs(batch[:-1] / batch[1:] - 1)
  assert stats["batch_delta_max"] == pytest.approx(expected.max()) and stats["batch_delta_mean"] == pytest.approx(
    expected.mean()
  )
  assert stats["delta_max"] == pytest.approx(3.0)  # per example: 4/1 − 1


def test_stream_profile_lists_every_layer_in_order():
  ratio = np.array([[1.0, 3.0], [0.5, 0.5], [2.0, np.nan]])
  report = signal.SignalReport(
    np.ones((4, 2)), ratio, np.ones((4, 2)), np.ones((3, 2)), np.ones(4), np.zeros(4), ("stem", "block", "transition")
  )
  profile = signal.stream_profile(report)
  assert profile["kind"] == ["stem", "block", "transition"]
  np.testing.assert_allclose(profile["ratio_mean"], [2.0, 0.5, 2.0])
  np.testing.assert_allclose(profile["delta_mean"], [1.0, 0.5, 1.0])


def test_a_model_with_120_sites_is_measured_in_stream_order(x64):
  """Sites 00 … 119, where site k scales the stream by c_k = 1 + k/1000: the gradient at site k is
  c_{k+1} times the one at site k + 1, so the ratio of layer k is exactly c_{k+1}, in stream order
  at any count of sites (the names sort by their index as a number: '100_block' after '99_block')."""
  import flax.linen as nn

  from resnorm import probes

  class Scales(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = probes.probe(self, probes.site_name(0, "input"), x)
      for k in range(1, 120):
        x = probes.probe(self, probes.site_name(k, "block"), x * (1 + k / 1000))
      return x

  model, x = Scales(), jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
  report = signal.measure(model, {}, x, jnp.zeros_like(x), lambda out, y: jnp.sum((out - y) ** 2))
  np.testing.assert_allclose(
    report.ratio, np.broadcast_to((1 + np.arange(1, 120) / 1000)[:, None], (119, 3)), rtol=1e-12
  )
