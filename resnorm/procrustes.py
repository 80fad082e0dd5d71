r"""Procrustes projections: polar factors, norm-preserving kernels, and the optax transformation.

The orthogonal Procrustes problem asks for the matrix Q with orthonormal columns (or rows) closest
to a given W in the Frobenius norm; with W = U Σ Vᴴ its answer is the polar factor Q = U Vᴴ. A
ProcResNet sets every nonzero singular value of its transition convolutions to
s = sqrt(c_out / c_in) by replacing each kernel with s times the polar factor of its operator
(Zaeemzadeh, Rahnavard & Shah, TPAMI 2020), after the optimizer step, with probability 0.5.

* :func:`polar` — the polar factor by SVD (the reference) or by a Newton–Schulz iteration
  (matrix products only: the fast path).
* :func:`project_matrix`, :func:`project_conv` — a Dense kernel or a convolution kernel whose
  operator's nonzero singular values equal ``scale``; :func:`operator_distance` measures how
  far a kernel is from that.
* :func:`procrustes` — the projection as an optax transformation, chained last, for the kernels
  that a map of parameter paths to targets names. A target is any object with the attributes
  ``spatial_shape``, ``stride`` and ``scale`` (:class:`resnorm.models.ConvTarget` is the one the
  model families use); this module imports nothing above the numeric core.

Convolution operators are those of a circularly padded convolution (Sedghi, Gupta & Long,
ICLR 2019): a stride-1 convolution with kernel K of layout (kh, kw, c_in, c_out) on inputs of
spatial shape (H, W) is block-diagonalised by the 2-D DFT, and its singular values are those of
the H·W matrices K̂(u, v) = Σ_{a,b} K[a, b] e^{-2πi(ua/H + vb/W)} (c_in × c_out each). For 1×1
kernels there is no padding, so the result holds for Flax's 'SAME' and 'VALID' convolutions too;
for k×k kernels Flax's zero padding differs from circular padding at the borders, and the
projection targets the circular operator, as the reference does.

Non-finite inputs: :func:`polar`, :func:`project_matrix` and :func:`project_conv` raise a
ValueError when called eagerly on a concrete array holding a NaN or an infinity. Under
``jax.jit`` (and in :func:`procrustes`) values cannot be inspected, and a NaN propagates to the
output instead of being replaced, so the training loop's divergence check still sees it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnorm import spectra, validation

METHODS = ("newton_schulz", "svd")

# How a k×k kernel's projected spectrum is read back into a kernel (see project_conv).
CONVENTIONS = ("correct", "pytorch", "chainer")

# Default Newton–Schulz steps (polar's docstring says what they reach).
NEWTON_SCHULZ_ITERATIONS = 12

# Default (project spectrum, crop) rounds of a k×k kernel.
ROUNDS = 1

# The smallest singular value assumed after pre-scaling where the data give no better bound: it
# sets how long the step scaling stays above 1. Smaller singular values still converge, later.
_ASSUMED_LOWER = 1e-3
# The step scaling is never set from a lower bound below this. Scaling for [l, 1] with tiny l maps
# σ_max close to the cubic's root, where rounding in XᴴX is amplified by 1/g(α) (~400× for
# l = 1e-3, i.e. 1e-5 errors in float32); from 0.1, σ_max maps no lower than 0.24 while the
# smallest singular values still grow ×2.47 per step (×2.6 unlimited, ×1.5 unscaled).
_SCALING_LOWER_LIMIT = 0.1


# ----------------------------------------------------------------------------- polar factor


def polar(
  matrix, method: str = "newton_schulz", *, iterations: int | None = None, tol: float | None = None
) -> jax.Array:
  r"""The polar factor of ``matrix``: the closest matrix with orthonormal columns (or rows).

  For W = U Σ Vᴴ (thin SVD, shape (..., m, n)) this is U Vᴴ: orthonormal columns when m ≥ n,
  orthonormal rows when m < n. Batched over leading axes; real or complex. Zero singular values
  stay zero with Newton–Schulz (a partial isometry), whereas the SVD completes them arbitrarily,
  so the two agree for matrices of full rank.

  Newton–Schulz (``method="newton_schulz"``), matrix products only. Work on the Gram side
  (A = XᴴX, with X replaced by Xᴴ when m < n; complex matrices natively with the conjugate
  transpose):

  1. Pre-scaling. X ← X / ‖X‖_F, then X ← X / sqrt(b) with b = min(‖A‖_F, max_i Σ_j |A_ij|),
     both upper bounds on σ_max², so every singular value lies in (0, 1]. The row-sum bound is
     exact for a multiple of an orthogonal matrix, the usual input during training.
  2. A lower bound l on σ_min from 1 − σ_min² = ‖I − A‖₂ ≤ min(‖I − A‖_F, ‖I − A‖_∞), or 1e-3
     where that says less: a nearly orthogonal input starts near l = 1 and converges at once.
  3. Scaled cubic steps X ← αX (3I − α² XᴴX) / 2, i.e. g(αX) with g(x) = (3x − x³)/2. With
     α² = 3 / (1 + l + l²), g(αl) = g(α): the step maps [l, 1] onto [g(α), 1] (the optimal
     scaling of the cubic for that interval, cf. Chen & Chow 2014), and l ← g(α). α is computed
     from max(l, 0.1), not l, which keeps σ_max away from the cubic's root and float32 accurate;
     then l ← min(g(αl), g(α)). While l is small the smallest singular values grow ×2.47 per
     step instead of the unscaled cubic's ×1.5; as l → 1, α → 1 and the step becomes the
     classical X(3I − XᴴX)/2, which converges quadratically.

  With a fixed count (the default, ``iterations=NEWTON_SCHULZ_ITERATIONS``) the loop is unrolled.
  With ``tol``, it stops as soon as ‖I − XᴴX‖_F ≤ tol for every matrix in the batch (then
  ‖X − U Vᴴ‖_F ≈ tol / 2), after at most ``iterations`` steps; a rank-deficient matrix never
  meets a tolerance and runs them all.

  The default of 12 steps reaches float32's rounding floor for condition numbers κ ≤ 1e3.
  optax.contrib's ``orthogonalize_via_newton_schulz`` is not reused: its quintic iteration is tuned
  for speed, not to converge to the polar factor. Matrix products use ``Precision.HIGHEST`` so that
  GPUs do not round float32 to TF32.

  Args:
    matrix: array of shape (..., m, n), real or complex; integers are converted to float32.
    method: "newton_schulz" or "svd".
    iterations: the number of Newton–Schulz steps, or the most steps when ``tol`` is given.
    tol: stop when ‖I − XᴴX‖_F ≤ tol (Newton–Schulz only).

  Returns:
    The polar factor, shape (..., m, n), in the promoted floating dtype (at least float32).

  Raises:
    ValueError: bad ``method``, ``iterations`` or ``tol``, an array of rank < 2, or a concrete
      (non-traced) ``matrix`` holding a NaN or an infinity.
  """
  x = jnp.asarray(matrix)
  if x.ndim < 2:
    raise validation.invalid("matrix", x.shape, "an array of shape (..., m, n)")
  iterations = _polar_options(method, iterations, tol)
  _check_finite("matrix", x)
  return _polar(x.astype(jnp.promote_types(x.dtype, jnp.float32)), method, iterations, tol)


def _polar_options(method: str, iterations: int | None, tol: float | None) -> int:
  """Validates :func:`polar`'s options; returns the iteration count (the default for None)."""
  validation.one_of("method", method, METHODS)
  if method == "svd" and (iterations is not None or tol is not None):
    raise validation.invalid("method", method, "'newton_schulz' when iterations or tol is given")
  if tol is not None:
    validation.positive_float("tol", tol)
  return NEWTON_SCHULZ_ITERATIONS if iterations is None else validation.positive_int("iterations", iterations)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _polar(x: jax.Array, method: str, iterations: int, tol: float | None) -> jax.Array:
  """:func:`polar` on a validated floating array; jitted so that eager calls compile once."""
  if method == "svd":
    u, _, vh = jnp.linalg.svd(x, full_matrices=False)
    return _matmul(u, vh)
  if x.shape[-2] < x.shape[-1]:
    return _adjoint(_newton_schulz(_adjoint(x), iterations, tol))
  return _newton_schulz(x, iterations, tol)


