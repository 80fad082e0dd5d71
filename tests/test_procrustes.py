"""Procrustes projections against float64 oracles: numpy SVDs and dense convolution operators.

Tolerances: Newton–Schulz vs SVD polar factor ≤ 1e-8 (float64) and ≤ 1e-4 (float32) relative
Frobenius error up to condition number 1e3; projected 1×1 operators' singular values equal the
target to ≤ 1e-5 (relative); reported distances match the dense oracle to ≤ 1e-6.
"""

import collections
import re
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from helpers import REPO
from helpers import random_matrix as unit_matrix
from resnorm import procrustes
from resnorm.models import ConvTarget


def random_matrix(rng, shape, kappa, is_complex):
  """Singular values geometrically spaced over [1/kappa, 1] (times 3.7), random singular vectors."""
  return 3.7 * unit_matrix(rng, shape, kappa, is_complex)


def svd_polar(x):
  u, _, vh = np.linalg.svd(
    np.asarray(x).astype(np.complex128 if np.iscomplexobj(x) else np.float64), full_matrices=False
  )
  return u @ vh


def relative_error(x, reference):
  return np.linalg.norm(np.asarray(x) - reference) / np.linalg.norm(reference)


def dense_operator(kernel, spatial_shape, stride=1):
  """The convolution (circular padding, Flax layout, cross-correlation) applied to every basis image.

  Returns the (H'·W'·c_out) × (H·W·c_in) matrix in float64.
  """
  kernel = np.asarray(kernel, np.float64)
  kh, kw, c_in, _ = kernel.shape
  height, width = spatial_shape
  basis = np.eye(height * width * c_in).reshape(-1, height, width, c_in)
  padded = np.pad(basis, ((0, 0), (0, kh - 1), (0, kw - 1), (0, 0)), mode="wrap")
  out = jax.lax.conv_general_dilated(
    padded,
    kernel,
    (stride, stride),
    "VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,
  )
  return np.asarray(out).reshape(basis.shape[0], -1).T


def operator_singular_values(kernel, spatial_shape, stride=1):
  return np.linalg.svd(dense_operator(kernel, spatial_shape, stride), compute_uv=False)


# ----------------------------------------------------------------------------- polar


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(2, 12, 5), (5, 12), (9, 9)], ids=["tall-batched", "wide", "square"])
@pytest.mark.parametrize("is_complex", [False, True], ids=["real", "complex"])
def test_newton_schulz_polar_equals_svd_polar(request, dtype, shape, is_complex):
  if dtype == "float64":
    request.getfixturevalue("x64")
  tolerance = {"float64": 1e-8, "float32": 1e-4}[dtype]
  rng = np.random.default_rng(len(shape) + shape[-1])
  for kappa in (1.0, 10.0, 1e3):
    x = random_matrix(rng, shape, kappa, is_complex)
    x = x.astype({"float64": np.complex128, "float32": np.complex64}[dtype] if is_complex else dtype)
    reference = svd_polar(x)
    assert relative_error(procrustes.polar(x), reference) <= tolerance, kappa
    assert relative_error(procrustes.polar(x, method="svd"), reference) <= tolerance, kappa


def test_tolerance_mode_stops_early_on_nearly_orthogonal_matrices(x64):
  rng = np.random.default_rng(0)
  q = svd_polar(rng.standard_normal((20, 8)))
  nearly = 2.0 * (q + 1e-3 * rng.standard_normal((20, 8)))
  # Three steps suffice because the lower bound starts near 1 (the fixed schedule's floor needs 12).
  assert relative_error(procrustes.polar(nearly, iterations=3, tol=1e-13), svd_polar(nearly)) <= 1e-12
  ill = random_matrix(rng, (20, 8), 1e3, False)
  result = np.asarray(procrustes.polar(ill, iterations=40, tol=1e-12))
  assert np.linalg.norm(np.eye(8) - result.T @ result) <= 1e-12
  assert relative_error(result, svd_polar(ill)) <= 1e-10
  # Too few steps for this condition number: the cap is honoured.
  assert relative_error(procrustes.polar(ill, iterations=3, tol=1e-12), svd_polar(ill)) > 1e-2


