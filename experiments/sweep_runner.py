"""Running a depth sweep: every run of its plan trained (or reused) and the outputs written.

:func:`run_sweep` validates the config once, refuses a workdir that holds runs of another config,
takes the workdir's lock, and trains the groups of :func:`resnorm.sweep_plan.groups` that have
not finished, the costliest first:

* one process: one group after another in this process (``config.parallel_runs = 1``), or in
  ``parallel_runs`` worker processes, each training one group at a time in its main thread, so
  that one group's compilation overlaps another's training;
* several processes (``jax.distributed``), ``config.placement = 'mesh'``: every group on every
  device of every process, one after another in the same order everywhere;
* ``'spread'``: process p trains groups p, p + P, … on its own devices, and every process reads the
  others' records once all are done.

A finished run in the workdir is reused where its files prove it is that run, an interrupted group
resumes whole from the newest step all its runs saved (its records committed together), and a run
whose files do not read or are another run's is set aside (``set_aside/``) and trained again; a run
another process trains is refused. A stop request
(:class:`resnorm.preemption.StopSignals`: SIGTERM or Ctrl-C) stops every group in training at a
saved step, and the groups not started before they start; the same command then goes on.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib
import importlib.machinery
import inspect
import json
import multiprocessing
import multiprocessing.connection
import os
import runpy
import sys
import threading
import time

import jax
import ml_collections
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from experiments import cluster, sweep_outputs
from resnorm import (
  checkpoints,
  config_validation,
  data,
  loop,
  models,
  ownership,
  preemption,
  records,
  statistics,
  sweep_plan,
)
from resnorm.sweep_summary import summarize_sweep

SET_ASIDE = "set_aside"  # run directories whose files did not read, moved here
FAILED = "FAILED"  # in a run directory (spread placement): a run that raised, with the error


def run_sweep(config, workdir, progress: bool = True, should_stop=preemption.never) -> records.SweepSummary:
  """Validates the sweep config once, runs (or reuses) every run of its plan and writes the
  outputs to ``workdir`` (:mod:`experiments.sweep_outputs`). Either placement over several
  processes gives the one-process sweep's summary; process 0 writes it.

  Args:
    config: a sweep config (``configs/depth_sweep.py``).
    workdir: the sweep's directory, local or ``gs://``.
    progress: draw a progress bar (process 0).
    should_stop: read between stretches of steps and between groups: once it returns True the
      runs in training save their current step and :class:`resnorm.preemption.Preempted` is raised.

  Raises:
    config_validation.ConfigError: for a bad field, before anything is written or compiled.
    records.WorkdirError: the workdir holds runs of another config, or another process works there.
    RuntimeError: a run failed on some process (spread placement); the message names it.
  """
  config_validation.check_sweep(config)
  workdir = records.path(workdir)
  runs = sweep_plan.plan(config)
  refuse_runs_of_another_config(workdir, runs)
  # One sweep per workdir (one process: a process of several cannot refuse alone).
  with ownership.WorkdirLock(workdir) if jax.process_count() == 1 else contextlib.nullcontext():
    return _run_sweep(config, workdir, runs, progress, should_stop)


def _run_sweep(config, workdir, runs, progress: bool, should_stop) -> records.SweepSummary:
  """:func:`run_sweep` once its config and workdir passed the door."""
  lead = jax.process_index() == 0
  if lead:
    records.make_dir(workdir)
    records.write_json(workdir / "config.json", records.config_dict(config))
  by_cost = sorted(sweep_plan.groups(runs, config.group_seeds), key=lambda group: -group[0].depth * len(group))
  if config.placement == "spread" and jax.process_count() > 1:
    results = _run_spread(by_cost, workdir, should_stop)
  else:
    workers = config.parallel_runs if jax.process_count() == 1 else 1
    results = _run_all(by_cost, workdir, workers, progress and lead, should_stop)
  overrides = {name: sweep_plan.setting_overrides(config, name) for name in sweep_plan.settings(config)}
  summary = summarize_sweep(results, overrides, config.bound_L)
  if lead:
    sweep_outputs.write_outputs(workdir, summary, results)
  return summary


def _run_dir(workdir, run: sweep_plan.Run):
  return workdir / sweep_plan.RUNS / run.name


def _reusable(group: list[sweep_plan.Run], workdir) -> list[records.RunRecord | None]:
  """Per run of ``group``, its record where it finished in ``workdir`` and proves to be that run
  (None where it did not). A run another process trains is refused (:func:`resnorm.ownership.refuse_if_in_use`);
  a run whose files do not read, or whose record is not of this run
  (:func:`resnorm.sweep_plan.record_mismatch`), is set aside to train again."""
  found = []
  for run in group:
    run_dir = _run_dir(workdir, run)
    ownership.refuse_if_in_use(run_dir)
    record, saved = _readable_record(run_dir, workdir)
    if record is not None:
      if problems := sweep_plan.record_mismatch(run, record, saved):
        _set_aside(run_dir, workdir, f"{run_dir / 'summary.json'} is not this run's record ({'; '.join(problems)})")
        record = None
    found.append(record)
  return found


def _commit_pending(groups, workdir) -> None:
  """Finishes the record commits a kill cut short (:func:`resnorm.records.commit_pending`) in the
  runs of ``groups``: by process 0 when every process takes part in every group, the others
  waiting for it, so that all read the same records."""
  if jax.process_index() == 0:
    for group in groups:
      for run in group:
        records.commit_pending(_run_dir(workdir, run))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("resnorm.sweep.commit")


def _run_all(groups, workdir, workers: int, progress: bool, should_stop) -> list[records.RunRecord]:
  """Every group's records: finished runs reused, the others trained, one group after another in
  this process (``workers = 1``) or ``workers`` groups at a time in worker processes. A stop
  request stops the groups in training at a saved step and the others before they start; then
  :class:`resnorm.preemption.Preempted` names the checkpoints saved."""
  _commit_pending(groups, workdir)
  results, jobs = [], []
  with tqdm.tqdm(total=sum(map(len, groups)), desc="sweep", unit="run", disable=not progress) as bar:

    def finished(records_):
      results.extend(records_)
      bar.update(len(records_))
      bar.set_postfix_str(f"{records_[-1].setting} L={records_[-1].depth} done")

    for group in groups:
      found = _reusable(group, workdir)
      if any(record is not None for record in found):
        finished([record for record in found if record is not None])
      todo = [run for run, record in zip(group, found) if record is None]
      if todo:
        jobs.append(([run.config for run in todo], [_run_dir(workdir, run) for run in todo]))
    if workers == 1 or len(jobs) <= 1:
      stopped = _train_here(jobs, finished, should_stop)
    else:
      stopped = _train_in_workers(jobs, workers, finished, should_stop)
  if stopped is not None:
    raise preemption.Preempted(None, stopped)
  return results


def _train_group(configs, workdirs, **kwargs) -> list[records.RunRecord]:
  """:func:`resnorm.loop.train_group` on the group's own data (a sweep's settings may train on
  different datasets)."""
  dataset = _dataset(json.dumps(records.config_dict(configs[0].data), sort_keys=True))
  return loop.train_group(configs, workdirs, dataset, **kwargs)


def _train_here(jobs, finished, should_stop) -> list | None:
  """Trains the ``jobs`` (configs, workdirs) one after another in this process; the workdirs of
  the runs a stop request stopped (None: none was)."""
  for configs, workdirs in jobs:
    if should_stop():
      return []
    try:
      finished(_train_group(configs, workdirs, should_stop=should_stop))
    except preemption.Preempted as error:
      return error.workdirs
  return None


def _train_in_workers(jobs, workers: int, finished, should_stop) -> list | None:
  """Trains the ``jobs`` in ``workers`` processes (spawned: JAX does not survive a fork), each
  taking the next job when it is done with one. A stop request here, or a job that fails,
  reaches the workers through an event they share: they stop at a saved step, and the jobs not
  started are cancelled; the first failure is raised once all have stopped."""
  context = multiprocessing.get_context("spawn")
  stop = context.Event()
  settings = _WorkerSettings.here([configs[0] for configs, _ in jobs], workers)
  stopped, failure = None, None
  with concurrent.futures.ProcessPoolExecutor(
    min(workers, len(jobs)), mp_context=context, initializer=_start_worker, initargs=(settings, stop)
  ) as pool:
    pending = {pool.submit(_train_in_worker, [c.to_dict() for c in configs], workdirs) for configs, workdirs in jobs}
    while pending:
      done, pending = concurrent.futures.wait(pending, timeout=0.25, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        if future.cancelled():
          continue
        try:
          finished(future.result())
        except preemption.Preempted as error:
          stopped = (stopped or []) + error.workdirs
        except Exception as error:  # pylint: disable=broad-except  (raised below, once the others stopped)
          failure = failure or error
      if (failure or should_stop()) and not stop.is_set():
        stop.set()
        for future in pending:
          future.cancel()
  if failure:
    raise failure
  return [] if stop.is_set() and stopped is None else stopped


@dataclasses.dataclass(frozen=True)
class _WorkerSettings:
  """What a spawned worker takes over from the process that starts it: the JAX settings a fresh
  process would not have, the logging verbosity, and the modules (or, for a config file, the
  files) that register the families, datasets and statistics of the runs."""

  cache_dir: str | None
  min_compile_secs: float
  verbosity: int
  imports: tuple[str, ...]
  files: tuple[str, ...]

  @classmethod
  def here(cls, configs, workers: int) -> _WorkerSettings:
    registering = [models.family(c.model.name).build for c in configs] + [data.LOADERS[c.data.name] for c in configs]
    registering += [statistic.compute for statistic in statistics.REGISTRY.values()]  # every measurement takes all
    imports, files = set(), set()
    for function in registering:
      module = inspect.getmodule(function)
      if module is not None and module.__name__.split(".")[0] == "resnorm":
        continue
      if module is not None and _importable(module):
        imports.add(module.__name__)
      elif module is not None and getattr(module, "__file__", None):
        files.add(module.__file__)
      else:
        raise config_validation.ConfigError(
          "config.parallel_runs",
          workers,
          f"1 for {function.__qualname__}, defined where a worker process cannot import it (a notebook or "
          "an interactive session): register it in a module or a config file",
        )
    return cls(
      jax.config.jax_compilation_cache_dir,
      jax.config.jax_persistent_cache_min_compile_time_secs,
      logging.get_verbosity(),
      tuple(sorted(imports)),
      tuple(sorted(files)),
    )


def _importable(module) -> bool:
  """Whether a fresh process finds ``module`` by its name on ``sys.path`` (not a config file, which
  is loaded from its path, nor a script run as ``__main__``)."""
  parent, _, leaf = module.__name__.rpartition(".")
  search = getattr(sys.modules.get(parent), "__path__", None) if parent else None
  if module.__name__ == "__main__" or (parent and search is None):
    return False
  spec = importlib.machinery.PathFinder.find_spec(leaf, search)
  return spec is not None and spec.origin == getattr(module, "__file__", None)


_WORKER = {}  # in a worker process: its stop flag (the process's StopSignals)


def _start_worker(settings: _WorkerSettings, stop) -> None:
  if settings.cache_dir:
    jax.config.update("jax_compilation_cache_dir", settings.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", settings.min_compile_secs)
    cluster.replace_unreadable_cache_entries()
  logging.set_verbosity(settings.verbosity)
  for name in settings.imports:
    importlib.import_module(name)
  for file in settings.files:
    sys.path.insert(0, os.path.dirname(os.path.abspath(file)))  # what the file imports from beside it
    runpy.run_path(file, run_name=f"resnorm_worker_config_{len(sys.modules)}")
  signals = preemption.StopSignals(stop)
  signals.__enter__()  # for the worker's life: Ctrl-C reaches every process of the sweep
  _WORKER["should_stop"] = signals
  threading.Thread(target=_exit_with_the_sweep, daemon=True, name="exit-with-the-sweep").start()


def _exit_with_the_sweep() -> None:
  """Ends this worker once the sweep's process is gone (killed, ``kill -9`` included): nothing
  waits for its results, and it would hold its runs' locks against the rerun. A run it trains
  resumes from its last checkpoint, as the sweep's own runs do."""
  parent = multiprocessing.parent_process()
  if parent is not None:
    multiprocessing.connection.wait([parent.sentinel])
    os._exit(1)