def _newton_schulz(x: jax.Array, iterations: int, tol: float | None) -> jax.Array:
  """Scaled cubic Newton–Schulz on a tall (..., m, n) matrix, m ≥ n (see :func:`polar`)."""
  x = x / _nonzero(_frobenius(x))
  gram = _matmul(_adjoint(x), x)
  bound = _nonzero(jnp.minimum(_frobenius(gram), _row_sum_norm(gram)))
  x, gram = x / jnp.sqrt(bound), gram / bound
  eye = jnp.eye(gram.shape[-1], dtype=gram.dtype)
  gap = jnp.minimum(_frobenius(eye - gram), _row_sum_norm(eye - gram))
  lower = jnp.sqrt(jnp.clip(1 - gap, _ASSUMED_LOWER**2, 1))

  def step(x, gram, lower):
    limited = jnp.maximum(lower, _SCALING_LOWER_LIMIT)
    alpha = jnp.sqrt(3 / (1 + limited + limited**2))
    x = _matmul(x, (1.5 * alpha) * eye - (0.5 * alpha**3) * gram)
    return x, jnp.minimum(_cubic(alpha * lower), _cubic(alpha))

  if tol is None:
    for i in range(iterations):
      if i:
        gram = _matmul(_adjoint(x), x)
      x, lower = step(x, gram, lower)
    return x

  def not_done(carry):
    i, _, gram, _ = carry
    return (i < iterations) & (jnp.max(_frobenius(eye - gram)) > tol)

  def body(carry):
    i, x, gram, lower = carry
    x, lower = step(x, gram, lower)
    return i + 1, x, _matmul(_adjoint(x), x), lower

  return jax.lax.while_loop(not_done, body, (0, x, gram, lower))[1]


