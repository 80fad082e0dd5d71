"""The depth sweep: train every (model, depth) pair, collect δ(L), fit it, write the results.

A sweep workdir holds one run directory per pair (``runs/<model>_L<depth>/``, written by
:func:`resnorm.loop.train_and_evaluate`) and the sweep's own outputs:

* ``summary.json`` — top level: ``depths``, ``delta_max``, ``delta_mean``, ``diverged`` (lists
  aligned with ``depths``) and ``fit`` = {c, r2, …} for the trained networks of the reference
  family (the first of ``config.models``); under ``models.<name>``: the same lists after
  training and at initialisation, quantiles, test and train losses, and fits, for every family;
* ``results.csv`` — one row per run;
* ``delta_vs_depth.png`` — δ against L on log–log axes with the fitted c·log(2L)/L;
* ``delta_during_training.png`` — δ_max against the training step for every run (runs
  measured during training, ``signal.every`` > 0).

Runs are independent (each seeds itself from config.seed, model and depth), so a sweep can be
split into single-depth jobs on many machines and merged with :func:`aggregate`: the merged
summary equals that of the joint sweep. A finished run found in the workdir is reused, an
interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io

import jax
import ml_collections
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from resnorm import config_validation, loop, plots, records, theory

RUNS = "runs"
CSV_DELTAS = ("delta_max", "delta_mean", "delta_p50", "delta_p90", "delta_p99", "log_gain")


def run_name(model: str, depth: int) -> str:
  return f"{model}_L{depth:05d}"


def _names(config) -> tuple[str, ...]:
  return tuple(config.models) if isinstance(config.models, (tuple, list)) else (config.models,)


def run_config(config, model: str, depth: int) -> ml_collections.ConfigDict:
  """The single-run config of one pair: the sweep config without its lists."""
  single = ml_collections.ConfigDict(config.to_dict())
  del single["depths"], single["models"], single["parallel_runs"]
  single.model.name, single.model.depth = model, depth
  return single


def plan(config) -> list[tuple[str, int, ml_collections.ConfigDict]]:
  """Every (model, depth, run config) of a validated sweep config, in config order, depths ascending."""
  depths = config.depths if isinstance(config.depths, (tuple, list)) else (config.depths,)
  return [(name, depth, run_config(config, name, depth)) for name in _names(config) for depth in sorted(set(depths))]


def run_sweep(config, workdir, progress: bool = True) -> records.SweepSummary:
  """Validates the sweep config once, runs (or reuses) every pair and writes the outputs to ``workdir``.

  With several processes (``jax.distributed``), ``config.placement`` says where runs go:
  ``'mesh'`` trains every run on all devices of all processes, one run after another in the
  same order everywhere; ``'spread'`` deals the runs out to the processes, each training its
  own on its local devices, and every process reads the others' records once all are done.
  Either way process 0 writes the sweep's outputs, and the summary is the one-process sweep's.

  Raises:
    config_validation.ConfigError: for a bad field, before anything is written or compiled.
    RuntimeError: a run failed on some process (spread placement); the message names it.
  """
  dataset = config_validation.load_data(config)
  config_validation.check_sweep(config, dataset, run_config)
  workdir = records.path(workdir)
  runs = plan(config)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    records.write_json(workdir / "config.json", records.config_dict(config))
  # Deepest runs first: the longest runs do not end up last.
  runs_by_cost = sorted(runs, key=lambda run: -run[1])
  if config.placement == "spread" and jax.process_count() > 1:
    results = _run_spread(runs_by_cost, workdir, dataset)
  else:
    # One process: `parallel_runs` at a time, so one run's compilation (single-threaded)
    # overlaps another's training. Several: one at a time, in the same order on every process.
    threads = config.parallel_runs if jax.process_count() == 1 else 1
    results = _run_all(runs_by_cost, workdir, dataset, threads, progress and jax.process_index() == 0)
  summary = summarize(results, list(_names(config)))
  if jax.process_index() == 0:
    write_outputs(workdir, summary, results)
  return summary


def _run(name: str, depth: int, single, workdir, dataset, local: bool = False) -> records.RunRecord:
  run_dir = workdir / RUNS / run_name(name, depth)
  return _finished(run_dir, single) or loop.train_and_evaluate(single, run_dir, dataset, local=local)


def _run_all(runs, workdir, dataset, threads: int, progress: bool) -> list[records.RunRecord]:
  results = []
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    futures = [pool.submit(_run, *run, workdir, dataset) for run in runs]
    bar = tqdm.tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="sweep", unit="run",
                    disable=not progress)
    for future in bar:
      results.append(future.result())
      bar.set_postfix_str(f"{results[-1].model} L={results[-1].depth} done")
  return results


FAILED = "FAILED"  # a run directory's marker of a run that raised, holding the error


def _run_spread(runs, workdir, dataset) -> list[records.RunRecord]:
  """Process p trains runs p, p + P, p + 2P, … of ``runs`` on its own devices; then all wait for
  each other and read every record. A run that raises leaves its error in ``<run>/FAILED``, so
  that every process, past the barrier, fails naming it instead of waiting forever."""
  process, count = jax.process_index(), jax.process_count()
  for name, depth, single in runs[process::count]:
    marker = workdir / RUNS / run_name(name, depth) / FAILED
    if marker.exists():
      marker.unlink()
    try:
      _run(name, depth, single, workdir, dataset, local=True)
    except Exception as error:  # pylint: disable=broad-except  (reported to every process below)
      marker.parent.mkdir(parents=True, exist_ok=True)
      marker.write_text(f"process {process}: {type(error).__name__}: {error}")
      logging.exception("run %s failed", run_name(name, depth))
  multihost_utils.sync_global_devices("resnorm.sweep.spread")
  failed = [(run_name(n, d), (workdir / RUNS / run_name(n, d) / FAILED)) for n, d, _ in runs]
  failed = [(name, marker.read_text()) for name, marker in failed if marker.exists()]
  if failed:
    raise RuntimeError("sweep runs failed: " + "; ".join(f"{name} ({error})" for name, error in failed))
  return [records.read_run(workdir / RUNS / run_name(name, depth)) for name, depth, _ in runs]


def _finished(run_dir, single) -> records.RunRecord | None:
  """The record of a run already completed in ``run_dir`` with the same config, else None."""
  if not (run_dir / "summary.json").exists():
    return None
  if records.read_json(run_dir / "config.json") != records.config_dict(single):
    raise ValueError(f"{run_dir} holds a finished run with another config; choose a new --workdir")
  return records.read_run(run_dir)


def _fit(depths, deltas) -> dict:
  points = [(L, d) for L, d in zip(depths, deltas) if d is not None]
  if len({L for L, _ in points}) < 2:
    return {"c": None, "r2": None, "note": "fewer than two depths with a finite delta"}
  return theory.fit_delta(*zip(*points)).to_dict()


def summarize(results: list[records.RunRecord], model_order: list[str]) -> records.SweepSummary:
  """The sweep summary from run records; independent of their order and timing."""
  by_model = {}
  for name in model_order:
    runs = sorted((r for r in results if r.model == name), key=lambda r: r.depth)
    classification = any(r.test_accuracy is not None for r in runs)
    by_model[name] = records.FamilyResults(
        depths=[r.depth for r in runs],
        diverged=[r.diverged for r in runs],
        diverged_at_step=[r.diverged_at_step for r in runs],
        train_loss=[r.train_loss for r in runs],
        test_loss=[r.test_loss for r in runs],
        test_accuracy=[r.test_accuracy for r in runs] if classification else None,
        **{stage: records.Stage.columns(runs, stage, _fit) for stage in records.STAGES},
    )
  return records.SweepSummary(model_order[0], by_model)


CSV_FIELDS = ("model", "depth", "diverged", "diverged_at_step", "train_loss", "test_loss", "test_accuracy",
              "train_seconds") + tuple(f"{stage}_{k}" for stage in records.STAGES for k in CSV_DELTAS)


def write_outputs(workdir, summary: records.SweepSummary, results: list[records.RunRecord]) -> None:
  workdir = records.path(workdir)
  records.write_json(workdir / "summary.json", summary.to_json())
  table = io.StringIO()
  writer = csv.DictWriter(table, CSV_FIELDS)
  writer.writeheader()
  for r in sorted(results, key=lambda r: (r.model, r.depth)):
    row = {k: getattr(r, k) for k in CSV_FIELDS[:8]}
    for stage in records.STAGES:
      measured = r.measurement(stage)
      row.update({f"{stage}_{k}": getattr(measured.block, k) if measured else None for k in CSV_DELTAS})
    writer.writerow(records.jsonable(row))
  records.write_text(workdir / "results.csv", table.getvalue())
  plots.delta_vs_depth(summary.to_json(), workdir / "delta_vs_depth.png")
  if any(r.history for r in results):
    plots.delta_during_training([r.to_json() for r in results], list(summary.models),
                                workdir / "delta_during_training.png")


def aggregate(workdirs: list, out_dir) -> records.SweepSummary:
  """Merges finished sweep workdirs (e.g. one per depth, run on different machines).

  The workdirs must share their config except for ``depths``; a (model, depth) pair found in
  two of them is an error, since it is not clear which to keep.
  """
  if not workdirs:
    raise ValueError(f"workdirs = {workdirs!r}: expected one or more sweep workdirs")
  merged_config, results, seen = None, [], {}
  for workdir in workdirs:
    config = records.read_json(records.path(workdir) / "config.json")
    shared = {k: v for k, v in config.items() if k != "depths"}
    if merged_config is None:
      merged_config, first_shared = dict(config, depths=[]), shared
    elif shared != first_shared:
      differing = sorted(k for k in set(shared) | set(first_shared) if shared.get(k) != first_shared.get(k))
      raise ValueError(f"{workdir} was run with another config than {workdirs[0]} (fields {differing})")
    for result in records.runs_in([workdir], RUNS):
      key = (result.model, result.depth)
      if key in seen:
        raise ValueError(f"{result.model} at depth {result.depth} is in both {seen[key]} and {workdir}")
      seen[key] = workdir
      results.append(result)
  if not results:
    raise ValueError(f"no finished runs in {workdirs}")
  merged_config["depths"] = sorted({r.depth for r in results})
  out_dir = records.path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  records.write_json(out_dir / "config.json", merged_config)
  model_order = [m for m in merged_config["models"] if any(r.model == m for r in results)]
  summary = summarize(results, model_order)
  write_outputs(out_dir, summary, results)
  return summary


def format_table(summary: records.SweepSummary) -> str:
  """A fixed-width table: one row per depth, δ_max at init and after training per family."""
  names = list(summary.models)
  header = ["L"]
  for name in names:
    header += [f"{name} δmax init", "δmax trained", "δmean trained", "test loss"]
  rows = [header]
  for L in summary.depths:
    row = [str(L)]
    for name in names:
      family = summary.models[name]
      if L not in family.depths:
        row += ["-"] * 4
        continue
      i = family.depths.index(L)
      if family.diverged[i]:
        row += [_fmt(family.init.delta_max[i]), f"diverged@{family.diverged_at_step[i]}", "-", "-"]
      else:
        row += [_fmt(v[i]) for v in (family.init.delta_max, family.trained.delta_max, family.trained.delta_mean,
                                     family.test_loss)]
    rows.append(row)
  widths = [max(len(r[j]) for r in rows) for j in range(len(header))]
  lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
  fit = summary.reference.trained.fit
  if fit.get("c") is not None:
    lines.append(
        f"{summary.reference_model} trained: δmax ≈ {fit['c']:.3g}·log(2L)/L (R² {fit['r2']:.3f}); "
        f"log-log slope {fit['slope']:.2f}; best law {fit['best']} (R² {fit['laws'][fit['best']]['r2']:.3f})"
    )
  return "\n".join(lines)


def _fmt(value) -> str:
  return "nan" if value is None else f"{value:.3g}"
