"""A sweep's outputs, written from its run records, and the merging of sweep workdirs.

A sweep workdir holds one run directory per (setting, depth, seed) under ``runs/`` and:

* ``summary.json`` — the :class:`resnorm.records.SweepSummary`
  (:func:`resnorm.sweep_summary.summarize_sweep`);
* ``report.md`` — the findings, every sentence and number generated from the summary
  (:mod:`resnorm.report`);
* ``results.csv`` — one row per run;
* ``delta_vs_depth.png`` — δ against L on log–log axes with the envelope c_min·log(2L)/L;
* ``task_vs_depth.png`` — how well each depth fitted the task (test loss, accuracy);
* ``constructed_vs_trained.png`` — the theorem's constructed network beside the trained ones
  (sweeps with a setting started from it);
* ``delta_by_kind.png`` — δ against L per kind of layer (networks with transitions);
* ``ratio_profile.png`` — the ratio r_k along the network, at init and trained, per depth;
* ``delta_during_training.png`` — δ_max against the training step (``signal.every`` > 0);
* ``ratio_heatmap.png`` — every layer's ratio over training (networks with transitions).

Runs are independent, so a sweep can be split into single-depth jobs on many machines and merged
with :func:`aggregate`: the merged summary equals that of the joint sweep.
"""

from __future__ import annotations

import csv
import io
import os

import ml_collections
from absl import logging

from resnorm import ownership, plots, records, report, statistics, sweep_plan
from resnorm.sweep_summary import summarize_sweep

RUN_COLUMNS = (
  "setting",
  "model",
  "depth",
  "seed",
  "diverged",
  "diverged_at_step",
  "train_loss",
  "test_loss",
  "test_accuracy",
  "target_variance",
  "train_seconds",
)


def csv_columns() -> list[str]:
  """``results.csv``'s columns: the run's, then the identity blocks' statistics with ``csv=True``
  (:mod:`resnorm.statistics`) at initialisation and after training."""
  return list(RUN_COLUMNS) + [f"{stage}_{s.name}" for stage in records.STAGES for s in statistics.in_csv()]


def write_outputs(workdir, summary: records.SweepSummary, results: list[records.RunRecord], sources=None) -> None:
  """``summary.json``, ``runs.json``, ``results.csv``, ``report.md`` and the figures in
  ``workdir``; ``sources``: the workdirs whose ``runs/`` hold the runs (``workdir`` itself unless
  aggregated)."""
  workdir = records.path(workdir)
  records.write_json(workdir / records.RUNS_FILE, records.run_entries(results))
  records.write_json(workdir / "summary.json", summary.to_json())
  table = io.StringIO()
  writer = csv.DictWriter(table, csv_columns())
  writer.writeheader()
  for r in sorted(results, key=lambda r: (r.setting, r.depth, r.seed)):
    row = {k: getattr(r, k) for k in RUN_COLUMNS}
    for stage in records.STAGES:
      measured = r.measurement(stage)
      block = measured and measured.block
      row.update({f"{stage}_{s.name}": block[s.name] if block else None for s in statistics.in_csv()})
    writer.writerow(records.jsonable(row))
  records.write_text(workdir / "results.csv", table.getvalue())
  data = summary.to_json()
  run_data = [r.to_json() for r in results]
  plots.delta_vs_depth(data, workdir / "delta_vs_depth.png")
  plots.task_vs_depth(data, workdir / "task_vs_depth.png")
  constructed = [name for name, family in summary.models.items() if family.construction]
  if constructed:
    plots.constructed_vs_trained(data, constructed[0], workdir / "constructed_vs_trained.png")
  records.write_text(workdir / "report.md", report.render(summary))
  if any(r.init.layers and "transition" in r.init.layers["kind"] for r in results):
    plots.delta_by_kind(data, workdir / "delta_by_kind.png")
  if any(r.init.layers for r in results):
    plots.ratio_profile(run_data, list(summary.models), workdir / "ratio_profile.png")
  if any(r.history for r in results):
    plots.delta_during_training(run_data, list(summary.models), workdir / "delta_during_training.png")
  if any(r.history and r.init.layers and "transition" in r.init.layers["kind"] for r in results):
    plots.ratio_heatmap(
      _heatmap_runs([records.path(w) for w in sources or [workdir]], results, list(summary.models)),
      workdir / "ratio_heatmap.png",
    )


def _heatmap_runs(sources: list, results: list[records.RunRecord], names: list[str]) -> dict[str, list[dict]]:
  """Per setting, the ``signal.jsonl`` rows of its deepest run of the smallest seed, labelled
  with its depth and identity blocks: the kind of figure the paper draws, of ratios over training."""
  runs = {}
  for name in names:
    measured = [r for r in results if r.setting == name and r.history]
    if not measured:
      continue
    run = max(measured, key=lambda r: (r.depth, -r.seed))
    blocks = run.init.block["num_layers"] if run.init.block else 0
    name_of_run = sweep_plan.run_name(name, run.depth, run.seed)
    run_dir = next(w / sweep_plan.RUNS / name_of_run for w in sources if (w / sweep_plan.RUNS / name_of_run).exists())
    rows = records.JsonlLog(run_dir / "signal.jsonl", write=False).records
    runs[f"{name}\ndepth {run.depth} ({blocks} identity blocks), seed {run.seed}"] = rows
  return runs


