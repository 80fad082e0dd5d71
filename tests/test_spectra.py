"""Tests for resnorm.spectra against dense operator matrices and closed-form Jacobians (float64)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import depth_spectra
from resnorm import models, spectra


def circular_correlation(x, kernel):
  """Flax's circular ``nn.Conv`` in NumPy: y[i, j] = Σ_{a,b} x[(i + a − ⌊(kh−1)/2⌋) mod H, …] · K[a, b]."""
  kh, kw = kernel.shape[:2]
  y = np.zeros(x.shape[:2] + kernel.shape[3:])
  for a in range(kh):
    for b in range(kw):
      shifted = np.roll(x, shift=((kh - 1) // 2 - a, (kw - 1) // 2 - b), axis=(0, 1))
      y += shifted @ kernel[a, b]
  return y


def operator_matrix(apply, input_shape):
  """The dense matrix of a linear map: column i is the map applied to the i-th basis vector."""
  size = int(np.prod(input_shape))
  return np.stack([np.ravel(apply(np.eye(size)[i].reshape(input_shape))) for i in range(size)], axis=1)


@pytest.mark.parametrize(
  "kernel_shape, spatial_shape",
  [((1, 1, 3, 5), (4, 6)), ((3, 3, 4, 2), (5, 6)), ((3, 3, 2, 3), (3, 4)), ((2, 3, 3, 2), (4, 5))],
)
def test_conv_singular_values_match_dense_operator(x64, kernel_shape, spatial_shape):
  kernel = np.random.default_rng(0).standard_normal(kernel_shape)
  dense = operator_matrix(lambda x: circular_correlation(x, kernel), spatial_shape + kernel_shape[2:3])
  expected = np.linalg.svd(dense, compute_uv=False)
  values = spectra.conv_singular_values(jnp.asarray(kernel), spatial_shape)
  assert values.shape == spatial_shape + (min(kernel_shape[2:]),)
  actual = np.sort(np.asarray(values).ravel())[::-1]
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=1e-8 * expected[0])


def test_numpy_oracle_is_flax_circular_conv(x64):
  """The oracle above computes what Flax's nn.Conv(padding='CIRCULAR') computes, in Flax's kernel layout."""
  for kernel_shape in ((3, 3, 4, 2), (2, 3, 3, 2)):
    kernel = np.random.default_rng(1).standard_normal(kernel_shape)
    x = np.random.default_rng(2).standard_normal((5, 6, kernel_shape[2]))
    conv = nn.Conv(
      kernel_shape[3], kernel_shape[:2], padding="CIRCULAR", use_bias=False, dtype=jnp.float64, param_dtype=jnp.float64
    )
    y = conv.apply({"params": {"kernel": jnp.asarray(kernel)}}, jnp.asarray(x)[None])[0]
    np.testing.assert_allclose(np.asarray(y), circular_correlation(x, kernel), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial_shape, channels", [((6, 4), (3, 5)), ((5, 7), (4, 2)), ((4, 4), (2, 12))])
def test_strided_pointwise_singular_values(x64, spatial_shape, channels):
  kernel = np.random.default_rng(3).standard_normal((1, 1) + channels)
  conv = nn.Conv(channels[1], (1, 1), strides=2, use_bias=False, dtype=jnp.float64, param_dtype=jnp.float64)
  apply = lambda x: conv.apply({"params": {"kernel": jnp.asarray(kernel)}}, jnp.asarray(x)[None])[0]
  dense = operator_matrix(apply, spatial_shape + channels[:1])
  np.testing.assert_allclose(dense, operator_matrix(lambda x: x[::2, ::2] @ kernel[0, 0], spatial_shape + channels[:1]))
  expected = np.linalg.svd(dense, compute_uv=False)
  values = spectra.strided_pointwise_singular_values(jnp.asarray(kernel), spatial_shape)
  out_shape = (-(-spatial_shape[0] // 2), -(-spatial_shape[1] // 2))
  assert values.shape == out_shape + (min(channels),)
  nonzero = np.sort(np.asarray(values).ravel())[::-1]
  np.testing.assert_allclose(expected[: nonzero.size], nonzero, rtol=1e-10)
  np.testing.assert_allclose(expected[nonzero.size :], 0, atol=1e-10)


@pytest.mark.parametrize(
  "call, field",
  [
    (lambda: spectra.conv_singular_values(jnp.ones((3, 3, 2)), (8, 8)), "kernel.shape"),
    (lambda: spectra.conv_singular_values(jnp.ones((3, 3, 2, 2)), (2, 8)), "spatial_shape"),
    (lambda: spectra.conv_singular_values(jnp.ones((3, 3, 2, 2)), (8,)), "spatial_shape"),
    (lambda: spectra.conv_singular_values(jnp.ones((3, 3, 2, 2)), (8.0, 8)), "spatial_shape"),
    (lambda: spectra.strided_pointwise_singular_values(jnp.ones((3, 3, 2, 2)), (8, 8)), "kernel.shape"),
    (lambda: spectra.strided_pointwise_singular_values(jnp.ones((1, 1, 2, 2)), (8, 8), 0), "stride"),
    (lambda: depth_spectra.depth_spectra(["mlp_residual"], [0], {}), "depths"),
    (lambda: depth_spectra.depth_spectra(["resnet9000"], [4], {}), "models"),
    (lambda: depth_spectra.depth_spectra(["resnet"], [8], {}), "models"),
    (lambda: depth_spectra.depth_spectra(["mlp_plain"], [4], {"widht": 8}), "model.widht"),
  ],
)
def test_bad_input_names_the_argument(call, field):
  with pytest.raises(ValueError, match=rf"(?s)^{re.escape(field)} = .*: expected "):
    call()


def _stack(name, depth, **options):
  """A small float64 MLP stack of registry family ``name`` and Gaussian inputs (call under ``x64``)."""
  model = models.create_model(name, depth, num_classes=5, width=6, hidden=12, **options).clone(dtype=jnp.float64)
  return model, jax.random.normal(jax.random.key(1), (3, 4), jnp.float64)


def _closed_form_blocks(model, params, inputs):
  """Block inputs and Jacobians J_l = I·[residual] + s·K2ᵀ diag(relu'(x K1 + b1)) K1ᵀ, in NumPy float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  x = np.asarray(inputs, np.float64) @ p["stem"]["kernel"] + p["stem"]["bias"]
  blocks = p["02_block"]
  xs, jacobians = [], []
  for l in range(model.depth):
    xs.append(x)
    k1, b1 = blocks["Dense_0"]["kernel"][l], blocks["Dense_0"]["bias"][l]
    k2, b2 = blocks["Dense_1"]["kernel"][l], blocks["Dense_1"]["bias"][l]
    pre = x @ k1 + b1
    branch = np.maximum(pre, 0) @ k2 + b2
    identity = np.eye(x.shape[1]) if model.residual else 0
    scale = model.branch_scale if model.residual else 1.0
    jacobians.append(identity + scale * np.einsum("ho,bh,ih->boi", k2, (pre > 0).astype(float), k1))
    x = x + scale * branch if model.residual else branch
  return np.stack(xs), np.stack(jacobians)  # (L, B, w), (L, B, w, w)


@pytest.mark.parametrize("name, options", [("mlp_residual", {"branch_scale": "1/sqrt(L)"}), ("mlp_plain", {})])
def test_block_and_stack_singular_values_match_closed_form(x64, name, options):
  model, inputs = _stack(name, 5, **options)

  @jax.jit
  def measure(inputs):
    variables = model.init(jax.random.key(0), inputs)
    blocks = models.family(name).block_stack(model, variables, inputs)
    head = variables["params"]["head"]
    x_last = jax.vmap(spectra.stack_map(blocks))(blocks.inputs[0])
    return dict(
      variables=variables,
      inputs=blocks.inputs,
      block=spectra.block_singular_values(blocks),
      stack=spectra.stack_singular_values(blocks),
      outputs=model.apply(variables, inputs),
      head_of_stack_map=x_last @ head["kernel"] + head["bias"],
    )

  result = jax.tree.map(np.asarray, measure(inputs))
  xs, jacobians = _closed_form_blocks(model, result["variables"], inputs)
  np.testing.assert_allclose(result["inputs"], xs, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(result["block"], np.linalg.svd(jacobians, compute_uv=False), rtol=1e-10, atol=1e-12)
  product = jacobians[0]
  for jacobian in jacobians[1:]:
    product = jacobian @ product
  np.testing.assert_allclose(result["stack"], np.linalg.svd(product, compute_uv=False), rtol=1e-10, atol=1e-12)
  # The stack map reproduces the model's x_L: the head applied to it gives the model's outputs.
  np.testing.assert_allclose(result["head_of_stack_map"], result["outputs"], rtol=1e-12)


def test_linear_residual_block_is_identity_plus_scaled_weight(x64):
  model, inputs = _stack("linear_residual", 4)

  @jax.jit
  def measure(inputs):
    variables = model.init(jax.random.key(0), inputs)
    return variables, spectra.block_singular_values(
      models.family("linear_residual").block_stack(model, variables, inputs)
    )

  variables, values = measure(inputs)
  weights = np.asarray(variables["params"]["02_block"]["Dense_0"]["kernel"], np.float64)  # (L, w, w)
  expected = np.linalg.svd(np.eye(6) + weights.transpose(0, 2, 1) / 4, compute_uv=False)  # s = 1/L
  np.testing.assert_allclose(np.asarray(values), np.broadcast_to(expected[:, None], values.shape), rtol=1e-12)


def _jacobians(fn, xs):
  return jax.vmap(lambda x: spectra.jacobian_matrix(fn, x))(xs)


def test_matrix_free_extremes_match_dense_svd():
  """A float32 residual stack, 48-dimensional stream: 40 Lanczos steps and 200 power steps, within 1e-4."""
  model = models.create_model("mlp_residual", 6, num_classes=5, width=48, hidden=96)

  @jax.jit
  def measure(inputs):
    blocks = models.family("mlp_residual").block_stack(model, model.init(jax.random.key(0), inputs), inputs)
    fn, xs = spectra.stack_map(blocks), blocks.inputs[0]
    return (
      _jacobians(fn, xs),
      spectra.extreme_singular_values(fn, xs, jax.random.key(2), 40),
      spectra.top_singular_value(fn, xs, jax.random.key(3), 200),
    )

  jacobians, (sigma_max, sigma_min), top = measure(jax.random.normal(jax.random.key(1), (3, 16)))
  dense = np.linalg.svd(np.asarray(jacobians, np.float64), compute_uv=False)
  assert dense[:, -1].min() > 0.1  # well conditioned, so σ_min is resolved in float32
  np.testing.assert_allclose(np.asarray(sigma_max), dense[:, 0], rtol=1e-4)
  np.testing.assert_allclose(np.asarray(sigma_min), dense[:, -1], rtol=1e-4)
  np.testing.assert_allclose(np.asarray(top), dense[:, 0], rtol=1e-4)


def test_matrix_free_on_a_wide_jacobian(x64):
  """fn: R^16 -> R^5 has a wide Jacobian, so the Gram operator is JJᵀ (5×5); 5 steps are exact."""
  weights = jax.random.normal(jax.random.key(0), (5, 16), jnp.float64) / 4
  fn = lambda x: jnp.tanh(weights @ x) + 0.1 * jnp.sum(x**2)
  xs = jax.random.normal(jax.random.key(1), (2, 16), jnp.float64)
  jacobians, (sigma_max, sigma_min) = jax.jit(
    lambda xs: (_jacobians(fn, xs), spectra.extreme_singular_values(fn, xs, jax.random.key(2), 5))
  )(xs)
  assert jacobians.shape == (2, 5, 16)
  dense = np.linalg.svd(np.asarray(jacobians), compute_uv=False)
  np.testing.assert_allclose(np.asarray(sigma_max), dense[:, 0], rtol=1e-10)
  np.testing.assert_allclose(np.asarray(sigma_min), dense[:, -1], rtol=1e-10)


def test_lanczos_restarts_when_the_krylov_space_closes(x64):
  """G = diag(3, 3, 3, 1, 1, 1, 1, 0.5): from any start the Krylov space closes after three steps."""
  eigenvalues = jnp.array([3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 0.5])
  ritz = jax.jit(lambda key: spectra.lanczos_ritz_values(lambda v: eigenvalues * v, 8, jnp.float64, key, 8))(
    jax.random.key(0)
  )
  np.testing.assert_allclose(np.asarray(ritz), np.sort(np.asarray(eigenvalues)), rtol=1e-12)
  # With fewer steps the Ritz values interlace: inside [λ_min, λ_max].
  ritz = spectra.lanczos_ritz_values(lambda v: eigenvalues * v, 8, jnp.float64, jax.random.key(0), 2)
  assert float(ritz[0]) >= 0.5 - 1e-12 and float(ritz[-1]) <= 3.0 + 1e-12
  # G = 0 (a ReLU net with every unit off): Gv is exactly 0 at every step, and only restarts continue.
  ritz = spectra.lanczos_ritz_values(lambda v: 0 * v, 8, jnp.float64, jax.random.key(0), 4)
  np.testing.assert_array_equal(np.asarray(ritz), 0.0)


def test_matrix_free_on_a_conv_operator_against_fft():
  """A 4096-dimensional circular conv (16×16×16), two examples: Lanczos σ_max against the FFT spectrum."""
  conv = nn.Conv(16, (3, 3), padding="CIRCULAR", use_bias=False)
  xs = jax.random.normal(jax.random.key(1), (2, 16, 16, 16))
  variables = conv.init(jax.random.key(0), xs)
  expected = float(spectra.conv_singular_values(variables["params"]["kernel"], (16, 16)).max())
  fn = spectra.per_example(conv, variables)
  sigma_max, _ = jax.jit(lambda xs: spectra.extreme_singular_values(fn, xs, jax.random.key(2), 64))(xs)
  np.testing.assert_allclose(np.asarray(sigma_max), expected, rtol=1e-4)


def test_depth_spectra_residual_blocks_approach_identity():
  results = depth_spectra.depth_spectra(
    ["mlp_residual"], [2, 16], dict(width=8, hidden=16), input_dim=4, num_examples=2, lanczos_iterations=8
  )
  residual = results["mlp_residual"]
  assert residual[16]["block"].shape == (16, 2, 8) and residual[16]["stack"].shape == (2, 8)
  deviation = {L: np.abs(residual[L]["block"] - 1).max() for L in (2, 16)}
  assert deviation[16] < deviation[2] / 4  # s = 1/L: ‖J_l − I‖ ≤ ‖DF_l‖/L
  np.testing.assert_allclose(residual[16]["stack_lanczos"], residual[16]["stack"][:, [0, -1]], rtol=1e-4)
  text = depth_spectra.format_depth_spectra(results)
  assert text.count("mlp_residual") == 2


def _sweep_group_against_float64(settings):
  """The default sweep's group of ``settings`` at L = 2 (two seeds of one setting, or one seed of
  each): its model, its measurement program (:class:`resnorm.measure.Measure`, compiled as the
  sweep compiles it), its stacked variables, and for every member, block and example the float64
  oracle: the singular values of the block Jacobian of one example at a time (``jax.jacfwd``,
  neither blocks nor examples batched), decomposed by NumPy."""
  from configs import depth_sweep  # pylint: disable=import-outside-toplevel
  from resnorm import data, loop, measure, sweep_plan, train  # pylint: disable=import-outside-toplevel
  from resnorm.models import mlp  # pylint: disable=import-outside-toplevel

  config = depth_sweep.get_config()
  config.depths = (2,)
  planned = {setting: [run.config for run in sweep_plan.plan(config) if run.setting == setting] for setting in settings}
  configs = planned[settings[0]][:2] if len(settings) == 1 else [planned[setting][0] for setting in settings]
  assert len({loop.group_key(c) for c in configs}) == 1  # one program
  dataset = data.load(configs[0].data)
  seeds = [loop.run_seed(c) for c in configs]
  state, _ = loop._initial_states(configs, seeds, dataset, 64, loop.shardings(jax.devices())[0])
  model = models.from_config(configs[0].model, dataset.num_outputs)
  measurer = measure.Measure(
    configs[0], model, train.loss_function(dataset.task), dataset, train.parameter_count(state)
  )
  variables = train.variables(state)
  oracle = np.zeros((len(configs), model.depth, len(measurer.direction_free_inputs), configs[0].model.width))
  with jax.enable_x64(True):
    for member in range(len(configs)):
      member_variables = jax.tree.map(lambda leaf: np.asarray(leaf[member], np.float64), variables)
      blocks = mlp.block_stack(model, member_variables, np.asarray(measurer.direction_free_inputs, np.float64))
      one = jax.jit(lambda params, x: jax.jacfwd(lambda y: blocks.apply(params, y[None])[0])(x))  # one example
      for layer in range(model.depth):
        params = jax.tree.map(lambda leaf: leaf[layer], blocks.params)
        for example, x in enumerate(np.asarray(blocks.inputs[layer])):
          oracle[member, layer, example] = np.linalg.svd(np.asarray(one(params, x)), compute_uv=False)
  return model, measurer, variables, oracle


@pytest.mark.parametrize(
  "settings",
  [
    pytest.param(("residual_layer_norm",), marks=pytest.mark.slow),  # two seeds of one setting
    pytest.param(("plain_layer_norm",), marks=pytest.mark.slow),
    ("residual_layer_norm", "plain_layer_norm"),  # the sweep's group of a depth: the case forward mode failed
  ],
)
def test_the_sweeps_compiled_direction_free_measure_matches_a_float64_oracle(settings):
  """The block Jacobians' extreme singular values as the default sweep computes them (float32, the
  measurement's one compiled program, vmapped over the group's members and every block,
  LayerNorm's fast variance included) against the float64 oracle (:func:`_sweep_group_against_float64`):
  σ_max and σ_min of every block and example to 1e-4 of σ_max, and every σ of
  :func:`resnorm.spectra.block_singular_values`, which ``depth_spectra`` takes. Two seeds of one
  setting, or residual and plain LayerNorm blocks in one program (the sweep's group of a depth:
  the skip's weight a constant, 1 or 0)."""
  from resnorm.models import mlp  # pylint: disable=import-outside-toplevel

  model, measurer, variables, oracle = _sweep_group_against_float64(settings)
  sigma_max, sigma_min = map(np.asarray, measurer.extremes(variables, measurer.direction_free_inputs))
  scale = oracle[..., 0]  # errors relative to each Jacobian's σ_max
  assert np.max(np.abs(sigma_max - oracle[..., 0]) / scale) < 1e-4
  assert np.max(np.abs(sigma_min - oracle[..., -1]) / scale) < 1e-4
  first = jax.tree.map(lambda leaf: leaf[0], variables)  # and every σ, as depth_spectra takes them
  every = jax.jit(lambda v, x: spectra.block_singular_values(mlp.block_stack(model, v, x)))(
    first, measurer.direction_free_inputs
  )
  assert np.max(np.abs(np.asarray(every) - oracle[0]) / scale[0][..., None]) < 1e-4


@pytest.mark.slow  # the only check that the workaround is still needed
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the miscompile is XLA:CPU's")
def test_xla_cpu_still_miscompiles_the_forward_mode_jacobians_the_sweep_avoids(monkeypatch):
  """The workaround in :func:`resnorm.spectra.block_extremes` (block Jacobians in reverse mode)
  exists because XLA:CPU compiles the forward-mode Jacobians of LayerNorm blocks vmapped over
  blocks and members wrongly (each block alone comes out right). This test fails once it does
  not: then the workaround can go. With it removed here, the sweep's program misses the float64
  oracle by far more than rounding."""
  real = spectra.jacobian_matrix
  monkeypatch.setattr(spectra, "jacobian_matrix", lambda fn, x, reverse=False: real(fn, x, reverse=False))
  _, measurer, variables, oracle = _sweep_group_against_float64(("plain_layer_norm",))
  sigma_max, _ = map(np.asarray, measurer.extremes(variables, measurer.direction_free_inputs))
  error = float(np.max(np.abs(sigma_max - oracle[..., 0]) / oracle[..., 0]))
  assert error > 1e-3, f"forward-mode Jacobians are right now (error {error:.1e}): drop reverse=True in block_extremes"
