r"""Singular values where the seed needs them: block and stack Jacobians, convolution operators.

**Jacobians.** A residual block maps x_l to x_{l+1} = x_l + F_l(x_l), with Jacobian J_l = I + DF_l(x_l);
a plain block has J_l = DF_l(x_l). Backward, ∂E/∂x_l = J_lᵀ ∂E/∂x_{l+1}, so

    σ_min(J_l) ≤ ‖∂E/∂x_l‖ / ‖∂E/∂x_{l+1}‖ ≤ σ_max(J_l),

and the end-to-end Jacobian of a stack, J_{L−1} ⋯ J_0 (x_0 ↦ x_L), bounds the whole backward pass in
the same way. Dense: ``jax.jacfwd`` (one JVP per input dimension) and an SVD, for widths up to a few
hundred; the blocks of a stack through ``jax.jacrev`` (one VJP per output dimension; see
:func:`block_extremes`).

**Matrix-free.** For inputs with 10⁴–10⁵ dimensions J is never formed: the Gram operator
G = JᵀJ (or JJᵀ when J has fewer rows than columns; both have the nonzero eigenvalues σ_i²) is applied
as v ↦ Jᵀ(Jv), one JVP of a ``jax.linearize``d function and its transpose per product. Power
iteration gives σ_max. Lanczos builds an orthonormal basis V of the Krylov space span{v, Gv, …, G^{k−1}v}
(fully reorthogonalised, restarted with a fresh random direction if the space closes) and returns the
Ritz values, the eigenvalues of VᵀGV: they interlace G's, so √θ_max ≤ σ_max and √θ_min ≥ σ_min, and
the extremes converge first. Both run per example under ``jax.vmap``; memory is 2·k·dim per example.

**Convolutions** (Sedghi, Gupta & Long, "The Singular Values of Convolutional Layers", ICLR 2019). A
stride-1 convolution with circular padding on H×W inputs, kernel K of shape (kh, kw, c_in, c_out),
is block-diagonalised by the 2-D DFT: at each frequency (u, v) it acts on the c_in channels of x̂[u, v]
as the c_in×c_out matrix

    K̂[u, v] = Σ_{a, b} K[a, b] e^{−2πi(ua/H + vb/W)}

(transposed, and conjugated for Flax's cross-correlation; neither changes singular values, nor does
the phase that the padding offset adds). The operator's H·W·min(c_in, c_out) singular values are
those of the H·W matrices K̂[u, v], i.e. of ``fft2`` of the kernel zero-padded to H×W.

Everything runs in the dtype of its inputs; float32 resolves singular values down to about 1e-7 of the
largest, so the smallest end-to-end values of a deep plain stack read as that floor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from resnorm import validation

# ----------------------------------------------------------------------------- convolutions


def _kernel(kernel) -> jax.Array:
  kernel = jnp.asarray(kernel)
  if kernel.ndim != 4:
    raise validation.invalid("kernel.shape", kernel.shape, "a rank-4 kernel (kh, kw, c_in, c_out), Flax layout")
  return kernel


def conv_singular_values(kernel, spatial_shape) -> jax.Array:
  """Every singular value of a stride-1 circular convolution on inputs of ``spatial_shape``.

  Args:
    kernel: (kh, kw, c_in, c_out), Flax's ``nn.Conv`` layout.
    spatial_shape: (H, W), each at least the kernel's size.

  Returns:
    (H, W, min(c_in, c_out)): entry [u, v] holds the singular values, descending, of K̂[u, v] (module
    docstring), the operator's restriction to frequency (u, v). Flattened, these are all
    H·W·min(c_in, c_out) singular values of the (H·W·c_out)×(H·W·c_in) operator matrix.
  """
  kernel = _kernel(kernel)
  height, width = validation.spatial_shape("spatial_shape", spatial_shape, kernel.shape[:2])
  transfer = jnp.fft.fft2(kernel, s=(height, width), axes=(0, 1))
  return jnp.linalg.svd(transfer, compute_uv=False)


def strided_pointwise_singular_values(kernel, spatial_shape, stride: int = 2) -> jax.Array:
  """Singular values of a 1×1 convolution with stride s (the transition of a ResNet) on H×W inputs.

  The convolution reads the pixels (s·i, s·j), i < H' = ⌈H/s⌉, j < W' = ⌈W/s⌉, and multiplies each by
  Wᵀ, W = kernel[0, 0] (c_in×c_out): as an operator it is (I_{H'W'} ⊗ Wᵀ)·S, where S keeps those pixels
  and satisfies S Sᵀ = I. Its Gram matrix on the output side is therefore I_{H'W'} ⊗ WᵀW, so its
  singular values are σ_1(W), …, σ_r(W), r = min(c_in, c_out), each repeated H'·W' times, and zeros:
  min(H·W·c_in, H'·W'·c_out) − H'·W'·r of them.

  Args:
    kernel: (1, 1, c_in, c_out), Flax layout.
    spatial_shape: (H, W) of the input.
    stride: s, a positive integer.

  Returns:
    (H', W', min(c_in, c_out)): the operator's possibly nonzero singular values, per output pixel.
  """
  kernel = _kernel(kernel)
  if kernel.shape[:2] != (1, 1):
    raise validation.invalid("kernel.shape", kernel.shape, "a 1×1 kernel (1, 1, c_in, c_out)")
  height, width = validation.spatial_shape("spatial_shape", spatial_shape)
  stride = validation.positive_int("stride", stride)
  values = jnp.linalg.svd(kernel[0, 0], compute_uv=False)
  return jnp.broadcast_to(values, (-(-height // stride), -(-width // stride), values.shape[0]))


# ----------------------------------------------------------------------------- dense Jacobians


def jacobian_matrix(fn: Callable[[jax.Array], jax.Array], x: jax.Array, reverse: bool = False) -> jax.Array:
  """J = ∂fn/∂x at one example ``x``, as an (fn(x).size, x.size) matrix: forward mode (one JVP per
  input), or with ``reverse`` reverse mode (one VJP per output)."""
  jac = (jax.jacrev if reverse else jax.jacfwd)(fn)(x)
  return jac.reshape(jac.size // x.size, x.size)


def jacobian_singular_values(fn: Callable[[jax.Array], jax.Array], xs: jax.Array, reverse: bool = False) -> jax.Array:
  """σ(∂fn/∂x) at every example of the batch ``xs``: (B, min(m, n)), descending. ``fn`` maps one example;
  ``reverse``: the Jacobians in reverse mode (:func:`jacobian_matrix`)."""
  return jax.vmap(lambda x: jnp.linalg.svd(jacobian_matrix(fn, x, reverse), compute_uv=False))(xs)


def per_example(model, variables, **apply_kwargs) -> Callable[[jax.Array], jax.Array]:
  """``x ↦ model.apply(variables, x[None], **apply_kwargs)[0]``: a model as a map of one example.

  Exact per example only when examples do not interact (no batch statistics: eval mode).
  """
  return lambda x: model.apply(variables, x[None], **apply_kwargs)[0]


class BlockStack(NamedTuple):
  """L identical blocks as data; a model family's ``block_stack`` extracts them from a model.

  Attributes:
    apply: ``apply(params_l, x) -> x_{l+1}``, block l on a batch ``x``.
    params: every block's parameters, stacked on a leading axis of length L.
    inputs: (L, B, ...) the stream x_0, …, x_{L−1} entering the blocks.
  """

  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any
  inputs: jax.Array


def block_singular_values(blocks: BlockStack) -> jax.Array:
  """σ(J_l) for every block l and example: (L, B, width), descending. J_l = ∂x_{l+1}/∂x_l, in
  reverse mode, as :func:`block_extremes` forms them (XLA:CPU gets the forward mode wrong there)."""

  def one_block(params, xs):
    return jacobian_singular_values(lambda x: blocks.apply(params, x[None])[0], xs, reverse=True)

  return jax.vmap(one_block)(blocks.params, blocks.inputs)


class BlockExtremes(NamedTuple):
  """The extreme singular values of every block Jacobian J_l at every example, each (L, B)."""

  sigma_max: jax.Array
  sigma_min: jax.Array


def block_extremes(blocks: BlockStack, *, dense: bool = True, key=None, num_iterations: int = 64) -> BlockExtremes:
  """:class:`BlockExtremes` of every block (blocks map a stream of one width to itself).

  ``dense``: SVDs of the Jacobian matrices (``jax.jacrev``), exact; else Lanczos on the Gram
  operators (:func:`extreme_singular_values`, ``num_iterations`` steps, random starts from
  ``key``), which converges from inside: σ_max from below, σ_min from above.
  """

  def one_block(params, xs, key):
    block = lambda x: blocks.apply(params, x[None])[0]  # noqa: E731  (one example)
    if dense:
      # Reverse mode: XLA:CPU compiles the forward-mode Jacobians of LayerNorm blocks wrongly when
      # blocks or members are vmapped (each block alone comes out right). tests/test_spectra.py
      # checks that it still does (test_xla_cpu_still_miscompiles_...) and the sweep's program
      # against float64.
      sigma = jnp.linalg.svd(jax.vmap(lambda x: jacobian_matrix(block, x, reverse=True))(xs), compute_uv=False)
      return sigma[..., 0], sigma[..., -1]
    return extreme_singular_values(block, xs, key, num_iterations)

  keys = jax.random.split(jax.random.key(0) if key is None else key, blocks.inputs.shape[0])
  return BlockExtremes(*jax.vmap(one_block)(blocks.params, blocks.inputs, keys))


def stack_map(blocks: BlockStack) -> Callable[[jax.Array], jax.Array]:
  """x_0 ↦ x_L through every block, for one example (a ``lax.scan`` over the stacked parameters)."""

  def run(x0):
    def step(x, params):
      return blocks.apply(params, x[None])[0], None

    return jax.lax.scan(step, x0, blocks.params)[0]

  return run


def stack_singular_values(blocks: BlockStack) -> jax.Array:
  """σ(J_{L−1} ⋯ J_0), the end-to-end Jacobian x_0 ↦ x_L, for every example: (B, width)."""
  return jacobian_singular_values(stack_map(blocks), blocks.inputs[0])


# ----------------------------------------------------------------------------- matrix-free


def _gram_operator(fn, x) -> tuple[Callable[[jax.Array], jax.Array], int]:
  """(v ↦ G v on flat vectors, dim G) with G = JᵀJ, or JJᵀ when J has fewer rows than columns."""
  y, jvp = jax.linearize(fn, x)
  vjp = jax.linear_transpose(jvp, x)
  if y.size < x.size:
    return lambda u: jvp(vjp(u.reshape(y.shape))[0]).ravel(), y.size
  return lambda v: vjp(jvp(v.reshape(x.shape)))[0].ravel(), x.size


def _random_unit(key, basis: jax.Array) -> jax.Array:
  """A random unit vector orthogonal to the rows of ``basis`` (Gram–Schmidt applied twice)."""
  r = jax.random.normal(key, basis.shape[1:], basis.dtype)
  for _ in range(2):
    r = r - basis.T @ (basis @ r)
  return r / jnp.linalg.norm(r)


def lanczos_ritz_values(matvec, dim: int, dtype, key, num_iterations: int) -> jax.Array:
  """Ritz values (ascending) of a symmetric positive semi-definite operator on R^dim.

  k = min(num_iterations, dim) steps of Lanczos with full reorthogonalisation: v_{j+1} ∝ (I − V Vᵀ) G v_j,
  twice, or a fresh random direction orthogonal to V when that falls below √ε of the scale of G seen so
  far (an invariant subspace). The Ritz values are the eigenvalues of VᵀGV, computed from the stored
  products G V rather than the three-term recurrence, so they interlace G's spectrum whatever happens.
  """
  k = min(num_iterations, dim)
  tol = jnp.sqrt(jnp.finfo(dtype).eps)
  start_key, restart_key = jax.random.split(key)
  restart_keys = jax.random.split(restart_key, k)
  basis = jnp.zeros((k, dim), dtype)
  images = jnp.zeros((k, dim), dtype)

  def step(j, carry):
    basis, images, v, scale = carry
    basis = basis.at[j].set(v)
    w = matvec(v)
    images = images.at[j].set(w)
    scale = jnp.maximum(scale, jnp.linalg.norm(w))
    for _ in range(2):
      w = w - basis.T @ (basis @ w)
    norm = jnp.linalg.norm(w)
    closed = norm <= tol * scale
    v = jnp.where(closed, _random_unit(restart_keys[j], basis), w / jnp.where(closed, 1, norm))
    return basis, images, v, scale

  v0 = _random_unit(start_key, basis)
  basis, images, _, _ = jax.lax.fori_loop(0, k, step, (basis, images, v0, jnp.zeros((), dtype)))
  projected = basis @ images.T
  return jnp.linalg.eigvalsh((projected + projected.T) / 2)


def extreme_singular_values(fn, xs: jax.Array, key, num_iterations: int = 64) -> tuple[jax.Array, jax.Array]:
  """(σ_max, σ_min) of ∂fn/∂x at every example of ``xs``, matrix-free (Lanczos on the Gram operator).

  σ_min is that of the min(m, n) singular values (the smaller Gram operator is used). Each is (B,).
  ``num_iterations`` ≥ min(m, n) makes both exact up to rounding; fewer converge from inside.
  """
  validation.positive_int("num_iterations", num_iterations)

  def one(x, key):
    matvec, dim = _gram_operator(fn, x)
    ritz = lanczos_ritz_values(matvec, dim, x.dtype, key, num_iterations)
    return jnp.sqrt(jnp.maximum(ritz[-1], 0)), jnp.sqrt(jnp.maximum(ritz[0], 0))

  return jax.vmap(one)(xs, jax.random.split(key, xs.shape[0]))


def top_singular_value(fn, xs: jax.Array, key, num_iterations: int = 100) -> jax.Array:
  """σ_max of ∂fn/∂x at every example of ``xs`` by power iteration on the Gram operator: (B,).

  v ← Gv/‖Gv‖, ``num_iterations`` times, then σ_max ≈ √(vᵀGv); the error in σ² shrinks like
  (σ_2/σ_1)^{2·num_iterations}, and the estimate never exceeds σ_max.
  """
  validation.positive_int("num_iterations", num_iterations)

  def one(x, key):
    matvec, dim = _gram_operator(fn, x)
    tiny = jnp.finfo(x.dtype).tiny

    def step(_, v):
      w = matvec(v)
      return w / jnp.maximum(jnp.linalg.norm(w), tiny)

    v0 = jax.random.normal(key, (dim,), x.dtype)
    v = jax.lax.fori_loop(0, num_iterations, step, v0 / jnp.linalg.norm(v0))
    return jnp.sqrt(jnp.maximum(jnp.vdot(v, matvec(v)), 0))

  return jax.vmap(one)(xs, jax.random.split(key, xs.shape[0]))