def test_zero_singular_values_stay_zero():
  assert np.array_equal(np.asarray(procrustes.polar(jnp.zeros((4, 3)))), np.zeros((4, 3)))
  rank_one = np.outer([1.0, 2.0, 2.0], [0.0, 3.0, 4.0])  # singular value 15
  np.testing.assert_allclose(procrustes.polar(rank_one), rank_one / 15, atol=1e-6)


def test_projections_are_idempotent():
  rng = np.random.default_rng(1)
  once = procrustes.polar(rng.standard_normal((2, 7, 5)).astype(np.float32))
  np.testing.assert_allclose(procrustes.polar(once), once, atol=1e-6)
  dense = procrustes.project_matrix(rng.standard_normal((6, 9)).astype(np.float32), 0.5)
  np.testing.assert_allclose(procrustes.project_matrix(dense, 0.5), dense, atol=1e-6)
  transition = procrustes.project_conv(rng.standard_normal((1, 1, 4, 8)).astype(np.float32), (6, 6), stride=2)
  np.testing.assert_allclose(procrustes.project_conv(transition, (6, 6), stride=2), transition, atol=1e-6)


# ----------------------------------------------------------------------------- convolutions


@pytest.mark.parametrize(
  "c_in, c_out, spatial_shape, stride, scale",
  [(4, 8, (6, 6), 2, None), (8, 4, (5, 5), 2, 0.7), (3, 5, (4, 3), 1, None)],
)
def test_projected_1x1_operator_has_target_singular_values(x64, c_in, c_out, spatial_shape, stride, scale):
  rng = np.random.default_rng(c_in)
  kernel = rng.standard_normal((1, 1, c_in, c_out)).astype(np.float32)
  projected = procrustes.project_conv(kernel, spatial_shape, scale, stride)
  assert projected.dtype == jnp.float32
  target = np.sqrt(c_out / c_in) if scale is None else scale
  values = operator_singular_values(projected, spatial_shape, stride)
  rank = -(-spatial_shape[0] // stride) * -(-spatial_shape[1] // stride) * min(c_in, c_out)
  np.testing.assert_allclose(values[:rank], target, rtol=1e-5)
  np.testing.assert_allclose(values[rank:], 0, atol=1e-5 * target)
  assert float(procrustes.operator_distance(projected, spatial_shape, scale, stride, norm="max")) <= 1e-5


@pytest.mark.parametrize(
  "shape, spatial_shape", [((3, 3, 4, 6), (6, 6)), ((3, 3, 6, 4), (5, 7)), ((2, 3, 3, 3), (4, 4))]
)
def test_3x3_distance_is_correct_and_shrinks_with_rounds(x64, shape, spatial_shape):
  kernel = np.random.default_rng(2).standard_normal(shape) / np.sqrt(np.prod(shape[:3]))
  target = np.sqrt(shape[3] / shape[2])
  distances, projected = [], kernel
  for _ in range(4):  # four alternating rounds, one at a time
    projected = procrustes.project_conv(projected, spatial_shape, rounds=1)
    deviation = operator_singular_values(projected, spatial_shape) / target - 1
    for norm, expected in (("rms", np.sqrt(np.mean(deviation**2))), ("max", np.max(np.abs(deviation)))):
      reported = float(procrustes.operator_distance(projected, spatial_shape, norm=norm))
      np.testing.assert_allclose(reported, expected, rtol=1e-6, atol=1e-12)
    distances.append(np.sqrt(np.mean(deviation**2)))
  raw = operator_singular_values(kernel, spatial_shape) / target - 1
  assert np.sqrt(np.mean(raw**2)) > distances[0]
  assert all(later < earlier for earlier, later in zip(distances, distances[1:])), distances
  np.testing.assert_allclose(procrustes.project_conv(kernel, spatial_shape, rounds=4), projected, atol=1e-12)


# ----------------------------------------------------------------------------- the references' read-back


def reference_read_back(weight, spatial_shape, code):
  """The references' ``regularize_conv`` arithmetic, transcribed to NumPy from reading it.

  ``weight`` in the references' layout (c_out, c_in, kh, kw). Both permute it to (kw, kh, c_in,
  c_out); the Chainer original then rotates it by 180° in its window and swaps the channel axes.
  Per frequency of the 2-D FFT padded to ``spatial_shape``, the c×c' matrix A = R + iI goes into
  the real form K = [[R, I], [−I, R]]; K is replaced by scale · K (KᵀK)^(−1/2) (here an SVD
  polar factor, U Vᵀ, instead of their 10-step Newton–Schulz square root) and read back as
  UL − i·UR (upper-left and upper-right blocks); then the real part of the inverse FFT, cropped
  to the kernel's support, and the permutations undone.
  """
  scale = np.sqrt(weight.shape[0] / weight.shape[1])
  kernel = np.transpose(weight, (3, 2, 1, 0))
  if code == "chainer":
    kernel = np.transpose(np.rot90(kernel, 2, axes=(0, 1)), (0, 1, 3, 2))
  spectrum = np.fft.fft2(kernel, s=spatial_shape, axes=(0, 1))
  m, n = spectrum.shape[2:]
  real, imag = spectrum.real, spectrum.imag
  real_form = np.concatenate([np.concatenate([real, imag], -1), np.concatenate([-imag, real], -1)], -2)
  u, _, vh = np.linalg.svd(real_form, full_matrices=False)
  polar = scale * u @ vh
  read_back = polar[..., :m, :n] - 1j * polar[..., :m, n:]
  kernel = np.fft.ifft2(read_back, axes=(0, 1)).real[: kernel.shape[0], : kernel.shape[1]]
  if code == "chainer":
    kernel = np.rot90(np.transpose(kernel, (0, 1, 3, 2)), 2, axes=(0, 1))
  return np.transpose(kernel, (3, 2, 1, 0))


def largest_tap(kernel):
  """(share of Σ K² in the largest tap, that tap's (row, column)), kernel in Flax layout."""
  energy = np.sum(np.asarray(kernel, np.float64) ** 2, axis=(2, 3))
  return energy.max() / energy.sum(), np.unravel_index(np.argmax(energy), energy.shape)


@pytest.mark.parametrize("convention", ["pytorch", "chainer"])
def test_reference_read_back_equals_a_transcription_of_the_references(x64, convention):
  weight = np.random.default_rng(4).standard_normal((16, 3, 3, 3))  # (c_out, c_in, kh, kw), as they store it
  flax_layout = lambda w: np.transpose(w, (2, 3, 1, 0))
  expected = flax_layout(reference_read_back(weight, (8, 8), convention))
  projected = procrustes.project_conv(flax_layout(weight), (8, 8), convention=convention, method="svd")
  np.testing.assert_allclose(projected, expected, atol=1e-12)
  correct = procrustes.project_conv(flax_layout(weight), (8, 8), method="svd")
  assert np.max(np.abs(correct - expected)) > 0.1  # the read-back is not the projection
  pointwise = np.random.default_rng(5).standard_normal((1, 1, 8, 16))  # 1×1: the conventions coincide
  np.testing.assert_allclose(
    procrustes.project_conv(pointwise, (8, 8), convention=convention),
    procrustes.project_conv(pointwise, (8, 8)),
    atol=1e-12,
  )


def test_reference_read_back_collapses_the_stem_onto_one_tap(x64):
  """Three applications to ProcResNet's stem (3×3, 3 → 64, 32×32): one tap keeps > 99.9%."""
  stem = np.random.default_rng(6).standard_normal((3, 3, 3, 64)) / np.sqrt(27)
  kept = {"pytorch": (0, 0), "chainer": (2, 2)}
  for convention in ("correct", *kept):
    kernel = stem
    for _ in range(3):
      kernel = procrustes.project_conv(kernel, (32, 32), convention=convention)
    share, tap = largest_tap(kernel)
    if convention == "correct":
      assert share < 0.2, share
    else:
      assert share > 0.999 and tap == kept[convention], (convention, share, tap)
  np.testing.assert_allclose(
    procrustes.project_conv(stem, (32, 32), convention="chainer", rounds=3), kernel, atol=1e-12
  )


def test_a_target_s_convention_reaches_the_projection():
  stem = np.random.default_rng(7).standard_normal((3, 3, 3, 16)).astype(np.float32)
  params = {"stem": jnp.asarray(stem)}
  tx = procrustes.procrustes({("stem",): ConvTarget((8, 8), convention="pytorch")}, probability=1.0)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(
    optax.apply_updates(params, updates)["stem"],  # one application: rounds=None
    procrustes.project_conv(stem, (8, 8), convention="pytorch", rounds=1),
    atol=1e-5,
  )


def test_project_conv_newton_schulz_equals_svd():
  kernel = np.random.default_rng(3).standard_normal((3, 3, 3, 16)).astype(np.float32)
  np.testing.assert_allclose(
    procrustes.project_conv(kernel, (8, 8)), procrustes.project_conv(kernel, (8, 8), method="svd"), atol=1e-5
  )


# ----------------------------------------------------------------------------- bad input and NaN


@pytest.mark.parametrize(
  "call, field",
  [
    (lambda: procrustes.project_conv(np.ones((1, 1, 2, 2)), (4, 4), scale=0.0), "scale"),
    (lambda: procrustes.project_conv(np.ones((1, 1, 2, 2)), (4, 4), scale=-1.0), "scale"),
    (lambda: procrustes.project_conv(np.ones((5, 5, 2, 2)), (3, 3)), "spatial_shape"),
    (lambda: procrustes.project_conv(np.ones((3, 2, 2)), (3, 3)), "kernel"),
    (lambda: procrustes.project_conv(np.ones((3, 3, 2, 2)), (8, 8), stride=2), "stride"),
    (lambda: procrustes.project_conv(np.ones((1, 1, 2, 2)), (4, 0)), "spatial_shape"),
    (lambda: procrustes.polar(np.ones(3)), "matrix"),
    (lambda: procrustes.polar(np.ones((3, 3)), method="qr"), "method"),
    (lambda: procrustes.polar(np.ones((3, 3)), method="svd", iterations=3), "method"),
    (lambda: ConvTarget((8, 8), scale=0.0), "scale"),
    (lambda: ConvTarget((8,)), "spatial_shape"),
    (lambda: ConvTarget((8, 8), convention="torch"), "convention"),
    (lambda: procrustes.project_conv(np.ones((3, 3, 2, 2)), (4, 4), convention="reference"), "convention"),
    (lambda: procrustes.project_conv(np.ones((3, 3, 2, 2)), (4, 4), rounds=0), "rounds"),
    (lambda: procrustes.procrustes({}, probability=1.5), "probability"),
    (lambda: procrustes.procrustes({}, every=0), "every"),
  ],
)
def test_bad_input_names_the_argument(call, field):
  with pytest.raises(ValueError, match=rf"(?s)^{re.escape(field)} = .*: expected "):
    call()


def test_missing_or_misshaped_target_is_an_error_naming_it():
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}}
  with pytest.raises(ValueError, match=r"targets = \('03_transition', 'kernel'\): expected paths present"):
    procrustes.procrustes({("03_transition", "kernel"): ConvTarget((8, 8))}).init(params)
  with pytest.raises(
    ValueError, match=r"spatial_shape = \(2, 2\): expected .* H >= 3 and W >= 3 \(the kernel's size\)"
  ):
    procrustes.procrustes({("conv", "kernel"): ConvTarget((2, 2))}).init(params)


