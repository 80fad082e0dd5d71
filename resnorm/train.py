"""Training: a pure, jitted train step and ``train_and_evaluate(config, workdir)``.

One run trains ``config.model.name`` at depth ``config.model.depth`` on ``config.data``,
measures the backward ratios (:mod:`resnorm.signal`) on held-out examples at initialisation and
after training, and writes ``workdir/``:

* ``config.json`` — the resolved config;
* ``checkpoints/`` — Orbax checkpoints every ``checkpoint_every`` steps; a run started again
  in the same workdir resumes from the latest one;
* ``metrics.jsonl`` — every ``log_every`` steps, the train loss averaged over the steps since
  the previous log (or since the resume);
* ``signal.jsonl`` — with ``signal.every`` > 0, the δ statistics and per-layer profiles of
  :func:`measure_signal` every ``signal.every`` steps during training;
* ``summary.json`` — steps, losses, test accuracy (classification), δ statistics at
  initialisation and after training, their ``history`` during training (blocks only), and
  whether the run diverged.

Parameters are replicated and batches split over the mesh axis ``'data'``; with several
processes, each loads only its rows of every batch. A step whose loss or parameters are not
finite stops the run: the checkpoint directory keeps the last good state and the summary says
``"diverged": true`` with the step.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state

from resnorm import data as data_lib
from resnorm import models, procrustes, signal, validation
from resnorm.models import resnet

OPTIMIZERS = ("adam", "sgd")
HISTORY_KEYS = ("delta_max", "delta_mean", "log_gain")
SCHEDULES = ("constant", "cosine")


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm statistics (``None`` for models without them)."""

  batch_stats: Any = None


class Diverged(RuntimeError):
  """Training produced a non-finite loss or parameters by ``step`` (checked every few steps)."""

  def __init__(self, step: int, loss: float, last_checkpoint: int | None):
    self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint
    kept = f"the last good checkpoint (step {last_checkpoint}) is kept" if last_checkpoint else "no checkpoint was saved before"
    super().__init__(f"training diverged by step {step} (mean loss {loss}); {kept}")


# ----------------------------------------------------------------------------- config


def build_model(config, num_outputs: int):
  """``config.model`` built through the registry; errors name the config field."""
  name = config.model.name
  options = {k: v for k, v in config.model.items() if k not in ("name", "depth")}
  try:
    return models.create_model(
        name, config.model.depth, num_classes=num_outputs,
        **models.accepted_options(name, options, prefix="config.model."),
    )
  except validation.ConfigError as error:
    if error.field.startswith("config."):
      raise
    field = {"model": "name"}.get(error.field, error.field)
    raise validation.ConfigError(f"config.model.{field}", error.value, error.allowed) from None


def validate(config, dataset: data_lib.Dataset) -> None:
  """Checks every field a run reads, before anything is built or compiled."""
  validation.one_of("config.optimizer.name", config.optimizer.name, OPTIMIZERS)
  validation.positive_float("config.optimizer.learning_rate", config.optimizer.learning_rate)
  if not 0 <= config.optimizer.momentum < 1:
    raise validation.ConfigError("config.optimizer.momentum", config.optimizer.momentum, "a number in [0, 1)")
  if config.optimizer.weight_decay < 0:
    raise validation.ConfigError("config.optimizer.weight_decay", config.optimizer.weight_decay, "a number >= 0")
  validation.one_of("config.optimizer.schedule", config.optimizer.schedule, SCHEDULES)
  for field in ("batch_size", "num_steps", "log_every", "eval_batch_size"):
    validation.positive_int(f"config.{field}", config[field])
  if config.augment and dataset.x_train.ndim != 4:
    raise validation.ConfigError("config.augment", config.augment, "False for data that are not NHWC images")
  if config.checkpoint_every < 0:
    raise validation.ConfigError("config.checkpoint_every", config.checkpoint_every, "0 (never) or a step count")
  devices = jax.device_count()
  if config.batch_size % devices:
    raise validation.ConfigError("config.batch_size", config.batch_size, f"a multiple of the {devices} devices")
  num_test = len(dataset.x_test)
  examples = validation.positive_int("config.signal.num_examples", config.signal.num_examples)
  if examples > num_test:
    raise validation.ConfigError("config.signal.num_examples", examples, f"at most the {num_test} test examples")
  validation.non_negative_int("config.signal.every", config.signal.every)
  data_lib.batch_indices(len(dataset.x_train), config.batch_size, 0, 0)  # batch fits the data
  build_model(config, dataset.num_outputs)
  if config.procrustes.enabled:
    with_targets = sorted(name for name, f in models.FAMILIES.items() if f.projection_targets)
    if models.family(config.model.name).projection_targets is None:
      raise validation.ConfigError(
          "config.procrustes.enabled", True, f"False for {config.model.name} (kernels to project: {with_targets})")
    probability = config.procrustes.probability
    if isinstance(probability, bool) or not 0 <= probability <= 1:
      raise validation.ConfigError("config.procrustes.probability", probability, "a number in [0, 1]")
    if config.procrustes.every < 0:
      raise validation.ConfigError("config.procrustes.every", config.procrustes.every, "0 (random steps) or k")