def _cubic(x):
  return x * (3 - x**2) / 2


def _matmul(a, b):
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _adjoint(x):
  return jnp.conj(jnp.swapaxes(x, -1, -2))


def _frobenius(x):
  """‖x‖_F over the last two axes, kept as (..., 1, 1) for broadcasting."""
  return jnp.sqrt(jnp.sum(jnp.abs(x) ** 2, axis=(-2, -1), keepdims=True))


def _row_sum_norm(x):
  """max_i Σ_j |x_ij| (‖x‖_∞, ≥ the spectral norm of a Hermitian x), as (..., 1, 1)."""
  return jnp.max(jnp.sum(jnp.abs(x), axis=-1, keepdims=True), axis=-2, keepdims=True)


def _nonzero(norm):
  """A norm to divide by: 1 where it is 0, so a zero matrix stays zero instead of becoming NaN."""
  return jnp.where(norm > 0, norm, 1)


def _check_finite(name: str, x: jax.Array) -> None:
  """Raises for a concrete array with a NaN or an infinity; traced arrays pass (NaN propagates)."""
  try:
    values = np.asarray(x)
  except jax.errors.TracerArrayConversionError:
    return
  if not np.all(np.isfinite(values)):
    raise ValueError(f"{name} holds non-finite values (NaN or inf); refusing to project it")


# ----------------------------------------------------------------------------- projections


def project_matrix(
  w,
  scale: float | None = None,
  *,
  method: str = "newton_schulz",
  iterations: int | None = None,
  tol: float | None = None,
) -> jax.Array:
  """``scale`` times the polar factor of ``w``: every singular value becomes ``scale``.

  Args:
    w: a Dense kernel in Flax layout (..., in, out), batched over leading axes.
    scale: the target singular value; default sqrt(out / in).
    method, iterations, tol: as in :func:`polar`.

  Returns:
    The projected kernel, same shape, in the promoted floating dtype.
  """
  w = jnp.asarray(w)
  _check_finite("w", w)
  if w.ndim < 2:
    raise validation.invalid("w", w.shape, "a kernel of shape (..., in, out)")
  scale = _scale(scale, w.shape[-2], w.shape[-1])
  return scale * polar(w, method, iterations=iterations, tol=tol)