def test_any_object_with_the_target_attributes_is_a_target():
  target = collections.namedtuple("Target", "spatial_shape stride scale")((4, 4), 1, 2.0)
  params = {"k": jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 2, 2)), jnp.float32)}
  tx = procrustes.procrustes({("k",): target}, probability=1.0)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  projected = optax.apply_updates(params, updates)["k"]
  np.testing.assert_allclose(projected, procrustes.project_conv(params["k"], (4, 4), 2.0), atol=1e-5)
  with pytest.raises(ValueError, match=r"targets\[\('k',\)\] = \(4, 4\): expected an object with attributes"):
    procrustes.procrustes({("k",): (4, 4)})


def test_non_finite_raises_eagerly_and_propagates_under_jit():
  bad = np.ones((1, 1, 3, 3), np.float32)
  bad[0, 0, 1, 2] = np.nan
  for call in (
    lambda: procrustes.polar(bad[0, 0]),
    lambda: procrustes.project_matrix(bad[0, 0]),
    lambda: procrustes.project_conv(bad, (4, 4)),
    lambda: procrustes.polar(np.full((2, 2), np.inf)),
  ):
    with pytest.raises(ValueError, match="non-finite"):
      call()
  assert np.isnan(np.asarray(jax.jit(procrustes.polar)(bad[0, 0]))).all()
  assert np.isnan(np.asarray(jax.jit(lambda k: procrustes.project_conv(k, (4, 4)))(bad))).all()
  params = {"k": bad}
  tx = procrustes.procrustes({("k",): ConvTarget((4, 4))}, probability=1.0)
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert np.isnan(np.asarray(optax.apply_updates(params, updates)["k"])).all()