@functools.lru_cache(maxsize=4)
def _dataset(data_json: str) -> data.Dataset:
  """The dataset of a ``config.data`` (as sorted JSON), loaded once per process."""
  return data.load(ml_collections.ConfigDict(json.loads(data_json)))


def _train_in_worker(configs: list[dict], workdirs: list) -> list[records.RunRecord]:
  configs = [ml_collections.ConfigDict(c) for c in configs]
  return _train_group(configs, workdirs, should_stop=_WORKER["should_stop"])


def _run_spread(groups, workdir, should_stop) -> list[records.RunRecord]:
  """Process p trains groups p, p + P, p + 2P, … of ``groups`` on its own devices; then all wait
  for each other and read every record. A group that raises leaves its error in each of its runs'
  ``<run>/FAILED``, so that every process, past the barrier, fails naming them instead of
  waiting forever."""
  process, count = jax.process_index(), jax.process_count()
  for group in groups[process::count]:
    markers = [_run_dir(workdir, run) / FAILED for run in group]
    for marker in markers:
      if marker.exists():
        marker.unlink()
    try:
      for run in group:  # this process wrote the group's pending records, and commits them
        records.commit_pending(_run_dir(workdir, run))
      found = _reusable(group, workdir)
      todo = [run for run, record in zip(group, found) if record is None]
      if todo:
        configs, workdirs = [run.config for run in todo], [_run_dir(workdir, run) for run in todo]
        _train_group(configs, workdirs, local=True, should_stop=should_stop)
    except Exception as error:  # pylint: disable=broad-except  (reported to every process below)
      for marker in markers:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"process {process}: {type(error).__name__}: {error}")
      logging.exception("runs %s failed", ", ".join(run.name for run in group))
  multihost_utils.sync_global_devices("resnorm.sweep.spread")
  names = [run.name for group in groups for run in group]
  failed = [(name, (workdir / sweep_plan.RUNS / name / FAILED)) for name in names]
  failed = [(name, marker.read_text()) for name, marker in failed if marker.exists()]
  if failed:
    raise RuntimeError("sweep runs failed: " + "; ".join(f"{name} ({error})" for name, error in failed))
  return [records.read_run(workdir / sweep_plan.RUNS / name) for name in names]