def project_conv(
  kernel,
  spatial_shape,
  scale: float | None = None,
  stride: int = 1,
  *,
  rounds: int | None = None,
  convention: str = "correct",
  method: str = "newton_schulz",
  iterations: int | None = None,
  tol: float | None = None,
) -> jax.Array:
  r"""A kernel whose convolution operator's nonzero singular values are (close to) ``scale``.

  k×k kernels (stride 1): K̂ = FFT of the kernel zero-padded to ``spatial_shape`` (one
  c_in × c_out matrix per frequency), K̂ ← scale · polar(K̂), inverse FFT, crop to the kernel's
  support (Sedghi et al. 2019). The projected spectrum belongs to a kernel of full H×W support,
  so the crop is an approximation; ``rounds`` > 1 alternates the two projections (spectrum, then
  support), which never increases :func:`operator_distance` (its rms form). Only the real FFT's
  half-spectrum is projected: polar(conj M) = conj(polar M), so the other half follows.

  ``convention`` says how the projected spectrum becomes a kernel. Write p for the full-support
  kernel p = IFFT(scale · polar(K̂)) (real, H×W) and crop(p) = p[:kh, :kw].

  * ``"correct"``: K ← crop(p), as above.
  * ``"pytorch"``, the PyTorch port's ``regularize_conv`` (zaeemzadeh/ProcResNet_PyTorch): it
    writes the real form [[Re, Im], [−Im, Re]] of each K̂, whose polar factor is the real form of
    conj(polar K̂), and reads it back as UL − i·UR, i.e. as conj(polar K̂). Since IFFT(conj P)[a, b]
    = p[−a mod H, −b mod W], K ← crop(R p) with (R p)[a, b] = p[−a, −b]: the crop keeps p[0, 0] and
    the wrap-around values p[−1], p[−2], not the kernel's support, and repeated projections
    collapse the kernel onto its [0, 0] tap.
  * ``"chainer"``, the Chainer original's ``regularize_conv`` (zaeemzadeh/ProcResNet, behind the
    published CIFAR numbers): the same read-back between a 180° rotation of the kernel in its
    window, K ← F crop(R p(F K)) with (F K)[a, b] = K[kh−1−a, kw−1−b], so the kept tap is the
    [kh−1, kw−1] one. Its other steps change nothing: the channel swap commutes with the polar
    factor (polar(Mᵀ) = polar(M)ᵀ), and its spatial transposition only matters for H ≠ W, which
    it never meets (it then pads the kernel's width axis to H; this transcription does not).

  The reference conventions compute their polar factors here (by ``method``), not by the
  references' 10-step coupled Newton–Schulz square root; only the read-back is theirs. For 1×1
  kernels the three coincide: their spectrum is flat, so p is zero outside [0, 0].

  1×1 kernels (any stride): exact, and independent of ``spatial_shape``. A stride-s 1×1
  convolution maps x of shape (H, W, c_in) to y[i, j] = x[s·i, s·j] K with K = kernel[0, 0]
  (c_in × c_out), i.e. the operator T = (I_P ⊗ Kᵀ)(S ⊗ I_{c_in}) with S the subsampling onto
  P = ⌈H/s⌉·⌈W/s⌉ positions, whose rows are orthonormal. Hence T Tᴴ = I_P ⊗ KᵀK̄: the operator's
  nonzero singular values are those of K, each repeated P times, and the remaining
  min(P·c_out, H·W·c_in) − P·rank(K) are zero. Setting K ← scale · polar(K) therefore sets
  every nonzero singular value of the operator to ``scale``, for every H, W and s.

  Args:
    kernel: (kh, kw, c_in, c_out), Flax layout.
    spatial_shape: the input's (H, W); kh ≤ H and kw ≤ W.
    scale: target singular value; default sqrt(c_out / c_in).
    stride: 1, or the stride of a 1×1 kernel.
    rounds: (project spectrum, read back) rounds for k×k kernels; ignored for 1×1. None:
      ``ROUNDS`` for ``"correct"``, 1 for the reference conventions (their one application
      per projection).
    convention: ``"correct"``, ``"pytorch"`` or ``"chainer"``, see above.
    method, iterations, tol: as in :func:`polar`.

  Returns:
    The projected kernel, same shape, in the promoted floating dtype.
  """
  kernel = jnp.asarray(kernel)
  _check_finite("kernel", kernel)
  _check_conv(kernel.shape, spatial_shape, stride)
  rounds = _rounds(rounds, convention)
  kh, kw, c_in, c_out = kernel.shape
  scale = _scale(scale, c_in, c_out)
  if kh == kw == 1:
    return project_matrix(kernel, scale, method=method, iterations=iterations, tol=tol)
  iterations = _polar_options(method, iterations, tol)
  kernel = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
  return _project_spectrum(kernel, scale, tuple(spatial_shape), rounds, convention, method, iterations, tol)


