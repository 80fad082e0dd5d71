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

import dataclasses
import functools
import time
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from resnorm import data as data_lib
from resnorm import models, records, signal, train


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


def _shardings(devices):
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


def _initial_measurement(config, model, state, measure_fn, dataset) -> records.Measurement:
  variables = train.variables(state)
  calibrate = models.family(config.model.name).calibrate_batch_stats
  if calibrate is not None:
    # Eval mode with the initial running statistics (mean 0, variance 1) would make every
    # BatchNorm the identity: measure with statistics of the measured batch instead.
    variables = jax.jit(functools.partial(calibrate, model))(variables, dataset.x_test[:config.signal.num_examples])
  return _measure(measure_fn, variables, dataset, config.signal.num_examples)


def _checkpoint_manager(directory, local: bool) -> ocp.CheckpointManager:
  """Keeps the last two checkpoints; with ``local``, this process alone saves and restores."""
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  if local and jax.process_count() > 1:
    process = jax.process_index()
    directory.mkdir(parents=True, exist_ok=True)  # Orbax creates it only when every process takes part
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=False, multiprocessing_options=(
        ocp.options.MultiprocessingOptions(primary_host=process, active_processes={process},
                                           barrier_sync_key_prefix=f"process{process}")))
  return ocp.CheckpointManager(directory, options=options)


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
  """
  dataset = dataset or data_lib.load(config.data)
  lead = local or jax.process_index() == 0  # one process writes the files
  workdir = records.path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if lead:
    records.write_json(workdir / "config.json", records.config_dict(config))
  model = build_model(config, dataset.num_outputs)
  loss_fn = train.loss_function(dataset.task)
  replicated, batch_sharding = _shardings(jax.local_devices() if local else jax.devices())
  seed = run_seed(config)
  targets = models.family(config.model.name).projection_targets
  tx = train.make_optimizer(config, targets(dataset.x_train.shape) if config.procrustes.enabled else None)
  state = train.create_train_state(model, jax.random.key(seed), dataset.x_train[:1], tx, replicated)
  measure_fn = jax.jit(functools.partial(signal.measure, model, loss_fn=loss_fn, train=False))
  init = _initial_measurement(config, model, state, measure_fn, dataset)

  checkpoints = _checkpoint_manager(workdir / "checkpoints", local)
  # Orbax saves device arrays only when every process takes part; a process training alone
  # among several saves and restores host copies.
  host_copies = local and jax.process_count() > 1
  start = checkpoints.latest_step() or 0
  if start:
    target = jax.device_get(state) if host_copies else state
    state = checkpoints.restore(start, args=ocp.args.StandardRestore(target))
    state = jax.device_put(state, replicated) if host_copies else state
    logging.info("resumed %s from step %d", workdir, start)

  step_fn = jax.jit(functools.partial(train.train_step, loss_fn=loss_fn), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(train.eval_step, loss_fn=loss_fn, task=dataset.task))
  started = time.time()
  metrics_log = records.JsonlLog(workdir / "metrics.jsonl", write=lead)
  signal_log = records.JsonlLog(workdir / "signal.jsonl", write=lead)
  logged = metrics_log.rewind(start)
  history = [records.HistoryPoint.of(r["step"], records.Measurement.from_json(r)) for r in signal_log.rewind(start)]
  divergence, train_loss = None, logged[-1]["train_loss"] if logged else float("nan")
  window, losses = [], []  # step metrics on device since the last check; losses since the last log
  latest = None  # the latest measurement during training, a (step, Measurement) pair
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
      divergence = Divergence(done, float(np.mean(losses)))
      break
    if log_now:
      train_loss, losses = float(np.mean(losses)), []
      metrics_log.append({"step": done, "train_loss": train_loss})
    if measure_now:
      latest = (done, _measure(measure_fn, train.variables(state), dataset, config.signal.num_examples))
      history.append(records.HistoryPoint.of(*latest))
      signal_log.append({"step": done, **latest[1].to_json()})
    if save_now:
      checkpoints.save(done, args=ocp.args.StandardSave(jax.device_get(state) if host_copies else state))
  checkpoints.wait_until_finished()
  last_checkpoint = checkpoints.latest_step()
  checkpoints.close()

  record = records.RunRecord(
      model=config.model.name,
      depth=config.model.depth,
      steps=divergence.step if divergence else config.num_steps,
      diverged=divergence is not None,
      diverged_at_step=divergence.step if divergence else None,
      last_checkpoint=last_checkpoint,
      train_loss=divergence.loss if divergence else train_loss,
      train_seconds=time.time() - started,
      init=init,
      history=history,
      setting=config.get("setting"),
      seed=config.seed,
      target_variance=float(np.mean(np.var(dataset.y_train, axis=0))) if dataset.task == "regression" else None,
  )
  if divergence:
    kept = f"the last good checkpoint (step {last_checkpoint}) is kept" if last_checkpoint else "no checkpoint was saved"
    logging.warning("%s: training diverged by step %d (mean loss %s); %s", workdir, divergence.step,
                    divergence.loss, kept)
  else:
    trained = latest[1] if latest and latest[0] == config.num_steps else _measure(
        measure_fn, train.variables(state), dataset, config.signal.num_examples)
    record = dataclasses.replace(
        record, trained=trained, **evaluate(eval_fn, state, dataset, config.eval_batch_size, batch_sharding))
  if lead:
    records.write_run(workdir, record)
  return record