def _readable_record(run_dir, workdir) -> tuple[records.RunRecord | None, dict | None]:
  """The record of ``run_dir`` where it finished and its ``config.json`` where there is one (None
  where not), after moving the run aside (:func:`_set_aside`) when its files do not read: a
  summary cut short, a log with a damaged row before its last, garbage bytes, a field missing or
  of the wrong type."""
  try:
    saved = records.read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else None
    record = records.read_run(run_dir) if (run_dir / "summary.json").exists() else None
    for name in ("metrics.jsonl", "signal.jsonl"):
      records.JsonlLog(run_dir / name, write=False)
    return record, saved
  except records.UnreadableRecord as error:
    _set_aside(run_dir, workdir, str(error))
    return None, None


def _set_aside(run_dir, workdir, why: str) -> None:
  """Moves ``run_dir`` to ``workdir/set_aside/`` with a warning saying ``why``: nothing is deleted,
  and the run trains again from the start, as an uninterrupted one."""
  aside = workdir / SET_ASIDE / f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}"
  aside.parent.mkdir(parents=True, exist_ok=True)
  while aside.exists():  # set aside twice within a second
    aside = aside.with_name(aside.name + "+")
  run_dir.rename(aside)
  logging.warning("%s: moved the run to %s; it trains again", why, aside)


