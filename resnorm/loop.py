"""The training loop: ``train_and_evaluate(config, workdir)``, as in flax/examples.

One run trains ``config.model.name`` at depth ``config.model.depth`` on ``config.data``,
measures the backward ratios (:mod:`resnorm.signal`) on held-out examples at initialisation and
after training, and writes ``workdir/``:

* ``config.json`` — the resolved config;
* ``checkpoints/`` — Orbax checkpoints every ``checkpoint_every`` steps; a run started again
  in the same workdir resumes from the latest one;
* ``metrics.jsonl`` — every ``log_every`` steps, the train loss averaged over the steps since
  the previous log (or since the resume);
* ``signal.jsonl`` — with ``signal.every`` > 0, the δ statistics and per-layer profiles every
  ``signal.every`` steps during training;
* ``summary.json`` — the :class:`resnorm.records.RunRecord`.

Parameters are replicated and batches split over the mesh axis ``'data'``; with several
processes, each loads only its rows of every batch and process 0 writes the files. A step
whose loss or parameters are not finite stops the run: the checkpoint directory keeps the last
good state and the record says ``diverged`` with the step. The config is validated by the
entry points (:mod:`resnorm.config_validation`) before it gets here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import signal as signal_lib
import sys
import threading
import time
import zlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from absl import logging
from flax import traverse_util

from resnorm import data as data_lib
from resnorm import models, procrustes, records, signal, train, writers


@dataclasses.dataclass(frozen=True)
class Divergence:
  """A non-finite loss or parameter, found at the check after ``step`` (checks come every few
  steps); ``loss`` is the mean train loss since the previous log."""

  step: int
  loss: float


def run_seed(config) -> int:
  """A run's seed: ``config.seed`` mixed with model name and depth, so runs are independent
  of which other runs share the sweep (a split sweep reproduces the joint one exactly)."""
  return zlib.crc32(f"{config.seed}/{config.model.name}/{config.model.depth}".encode())


def build_model(config, num_outputs: int):
  """``config.model`` built through the registry (options other families take are dropped)."""
  options = {k: v for k, v in config.model.items() if k not in ("name", "depth")}
  return models.create_model(config.model.name, config.model.depth, num_classes=num_outputs,
                             **models.accepted_options(config.model.name, options, prefix=""))


def shardings(devices) -> tuple[jax.sharding.NamedSharding, jax.sharding.NamedSharding]:
  """(replicated, batch split over axis ``'data'``) on a one-axis mesh of ``devices``."""
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  return (
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
  )


def _global_batch(sharding, x, y, rows, transform=None):
  """The global batch ``rows`` as arrays split over the mesh; this process supplies its share
  (all of it when the mesh holds only this process's devices)."""
  if not sharding.is_fully_addressable:
    rows = data_lib.process_rows(rows)
  x, y = x[rows], y[rows]
  if transform is not None:
    x = transform(x)
  return tuple(jax.make_array_from_process_local_data(sharding, a) for a in (x, y))


def training_batches(config, dataset, sharding, seed: int, steps: range) -> Iterator[tuple[jax.Array, ...]]:
  """The global training batches of ``steps`` on ``sharding``, ``config.prefetch`` ahead on a
  background thread: rows (:func:`resnorm.data.batch_indices`) and augmentation are pure
  functions of (``seed``, step), so a resumed run sees the batches an uninterrupted one would."""

  def batch_at(step):
    rows = data_lib.batch_indices(len(dataset.x_train), config.batch_size, step, seed)
    transform = functools.partial(data_lib.augment, seed=seed, step=step,
                                  mode=config.get("augment_padding", "zero")) if config.augment else None
    return _global_batch(sharding, dataset.x_train, dataset.y_train, rows, transform)

  return data_lib.prefetch(map(batch_at, steps), config.get("prefetch", 0))


def evaluate(eval_fn, state, dataset, batch_size, sharding) -> dict[str, float]:
  """Averages over the whole test split (the last, smaller batch included)."""
  totals = {}
  num_test = len(dataset.x_test)
  for start in range(0, num_test, batch_size):
    rows = np.arange(start, min(start + batch_size, num_test))
    if len(rows) % sharding.mesh.size:
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


def _measure(measure_fn, variables, dataset, num_examples: int) -> records.Measurement:
  """The backward ratios on the first ``num_examples`` held-out examples."""
  report = measure_fn(variables, dataset.x_test[:num_examples], dataset.y_test[:num_examples])
  return records.Measurement.from_report(report)


def optimizers(config, dataset, steps_per_epoch: int) -> dict[bool, optax.GradientTransformation]:
  """The optimizer of a step that projects (True) and of one that does not (False).

  With ``config.procrustes.enabled`` the host decides, step by step, whether the projection
  acts (:func:`resnorm.procrustes.acts`), and each choice has its own compiled step: a
  conditional on device would cost about as much as the projection it skips. Both carry the
  same optimizer state, so a run switches between them freely.
  """
  if not config.procrustes.enabled:
    tx = train.make_optimizer(config, steps_per_epoch=steps_per_epoch)
    return {False: tx, True: tx}
  targets = models.family(config.model.name).projection_targets(
      dataset.x_train.shape, stem_convention=config.procrustes.get("stem", "correct"))
  return {project: train.make_optimizer(config, targets, project, steps_per_epoch=steps_per_epoch)
          for project in (False, True)}


def projects(config, step: int) -> bool:
  """Whether the projection acts after optimizer step ``step`` (1, 2, …)."""
  return config.procrustes.enabled and procrustes.acts(
      step, probability=config.procrustes.probability, every=config.procrustes.every or None, seed=config.seed)


def _initial_measurement(config, model, state, measure_fn, dataset) -> records.Measurement:
  variables = train.variables(state)
  calibrate = models.family(config.model.name).calibrate_batch_stats
  if calibrate is not None:
    # Eval mode with the initial running statistics (mean 0, variance 1) would make every
    # BatchNorm the identity: measure with statistics of the measured batch instead.
    variables = jax.jit(functools.partial(calibrate, model))(variables, dataset.x_test[:config.signal.num_examples])
  return _measure(measure_fn, variables, dataset, config.signal.num_examples)


def _checkpoint_manager(directory, local: bool) -> ocp.CheckpointManager:
  """Keeps the last two checkpoints; with ``local``, this process alone saves and restores.

  Saves run in the background, except in a run on a thread other than the main one (a sweep's
  parallel runs): two managers of one process saving the same step at once in the background
  race in Orbax 0.12 (one removes the other's temporary directory).
  """
  background = threading.current_thread() is threading.main_thread()
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=background)
  if local and jax.process_count() > 1:
    process = jax.process_index()
    directory.mkdir(parents=True, exist_ok=True)  # Orbax creates it only when every process takes part
    options = ocp.CheckpointManagerOptions(
        max_to_keep=2, create=False, enable_async_checkpointing=background, multiprocessing_options=(
            ocp.options.MultiprocessingOptions(primary_host=process, active_processes={process},
                                               barrier_sync_key_prefix=f"process{process}")))
  return ocp.CheckpointManager(directory, options=options)