# ----------------------------------------------------------------------------- optax


def _params(rng):
  shapes = {
    "stem": {"kernel": (3, 3, 2, 4)},
    "03_transition": {"kernel": (1, 1, 4, 8)},
    "dense": {"kernel": (6, 3), "bias": (3,)},
    "block": {"kernel": (3, 3, 4, 4)},
  }
  return jax.tree.map(
    lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32), shapes, is_leaf=lambda s: isinstance(s, tuple)
  )


TARGETS = {
  ("stem", "kernel"): ConvTarget((8, 8)),
  ("03_transition", "kernel"): ConvTarget((8, 8), stride=2),
  ("dense", "kernel"): ConvTarget((1, 1)),
}


def _random_grads(rng, params, steps=3):
  return [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params) for _ in range(steps)]


def _run(tx, params, grads, project=None):
  """Parameters after each step and the updates of each step, under jit; ``project(step)`` (steps
  1, 2, …): the host's decision, passed to the update as a static argument."""
  step = jax.jit(
    lambda p, s, g, project: tx.update(g, s, p, **({} if project is None else {"project": project})), static_argnums=3
  )
  state, history = tx.init(params), []
  for count, g in enumerate(grads, start=1):
    updates, state = step(params, state, g, project and project(count))
    params = optax.apply_updates(params, updates)
    history.append((params, updates))
  return history


