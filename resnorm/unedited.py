"""Backward ratios of any Flax linen model, unedited: no probe in its code.

For the modules a selector picks (by default the direct children of the model that map an array to
an array of the same shape: its residual blocks), :func:`block_ratios` adds a zero perturbation to
the input and to the output of every call, through ``flax.linen.intercept_methods``; one
``jax.grad`` of the loss with respect to the perturbations gives, for every selected call l and
example b, ∂E/∂x_in and ∂E/∂x_out, and

    r_l = ‖∂E/∂x_in‖ / ‖∂E/∂x_out‖

(the probes' ratio of :mod:`resnorm.signal` for a block whose input and output are neighbouring
stream sites). A call whose output has its input's shape is a ``'block'``, any other a
``'transition'``. Calls are told apart by their order in the forward pass, so a module called
twice is two calls.

:func:`delta_statistics` reads every registered statistic from them. Not yet measured this way:
the blocks inside an ``nn.scan`` (a scanned stack that a selector picks is one call, its ratio that
of the whole stack; per-block ratios need a perturbation that carries the scan axis), and δ in
every direction.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from resnorm import probes, signal, statistics, validation

Selector = Callable[[nn.Module, jax.ShapeDtypeStruct, jax.ShapeDtypeStruct], bool]


def children_of_same_shape(module: nn.Module, inputs, outputs) -> bool:
  """The default selector: a direct child of the model whose output has its input's shape."""
  return len(module.path) == 1 and getattr(inputs, "shape", None) == getattr(outputs, "shape", ())


@flax.struct.dataclass
class BlockRatios:
  """What :func:`block_ratios` measured, one row per selected call in forward order.

  Attributes:
    paths: each call's module path (``'Block_3'``, ``'stage/Block_0'``).
    kinds: ``'block'`` (output of the input's shape) or ``'transition'``.
    grad_in, grad_out: per call and example, ‖∂E/∂x_in‖ and ‖∂E/∂x_out‖ (calls × batch).
    ratio: ``grad_in / grad_out`` (NaN where ``grad_out`` is 0, exactly 1 within
      :data:`resnorm.signal.RESOLUTION`, as the probes' ratios).
    forward: per call, the forward statistics of its output as a probe records them
      (:func:`resnorm.probes.stream_statistics`): ``norm`` ‖x_out‖ per example, ``q``, ``c``,
      ``token_c`` for sequences, and for a call of the input's shape ``branch_ratio`` =
      ‖x_out − x_in‖ / ‖x_in‖ per example (the residual branch's, for a block x + F(x)).
  """

  paths: tuple[str, ...] = flax.struct.field(pytree_node=False)
  kinds: tuple[str, ...] = flax.struct.field(pytree_node=False)
  grad_in: jax.Array
  grad_out: jax.Array
  ratio: jax.Array
  forward: dict[str, jax.Array]


def delta_statistics(measured: BlockRatios, kind: str = "block") -> dict[str, float | int | None]:
  """Every registered statistic (:mod:`resnorm.statistics`: δ_max, δ_mean, the per-layer and
  whole-batch ones) of the calls of ``kind``, as :func:`resnorm.signal.delta_statistics` gives
  them for a probed model; host-side."""
  rows = np.array([k == kind for k in measured.kinds])
  if not rows.any():
    raise validation.invalid("kind", kind, f"a kind of the measured calls: one of {sorted(set(measured.kinds))}")
  batch_ratio = signal.whole_batch_ratio(np.asarray(measured.grad_in)[rows], np.asarray(measured.grad_out)[rows])
  return statistics.compute_all(statistics.LayerRatios(np.asarray(measured.ratio)[rows], batch_ratio))


def _intercepted(context, args) -> bool:
  """Whether a method call is one the selector sees: a submodule's ``__call__`` with an argument."""
  return context.method_name == "__call__" and bool(args) and bool(context.module.path)


def _shape(value):
  return jax.ShapeDtypeStruct(value.shape, value.dtype) if hasattr(value, "shape") else value


def _apply(model, variables, inputs, axis_name: str | None, apply_kwargs, interceptor):
  """``model.apply`` with ``interceptor(next_fun, args, kwargs, context, sink)`` on its method calls,
  under a named axis of size 1 where ``axis_name`` is given (a data-parallel model's collectives
  over it, BatchNorm's ``axis_name='batch'``, reduce over this batch alone, as on one device).
  Returns the model's output (the first element with ``mutable``) and what the interceptor put
  in ``sink``, a list, in the order it put it."""

  def apply(x):
    sink = []
    with nn.intercept_methods(lambda *call: interceptor(*call, sink)):
      result = model.apply(variables, x, **apply_kwargs)
    return (result[0] if "mutable" in apply_kwargs else result), sink

  if axis_name is None:
    return apply(inputs)
  return jax.tree.map(lambda leaf: leaf[0], jax.vmap(apply, axis_name=axis_name)(inputs[None]))