# ----------------------------------------------------------------------------- pieces


def make_optimizer(config, projection_targets=None) -> optax.GradientTransformation:
  """``config.optimizer``: Adam or SGD with momentum, constant or cosine learning rate; then,
  with ``config.procrustes.enabled``, the Procrustes projection of ``projection_targets``
  (:func:`resnorm.procrustes.procrustes`, chained last so the projected kernels are what the
  step leaves in the parameters)."""
  opt = config.optimizer
  learning_rate = opt.learning_rate
  if opt.schedule == "cosine":
    learning_rate = optax.cosine_decay_schedule(opt.learning_rate, config.num_steps)
  if opt.name == "adam":
    tx = optax.adamw(learning_rate, weight_decay=opt.weight_decay)
  else:
    tx = optax.chain(
        optax.add_decayed_weights(opt.weight_decay),
        optax.sgd(learning_rate, momentum=opt.momentum or None),
    )
  if not config.procrustes.enabled:
    return tx
  project = procrustes.procrustes(
      projection_targets, probability=config.procrustes.probability, every=config.procrustes.every or None,
      seed=config.seed,
  )
  return optax.chain(tx, project)


def projection_targets(config, dataset: data_lib.Dataset):
  """The kernels the model's family projects, for inputs shaped like ``dataset``'s (or None)."""
  targets = models.family(config.model.name).projection_targets
  return targets(dataset.x_train.shape) if targets else None


def loss_function(task: str):
  """Mean squared error per output coordinate, or softmax cross-entropy on integer labels."""
  if task == "regression":
    return lambda outputs, targets: jnp.mean(jnp.square(outputs.astype(jnp.float32) - targets))
  return lambda logits, labels: jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  )