def test_chained_with_sgd_projects_targets_and_leaves_the_rest_as_plain_sgd():
  rng = np.random.default_rng(4)
  params = _params(rng)
  grads = _random_grads(rng, params)
  sgd = optax.sgd(0.1, momentum=0.9)
  plain = _run(sgd, params, grads)
  projected = _run(optax.chain(sgd, procrustes.procrustes(TARGETS, probability=1.0)), params, grads)
  before = params
  for (plain_params, plain_updates), (new_params, _) in zip(plain, projected):
    np.testing.assert_array_equal(new_params["block"]["kernel"], plain_params["block"]["kernel"])
    np.testing.assert_array_equal(new_params["dense"]["bias"], plain_params["dense"]["bias"])
    # The sgd updates do not depend on the parameters, so the projection acts on before + update.
    expected = procrustes.project_conv(before["stem"]["kernel"] + plain_updates["stem"]["kernel"], (8, 8))
    np.testing.assert_allclose(new_params["stem"]["kernel"], expected, atol=1e-5)
    np.testing.assert_allclose(
      np.linalg.svd(new_params["03_transition"]["kernel"][0, 0], compute_uv=False), np.sqrt(2.0), rtol=1e-5
    )
    np.testing.assert_allclose(
      np.linalg.svd(new_params["dense"]["kernel"], compute_uv=False), np.sqrt(3 / 6), rtol=1e-5
    )
    before = new_params


def test_probability_zero_changes_nothing():
  rng = np.random.default_rng(5)
  params = _params(rng)
  grads = _random_grads(rng, params)
  sgd = optax.sgd(0.1, momentum=0.9)
  plain = _run(sgd, params, grads)
  idle = _run(optax.chain(sgd, procrustes.procrustes(TARGETS, probability=0.0)), params, grads)
  for (plain_params, plain_updates), (idle_params, idle_updates) in zip(plain, idle):
    chex.assert_trees_all_equal(idle_updates, plain_updates, strict=True)
    chex.assert_trees_all_equal(idle_params, plain_params, strict=True)


def _acted(steps=16, **kwargs):
  """Which of ``steps`` updates the transformation acted on (updates differ from the input)."""
  params = {"w": {"kernel": jnp.ones((4, 2))}}
  tx = procrustes.procrustes({("w", "kernel"): ConvTarget((1, 1))}, **kwargs)
  update = jax.jit(tx.update)
  state, acted = tx.init(params), []
  for _ in range(steps):
    updates, state = update(jax.tree.map(jnp.zeros_like, params), state, params)
    acted.append(bool(jnp.any(updates["w"]["kernel"] != 0)))
  return acted


def test_coin_flips_are_deterministic_from_the_seed_and_every_is_periodic():
  first, again, other = _acted(seed=3), _acted(seed=3), _acted(seed=4)
  assert first == again
  assert first != other
  assert 0 < sum(first) < len(first)
  assert _acted(probability=1.0) == [True] * 16
  assert _acted(every=3) == [(step + 1) % 3 == 0 for step in range(16)]


