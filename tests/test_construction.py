"""The theorem's constructed network, and δ in every direction, against float64 oracles."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnorm import data, models, signal, spectra, statistics, train


@pytest.fixture(scope="module")
def teacher():
  return data.teacher(seed=0, dim=8, num_maps=2, strength=0.5, hidden=16, train_size=64, test_size=128)


def _constructed(teacher, depth, branch_scale="1"):
  model = models.create_model("mlp_residual", depth, num_classes=8, width=12, hidden=20, branch_scale=branch_scale)
  template = {"params": jax.eval_shape(model.init, jax.random.key(0), teacher.x_test[:1])["params"]}
  return model, models.family("mlp_residual").construct(model, template, teacher.flow)


def _stream(teacher, built, depth):
  """x_0 … x_{L−1} entering the blocks, in float64, from the constructed weights (numpy)."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), built.variables["params"])
  x = teacher.x_test.astype(np.float64) @ params["stem"]["kernel"] + params["stem"]["bias"]
  blocks = params["02_block"]
  inputs = []
  for l in range(depth):
    inputs.append(x)
    h = np.maximum(x @ blocks["Dense_0"]["kernel"][l] + blocks["Dense_0"]["bias"][l], 0)
    x = x + h @ blocks["Dense_1"]["kernel"][l] + blocks["Dense_1"]["bias"][l]
  return params, inputs, x @ params["head"]["kernel"] + params["head"]["bias"]


@pytest.mark.parametrize("depth", [2, 6, 16])
def test_constructed_blocks_stay_within_their_promised_bound_and_the_ratios_within_them(teacher, depth, x64):
  """Per block and example, ‖J_l − I‖₂ from the weights (float64: τ·s·V D U with D the ReLU's
  pattern at x_l) lies under the construction's bound τ·s·‖V_k‖‖U_k‖ = K·s/L here, and every
  measured backward ratio satisfies |r_l − 1| ≤ ‖J_l − I‖₂ at its example."""
  model, built = _constructed(teacher, depth)
  params, inputs, _ = _stream(teacher, built, depth)
  blocks = params["02_block"]
  distances = []
  for l, x in enumerate(inputs):
    active = (x @ blocks["Dense_0"]["kernel"][l] + blocks["Dense_0"]["bias"][l] > 0).astype(np.float64)
    # Row-vector convention: x_{l+1} = x_l + relu(x_l W0 + b0) W1, so J_lᵀ − I = W0 D W1.
    step = np.einsum("ih,bh,hj->bij", blocks["Dense_0"]["kernel"][l], active, blocks["Dense_1"]["kernel"][l])
    distances.append(np.linalg.norm(step, ord=2, axis=(1, 2)))
  distances = np.array(distances)  # (L, examples)
  np.testing.assert_allclose(built.block_bounds, teacher.flow.num_maps * 0.5 / depth, rtol=1e-12)
  assert np.all(distances <= built.block_bounds[:, None] * (1 + 1e-6))
  assert distances.max() > 0.2 * built.block_bounds.max()  # the bound is not vacuous either
  report = signal.measure(
    model,
    jax.tree.map(jnp.asarray, built.variables),
    jnp.asarray(teacher.x_test),
    jnp.asarray(teacher.y_test),
    train.loss_function("regression"),
  )
  ratio = np.asarray(report.ratio)[[k == "block" for k in report.kinds]]
  assert np.all(np.abs(ratio - 1) <= distances * (1 + 1e-6) + 1e-12)


def test_constructed_network_represents_the_teacher_ever_better_with_depth(teacher):
  """Euler's global error is O(1/L) once L is a multiple of K: the mean squared error falls as L^−2
  (measured slopes between 4 and 64 blocks within 0.1 of −2), and is the same at any branch scale."""
  depths = [4, 8, 16, 32, 64]
  errors = []
  for depth in depths:
    model, built = _constructed(teacher, depth)
    outputs = model.apply(built.variables, teacher.x_test)
    errors.append(float(jnp.mean((outputs - teacher.y_test) ** 2)))
  slopes = np.diff(np.log(errors)) / np.diff(np.log(depths))
  np.testing.assert_allclose(slopes, -2.0, atol=0.1)
  scaled, built = _constructed(teacher, 16, branch_scale="1/sqrt(L)")
  model16, built16 = _constructed(teacher, 16)
  np.testing.assert_allclose(
    scaled.apply(built.variables, teacher.x_test),
    model16.apply(built16.variables, teacher.x_test),
    rtol=1e-5,
    atol=1e-6,
  )


def test_constructed_network_is_the_euler_scheme_of_the_flow(teacher, x64):
  """The network's output (its float32 weights, computed in float64) equals a hand-written Euler
  integration of the teacher's fields, midpoint-assigned to the blocks, to the weights' rounding."""
  depth = 6
  _, built = _constructed(teacher, depth)
  _, _, outputs = _stream(teacher, built, depth)
  flow, z = teacher.flow, teacher.x_test.astype(np.float64)
  tau = flow.num_maps / depth
  for l in range(depth):
    z = z + tau * flow.strength * flow.field(int((l + 0.5) * tau), z)
  np.testing.assert_allclose(outputs, z @ flow.rotation.T, rtol=0, atol=1e-6)


