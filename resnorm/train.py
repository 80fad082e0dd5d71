"""Training pieces, pure and jittable: the train state, the optimizer, the losses and the steps,
and how the programs a run calls only a few times are compiled.

``train_step`` and ``eval_step`` are pure functions of the state and a batch, for ``jax.jit``;
the loop that drives them, checkpoints and measures is :mod:`resnorm.loop`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from resnorm import models, probes, procrustes

# A program run a few times per run whose group holds fewer parameters than this (all members
# together) compiles through XLA:CPU's older emitters (:func:`few_calls_options`).
FUSED_ABOVE_PARAMETERS = 1_000_000
UNFUSED_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def few_calls_options(parameters: int = 0) -> dict | None:
  """The compiler options of a program a run calls a handful of times (creating its state,
  measurements, evaluations) for a group of ``parameters`` parameters in all.

  On XLA:CPU, LLVM's optimisations cost more to compile than they save for such a program, so it
  compiles at optimisation level 0; below :data:`FUSED_ABOVE_PARAMETERS`, through the older
  emitters too, which compile faster and run slower (``parameters = 0``: a program run once,
  whose values are the same either way). An XLA:CPU that does not know the emitter option gets
  the level alone. None (the defaults) on other backends. A function, not a constant: the
  backend must not start at import, before ``jax.distributed.initialize``.
  """
  if jax.default_backend() != "cpu":
    return None
  options = {"xla_backend_optimization_level": 0}
  if parameters < FUSED_ABOVE_PARAMETERS and _cpu_takes(tuple(UNFUSED_CPU_OPTIONS.items())):
    options.update(UNFUSED_CPU_OPTIONS)
  return options


@functools.cache
def _cpu_takes(options: tuple) -> bool:
  """Whether XLA:CPU compiles a program with ``options`` ((name, value) pairs)."""
  try:
    jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(compiler_options=dict(options))
  except jax.errors.JaxRuntimeError as error:  # "No such compile option"
    logging.warning("XLA:CPU refused %s (%s); programs called a few times compile without it", options, error)
    return False
  return True


def jit_few_calls(fn, parameters: int = 0, **kwargs):
  """``jax.jit`` for a program called a handful of times per run (:func:`few_calls_options`)."""
  return jax.jit(fn, compiler_options=few_calls_options(parameters), **kwargs)


def parameter_count(state) -> int:
  """The parameters of a (stacked) train state, every member's."""
  return sum(leaf.size for leaf in jax.tree.leaves(state.params))


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm statistics and the model's constants (``'constants'``: numbers
  it reads but training never changes, such as a branch scale); ``None`` where a model has none."""

  batch_stats: Any = None
  constants: Any = None

  def apply_gradients(self, *, grads, project: bool | None = None, **kwargs) -> TrainState:
    """Flax's optimizer step; ``project`` (not None) goes to the optimizer as the extra argument
    that tells a Procrustes projection whether to act (:func:`resnorm.procrustes.procrustes`)."""
    extra = {} if project is None else {"project": project}
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params, **extra)
    return self.replace(
      step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state, **kwargs
    )


def total_steps(config, steps_per_epoch: int) -> int:
  """The run's length: ``config.num_steps``, or when that is 0, ``config.num_epochs`` epochs
  of ``steps_per_epoch`` steps."""
  return config.num_steps or config.num_epochs * steps_per_epoch


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """``config.optimizer.schedule``: ``constant``; ``cosine`` decay to 0 over the run;
  ``piecewise``, multiplied by ``decay_factor`` at each of ``decay_epochs`` (the CIFAR
  recipe: 0.1, divided by 10 at epochs 150 and 225). With ``warmup_epochs`` > 0 the rate
  first rises linearly from 0 over that many epochs (He et al. 2016 warmed ResNet-110 up).

  Step ``s`` (0-based; ``s // steps_per_epoch`` is its epoch) is taken with the rate at ``s``.
  """
  opt = config.optimizer
  if opt.schedule == "cosine":
    schedule = optax.cosine_decay_schedule(opt.learning_rate, total_steps(config, steps_per_epoch))
  elif opt.schedule == "piecewise":
    schedule = optax.piecewise_constant_schedule(
      opt.learning_rate, {int(epoch * steps_per_epoch): opt.decay_factor for epoch in opt.decay_epochs}
    )
  else:
    schedule = optax.constant_schedule(opt.learning_rate)
  warmup = round(opt.warmup_epochs * steps_per_epoch)
  if not warmup:
    return schedule
  return lambda count: schedule(count) * jnp.minimum(1.0, (count + 1) / warmup)


def make_optimizer(config, projection_targets=None, *, steps_per_epoch: int) -> optax.GradientTransformation:
  """``config.optimizer``: Adam or SGD with momentum, at the rate of
  :func:`learning_rate_schedule`; the identity blocks' updates times ``block_lr_scale`` (``'1'``,
  ``'1/sqrt(L)'``, ``'1/L'`` or a number, L = ``config.model.depth``: scaling the update of Adam or
  of SGD with momentum scales its learning rate; depth-μP takes ``'1/sqrt(L)'`` with Adam);
  then, with ``config.procrustes.enabled``, the Procrustes
  projection of ``projection_targets`` (:func:`resnorm.procrustes.procrustes`, chained last so
  the projected kernels are what the step leaves in the parameters; whether it acts is the
  ``project`` argument of :func:`train_step`)."""
  opt = config.optimizer
  learning_rate = learning_rate_schedule(config, steps_per_epoch)
  if opt.name == "adam":
    tx = optax.adamw(learning_rate, weight_decay=opt.weight_decay)
  else:
    tx = optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.sgd(learning_rate, momentum=opt.momentum or None),
    )
  block_scale = models.resolve_branch_scale(opt.block_lr_scale, config.model.depth, "block_lr_scale")
  # The scale lives in the optimizer state (inject_hyperparams), not in the trace: optimizers that
  # differ only in it share their compiled steps.
  tx = optax.chain(tx, optax.masked(optax.inject_hyperparams(optax.scale)(step_size=block_scale), block_parameters))
  if not config.procrustes.enabled:
    return tx
  projection = procrustes.procrustes(
    projection_targets,
    probability=config.procrustes.probability,
    every=config.procrustes.every or None,
    seed=config.seed,
  )
  return optax.chain(tx, projection)


def block_parameters(params) -> dict:
  """The mask of the identity blocks' parameters: True under every top-level module named as a
  block site (``NN_block``, :mod:`resnorm.probes`), False under the stem, transitions and head."""
  return {
    name: jax.tree.map(lambda _, block=probes.is_kind(name, "block"): block, tree) for name, tree in params.items()
  }


def loss_function(task: str):
  """Mean squared error per output coordinate, or softmax cross-entropy on integer labels."""
  if task == "regression":
    return lambda outputs, targets: jnp.mean(jnp.square(outputs.astype(jnp.float32) - targets))
  return lambda logits, labels: jnp.mean(
    optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  )


def create_train_state(model, rng, sample_inputs, tx, sharding=None) -> TrainState:
  """Initial parameters and optimizer state, in one compiled program placed on ``sharding``."""
  return jax.jit(_create(model, tx), out_shardings=sharding)(rng, sample_inputs)


def create_train_states(starts, sample_inputs, sharding=None, compiler_options=None) -> list[TrainState]:
  """Per ``(model, tx, rngs)`` of ``starts``, :func:`create_train_state` for every key of ``rngs``
  (M,), stacked on a leading member axis: member m holds exactly what ``create_train_state(model,
  rngs[m], sample_inputs, tx)`` returns. One compiled program creates them all (a sweep group's
  kinds of start: one compile, not one per kind)."""
  creates = [jax.vmap(_create(model, tx), in_axes=(0, None)) for model, tx, _ in starts]

  def create_all(rngs, sample_inputs):
    return [create(keys, sample_inputs) for create, keys in zip(creates, rngs)]

  program = jax.jit(create_all, out_shardings=sharding, compiler_options=compiler_options)
  return program([rngs for *_, rngs in starts], sample_inputs)


def _create(model, tx):
  def create(rng, sample_inputs):
    variables = model.init(rng, sample_inputs, train=False)
    return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      tx=tx,
      batch_stats=variables.get("batch_stats"),
      constants=variables.get("constants"),
    )

  return create


def _train_loss(state: TrainState, batch, loss_fn, params):
  """(the loss of ``params`` on ``batch`` in train mode, the updated BatchNorm statistics or None)."""
  inputs, targets = batch
  variables = {"params": params, **_fixed(state)}
  if state.batch_stats is None:
    return loss_fn(state.apply_fn(variables, inputs, train=True), targets), None
  variables["batch_stats"] = state.batch_stats
  outputs, updates = state.apply_fn(variables, inputs, train=True, mutable=["batch_stats"])
  return loss_fn(outputs, targets), updates["batch_stats"]


def memory_estimate(model, tx, batch, loss_fn) -> dict[str, int]:
  """The bytes one run's training step holds on one device, from shapes alone (traced with
  ``jax.eval_shape``: nothing is allocated or compiled): ``state`` (parameters, optimizer state,
  BatchNorm statistics), ``gradients`` (one per parameter), and ``activations``, the residuals
  that the backward pass of the loss on ``batch`` keeps (those of ``jax.vjp``, the batch
  included). XLA may fuse some residuals away and keeps temporaries besides: an estimate, not a
  bound."""
  inputs = batch[0]
  state = jax.eval_shape(
    _create(model, tx), jax.random.key(0), jax.ShapeDtypeStruct((1,) + inputs.shape[1:], inputs.dtype)
  )

  def residuals(state, batch):
    loss = functools.partial(_train_loss, state, batch, loss_fn)
    return jax.vjp(loss, state.params, has_aux=True)[1]

  def size(tree) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))

  return dict(
    state=size(state), gradients=size(state.params), activations=size(jax.eval_shape(residuals, state, batch))
  )


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def train_step(state: TrainState, batch, loss_fn, project: bool | None = None) -> tuple[TrainState, dict]:
  """One optimizer step on ``batch = (inputs, targets)``; pure, for ``jax.jit``. ``project``:
  with a Procrustes projection in the optimizer, whether it acts after this step (a Python bool,
  static: no conditional in the program), or None to let it decide on device."""
  loss = functools.partial(_train_loss, state, batch, loss_fn)
  (value, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, project=project, batch_stats=batch_stats)
  finite = jnp.isfinite(value) & _all_finite(state.params)
  return state, {"loss": value, "finite": finite}


def train_steps(
  state: TrainState, batch_at, num_steps, capacity: int, loss_fn, project: bool | None = None
) -> tuple[TrainState, dict]:
  """Up to ``capacity`` optimizer steps in one compiled loop; pure, for ``jax.jit``.

  Runs :func:`train_step` on ``batch_at(0)``, ``batch_at(1)``, … for the first ``num_steps``
  (traced, ≤ ``capacity``: one program serves every stretch length). Returns the state and, per
  step slot, ``loss`` (NaN in slots not run) and ``finite`` (True in slots not run). Step i of
  the loop runs the same compiled body as every other, so a stretch of k steps followed by one of
  m steps leaves exactly the state of one stretch of k + m. A ``capacity`` of 1 runs the step
  without a loop: XLA:CPU runs convolutions slower inside a loop body than outside one
  (jax-ml/jax#12868), so the image networks on CPU take one step per dispatch.
  ``project`` goes to every step (:func:`train_step`).
  """
  if capacity == 1:
    state, metrics = train_step(state, batch_at(0), loss_fn, project)
    return state, {"loss": metrics["loss"][None], "finite": metrics["finite"][None]}

  def body(i, carry):
    state, losses, finite = carry
    state, metrics = train_step(state, batch_at(i), loss_fn, project)
    return state, losses.at[i].set(metrics["loss"]), finite.at[i].set(metrics["finite"])

  initial = (state, jnp.full((capacity,), jnp.nan, jnp.float32), jnp.ones((capacity,), bool))
  state, losses, finite = jax.lax.fori_loop(0, num_steps, body, initial)
  return state, {"loss": losses, "finite": finite}


def convergence(steps, losses, window: float, tolerance: float, trend_tolerance: float) -> dict:
  """Whether a run's train loss had stopped falling: the verdict each run records.

  ``steps``, ``losses``: the logged train losses (each the mean over the steps since the
  previous log) up to the last step T. Two readings, both required:

  * the fall over the last ``window`` of the run, relative to the final loss: with ℓ(T₀) the
    loss at the last log at or before (1 − ``window``)·T,

        fall = (ℓ(T₀) − ℓ(T)) / ℓ(T),        |fall| ≤ ``tolerance``;

  * the trend over the second half: b, the least-squares slope of log ℓ against the step over
    the logs at steps ≥ T/2, projected over the last ``window`` of the run,

        trend = −b·``window``·T,        |trend| ≤ ``trend_tolerance``,

    which a single noisy log cannot fake or hide.

  A loss still falling by more than ``tolerance`` of itself is not converged however small it
  is. Under a decaying learning rate both readings say the run stopped changing, not that it
  reached the optimum (a cosine schedule forces that by sending the rate to zero): a budget
  ladder at a constant rate tells the two apart. ``converged`` is None where it cannot be told:
  fewer than two logs in the second half, or a loss that is not finite and positive.
  """
  steps, losses = [int(s) for s in steps], [float(v) for v in losses]
  verdict = dict(
    window=window,
    tolerance=tolerance,
    trend_tolerance=trend_tolerance,
    from_step=None,
    to_step=None,
    fall=None,
    trend=None,
    converged=None,
  )
  if len(steps) < 2 or not all(math.isfinite(v) and v > 0 for v in losses):
    return verdict
  last = steps[-1]
  earlier = [i for i, s in enumerate(steps[:-1]) if s <= (1 - window) * last]
  first = earlier[-1] if earlier else 0
  fall = (losses[first] - losses[-1]) / losses[-1]
  verdict.update(from_step=steps[first], to_step=last, fall=fall)
  half = [(s, math.log(v)) for s, v in zip(steps, losses) if s >= last / 2]
  if len(half) < 2:
    return verdict
  x, y = np.array(half).T
  trend = -float(np.polyfit(x, y, 1)[0]) * window * last
  converged = abs(fall) <= tolerance and abs(trend) <= trend_tolerance
  return dict(verdict, trend=trend, converged=bool(converged))


def variables(state: TrainState) -> dict:
  """The variables ``apply`` needs: parameters, and BatchNorm statistics and constants where the
  model has them."""
  return {
    "params": state.params,
    **_fixed(state),
    **({} if state.batch_stats is None else {"batch_stats": state.batch_stats}),
  }


def _fixed(state: TrainState) -> dict:
  """The constants collection, where the model has one."""
  return {} if state.constants is None else {"constants": state.constants}


def eval_step(state: TrainState, batch, loss_fn, task: str) -> dict:
  """Sums of the loss (and of correct predictions) over ``batch``, for averaging."""
  inputs, targets = batch
  outputs = state.apply_fn(variables(state), inputs, train=False)
  count = inputs.shape[0]
  sums = {"loss": loss_fn(outputs, targets) * count, "count": count}
  if task == "classification":  # per example, the fraction of its labels predicted (a sequence has one per token)
    correct = (jnp.argmax(outputs, -1) == targets).reshape(count, -1)
    sums["correct"] = jnp.sum(jnp.mean(correct, axis=1))
  return sums