def test_the_host_flips_the_coins_the_device_flips_and_its_decision_leaves_no_conditional():
  rng = np.random.default_rng(6)
  params = _params(rng)
  grads = _random_grads(rng, params, steps=8)
  sgd = optax.sgd(0.1, momentum=0.9)
  tx = optax.chain(sgd, procrustes.procrustes(TARGETS, probability=0.5, seed=3))
  coins = [procrustes.acts(step, probability=0.5, seed=3) for step in range(1, 9)]
  assert set(coins) == {True, False}
  on_device = _run(tx, params, grads)
  on_host = _run(tx, params, grads, project=lambda step: coins[step - 1])
  for (device_params, _), (host_params, _) in zip(on_device, on_host):
    chex.assert_trees_all_close(host_params, device_params, rtol=1e-7, atol=1e-6, strict=True)
  always = _run(tx, params, grads, project=lambda step: True)
  for (always_params, _), (certain_params, _) in zip(
    always, _run(optax.chain(sgd, procrustes.procrustes(TARGETS, probability=1.0)), params, grads)
  ):
    chex.assert_trees_all_close(always_params, certain_params, rtol=1e-7, atol=1e-6, strict=True)
  for (never_params, _), (plain_params, _) in zip(
    _run(tx, params, grads, project=lambda step: False), _run(sgd, params, grads)
  ):
    chex.assert_trees_all_equal(never_params, plain_params, strict=True)
  state = tx.init(params)

  def jaxpr(project):
    return str(jax.make_jaxpr(lambda p, g: tx.update(g, state, p, project=project))(params, grads[0]))

  assert "cond" not in jaxpr(True) and "cond" not in jaxpr(False) and "cond" in jaxpr(None)
  with pytest.raises(ValueError, match="project = 1: expected None"):
    tx.update(grads[0], state, params, project=1)


def test_the_host_schedule_is_a_pure_function_of_seed_and_step():
  coins = [procrustes.acts(step, probability=0.5, seed=3) for step in range(1, 4001)]
  assert coins == [procrustes.acts(step, probability=0.5, seed=3) for step in range(1, 4001)]
  assert coins != [procrustes.acts(step, probability=0.5, seed=4) for step in range(1, 4001)]
  assert abs(np.mean(coins) - 0.5) < 4 * np.sqrt(0.25 / 4000)  # four standard deviations
  assert abs(np.mean([procrustes.acts(s, probability=0.1) for s in range(1, 4001)]) - 0.1) < 4 * np.sqrt(0.09 / 4000)
  assert [procrustes.acts(step, every=3) for step in range(1, 10)] == [False, False, True] * 3
  assert not any(procrustes.acts(step, probability=0.0) for step in range(1, 100))


def test_replicated_on_a_four_device_mesh_matches_one_device():
  script = textwrap.dedent("""
      import chex, jax, jax.numpy as jnp, numpy as np, optax
      from jax.sharding import Mesh, NamedSharding, PartitionSpec
      from resnorm import procrustes
      from resnorm.models import ConvTarget
      assert jax.device_count() == 4, jax.devices()
      targets = {("stem", "kernel"): ConvTarget((8, 8)),
                 ("t", "kernel"): ConvTarget((8, 8), stride=2)}
      rng = np.random.default_rng(0)
      params = {"stem": {"kernel": rng.standard_normal((3, 3, 2, 4))},
                "t": {"kernel": rng.standard_normal((1, 1, 4, 8))}, "b": rng.standard_normal(5)}
      params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
      grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
      tx = optax.chain(optax.sgd(0.1, momentum=0.9), procrustes.procrustes(targets, probability=0.5, seed=1))

      @jax.jit
      def step(params, state):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

      def run(params):
        state = tx.init(params)
        for _ in range(4):
          params, state = step(params, state)
        return params

      replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
      single = run(params)
      sharded = run(jax.device_put(params, replicated))
      chex.assert_trees_all_close(single, sharded, rtol=1e-7, atol=1e-6, strict=True)
      for b in jax.tree.leaves(sharded):
        assert b.sharding.is_fully_replicated and len(b.sharding.device_set) == 4, b.sharding
      print("ok")
      """)
  env = helpers.cpu_env(devices=4)
  result = subprocess.run(
    [sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