def _selected_calls(
  model, variables, inputs, select: Selector, axis_name: str | None, apply_kwargs
) -> dict[int, tuple[str, object, object]]:
  """Per selected call, by its index among the intercepted calls in the order they start: its
  path and its input and output shapes. Traced only (``jax.eval_shape``)."""
  calls, started = {}, iter(range(1 << 62))

  def record(next_fun, args, kwargs, context, sink):
    del sink
    if not _intercepted(context, args):
      return next_fun(*args, **kwargs)
    index = next(started)
    outputs = next_fun(*args, **kwargs)
    if select(context.module, _shape(args[0]), _shape(outputs)):
      if not (hasattr(args[0], "shape") and hasattr(outputs, "shape")):
        raise ValueError(
          f"module {'/'.join(context.module.path)} takes or returns something other than one array "
          f"({type(outputs).__name__}): select modules that map an array to an array"
        )
      calls[index] = ("/".join(context.module.path), _shape(args[0]), _shape(outputs))
    return outputs

  def forward():
    return _apply(model, variables, inputs, axis_name, apply_kwargs, record)

  try:
    jax.eval_shape(forward)
  except NameError as error:  # a collective over an axis no transformation binds
    if "unbound axis name" not in str(error):
      raise
    raise ValueError(
      f"{type(model).__name__} reduces over an axis that nothing binds ({str(error).splitlines()[0]}): pass "
      "axis_name= with the name its BatchNorm or collectives use (e.g. axis_name='batch')"
    ) from None
  return calls


def block_ratios(
  model: nn.Module,
  variables,
  inputs: jax.Array,
  targets: jax.Array,
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
  select: Selector = children_of_same_shape,
  axis_name: str | None = None,
  **apply_kwargs,
) -> BlockRatios:
  """The backward ratio of every call ``select`` picks in ``model`` on one batch (see the module
  docstring); jit-able. ``apply_kwargs`` go to ``model.apply`` (``train=True``,
  ``mutable=['batch_stats']``: with a mutable collection the model's output is its first element,
  the updated statistics are dropped). ``axis_name``: the name of the axis a data-parallel model
  reduces over (BatchNorm's ``axis_name``), bound here to this batch alone (:func:`_apply`).

  Raises:
    ValueError: ``select`` picks no call, a call that does not map an array to an array, or
      modules nested in others it picks; the model reduces over an axis ``axis_name`` does not bind.
  """
  calls = _selected_calls(model, variables, inputs, select, axis_name, apply_kwargs)
  paths = sorted({path for path, _, _ in calls.values()})
  nested = [(outer, inner) for outer in paths for inner in paths if inner.startswith(outer + "/")]
  if nested:
    outer, inner = nested[0]
    raise ValueError(
      f"the selector picks {inner} inside {outer}: their ratios would count one stretch of the stream twice; "
      "select modules of one level (e.g. by class, or len(module.path) == 1)"
    )
  if not calls:
    raise ValueError(
      f"the selector picks no module call of {type(model).__name__}: by default its direct children whose output "
      "has their input's shape; pass select= to pick others"
    )
  order = sorted(calls)
  zeros = {
    "in": [jnp.zeros(calls[i][1].shape, calls[i][1].dtype) for i in order],
    "out": [jnp.zeros(calls[i][2].shape, calls[i][2].dtype) for i in order],
  }
  row = {index: r for r, index in enumerate(order)}

  def loss(perturbations):
    started = iter(range(1 << 62))

    def perturb(next_fun, args, kwargs, context, sink):
      if not _intercepted(context, args):
        return next_fun(*args, **kwargs)
      index = next(started)
      if index not in row:
        return next_fun(*args, **kwargs)
      r = row[index]
      outputs = next_fun(args[0] + perturbations["in"][r], *args[1:], **kwargs)
      branch = outputs - args[0] if outputs.shape == args[0].shape else None
      sink.append(probes.stream_statistics(outputs, args[0], branch))
      return outputs + perturbations["out"][r]

    outputs, forward = _apply(model, variables, inputs, axis_name, apply_kwargs, perturb)
    return loss_fn(outputs, targets), forward

  grads, forward = jax.grad(loss, has_aux=True)(zeros)
  forward = {key: jnp.stack([f[key] for f in forward]) for key in forward[0] if all(key in f for f in forward)}
  grad_in = jnp.stack([probes.per_example_norm(g) for g in grads["in"]])
  grad_out = jnp.stack([probes.per_example_norm(g) for g in grads["out"]])
  ratio = signal.ratios(grad_in, grad_out)
  kinds = tuple("block" if calls[i][1].shape == calls[i][2].shape else "transition" for i in order)
  return BlockRatios(tuple(calls[i][0] for i in order), kinds, grad_in, grad_out, ratio, forward)