# ----------------------------------------------------------------------------- the workdir

# Fields a resumed run may change: how it reports, and how long it trains.
RESUMABLE_FIELDS = ("log_every", "checkpoint_every", "eval_every", "eval_batch_size", "data.data_dir",
                    "tensorboard", "progress_bar", "prefetch", "num_steps", "num_epochs")


class WorkdirError(ValueError):
  """The workdir holds what this run cannot continue: nothing in it was changed."""


class Preempted(Exception):
  """SIGTERM stopped the run after it saved a checkpoint at ``step``."""

  def __init__(self, step: int, workdir):
    self.step, self.workdir = step, workdir
    super().__init__(f"stopped by SIGTERM at step {step}; the checkpoint of step {step} is saved in "
                     f"{workdir}/checkpoints: run the same command to resume")


def config_differences(saved: dict, config) -> list[str]:
  """``field: saved -> now`` for each field (outside :data:`RESUMABLE_FIELDS`) that differs."""
  saved, now = (traverse_util.flatten_dict(tree, sep=".") for tree in (saved, records.config_dict(config)))
  return [f"{key}: {saved.get(key, '(absent)')!r} there, {now.get(key, '(absent)')!r} now"
          for key in sorted(set(saved) | set(now))
          if key not in RESUMABLE_FIELDS and saved.get(key) != now.get(key)]