def _finished_runs(workdir, config: dict) -> tuple[list[records.RunRecord], list[str]]:
  """The runs a sweep workdir's config plans that finished there, and the names of those that did
  not. Each finished run must prove to be its run of that config: its ``config.json`` the one its
  sweep config gives it, its record's setting, depth, seed and budget the run's
  (:func:`resnorm.sweep_plan.record_mismatch`); otherwise :class:`resnorm.records.WorkdirError`
  names every run that does not and why. Reads only."""
  found, missing, refused = [], [], []
  for run in sweep_plan.plan(ml_collections.ConfigDict(config)):
    run_dir = workdir / sweep_plan.RUNS / run.name
    if not (run_dir / "summary.json").exists():
      missing.append(run.name)
      continue
    saved = records.read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else None
    record = records.read_run(run_dir)
    problems = sweep_plan.record_mismatch(run, record, saved)
    if saved is not None:
      problems += ownership.config_differences(saved, run.config, resumable=())
    if problems:
      refused.append(f"{run.name} ({'; '.join(problems)})")
    found.append(record)
  if refused:
    raise records.WorkdirError(
      f"{workdir} holds runs that are not those its sweep config plans: {'; '.join(refused)}. Nothing was "
      "written: finish them with the sweep's command (it sets such runs aside and trains them again)"
    )
  return found, missing


def _refuse_output(out_dir, sources: list) -> None:
  """An aggregate's output may be none of its sources, nor a sweep's workdir (one that holds runs):
  merging writes ``config.json`` and the summary there. Reads only."""
  for source in sources:
    if os.path.realpath(str(source)) == os.path.realpath(str(out_dir)):
      raise records.WorkdirError(f"--workdir {out_dir} is one of the workdirs to merge: merge into another directory")
  if (out_dir / sweep_plan.RUNS).exists():
    raise records.WorkdirError(
      f"--workdir {out_dir} is a sweep's workdir (it holds {sweep_plan.RUNS}/): merge into another directory"
    )


def aggregate(workdirs: list, out_dir, allow_incomplete: bool = False) -> records.SweepSummary:
  """Merges finished sweep workdirs (e.g. one per depth, run on different machines) into
  ``out_dir``, reading them only; ``out_dir`` is locked while it is written
  (:class:`resnorm.ownership.WorkdirLock`).

  The workdirs must share their config except for ``depths``, and each finished run must prove
  to be its run of that config (:func:`_finished_runs`); a (setting, depth, seed) found in two of
  them is an error, since it is not clear which to keep. A run the config plans but that did not
  finish is an error too, unless ``allow_incomplete`` (then the summary has fewer seeds there, and
  a warning names the runs). An ``out_dir`` that is one of the workdirs, or a sweep's workdir, is
  refused. Raises :class:`resnorm.records.WorkdirError` for each of these, before anything is
  written.
  """
  if not workdirs:
    raise records.WorkdirError("no workdirs to merge: expected one or more sweep workdirs after the flags")
  sources, out_dir = [records.path(w) for w in workdirs], records.path(out_dir)
  _refuse_output(out_dir, sources)
  merged_config, results, seen, missing = None, [], {}, []
  for workdir in sources:
    if not (workdir / "config.json").is_file():
      raise records.WorkdirError(f"{workdir} is not a sweep workdir (it has no config.json)")
    config = records.read_json(workdir / "config.json")
    shared = {k: v for k, v in config.items() if k != "depths"}
    if merged_config is None:
      merged_config, first_shared = dict(config, depths=[]), shared
    elif shared != first_shared:
      differing = sorted(k for k in set(shared) | set(first_shared) if shared.get(k) != first_shared.get(k))
      raise records.WorkdirError(f"{workdir} was run with another config than {workdirs[0]} (fields {differing})")
    finished, unfinished = _finished_runs(workdir, config)
    missing += [str(workdir / sweep_plan.RUNS / name) for name in unfinished]
    for result in finished:
      key = (result.setting, result.depth, result.seed)
      if key in seen:
        raise records.WorkdirError(
          f"{key[0]} at depth {result.depth}, seed {result.seed} is in both {seen[key]} and {workdir}"
        )
      seen[key] = workdir
      results.append(result)
  if missing and not allow_incomplete:
    raise records.WorkdirError(
      f"{len(missing)} runs are not finished: {', '.join(missing)} (finish them with the "
      "sweep's command, or merge without them: --allow_incomplete)"
    )
  if missing:
    logging.warning("merging without the unfinished runs %s", ", ".join(missing))
  if not results:
    raise records.WorkdirError(f"no finished runs in {', '.join(map(str, workdirs))}")
  merged_config["depths"] = sorted({r.depth for r in results})
  records.make_dir(out_dir)
  with ownership.WorkdirLock(out_dir):
    records.write_json(out_dir / "config.json", merged_config)
    merged = ml_collections.ConfigDict(merged_config)
    overrides = {
      name: sweep_plan.setting_overrides(merged, name)
      for name in sweep_plan.settings(merged)
      if any(r.setting == name for r in results)
    }
    summary = summarize_sweep(results, overrides, merged.bound_L)
    write_outputs(out_dir, summary, results, sources=sources)
  return summary