def _rounds(rounds: int | None, convention: str) -> int:
  """Validates ``convention`` and ``rounds``; None -> ROUNDS ("correct") or 1 (the references)."""
  validation.one_of("convention", convention, CONVENTIONS)
  if rounds is None:
    return ROUNDS if convention == "correct" else 1
  return validation.positive_int("rounds", rounds)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _project_spectrum(kernel, scale, spatial_shape, rounds, convention, method, iterations, tol) -> jax.Array:
  """``rounds`` × (rfft2 to ``spatial_shape``, scale · polar per frequency, irfft2, read back)."""
  kh, kw = kernel.shape[:2]
  flip = convention == "chainer"
  for _ in range(rounds):
    if flip:
      kernel = kernel[::-1, ::-1]
    spectrum = jnp.fft.rfft2(kernel, s=spatial_shape, axes=(0, 1))
    spectrum = scale * _polar(spectrum, method, iterations, tol)
    full = jnp.fft.irfft2(spectrum, s=spatial_shape, axes=(0, 1))
    if convention != "correct":  # p[-a mod H, -b mod W]
      full = jnp.roll(full[::-1, ::-1], 1, axis=(0, 1))
    kernel = full[:kh, :kw].astype(kernel.dtype)
    if flip:
      kernel = kernel[::-1, ::-1]
  return kernel


def operator_distance(
  kernel, spatial_shape, scale: float | None = None, stride: int = 1, *, norm: str = "rms"
) -> jax.Array:
  """How far the kernel's operator is from having every nonzero singular value equal ``scale``.

  With σ_i the operator's singular values that are not structurally zero (all of them for
  stride 1; for a strided 1×1 kernel, those of kernel[0, 0], see :func:`project_conv`):

  * ``norm="rms"``: sqrt(mean_i (σ_i / scale − 1)²). Times scale·sqrt(#σ), this is the Frobenius
    distance from the operator to the nearest operator with all those singular values equal to
    ``scale`` (that nearest one is scale times the polar factor). The alternating rounds of
    :func:`project_conv` never increase it: with b a kernel, a = P_spectrum(b) and
    b' = P_support(a) both orthogonal-distance projections (Parseval), d(b', A) ≤ ‖b' − a‖ ≤
    ‖b − a‖ = d(b, A).
  * ``norm="max"``: max_i |σ_i / scale − 1|, the worst singular value (not monotone in rounds).

  The singular values come from :mod:`resnorm.spectra` (``conv_singular_values``, circular
  padding; ``strided_pointwise_singular_values`` for stride > 1), by SVD: a diagnostic, not for
  the hot path.

  Args:
    kernel: (kh, kw, c_in, c_out), Flax layout.
    spatial_shape: the input's (H, W).
    scale: target singular value; default sqrt(c_out / c_in).
    stride: 1, or the stride of a 1×1 kernel.
    norm: "rms" or "max".

  Returns:
    A scalar, 0 for a kernel on target.
  """
  kernel = jnp.asarray(kernel)
  _check_conv(kernel.shape, spatial_shape, stride)
  validation.one_of("norm", norm, ("rms", "max"))
  scale = _scale(scale, kernel.shape[2], kernel.shape[3])
  if stride > 1:
    values = spectra.strided_pointwise_singular_values(kernel, tuple(spatial_shape), stride)
  else:
    values = spectra.conv_singular_values(kernel, tuple(spatial_shape))
  deviation = values / scale - 1
  if norm == "max":
    return jnp.max(jnp.abs(deviation))
  return jnp.sqrt(jnp.mean(deviation**2))


def _scale(scale, fan_in: int, fan_out: int) -> float:
  if scale is None:
    return math.sqrt(fan_out / fan_in)
  return validation.positive_float("scale", scale)


def _check_conv(shape, spatial_shape, stride) -> None:
  """Kernel rank 4, spatial shape (H, W) covering the kernel, stride > 1 only for 1×1."""
  if len(shape) != 4:
    raise validation.invalid("kernel", tuple(shape), "a kernel of shape (kh, kw, c_in, c_out)")
  validation.spatial_shape("spatial_shape", spatial_shape, tuple(shape[:2]))
  validation.positive_int("stride", stride)
  if stride > 1 and shape[:2] != (1, 1):
    raise validation.invalid("stride", stride, f"1 for a {shape[0]}x{shape[1]} kernel (strides need 1x1)")