def _checkpoint_steps(directory) -> list[int]:
  """The steps of the finished checkpoints in ``directory`` (a save cut short leaves a temporary
  directory whose name is not a number)."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def check_workdir(workdir, config) -> None:
  """Refuses a workdir whose checkpoints belong to another model or config, naming the fields
  that differ; reads only."""
  steps = _checkpoint_steps(workdir / "checkpoints")
  if not steps or not (workdir / "config.json").exists():
    return
  differences = config_differences(records.read_json(workdir / "config.json"), config)
  if differences:
    raise WorkdirError(
        f"{workdir} holds checkpoints (steps {steps}) of another config; fields that differ: "
        f"{'; '.join(differences)}. Nothing was changed: use another --workdir, or the same config to resume.")


def _restore(checkpoints, state, workdir, host_copies: bool, sharding):
  """The state of the latest checkpoint that restores, and its step (0 and ``state`` when there
  is none). An unreadable checkpoint is moved to ``workdir/unreadable_checkpoints/`` with a
  warning and the one before it tried; when checkpoints exist but none restores, the run stops
  with :class:`WorkdirError` rather than starting again from scratch."""
  steps = checkpoints.all_steps()
  errors = []
  for step in sorted(steps, reverse=True):
    target = jax.device_get(state) if host_copies else state
    try:
      restored = checkpoints.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as error:  # pylint: disable=broad-except  (Orbax raises many kinds on bad files)
      errors.append(f"step {step}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
      continue
    if errors:
      aside = workdir / "unreadable_checkpoints"
      aside.mkdir(parents=True, exist_ok=True)
      for bad in steps:
        if bad > step:
          (workdir / "checkpoints" / str(bad)).rename(aside / str(bad))
      logging.warning("%s: the later checkpoints do not restore (%s); moved them to %s and resumed from step %d",
                      workdir, "; ".join(errors), aside, step)
      checkpoints.reload()
    return step, jax.device_put(restored, sharding) if host_copies else restored
  if errors:
    raise WorkdirError(f"{workdir}/checkpoints: no checkpoint restores ({'; '.join(errors)}). Nothing was changed: "
                       "move the checkpoints away to start from scratch.")
  return 0, state


# ----------------------------------------------------------------------------- what a person watches


class _Progress:
  """Step/total, epoch, loss, learning rate, images/s and ETA: a tqdm bar on the lead process
  when ``bar``, else one INFO line per log."""

  def __init__(self, lead: bool, bar: bool, start: int, total: int, steps_per_epoch: int, batch_size: int):
    self.lead, self.total, self.steps_per_epoch, self.batch_size = lead, total, steps_per_epoch, batch_size
    self.bar = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True) if lead and bar else None
    self.step, self.time = start, time.perf_counter()
    self.first = None  # (step, time) of the first update: throughput after it leaves out compilation

  def update(self, step: int, loss: float, learning_rate: float) -> float:
    """Reports ``step``; returns the images/s since the previous update."""
    now = time.perf_counter()
    images_per_second = (step - self.step) * self.batch_size / max(now - self.time, 1e-9)
    self.first = self.first or (step, now)
    eta = (self.total - step) * self.batch_size / max(images_per_second, 1e-9)
    epoch = step / self.steps_per_epoch
    if self.bar is not None:
      self.bar.update(step - self.step)
      self.bar.set_postfix(epoch=f"{epoch:.2f}", loss=f"{loss:.4g}", lr=f"{learning_rate:.3g}",
                           img_s=f"{images_per_second:.0f}")
    elif self.lead:
      logging.info("step %d/%d (epoch %.2f): loss %.4g, learning rate %.3g, %.0f images/s, ETA %s", step, self.total,
                   epoch, loss, learning_rate, images_per_second, datetime.timedelta(seconds=round(eta)))
    self.step, self.time = step, now
    return images_per_second

  def throughput(self) -> float | None:
    """Images/s from the first update to the last (compilation left out); None before two."""
    if self.first is None or self.step == self.first[0]:
      return None
    return (self.step - self.first[0]) * self.batch_size / (self.time - self.first[1])

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class _SigtermFlag:
  """While entered on the main thread, SIGTERM sets ``requested`` instead of killing the process
  (threads cannot take signals: a sweep's runs in threads keep the default)."""

  def __init__(self):
    self.requested, self._previous = False, None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal_lib.signal(signal_lib.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint at the current step, then stopping")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal_lib.signal(signal_lib.SIGTERM, self._previous)


def _best(evaluations: list[dict]) -> tuple[float | None, int | None]:
  """The best test accuracy among evaluation rows and its step (the earliest on ties)."""
  scored = [row for row in evaluations if row.get("test_accuracy") is not None]
  if not scored:
    return None, None
  best = max(scored, key=lambda row: (row["test_accuracy"], -row["step"]))
  return best["test_accuracy"], best["step"]


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, dataset=None, *,
                       local: bool = False) -> records.RunRecord:
  """Trains one model, measures it before and after, writes ``workdir`` (see module docstring).

  Args:
    config: a validated run config (``configs/default.py``).
    workdir: output directory, local or ``gs://``; an existing checkpoint there is resumed.
    dataset: the loaded ``config.data`` (a sweep loads it once for all runs).
    local: train on this process's devices alone, and write the files from this process (a
      sweep that spreads its runs over the processes); otherwise every process takes part,
      each loading its rows of every batch, and process 0 writes.

  Returns:
    The record written to ``workdir/summary.json``.

  Raises:
    WorkdirError: the workdir holds checkpoints of another config, or none that restores.
    Preempted: SIGTERM arrived (on the main thread); a checkpoint of the current step is saved.
  """
  dataset = dataset or data_lib.load(config.data)
  lead = local or jax.process_index() == 0  # one process writes the files
  workdir = records.path(workdir)
  check_workdir(workdir, config)
  workdir.mkdir(parents=True, exist_ok=True)
  model = build_model(config, dataset.num_outputs)
  loss_fn = train.loss_function(dataset.task)
  replicated, batch_sharding = shardings(jax.local_devices() if local else jax.devices())
  seed = run_seed(config)
  steps_per_epoch = len(dataset.x_train) // config.batch_size
  num_steps = train.total_steps(config, steps_per_epoch)
  eval_every = steps_per_epoch if config.get("eval_every") is None else config.eval_every
  schedule = train.learning_rate_schedule(config, steps_per_epoch)
  optimizer_if = optimizers(config, dataset, steps_per_epoch)  # projecting step? -> its optimizer
  state = train.create_train_state(model, jax.random.key(seed), dataset.x_train[:1], optimizer_if[False], replicated)
  measure_fn = jax.jit(functools.partial(signal.measure, model, loss_fn=loss_fn, train=False))
  init = _initial_measurement(config, model, state, measure_fn, dataset)

  checkpoints = _checkpoint_manager(workdir / "checkpoints", local)
  # Orbax saves device arrays only when every process takes part; a process training alone
  # among several saves and restores host copies.
  host_copies = local and jax.process_count() > 1
  start, state = _restore(checkpoints, state, workdir, host_copies, replicated)
  if start:
    logging.info("resumed %s from step %d of %d", workdir, start, num_steps)
  if lead:
    records.write_json(workdir / "config.json", records.config_dict(config))

  step_fn = jax.jit(functools.partial(train.train_step, loss_fn=loss_fn), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(train.eval_step, loss_fn=loss_fn, task=dataset.task))
  started = time.time()
  writer = writers.MetricWriter(workdir, write=lead, tensorboard=config.get("tensorboard", False))
  logged, measured = writer.rewind(start)
  history = [records.HistoryPoint.of(r["step"], records.Measurement.from_json(r)) for r in measured]
  trained_rows = [r for r in logged if "train_loss" in r]
  evaluations = [r for r in logged if "test_loss" in r]
  divergence, train_loss = None, trained_rows[-1]["train_loss"] if trained_rows else float("nan")
  window, losses = [], []  # step metrics on device since the last check; losses since the last log
  latest = None  # the latest measurement during training, a (step, Measurement) pair
  preempted = None  # the step SIGTERM stopped the run at
  progress = _Progress(lead, _show_bar(config), start, num_steps, steps_per_epoch, config.batch_size)

  batches = training_batches(config, dataset, batch_sharding, seed, range(start, num_steps))
  with contextlib.closing(batches), _SigtermFlag() as sigterm:
    for step, batch in zip(range(start, num_steps), batches):
      state, metrics = step_fn(state.replace(tx=optimizer_if[projects(config, step + 1)]), batch)
      window.append(metrics)  # stays on device until the next check
      done = step + 1
      stop_now = sigterm.requested or (jax.process_count() > 1 and not local
                                       and checkpoints.reached_preemption(done))
      log_now = done % config.log_every == 0 or done == num_steps
      save_now = stop_now or config.checkpoint_every and (done % config.checkpoint_every == 0 or done == num_steps)
      measure_now = config.signal.every and done % config.signal.every == 0
      eval_now = eval_every and done % eval_every == 0 or done == num_steps
      if not (log_now or save_now or measure_now or eval_now):
        continue
      window = jax.device_get(window)
      losses += [float(m["loss"]) for m in window]
      finite, window = all(m["finite"] for m in window), []
      if not finite:
        divergence = Divergence(done, float(np.mean(losses)))
        break
      if log_now:
        train_loss, losses = float(np.mean(losses)), []
        learning_rate = float(schedule(step))
        images_per_second = progress.update(done, train_loss, learning_rate)
        writer.train(done, {"train_loss": train_loss, "learning_rate": learning_rate,
                            "epoch": done / steps_per_epoch}, images_per_second=images_per_second)
      if measure_now:
        latest = (done, _measure(measure_fn, train.variables(state), dataset, config.signal.num_examples))
        history.append(records.HistoryPoint.of(*latest))
        writer.measurement(done, latest[1])
      if eval_now:
        evaluations.append({"step": done, **evaluate(eval_fn, state, dataset, config.eval_batch_size, batch_sharding)})
        writer.evaluation(done, evaluations[-1])
        best = _best(evaluations)
        logging.info("step %d: test loss %.4g%s", done, evaluations[-1]["test_loss"],
                     f", accuracy {evaluations[-1]['test_accuracy']:.4f} (best {best[0]:.4f} at step {best[1]})"
                     if best[0] is not None else "")
      if save_now:
        checkpoints.save(done, args=ocp.args.StandardSave(jax.device_get(state) if host_copies else state),
                         force=stop_now)
        logging.info("checkpoint of step %d saved in %s", done, workdir / "checkpoints")
      if stop_now:
        preempted = done
        break
  progress.close()
  checkpoints.wait_until_finished()
  last_checkpoint = checkpoints.latest_step()
  checkpoints.close()
  writer.close()
  if preempted is not None:
    raise Preempted(preempted, workdir)

  best_accuracy, best_step = _best(evaluations)
  record = records.RunRecord(
      model=config.model.name,
      depth=config.model.depth,
      steps=divergence.step if divergence else num_steps,
      diverged=divergence is not None,
      diverged_at_step=divergence.step if divergence else None,
      last_checkpoint=last_checkpoint,
      train_loss=divergence.loss if divergence else train_loss,
      train_seconds=time.time() - started,
      init=init,
      history=history,
      images_per_second=progress.throughput(),
      setting=config.get("setting"),
      seed=config.seed,
      target_variance=float(np.mean(np.var(dataset.y_train, axis=0))) if dataset.task == "regression" else None,
  )
  if divergence:
    kept = (f"the last good checkpoint (step {last_checkpoint}) is kept" if last_checkpoint
            else "no checkpoint was saved")
    logging.warning("%s: training diverged by step %d (mean loss %s); %s", workdir, divergence.step,
                    divergence.loss, kept)
  else:
    trained = latest[1] if latest and latest[0] == num_steps else _measure(
        measure_fn, train.variables(state), dataset, config.signal.num_examples)
    final = evaluations[-1] if evaluations and evaluations[-1]["step"] == num_steps else evaluate(
        eval_fn, state, dataset, config.eval_batch_size, batch_sharding)
    record = dataclasses.replace(record, trained=trained, best_test_accuracy=best_accuracy, best_step=best_step,
                                 **{k: v for k, v in final.items() if k != "step"})
  if lead:
    records.write_run(workdir, record)
  return record


def _show_bar(config) -> bool:
  """``config.progress_bar``, or (None) whether stderr, where tqdm draws, is a terminal."""
  choice = config.get("progress_bar")
  return sys.stderr.isatty() if choice is None else choice