def create_train_state(model, rng, sample_inputs, tx, sharding=None) -> TrainState:
  """Initial parameters and optimizer state, in one compiled program placed on ``sharding``."""

  def create(rng, sample_inputs):
    variables = model.init(rng, sample_inputs, train=False)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats")
    )

  return jax.jit(create, out_shardings=sharding)(rng, sample_inputs)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def train_step(state: TrainState, batch, loss_fn) -> tuple[TrainState, dict]:
  """One optimizer step on ``batch = (inputs, targets)``; pure, for ``jax.jit``."""
  inputs, targets = batch

  def loss(params):
    variables = {"params": params}
    if state.batch_stats is None:
      return loss_fn(state.apply_fn(variables, inputs, train=True), targets), None
    variables["batch_stats"] = state.batch_stats
    outputs, updates = state.apply_fn(variables, inputs, train=True, mutable=["batch_stats"])
    return loss_fn(outputs, targets), updates["batch_stats"]

  (value, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  finite = jnp.isfinite(value) & _all_finite(state.params)
  return state, {"loss": value, "finite": finite}


def _variables(state: TrainState) -> dict:
  """The variables ``apply`` needs: parameters, and BatchNorm statistics where the model has them."""
  variables = {"params": state.params}
  if state.batch_stats is not None:
    variables["batch_stats"] = state.batch_stats
  return variables


def eval_step(state: TrainState, batch, loss_fn, task: str) -> dict:
  """Sums of the loss (and of correct predictions) over ``batch``, for averaging."""
  inputs, targets = batch
  outputs = state.apply_fn(_variables(state), inputs, train=False)
  count = inputs.shape[0]
  sums = {"loss": loss_fn(outputs, targets) * count, "count": count}
  if task == "classification":
    sums["correct"] = jnp.sum(jnp.argmax(outputs, -1) == targets)
  return sums


# ----------------------------------------------------------------------------- the run


def _shardings():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  return (
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
  )


def _global_batch(sharding, x, y, rows, transform=None):
  """The global batch ``rows`` as arrays split over the mesh; this process supplies its share."""
  local = data_lib.process_rows(rows)
  x, y = x[local], y[local]
  if transform is not None:
    x = transform(x)
  return tuple(jax.make_array_from_process_local_data(sharding, a) for a in (x, y))


def evaluate(eval_fn, state, dataset, batch_size, sharding) -> dict[str, float]:
  """Averages over the whole test split (the last, smaller batch included)."""
  totals = {}
  num_test = len(dataset.x_test)
  for start in range(0, num_test, batch_size):
    rows = np.arange(start, min(start + batch_size, num_test))
    if len(rows) % (jax.device_count() * jax.process_count()):
      batch = (jnp.asarray(dataset.x_test[rows]), jnp.asarray(dataset.y_test[rows]))
    else:
      batch = _global_batch(sharding, dataset.x_test, dataset.y_test, rows)
    for key, value in eval_fn(state, batch).items():
      totals[key] = totals.get(key, 0) + value
  totals = jax.device_get(totals)
  results = {"test_loss": float(totals["loss"] / totals["count"])}
  if "correct" in totals:
    results["test_accuracy"] = float(totals["correct"] / totals["count"])
  return results


def run_seed(config) -> int:
  """A run's seed: ``config.seed`` mixed with model name and depth, so runs are independent
  of which other runs share the sweep (a split sweep reproduces the joint one exactly)."""
  return zlib.crc32(f"{config.seed}/{config.model.name}/{config.model.depth}".encode())


def measure_signal(measure_fn, variables, dataset, num_examples: int) -> dict:
  """δ statistics per kind of layer (stem, block, transition) and per-block profiles, on the
  first ``num_examples`` held-out examples."""
  report = measure_fn(variables, dataset.x_test[:num_examples], dataset.y_test[:num_examples])
  by_kind = {kind: signal.summarize(report, kind) for kind in sorted(set(report.kinds))}
  return {"by_kind": by_kind, "profile": signal.layer_profile(report)}


def jsonable(tree):
  """Floats that JSON cannot hold (NaN, inf) become null."""
  if isinstance(tree, dict):
    return {k: jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [jsonable(v) for v in tree]
  if isinstance(tree, (float, np.floating)):
    return float(tree) if np.isfinite(tree) else None
  if isinstance(tree, np.integer):
    return int(tree)
  return tree


def write_json(path: str, tree) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(jsonable(tree), f, indent=1)
  os.replace(tmp, path)  # never leave a half-written file behind


def rewind_log(path: str, step: int, write: bool) -> list[dict]:
  """The records of a JSONL log up to ``step``, the step a run resumes from.

  A run that stopped after logging past its last checkpoint logs those steps again when it
  resumes; with ``write`` the file is cut back to ``step`` first, so every step appears once.
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  kept = [r for r in records if r["step"] <= step]
  if write and len(kept) < len(records):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)
  return kept


def _history_entry(step: int, measured: dict) -> dict:
  """The block δ statistics of one measurement during training, for ``summary["history"]``."""
  blocks = measured["by_kind"]["block"]
  return {"step": step, **{k: blocks[k] for k in HISTORY_KEYS}}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, dataset=None) -> dict:
  """Trains one model, measures it before and after, writes ``workdir`` (see module docstring).

  Args:
    config: a run config (``configs/default.py``).
    workdir: output directory; an existing checkpoint there is resumed.
    dataset: the loaded ``config.data`` (a sweep loads it once for all runs).

  Returns:
    The summary written to ``workdir/summary.json``.
  """
  dataset = dataset or data_lib.load(config.data)
  validate(config, dataset)
  lead = jax.process_index() == 0  # with several processes, one writes the files
  os.makedirs(workdir, exist_ok=True)
  if lead:
    write_json(os.path.join(workdir, "config.json"), config.to_dict())
  model = build_model(config, dataset.num_outputs)
  loss_fn = loss_function(dataset.task)
  replicated, batch_sharding = _shardings()
  seed = run_seed(config)

  tx = make_optimizer(config, projection_targets(config, dataset))
  state = create_train_state(model, jax.random.key(seed), dataset.x_train[:1], tx, replicated)
  measure_fn = jax.jit(functools.partial(signal.measure, model, loss_fn=loss_fn, train=False))
  init_variables = _variables(state)
  if state.batch_stats is not None:
    # Eval mode with the initial running statistics (mean 0, variance 1) would make every
    # BatchNorm the identity: measure with statistics of the measured batch instead.
    init_variables = jax.jit(functools.partial(resnet.calibrate_batch_stats, model))(
        init_variables, dataset.x_test[:config.signal.num_examples])
  init_signal = measure_signal(measure_fn, init_variables, dataset, config.signal.num_examples)

  checkpoints = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
  )
  start = checkpoints.latest_step() or 0
  if start:
    state = checkpoints.restore(start, args=ocp.args.StandardRestore(state))
    logging.info("resumed %s from step %d", workdir, start)

  step_fn = jax.jit(functools.partial(train_step, loss_fn=loss_fn), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, loss_fn=loss_fn, task=dataset.task))
  started = time.time()
  metrics_path, signal_path = os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "signal.jsonl")
  logged = rewind_log(metrics_path, start, write=lead)
  history = [_history_entry(r["step"], r) for r in rewind_log(signal_path, start, write=lead)]
  diverged, train_loss = None, logged[-1]["train_loss"] if logged else float("nan")
  window, losses = [], []  # step metrics on device since the last check; losses since the last log
  last_signal = (None, None)  # (step, measurement) of the latest measurement during training
  with contextlib.ExitStack() as files:
    metrics_file = files.enter_context(open(metrics_path, "a")) if lead else None
    signal_file = files.enter_context(open(signal_path, "a")) if lead and config.signal.every else None
    for step in range(start, config.num_steps):
      rows = data_lib.batch_indices(len(dataset.x_train), config.batch_size, step, seed)
      transform = functools.partial(data_lib.augment, seed=seed, step=step) if config.augment else None
      batch = _global_batch(batch_sharding, dataset.x_train, dataset.y_train, rows, transform)
      state, metrics = step_fn(state, batch)
      window.append(metrics)  # stays on device until the next check
      done = step + 1
      log_now = done % config.log_every == 0 or done == config.num_steps
      save_now = config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.num_steps)
      measure_now = config.signal.every and done % config.signal.every == 0
      if not (log_now or save_now or measure_now):
        continue
      window = jax.device_get(window)
      losses += [float(m["loss"]) for m in window]
      finite, window = all(m["finite"] for m in window), []
      if not finite:
        diverged = (done, float(np.mean(losses)))
        break
      if log_now:
        train_loss, losses = float(np.mean(losses)), []
        if lead:
          metrics_file.write(json.dumps({"step": done, "train_loss": train_loss}) + "\n")
      if measure_now:
        last_signal = (done, measure_signal(measure_fn, _variables(state), dataset, config.signal.num_examples))
        history.append(_history_entry(done, last_signal[1]))
        if lead:
          signal_file.write(json.dumps(jsonable({"step": done, **last_signal[1]})) + "\n")
      if save_now:
        checkpoints.save(done, args=ocp.args.StandardSave(state))
  checkpoints.wait_until_finished()
  last_checkpoint = checkpoints.latest_step()
  checkpoints.close()
  if diverged:
    diverged = Diverged(*diverged, last_checkpoint)
    logging.warning("%s: %s", workdir, diverged)

  summary = {
      "model": config.model.name,
      "depth": config.model.depth,
      "steps": diverged.step if diverged else config.num_steps,
      "diverged": diverged is not None,
      "diverged_at_step": diverged.step if diverged else None,
      "last_checkpoint": last_checkpoint,
      "train_loss": diverged.loss if diverged else train_loss,
      "train_seconds": time.time() - started,
      "init": init_signal,
      "history": history,
  }
  if diverged is None:
    summary.update(evaluate(eval_fn, state, dataset, config.eval_batch_size, batch_sharding))
    summary["trained"] = last_signal[1] if last_signal[0] == config.num_steps else measure_signal(
        measure_fn, _variables(state), dataset, config.signal.num_examples)
  if lead:
    write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
