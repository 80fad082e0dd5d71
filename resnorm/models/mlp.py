"""Residual, plain and linear MLP stacks: the networks of the depth sweep.

All three share one layout::

    x_0 = Dense(inputs)                     stem, to the stream width
    x_{l+1} = x_l + s · F_l(x_l)            mlp_residual,  F = Dense–ReLU–Dense (pre-activation)
    x_{l+1} = F_l(x_l)                      mlp_plain,     the same F without the skip
    x_{l+1} = (I + s · W_l) x_l             linear_residual
    outputs = Dense(x_L)                    head

with an optional LayerNorm at the start of each branch (pre-activation: nothing is applied
to the stream after the addition). The L identical blocks go through ``nn.scan``, so depth is
a number: parameters are stacked on a leading axis of length L and the program compiles once
whatever L is. Every stream site carries a probe (:mod:`resnorm.probes`).

Initialisation: the first Dense of a branch is He-normal (variance 2/fan_in, which keeps the
mean square through a ReLU), the second LeCun-normal (variance 1/fan_in), so a plain block
preserves q-values in expectation. ``zero_init_last`` zeroes the second Dense of a residual
branch, which makes every block the identity at initialisation.

The branch scale s and the skip's weight k are numbers the blocks read from the ``'constants'``
collection (set at initialisation, never trained), not constants of the trace: a block computes
x_{l+1} = k·x_l + s·F_l(x_l) with k = 1 in a residual stack and k = 0, s = 1 in a plain one, where
0·x_l + 1·F_l(x_l) is F_l(x_l) to the bit (for finite x_l). Residual and plain stacks that differ
only in s, k or their initialisation compile to one program, and a sweep trains them together.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnorm import probes, spectra, validation
from resnorm.models import targets

CONSTANTS = "constants"  # the variables a model reads but training never changes
SCAN_AXES = {**probes.SCAN_AXES, CONSTANTS: 0}  # one branch scale per block, stacked like the parameters

he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
lecun_normal = nn.initializers.lecun_normal()


class MLPBlock(nn.Module):
  """One block; ``residual=False`` drops the skip, ``linear=True`` makes F(x) = W x."""

  hidden: int
  residual: bool = True
  linear: bool = False
  branch_scale: float = 1.0
  zero_init_last: bool = False
  layer_norm: bool = False
  dtype: Any = None  # computation dtype; None follows the inputs and parameters

  @nn.compact
  def __call__(self, x, _=None):
    width = x.shape[-1]
    last_init = nn.initializers.zeros if self.zero_init_last else lecun_normal
    h = nn.LayerNorm(dtype=self.dtype)(x) if self.layer_norm else x
    if self.linear:
      h = nn.Dense(width, use_bias=False, kernel_init=last_init, dtype=self.dtype)(h)
    else:
      h = nn.Dense(self.hidden, kernel_init=he_normal, dtype=self.dtype)(h)
      h = nn.relu(h)
      h = nn.Dense(width, kernel_init=last_init, dtype=self.dtype)(h)
    # s and the skip's weight k (1 residual, 0 plain, where 0·x + 1·F(x) is F(x) to the bit) are
    # constants: residual and plain stacks, and any branch scales, run one program.
    scale = constant(self, "branch_scale", self.branch_scale if self.residual else 1.0)
    weight = constant(self, "skip", 1.0 if self.residual else 0.0)
    branch = jnp.asarray(scale, h.dtype) * h
    out = jnp.asarray(weight, x.dtype) * x + branch
    return probes.probe(self, probes.SCANNED_PROBE, out, x_in=x, branch=branch), None


def constant(block: nn.Module, name: str, value):
  """The ``'constants'`` variable ``name`` of ``block`` where the variables hold one (created at
  initialisation with ``value``), else ``value`` (variables made by hand with parameters alone).
  Read from the variables, the number is data, not a constant of the trace."""
  if block.is_initializing() or block.has_variable(CONSTANTS, name):
    return block.variable(CONSTANTS, name, lambda: jnp.asarray(value)).value
  return value


def branch_scale(block: nn.Module):
  """s of ``block`` (a module with a ``branch_scale`` attribute), from its constants."""
  return constant(block, "branch_scale", block.branch_scale)


def _stem(width: int, dtype) -> nn.Dense:
  """The stem: inputs (flattened) to the stream width."""
  return nn.Dense(width, kernel_init=lecun_normal, dtype=dtype, name="stem")


class MLPStack(nn.Module):
  """Stem, ``depth`` scanned :class:`MLPBlock`s, head. See the module docstring."""

  depth: int
  num_outputs: int
  width: int = 32
  hidden: int = 64
  residual: bool = True
  linear: bool = False
  branch_scale: float = 1.0
  zero_init_last: bool = False
  layer_norm: bool = False
  remat: bool = False
  dtype: Any = None  # computation dtype; None follows the inputs and parameters

  def block_options(self) -> dict:
    """The fields of every :class:`MLPBlock` of this stack."""
    return dict(
      hidden=self.hidden,
      residual=self.residual,
      linear=self.linear,
      branch_scale=self.branch_scale,
      zero_init_last=self.zero_init_last,
      layer_norm=self.layer_norm,
      dtype=self.dtype,
    )

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    del train  # no dropout or batch statistics in these stacks
    x = inputs.reshape(inputs.shape[0], -1)
    x = probes.probe(self, probes.site_name(0, "input"), x)
    stem_in = x
    x = _stem(self.width, self.dtype)(x)
    x = probes.probe(self, probes.site_name(1, "stem"), x, x_in=stem_in, branch=x)
    block = nn.remat(MLPBlock, prevent_cse=False) if self.remat else MLPBlock
    blocks = nn.scan(block, variable_axes=SCAN_AXES, split_rngs={"params": True}, length=self.depth)(
      **self.block_options(), name=probes.site_name(2, "block")
    )
    x, _ = blocks(x, None)
    return nn.Dense(self.num_outputs, kernel_init=lecun_normal, dtype=self.dtype, name="head")(x)


def block_stack(stack: MLPStack, variables, inputs) -> spectra.BlockStack:
  """The scanned blocks of ``stack`` as data, so that each can be measured on its own.

  The MLP families' ``block_stack`` extractor. Returns a :class:`resnorm.spectra.BlockStack`
  ``(apply, params, inputs)``:

  * ``apply(variables_l, x)`` is block l's map x_l ↦ x_{l+1} on a batch: the :class:`MLPBlock` that
    the stack's ``nn.scan`` repeats, with its probe inert (no ``'perturbations'`` are passed);
  * ``params``: every block's variables (parameters and constants), stacked on a leading axis of
    length L (slice l is block l);
  * ``inputs``: (L, B, width), the stream x_0, …, x_{L−1} entering the blocks for ``inputs``.

  x_0 is the stem's output and x_{l+1} = block l (x_l): the stack's own stem and blocks, applied one
  after another (a ``lax.scan`` over the stacked variables), as the stack applies them.
  """
  blocks = probes.site_name(2, "block")  # the name MLPStack gives its nn.scan
  block = MLPBlock(**stack.block_options())

  def apply(block_variables, x):
    return block.apply(block_variables, x)[0]

  per_block = {k: v[blocks] for k, v in variables.items() if k in ("params", CONSTANTS)}
  x0 = _stem(stack.width, stack.dtype).apply(
    {"params": variables["params"]["stem"]}, inputs.reshape(inputs.shape[0], -1)
  )
  _, block_inputs = jax.lax.scan(lambda x, v: (apply(v, x), x), x0, per_block)
  return spectra.BlockStack(apply, per_block, block_inputs)


def _block_fields(depth: int, target: targets.FlowTarget) -> np.ndarray:
  """(L,) the field k(l) = ⌊(l + ½)·K/L⌋ that block l steps: the one in force at the midpoint of
  its time slice [l·K/L, (l + 1)·K/L) of the time-dependent field s·v_⌊t⌋, t ∈ [0, K)."""
  return np.floor((np.arange(depth) + 0.5) * target.num_maps / depth).astype(int)


class Constructed(NamedTuple):
  """A constructed network: its ``variables``, and ``block_bounds`` (L,), the bound on each block's
  ‖J_l − I‖₂ (so on |r_l − 1| and on the direction-free δ) that the construction promises at every
  input."""

  variables: dict
  block_bounds: np.ndarray


def construct(stack: MLPStack, variables, target: targets.FlowTarget) -> Constructed:
  """The theorem's network for ``target``: the residual MLP ``stack`` whose L blocks are the L
  explicit Euler steps of the target's flow, built, not trained.

  With the target h = Q ∘ (flow of v(z, t) = s·v_⌊t⌋(z) for t ∈ [0, K)) and τ = K/L:

      stem:    x ↦ (x, 0)                                the input in the first d stream coordinates
      block l: x ↦ x + τ·s·V_k relu(U_k x + b_k),  k = ⌊(l + ½)τ⌋   one Euler step (first Dense: U_k,
                                                          b_k; second: τ·s·V_k divided by the branch scale)
      head:    x ↦ Q x_{1..d}

  unused stream coordinates and hidden units held at zero. Each block's Jacobian is
  I + τ·s·V_k D U_k, D diagonal in [0, 1], so ‖J_l − I‖₂ ≤ τ·s·‖V_k‖‖U_k‖ (``block_bounds``):
  the blocks are near-identity by construction, δ_l = O(1/L). Euler's global error is O(1/L) when
  L is a multiple of K, so the network's mean squared error falls as O(1/L²) (for L < K some
  fields are skipped and the error is O(1)).

  Args:
    stack: a residual, non-linear :class:`MLPStack` without LayerNorm, width ≥ d and hidden ≥
      the target's hidden units, with d outputs.
    variables: its initial variables (only their structure and shapes are used).
    target: the map to represent.

  Returns:
    :class:`Constructed`: ``variables`` with every parameter replaced, and the per-block bounds.
  """
  d, hidden = target.dim, target.hidden
  if not stack.residual or stack.linear or stack.layer_norm:
    raise validation.invalid(
      "model",
      f"{type(stack).__name__}(residual={stack.residual}, linear={stack.linear}, layer_norm={stack.layer_norm})",
      "a residual ReLU stack without LayerNorm",
    )
  if stack.width < d or stack.hidden < hidden or stack.num_outputs != d:
    raise validation.invalid(
      "model width, hidden, outputs",
      (stack.width, stack.hidden, stack.num_outputs),
      f"width >= {d}, hidden >= {hidden} and {d} outputs to represent the target",
    )
  params = variables["params"]
  blocks = probes.site_name(2, "block")
  fields = _block_fields(stack.depth, target)
  step = target.num_maps / stack.depth * target.strength / stack.branch_scale

  def placed(shape, block, rows, cols=None):
    """``block`` at ``rows`` (and ``cols``) of zeros of ``shape``."""
    out = np.zeros(shape, np.float32)
    out[(rows,) if cols is None else (rows, cols)] = block
    return out

  width = stack.width
  built = {
    "stem": {"kernel": placed((d, width), np.eye(d), slice(None), slice(0, d)), "bias": np.zeros(width, np.float32)},
    "head": {"kernel": placed((width, d), target.rotation.T, slice(0, d)), "bias": np.zeros(d, np.float32)},
    blocks: {
      "Dense_0": {
        "kernel": np.stack(
          [placed((width, stack.hidden), target.u[k].T, slice(0, d), slice(0, hidden)) for k in fields]
        ),
        "bias": np.stack([placed((stack.hidden,), target.b[k], slice(0, hidden)) for k in fields]),
      },
      "Dense_1": {
        "kernel": np.stack(
          [placed((stack.hidden, width), step * target.v[k].T, slice(0, hidden), slice(0, d)) for k in fields]
        ),
        "bias": np.zeros((stack.depth, width), np.float32),
      },
    },
  }
  if jax.tree.structure(built) != jax.tree.structure(params):
    raise validation.invalid("variables", jax.tree.structure(params), f"the parameters of {type(stack).__name__}")
  bounds = target.num_maps / stack.depth * target.strength * target.lipschitz()[fields]
  return Constructed(
    {**variables, "params": jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), built, params)}, bounds
  )