def test_a_construction_the_model_cannot_hold_is_refused(teacher):
  for options, match in ((dict(width=4), "width >= 8"), (dict(layer_norm=True), "without LayerNorm")):
    model = models.create_model("mlp_residual", 4, num_classes=8, hidden=20, **options)
    template = jax.eval_shape(model.init, jax.random.key(0), teacher.x_test[:1])
    with pytest.raises(ValueError, match=match):
      models.family("mlp_residual").construct(model, template, teacher.flow)


@pytest.mark.parametrize("name", ["mlp_residual", "mlp_plain"])
def test_direction_free_extremes_equal_a_dense_float64_svd(name, x64):
  """σ_max and σ_min of J_l per block and example (dense, via jax.jacfwd) against
  numpy's SVD of the Jacobian written out from the block's weights in float64, to 1e-5."""
  model = models.create_model(name, 3, num_classes=4, width=6, hidden=10)  # residual: branches scaled by 1/L
  scale = 1 / 3 if name == "mlp_residual" else 1.0
  x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
  variables = jax.jit(model.init)(jax.random.key(2), x)
  blocks = models.family(name).block_stack(model, variables, x)
  extremes = _extremes(blocks)
  params = jax.tree.map(np.asarray, blocks.params["params"])
  for l in range(3):
    for b in range(5):
      xl = np.asarray(blocks.inputs[l, b])
      pre = xl @ params["Dense_0"]["kernel"][l] + params["Dense_0"]["bias"][l]
      jac_t = params["Dense_0"]["kernel"][l] @ np.diag((pre > 0).astype(float)) @ params["Dense_1"]["kernel"][l]
      jac = scale * jac_t.T + (np.eye(6) if name == "mlp_residual" else 0)  # x ↦ (x +) s·F(x)
      sigma = np.linalg.svd(jac, compute_uv=False)
      np.testing.assert_allclose(extremes.sigma_max[l, b], sigma[0], rtol=1e-5)
      np.testing.assert_allclose(extremes.sigma_min[l, b], sigma[-1], rtol=1e-5, atol=1e-7)
  free = np.maximum(np.asarray(extremes.sigma_max) - 1, 1 - np.asarray(extremes.sigma_min))
  np.testing.assert_array_equal(signal.direction_free(extremes.sigma_max, extremes.sigma_min), free)
  ratios = np.ones(free.shape)  # the ratios' own statistics aside: the direction-free ones
  stats = statistics.compute_all(statistics.LayerRatios(ratios, np.ones(len(free)), free))
  assert stats["direction_free_delta_max"] == pytest.approx(free.max())
  assert stats["direction_free_delta_mean"] == pytest.approx(free.mean())
  assert stats["direction_free_layer_p90_max"] == pytest.approx(np.percentile(free, 90, axis=1).max())
  assert stats["direction_free_examples"] == free.shape[1]


def _extremes(blocks, **options):
  """:func:`spectra.block_extremes`, compiled (eager vmaps of loops run op by op)."""
  run = jax.jit(
    lambda params, inputs: spectra.block_extremes(spectra.BlockStack(blocks.apply, params, inputs), **options)
  )
  return run(blocks.params, blocks.inputs)


def test_lanczos_extremes_approach_the_dense_ones_from_inside(x64):
  model = models.create_model("mlp_residual", 2, num_classes=4, width=6, hidden=10)
  x = jax.random.normal(jax.random.key(1), (3, 4), jnp.float64)
  blocks = models.family("mlp_residual").block_stack(model, jax.jit(model.init)(jax.random.key(2), x), x)
  dense = _extremes(blocks)
  sparse = _extremes(blocks, dense=False, key=jax.random.key(3), num_iterations=6)
  chex.assert_trees_all_close(sparse, dense, rtol=1e-8, atol=0.0, strict=True)  # 6 iterations span R^6: exact


def test_measured_ratios_never_exceed_the_direction_free_delta():
  """|r_l − 1| ≤ max(σ_max − 1, 1 − σ_min) for every block and example of a trained-looking network."""
  model = models.create_model("mlp_residual", 4, num_classes=4, width=6, hidden=10, branch_scale="1")
  x = jax.random.normal(jax.random.key(1), (16, 4))
  y = jax.random.normal(jax.random.key(4), (16, 4))
  variables = jax.jit(model.init)(jax.random.key(2), x)
  report = jax.jit(lambda v: signal.measure(model, v, x, y, train.loss_function("regression")))(variables)
  extremes = _extremes(models.family("mlp_residual").block_stack(model, variables, x))
  ratio = np.asarray(report.ratio)[[k == "block" for k in report.kinds]]
  free = np.maximum(np.asarray(extremes.sigma_max) - 1, 1 - np.asarray(extremes.sigma_min))
  assert np.all(np.abs(ratio - 1) <= free + 1e-5)