def refuse_runs_of_another_config(workdir, runs: list[sweep_plan.Run]) -> None:
  """Refuses (:class:`resnorm.records.WorkdirError`) a workdir that holds one of ``runs``, finished
  or with checkpoints, under another config, naming the runs and the fields that differ; reads
  only, so nothing in the workdir has changed. A finished run must match in every field,
  ``num_steps`` included; an unfinished one may differ where a resume allows
  (:data:`resnorm.ownership.RESUMABLE_FIELDS`). Files that do not read are left to
  :func:`_set_aside_if_unreadable`."""
  if workdir.exists() and not workdir.is_dir():
    raise records.WorkdirError(f"--workdir {workdir} is a file: expected a directory (or a path to create)")
  refused = []
  for run in runs:
    run_dir = _run_dir(workdir, run)
    if not (run_dir / "config.json").exists():
      continue
    try:
      saved = records.read_json(run_dir / "config.json")
    except records.UnreadableRecord:
      continue
    if (run_dir / "summary.json").exists():
      differences = ownership.config_differences(saved, run.config, resumable=())
    elif checkpoints.steps(run_dir / "checkpoints"):
      differences = ownership.config_differences(saved, run.config)
    else:
      continue
    if differences:
      refused.append(f"{run.name} ({'; '.join(differences)})")
  if refused:
    shown = "; ".join(refused[:3]) + (f"; and {len(refused) - 3} more" if len(refused) > 3 else "")
    raise records.WorkdirError(
      f"{workdir} holds {len(refused)} runs of another config: {shown}. Nothing was "
      "changed: use another --workdir, or the config those runs were trained with."
    )