# ----------------------------------------------------------------------------- optax


# What procrustes reads from each target (resnorm.models.ConvTarget has them), and the one it
# reads when present ("correct" when absent).
_TARGET_ATTRIBUTES = ("spatial_shape", "stride", "scale")
_OPTIONAL_ATTRIBUTE = "convention"

# The label of every parameter that is not projected (the others are labelled by their path).
UNPROJECTED = "unprojected"


class ProcrustesState(NamedTuple):
  """``count``: updates seen; ``key``: raw PRNG key data (uint32) of the seed, whose :func:`coin`
  of update n decides whether the projection acts after it."""

  count: jax.Array
  key: jax.Array


def coin(key: jax.Array, step, probability: float) -> jax.Array:
  """Heads with ``probability``: Bernoulli from ``jax.random.fold_in(key, step)``. One stream, a
  pure function of (key, step): the device (:func:`procrustes`) and the host (:func:`acts`) flip
  the same coin for update ``step`` (1, 2, …), and a resumed run flips the ones it would have."""
  return jax.random.bernoulli(jax.random.fold_in(key, step), probability)


def procrustes(
  targets: Mapping[tuple[str, ...], Any],
  *,
  probability: float = 0.5,
  every: int | None = None,
  seed: int = 0,
  method: str = "newton_schulz",
  iterations: int | None = None,
  tol: float | None = None,
  rounds: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Projects the targeted kernels after the optimizer step, as the last link of a chain.

  On an update where it acts, each targeted leaf's update u becomes P(w + u) − w, where w is the
  current parameter and P the projection (:func:`project_conv` for 4-D kernels,
  :func:`project_matrix` for 2-D Dense kernels), so ``optax.apply_updates(params, updates)``
  holds P(w + u) (to one rounding of the subtraction); other leaves pass through untouched. The
  kernels are chosen as optax chooses what a transformation acts on: ``optax.partition`` over a
  label tree, each target's path its own label and every other leaf ``UNPROJECTED``
  (``optax.identity``).

  When it acts is the ``project`` argument of ``update`` (an extra argument, which
  ``optax.chain`` passes on): ``True`` or ``False`` decide, as Python bools, with no conditional
  in the program (a training loop decides on the host with :func:`acts` and compiles one step per
  choice, ``project`` a static argument); ``None`` (the default) decides on device with a
  ``jax.lax.cond``: on updates every, 2·every, … when ``every`` is given, else when
  :func:`coin` (seed's key, update count) comes up heads, the same coin :func:`acts` flips. Under
  ``jax.vmap`` the cond becomes a select and both branches run. It works under ``jax.jit`` and
  with parameters replicated over a device mesh (each device projects its copy identically). A
  NaN in a kernel propagates to its projection; nothing is replaced.

  Example::

    tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9),
                     procrustes({("03_transition_layer", "conv", "kernel"): models.ConvTarget((32, 32), stride=2)}))
    updates, opt_state = tx.update(grads, opt_state, params, project=procrustes.acts(step))

  Args:
    targets: parameter path (a key of ``flax.traverse_util.flatten_dict(params)``) -> its
      target, any object with attributes ``spatial_shape`` (the input's (H, W); (1, 1) for a
      Dense kernel), ``stride`` (1, or a 1×1 kernel's stride) and ``scale`` (the target singular
      value, or None for sqrt(c_out / c_in)), and optionally ``convention`` (how a k×k kernel's
      projected spectrum is read back, as in :func:`project_conv`; "correct" when absent), such
      as :class:`resnorm.models.ConvTarget`; every path must exist in the params.
    probability: chance of acting on each update, in [0, 1] (the reference uses 0.5).
    every: act on every ``every``-th update instead of at random.
    seed: seed of the coins.
    method, iterations, tol: as in :func:`polar`.
    rounds: rounds for k×k kernels, as in :func:`project_conv`; None: its per-convention
      default (``ROUNDS`` for "correct", one application for the reference conventions, as the
      references project once per acting step).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires ``params`` and takes
    ``project``.
  """
  if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 <= probability <= 1:
    raise validation.invalid("probability", probability, "a number in [0, 1]")
  if every is not None:
    validation.positive_int("every", every)
  _polar_options(method, iterations, tol)
  if rounds is not None:
    validation.positive_int("rounds", rounds)
  targets = dict(targets)
  for path, target in targets.items():
    if not all(hasattr(target, attribute) for attribute in _TARGET_ATTRIBUTES):
      raise validation.invalid(f"targets[{path!r}]", target, f"an object with attributes {_TARGET_ATTRIBUTES}")
    if target.scale is not None:
      validation.positive_float(f"targets[{path!r}].scale", target.scale)
    validation.one_of(f"targets[{path!r}].convention", _convention(target), CONVENTIONS)
  label = {path: "/".join(map(str, path)) for path in targets}

  def project(target):
    def leaf(w, u):
      if w.ndim == 2:
        projected = project_matrix(w + u, target.scale, method=method, iterations=iterations, tol=tol)
      else:
        projected = project_conv(
          w + u,
          target.spatial_shape,
          target.scale,
          target.stride,
          rounds=rounds,
          convention=_convention(target),
          method=method,
          iterations=iterations,
          tol=tol,
        )
      return (projected - w).astype(u.dtype)

    return optax.stateless(lambda updates, params: jax.tree.map(leaf, params, updates))

  def labels(tree):
    return jax.tree_util.tree_map_with_path(lambda p, _: label.get(_path(p), UNPROJECTED), tree)

  projection = optax.partition(
    {UNPROJECTED: optax.identity(), **{label[p]: project(t) for p, t in targets.items()}}, labels
  )

  def init_fn(params):
    _check_kernels(params, targets)
    return ProcrustesState(count=jnp.zeros([], jnp.int32), key=jax.random.key_data(jax.random.key(seed)))

  def update_fn(updates, state, params=None, *, project=None, **extra_args):
    del extra_args  # for the other links of a chain
    if params is None:
      raise validation.invalid("params", params, "the current parameters: update(updates, state, params)")
    if not (project is None or isinstance(project, bool)):
      raise validation.invalid("project", project, "None (decide on device), True or False (Python bools)")
    count = optax.safe_int32_increment(state.count)

    def projected(updates):  # the partition's links are stateless: their state is made, not kept
      return projection.update(updates, projection.init(params), params)[0]

    if project is None:
      heads = count % every == 0 if every else coin(jax.random.wrap_key_data(state.key), count, probability)
      updates = jax.lax.cond(heads, projected, lambda updates: updates, updates)
    elif project:
      updates = projected(updates)
    return updates, ProcrustesState(count=count, key=state.key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def acts(step: int, *, probability: float = 0.5, every: int | None = None, seed: int = 0) -> bool:
  """Whether the projection acts after update ``step`` (1, 2, …), decided on the host: on steps
  every, 2·every, … when ``every`` is given; otherwise :func:`coin` (``seed``'s key, ``step``),
  flipped on the host's CPU: the coin :func:`procrustes` flips on device for that update."""
  if every:
    return step % every == 0
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    return bool(_host_coin(seed, step, probability))


@jax.jit
def _host_coin(seed, step, probability) -> jax.Array:
  return coin(jax.random.key(seed), step, probability)


def _convention(target) -> str:
  return getattr(target, _OPTIONAL_ATTRIBUTE, "correct")


def _path(key_path) -> tuple:
  """A jax key path as the key tuple of ``flax.traverse_util.flatten_dict``."""
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in key_path)


def _check_kernels(params, targets: Mapping[tuple, Any]) -> None:
  """Every target's path is a leaf of ``params``, a 2-D Dense kernel or a 4-D convolution kernel
  its target's shapes fit."""
  leaves = {_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  for path, target in targets.items():
    if path not in leaves:
      raise validation.invalid("targets", path, "paths present in params (flatten_dict keys)")
    leaf = leaves[path]
    if leaf.ndim == 4:
      _check_conv(leaf.shape, target.spatial_shape, target.stride)
    elif leaf.ndim != 2:
      raise validation.invalid(f"params{list(path)}", leaf.shape, "a 2-D Dense or 4-D conv kernel")
