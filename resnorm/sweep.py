"""The depth sweep: train every (setting, depth, seed), collect δ(L), read it, write the results.

A *setting* is a model family with overrides (``config.overrides.<setting>``: ``name`` = the
family; options of ``config.model``; top-level run fields such as ``num_steps`` or
``init_from``; a dict for another config section, e.g. ``procrustes=dict(enabled=True)``;
optionally its own ``depths`` and ``seeds``); a setting named like a family with no overrides
entry is that family as configured. The sweep runs every setting at every depth with every seed
of ``config.seeds`` (or its own). The runs of one depth that differ only in numbers (seed,
branch scale, initialisation, the blocks' learning-rate scale, residual or plain where the family
makes the skip a number: :attr:`resnorm.models.Family.program`) train together as one program
(:func:`resnorm.loop.train_group`) where their runs allow it.

A sweep workdir holds one run directory per triple (``runs/<setting>_L<depth>_s<seed>/``,
written by :func:`resnorm.loop.train_and_evaluate`) and the sweep's own outputs:

* ``report.md`` — the findings, every sentence and number generated from the summary
  (:mod:`resnorm.report`);
* ``summary.json`` — top level: ``depths``, ``delta_max``, ``delta_mean``, ``diverged`` (lists
  aligned with ``depths``, means over seeds) and ``fit`` = {c, r2, …} for the trained networks of
  the reference setting (the first of ``config.settings``); under ``models.<setting>``: the same
  lists after training and at initialisation, the depth-fair statistics, spreads over seeds,
  the bound readings (c_min, slope interval, laws), losses, and the other kinds of layer;
* ``results.csv`` — one row per run;
* ``delta_vs_depth.png`` — δ against L on log–log axes with the envelope c_min·log(2L)/L;
* ``task_vs_depth.png`` — how well each depth fitted the task (test loss, accuracy);
* ``constructed_vs_trained.png`` — the theorem's constructed network beside the trained ones
  (sweeps with a setting started from it);
* ``delta_by_kind.png`` — δ against L per kind of layer (networks with transitions);
* ``ratio_profile.png`` — the ratio r_k along the network, at init and trained, per depth;
* ``delta_during_training.png`` — δ_max against the training step (``signal.every`` > 0).

Runs are independent (each seeds itself from its seed, model and depth), so a sweep can be
split into single-depth jobs on many machines and merged with :func:`aggregate`: the merged
summary equals that of the joint sweep. A finished run found in the workdir is reused, an
interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import io
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from resnorm import checkpoints, config_validation, loop, plots, records, report, theory

RUNS = "runs"
SET_ASIDE = "set_aside"  # run directories whose files did not read, moved here
CSV_DELTAS = (
  "delta_max",
  "delta_mean",
  "delta_p50",
  "delta_p90",
  "delta_p99",
  "log_gain",
  "layer_p90_max",
  "batch_delta_max",
)
SWEEP_FIELDS = ("depths", "settings", "overrides", "seeds", "parallel_runs", "placement", "bound_L", "group_seeds")


def run_name(setting: str, depth: int, seed: int) -> str:
  return f"{setting}_L{depth:05d}_s{seed}"


def settings(config) -> tuple[str, ...]:
  return tuple(config.settings) if isinstance(config.settings, (tuple, list)) else (config.settings,)


def setting_overrides(config, setting: str) -> dict:
  """``config.overrides.<setting>`` as a dict, ``{'name': setting}`` for a bare family name."""
  overrides = config.get("overrides") or {}
  if setting not in overrides:
    return {"name": setting}
  entry = overrides[setting]
  return entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)


def setting_depths(config, setting: str) -> tuple[int, ...]:
  depths = setting_overrides(config, setting).get("depths", config.depths)
  return tuple(sorted(set(depths if isinstance(depths, (tuple, list)) else (depths,))))


def setting_seeds(config, setting: str) -> tuple[int, ...]:
  seeds = setting_overrides(config, setting).get("seeds", config.seeds)
  return tuple(seeds) if isinstance(seeds, (tuple, list)) else (seeds,)


def run_config(config, setting: str, depth: int, seed: int) -> ml_collections.ConfigDict:
  """The single-run config of one triple: the sweep config without its lists, the setting's
  overrides applied (to ``config.model`` unless the key is a top-level run field), ``seed`` and
  ``setting`` filled in."""
  single = ml_collections.ConfigDict(config.to_dict())
  for field in SWEEP_FIELDS:
    if field in single:
      del single[field]
  for key, value in setting_overrides(config, setting).items():
    if key in ("depths", "seeds"):
      continue
    if isinstance(value, (dict, ml_collections.ConfigDict)):  # a section, e.g. procrustes=dict(enabled=True)
      single[key].update(dict(value))
    elif key in single.model or key not in single:
      single.model[key] = value
    else:  # a top-level run field, e.g. num_steps or init_from
      single[key] = value
  single.model.depth, single.seed, single.setting = depth, seed, setting
  return single


def plan(config) -> list[tuple[str, int, int, ml_collections.ConfigDict]]:
  """Every (setting, depth, seed, run config) of a validated sweep config, in config order."""
  return [
    (setting, depth, seed, run_config(config, setting, depth, seed))
    for setting in settings(config)
    for depth in setting_depths(config, setting)
    for seed in setting_seeds(config, setting)
  ]


def groups(runs, together: bool = True) -> list[list[tuple]]:
  """``runs`` (from :func:`plan`) in the groups that train as one program: at each depth, the runs
  whose configs differ only in seed, branch scale, initialisation, the blocks' learning-rate
  scale and families of one program (:func:`resnorm.loop.group_key`), where
  :func:`resnorm.loop.groupable` and ``together`` (the sweep's ``group_seeds``); every other run
  alone."""
  grouped = {}
  for run in runs:
    setting, depth, seed, single = run
    key = loop.group_key(single) if together and loop.groupable(single) else (setting, depth, seed)
    grouped.setdefault(key, []).append(run)
  return list(grouped.values())


def run_sweep(config, workdir, progress: bool = True) -> records.SweepSummary:
  """Validates the sweep config once, runs (or reuses) every triple and writes the outputs to ``workdir``.

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
  config_validation.check_sweep(config, dataset, plan)
  workdir = records.path(workdir)
  runs = plan(config)
  check_workdir(workdir, runs)
  # One sweep per workdir (one process: a process of several cannot refuse alone).
  with loop.WorkdirLock(workdir) if jax.process_count() == 1 else contextlib.nullcontext():
    return _run_sweep(config, workdir, dataset, runs, progress)


def _run_sweep(config, workdir, dataset, runs, progress: bool) -> records.SweepSummary:
  """:func:`run_sweep` once its config and workdir passed the door."""
  if jax.process_index() == 0:
    records.make_dir(workdir)
    records.write_json(workdir / "config.json", records.config_dict(config))
  # The costliest groups (depth × seeds) first: the longest do not end up last.
  by_cost = sorted(groups(runs, config.get("group_seeds", True)), key=lambda group: -group[0][1] * len(group))
  if config.placement == "spread" and jax.process_count() > 1:
    results = _run_spread(by_cost, workdir, dataset)
  else:
    # One process: `parallel_runs` groups at a time, so one group's compilation (single-threaded)
    # overlaps another's training. Several: one at a time, in the same order on every process.
    threads = config.parallel_runs if jax.process_count() == 1 else 1
    if threads > 1 and not loop.models_define_no_class([run[3] for group in by_cost for run in group], dataset):
      logging.warning(
        "a model defines a flax class each time it is traced (nn.scan or nn.remat inside __call__; "
        "resnorm.models.lifted defines each once): its threads could see a class half-defined, so the "
        "groups train one at a time instead of parallel_runs = %d",
        threads,
      )
      threads = 1
    with loop.sigterm_stops():
      results = _run_all(by_cost, workdir, dataset, threads, progress and jax.process_index() == 0)
  summary = summarize(
    results,
    list(settings(config)),
    {name: setting_overrides(config, name) for name in settings(config)},
    L=config.get("bound_L", "layers"),
  )
  if jax.process_index() == 0:
    write_outputs(workdir, summary, results)
  return summary


def _run_group(group, workdir, dataset, local: bool = False) -> list[records.RunRecord]:
  """The records of a group's runs: finished ones read back, the others trained together (a run
  whose files do not read set aside first, :func:`_set_aside_if_unreadable`)."""
  run_dirs = [workdir / RUNS / run_name(setting, depth, seed) for setting, depth, seed, _ in group]
  for run_dir in run_dirs:
    _set_aside_if_unreadable(run_dir, workdir)
  found = [_finished(run_dir, single) for run_dir, (*_, single) in zip(run_dirs, group)]
  todo = [i for i, record in enumerate(found) if record is None]
  if todo and loop.stop_requested():
    raise loop.Preempted(None, [])  # SIGTERM before this group started
  if todo:
    trained = loop.train_group([group[i][3] for i in todo], [run_dirs[i] for i in todo], dataset, local=local)
    for i, record in zip(todo, trained):
      found[i] = record
  return found


def _run_all(groups_, workdir, dataset, threads: int, progress: bool) -> list[records.RunRecord]:
  """Every group's records, ``threads`` groups at a time. SIGTERM (:func:`resnorm.loop.sigterm_stops`)
  stops the groups in training at their current step, each saving a checkpoint, and the others
  before they start; then :class:`resnorm.loop.Preempted` names the checkpoints saved."""
  results, stopped = [], []
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    futures = [pool.submit(_run_group, group, workdir, dataset) for group in groups_]
    with tqdm.tqdm(total=sum(map(len, groups_)), desc="sweep", unit="run", disable=not progress) as bar:
      for future in concurrent.futures.as_completed(futures):
        try:
          finished = future.result()
        except loop.Preempted as error:
          stopped += error.workdirs
          continue
        results += finished
        bar.update(len(finished))
        bar.set_postfix_str(f"{results[-1].setting} L={results[-1].depth} done")
  if stopped or loop.stop_requested():
    raise loop.Preempted(None, stopped)
  return results


FAILED = "FAILED"  # a run directory's marker of a run that raised, holding the error


def _run_spread(groups_, workdir, dataset) -> list[records.RunRecord]:
  """Process p trains groups p, p + P, p + 2P, … of ``groups_`` on its own devices; then all wait
  for each other and read every record. A group that raises leaves its error in each of its runs'
  ``<run>/FAILED``, so that every process, past the barrier, fails naming them instead of
  waiting forever."""
  process, count = jax.process_index(), jax.process_count()
  for group in groups_[process::count]:
    markers = [workdir / RUNS / run_name(*run[:3]) / FAILED for run in group]
    for marker in markers:
      if marker.exists():
        marker.unlink()
    try:
      _run_group(group, workdir, dataset, local=True)
    except Exception as error:  # pylint: disable=broad-except  (reported to every process below)
      for marker in markers:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"process {process}: {type(error).__name__}: {error}")
      logging.exception("runs %s failed", ", ".join(run_name(*run[:3]) for run in group))
  multihost_utils.sync_global_devices("resnorm.sweep.spread")
  names = [run_name(*run[:3]) for group in groups_ for run in group]
  failed = [(name, (workdir / RUNS / name / FAILED)) for name in names]
  failed = [(name, marker.read_text()) for name, marker in failed if marker.exists()]
  if failed:
    raise RuntimeError("sweep runs failed: " + "; ".join(f"{name} ({error})" for name, error in failed))
  return [records.read_run(workdir / RUNS / name) for name in names]


def _set_aside_if_unreadable(run_dir, workdir) -> None:
  """Moves a run directory whose record files do not read (a summary cut short, a log with a
  damaged row before its last, garbage bytes, a field missing) to ``workdir/set_aside/``, with a warning naming the
  file: nothing is deleted, and the run trains again from the start, as an uninterrupted one."""
  try:
    if (run_dir / "config.json").exists():
      records.read_json(run_dir / "config.json")
    if (run_dir / "summary.json").exists():
      records.read_run(run_dir)
    for name in ("metrics.jsonl", "signal.jsonl"):
      records.JsonlLog(run_dir / name, write=False)
  except records.UnreadableRecord as error:
    aside = workdir / SET_ASIDE / f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    run_dir.rename(aside)
    logging.warning("%s: moved the run to %s; it trains again", error, aside)


def check_workdir(workdir, runs) -> None:
  """Refuses (:class:`resnorm.records.WorkdirError`) a workdir that holds one of ``runs`` (from
  :func:`plan`), finished or with checkpoints, under another config, naming the runs and the
  fields that differ; reads only, so nothing in the workdir has changed. A finished run must
  match in every field, ``num_steps`` included; an unfinished one may differ where a resume
  allows (:data:`resnorm.loop.RESUMABLE_FIELDS`). Files that do not read are left to
  :func:`_set_aside_if_unreadable`."""
  if workdir.exists() and not workdir.is_dir():
    raise records.WorkdirError(f"--workdir {workdir} is a file: expected a directory (or a path to create)")
  refused = []
  for setting, depth, seed, single in runs:
    run_dir = workdir / RUNS / run_name(setting, depth, seed)
    if not (run_dir / "config.json").exists():
      continue
    try:
      saved = records.read_json(run_dir / "config.json")
    except records.UnreadableRecord:
      continue
    if (run_dir / "summary.json").exists():
      differences = loop.config_differences(saved, single, resumable=())
    elif checkpoints.steps(run_dir / "checkpoints"):
      differences = loop.config_differences(saved, single)
    else:
      continue
    if differences:
      refused.append(f"{run_dir.name} ({'; '.join(differences)})")
  if refused:
    shown = "; ".join(refused[:3]) + (f"; and {len(refused) - 3} more" if len(refused) > 3 else "")
    raise records.WorkdirError(
      f"{workdir} holds {len(refused)} runs of another config: {shown}. Nothing was "
      "changed: use another --workdir, or the config those runs were trained with."
    )


def _finished(run_dir, single) -> records.RunRecord | None:
  """The record of a run already completed in ``run_dir`` (with the same config: :func:`check_workdir`), else None."""
  if not (run_dir / "summary.json").exists():
    return None
  return records.read_run(run_dir)


def _fit(depths, deltas) -> dict:
  """:func:`theory.fit_delta` where it can fit, else a note: a fit never loses a sweep."""
  values = [np.nan if d is None else d for d in deltas]
  if not theory.fittable(depths, values):
    return {"c": None, "r2": None, "note": f"no fit: fewer than two depths with a finite, positive delta ({deltas})"}
  return theory.fit_delta(depths, values).to_dict()


def _setting_of(record: records.RunRecord) -> str:
  return record.setting or record.model  # runs of the first format: one setting per family


def _relative(losses: list, variance: float | None) -> list | None:
  if variance is None:
    return None
  return [None if loss is None else loss / variance for loss in losses]


def _family(runs: list[records.RunRecord], L: str = "layers") -> records.FamilyResults:
  """One setting's results: its runs grouped by depth, means and spreads over the seeds; the
  bound read against ``L`` (:attr:`resnorm.records.Stage.L`)."""
  depths = sorted({r.depth for r in runs})
  groups = [sorted((r for r in runs if r.depth == L), key=lambda r: r.seed or 0) for L in depths]

  def column(key):
    return [records.seed_mean([getattr(r, key) for r in group]) for group in groups]

  def spread(key):
    return [records.seed_std([getattr(r, key) for r in group]) for group in groups]

  classification = any(r.test_accuracy is not None for r in runs)
  variances = [r.target_variance for r in runs if r.target_variance is not None]
  variance = variances[0] if variances else None
  train_loss, test_loss = column("train_loss"), column("test_loss")
  kinds = sorted({k for r in runs for m in (r.init, r.trained) if m for k in m.by_kind} - {"block"})
  seeds = sorted({r.seed for r in runs if r.seed is not None})
  init_test_loss = column("init_test_loss") if any(r.init_test_loss is not None for r in runs) else None
  verdicts = [[r.convergence for r in group if r.convergence] for group in groups]
  constructed = any(r.construction for r in runs)
  return records.FamilyResults(
    depths=depths,
    diverged=[any(r.diverged for r in group) for group in groups],
    diverged_at_step=[min((r.diverged_at_step for r in group if r.diverged), default=None) for group in groups],
    train_loss=train_loss,
    test_loss=test_loss,
    test_accuracy=column("test_accuracy") if classification else None,
    **{stage: records.Stage.columns(groups, stage, _fit, theory.read_bound, L=L) for stage in records.STAGES},
    model=runs[0].model if runs[0].setting else None,
    seeds=seeds or None,
    num_diverged=[sum(r.diverged for r in group) for group in groups] if seeds else None,
    train_loss_relative=_relative(train_loss, variance),
    test_loss_relative=_relative(test_loss, variance),
    std={key: spread(key) for key in ("train_loss", "test_loss", "test_accuracy")} if seeds else None,
    by_kind={
      kind: {
        stage: records.Stage.columns(groups, stage, _fit, theory.read_bound, kind, L=L) for stage in records.STAGES
      }
      for kind in kinds
    }
    if seeds
    else None,
    init_test_loss=init_test_loss,
    init_test_loss_relative=_relative(init_test_loss, variance) if init_test_loss else None,
    init_test_accuracy=column("init_test_accuracy") if classification and init_test_loss else None,
    num_converged=[sum(bool(v["converged"]) for v in group) for group in verdicts] if any(verdicts) else None,
    convergence_change=[records.seed_mean([v["change"] for v in group]) for group in verdicts]
    if any(verdicts)
    else None,
    convergence={
      k: v for k, v in next(v for group in verdicts for v in group).items() if k in ("window", "tolerance", "scale")
    }
    if any(verdicts)
    else None,
    budget=next((r.budget for r in runs if r.budget), None),
    construction={
      "block_bound_max": [
        records.seed_mean([(r.construction or {}).get("block_bound_max") for r in group]) for group in groups
      ]
    }
    if constructed
    else None,
  )


def summarize(
  results: list[records.RunRecord], setting_order: list[str], overrides: dict | None = None, L: str = "layers"
) -> records.SweepSummary:
  """The sweep summary from run records; independent of their order and timing. ``overrides``:
  each setting's overrides (:func:`setting_overrides`), kept with its results; ``L``: what the
  bound reading takes as L (``config.bound_L``, :data:`resnorm.records.BOUND_LENGTHS`)."""
  by_setting = {name: _family([r for r in results if _setting_of(r) == name], L) for name in setting_order}
  if overrides:
    by_setting = {
      name: dataclasses.replace(family, overrides=records.config_dict(overrides.get(name, {})))
      for name, family in by_setting.items()
    }
  return records.SweepSummary(setting_order[0], by_setting)


CSV_FIELDS = (
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
) + tuple(f"{stage}_{k}" for stage in records.STAGES for k in CSV_DELTAS)


def write_outputs(workdir, summary: records.SweepSummary, results: list[records.RunRecord], sources=None) -> None:
  """``summary.json``, ``results.csv``, ``report.md`` and the figures in ``workdir``; ``sources``:
  the workdirs whose ``runs/`` hold the runs (``workdir`` itself unless aggregated)."""
  workdir = records.path(workdir)
  records.write_json(workdir / "summary.json", summary.to_json())
  table = io.StringIO()
  writer = csv.DictWriter(table, CSV_FIELDS)
  writer.writeheader()
  for r in sorted(results, key=lambda r: (_setting_of(r), r.depth, r.seed or 0)):
    row = {k: getattr(r, k) for k in CSV_FIELDS[1:11]}
    row["setting"] = _setting_of(r)
    for stage in records.STAGES:
      measured = r.measurement(stage)
      block = measured and measured.block
      row.update({f"{stage}_{k}": getattr(block, k) if block else None for k in CSV_DELTAS})
    writer.writerow(records.jsonable(row))
  records.write_text(workdir / "results.csv", table.getvalue())
  data = summary.to_json()
  run_data = [dict(r.to_json(), setting=_setting_of(r)) for r in results]
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
  with its depth and identity blocks: the paper's figure of ratios over training."""
  runs = {}
  for name in names:
    measured = [r for r in results if _setting_of(r) == name and r.history]
    if not measured:
      continue
    run = max(measured, key=lambda r: (r.depth, -(r.seed or 0)))
    blocks = run.init.block.num_layers if run.init.block else 0
    name_of_run = run_name(name, run.depth, run.seed or 0)
    run_dir = next(w / RUNS / name_of_run for w in sources if (w / RUNS / name_of_run).exists())
    rows = records.JsonlLog(run_dir / "signal.jsonl", write=False).records
    runs[f"{name}\ndepth {run.depth} ({blocks} identity blocks), seed {run.seed}"] = rows
  return runs


def _incomplete_or_mixed(workdir, config: dict) -> tuple[list[str], list[str]]:
  """The runs a sweep workdir's config plans that are not finished there, and those whose own
  ``config.json`` is not the one its sweep config gives them (each with the fields that
  differ). Workdirs of the first format (no ``settings``) are not checked."""
  if "settings" not in config:
    return [], []
  missing, mixed = [], []
  for setting, depth, seed, single in plan(ml_collections.ConfigDict(config)):
    run_dir = workdir / RUNS / run_name(setting, depth, seed)
    if not (run_dir / "summary.json").exists():
      missing.append(run_dir.name)
    elif differences := loop.config_differences(records.read_json(run_dir / "config.json"), single, resumable=()):
      mixed.append(f"{run_dir.name} ({'; '.join(differences)})")
  return missing, mixed


def aggregate(workdirs: list, out_dir, allow_incomplete: bool = False) -> records.SweepSummary:
  """Merges finished sweep workdirs (e.g. one per depth, run on different machines).

  The workdirs must share their config except for ``depths``, and each run its own config as its
  sweep config gives it; a (setting, depth, seed) found in two of them is an error, since it is
  not clear which to keep. A run the config plans but that did not finish is an error too,
  unless ``allow_incomplete`` (then the summary has fewer seeds there, and a warning names
  the runs). Workdirs of the first format (``models`` instead of ``settings``, one seed) merge
  too. Raises :class:`resnorm.records.WorkdirError` for each of these, before anything is written.
  """
  if not workdirs:
    raise records.WorkdirError("no workdirs to merge: expected one or more sweep workdirs after the flags")
  merged_config, results, seen, missing = None, [], {}, []
  for workdir in map(records.path, workdirs):
    if not (workdir / "config.json").is_file():
      raise records.WorkdirError(f"{workdir} is not a sweep workdir (it has no config.json)")
    config = records.read_json(workdir / "config.json")
    shared = {k: v for k, v in config.items() if k != "depths"}
    if merged_config is None:
      merged_config, first_shared = dict(config, depths=[]), shared
    elif shared != first_shared:
      differing = sorted(k for k in set(shared) | set(first_shared) if shared.get(k) != first_shared.get(k))
      raise records.WorkdirError(f"{workdir} was run with another config than {workdirs[0]} (fields {differing})")
    unfinished, mixed = _incomplete_or_mixed(workdir, config)
    if mixed:
      raise records.WorkdirError(
        f"{workdir} holds runs trained with another config than its sweep's: {'; '.join(mixed)}"
      )
    missing += [str(workdir / RUNS / name) for name in unfinished]
    for result in records.runs_in([workdir], RUNS):
      key = (_setting_of(result), result.depth, result.seed)
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
  out_dir = records.path(out_dir)
  records.make_dir(out_dir)
  records.write_json(out_dir / "config.json", merged_config)
  order = merged_config.get("settings") or merged_config["models"]
  order = [m for m in order if any(_setting_of(r) == m for r in results)]
  known = merged_config.get("overrides") or {}
  summary = summarize(
    results, order, {name: known.get(name, {"name": name}) for name in order}, L=merged_config.get("bound_L", "layers")
  )
  write_outputs(out_dir, summary, results, sources=workdirs)
  return summary


def format_table(summary: records.SweepSummary) -> str:
  """One block per setting: a row per depth with δ at init and after training (means over seeds
  ± their spread), the depth-fair statistics, and how well the depth fitted the task; then the
  bound reading of trained δ_max."""
  lines = []
  for name, family in summary.models.items():
    seeds = len(family.seeds or [None])
    lines.append(f"{name} ({family.model or name}, {seeds} seed{'s' * (seeds > 1)}; means ± std over seeds)")
    fitted = family.test_loss_relative is not None
    accuracy = family.test_accuracy is not None
    trained, std = family.trained, family.trained.std or {}
    blocks = family.block_counts()
    header = (
      ["depth"]
      + (["blocks"] if blocks else [])
      + [
        "δmax init",
        "δmax trained",
        "δmean",
        "layer p90 max",
        "batch δmax",
        "train/var" if fitted else "train loss",
        "test/var" if fitted else "test loss",
      ]
    )
    header += ["test acc"] if accuracy else []
    tokens = trained.token_c_last is not None and any(v is not None for v in trained.token_c_last)
    header += ["token cos"] if tokens else []  # rank collapse as it nears 1 (a stream of sequences)
    rows = [header]
    for i, L in enumerate(family.depths):
      row = [str(L)] + ([str(blocks[i] or 0)] if blocks else []) + [_fmt(family.init.delta_max[i])]
      if family.diverged[i]:
        count = f"{family.num_diverged[i]}/{seeds} " if family.num_diverged else ""
        row.append(f"{count}diverged@{family.diverged_at_step[i]}")
      else:
        row.append(_pm(trained.delta_max[i], std.get("delta_max"), i))
      row += [
        _pm(trained.delta_mean[i], std.get("delta_mean"), i),
        _pm((trained.layer_p90_max or [None] * (i + 1))[i], std.get("layer_p90_max"), i),
        _fmt((trained.batch_delta_max or [None] * (i + 1))[i]),
      ]
      losses = (
        (family.train_loss_relative, family.test_loss_relative) if fitted else (family.train_loss, family.test_loss)
      )
      row += [_fmt(v[i]) for v in losses]
      row += [_fmt(family.test_accuracy[i])] if accuracy else []
      row += [_pm(trained.token_c_last[i], std.get("token_c_last"), i)] if tokens else []
      rows.append(row)
    widths = [max(len(r[j]) for r in rows) for j in range(len(header))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
    lines += [_bound_line("trained δmax", trained), _bound_line("trained layer p90 max", trained, "layer_p90_max")]
    for kind, stages in sorted((family.by_kind or {}).items()):
      if kind != "stem":
        lines.append(
          _bound_line(f"trained {kind} δmax", stages["trained"], kind=kind)
          + "  (init δmax "
          + ", ".join(_fmt(v) for v in stages["init"].delta_max)
          + ")"
        )
    lines.append("")
  return "\n".join(lines).rstrip()


# What L counts in a bound reading against layers, per kind of layer.
_LAYER_NOUNS = {"block": "identity blocks", "transition": "transitions", "stem": "stem layers"}


def _bound_line(label: str, stage: records.Stage, key: str = "delta_max", kind: str = "block") -> str:
  """c_min, the slope with its interval and the separated law, or why there is none; and what L is."""
  reading = (stage.bound or {}).get(key)
  if reading is None:
    fit = stage.fit
    return f"  {label}: log(2L)/L fit c {_fmt(fit.get('c'))} (first-format summary: no bound reading)"
  counted = _LAYER_NOUNS.get(kind, kind) if stage.L == "layers" else "network depth"
  text = f"  {label} [L = {counted}]: c_min {_fmt(reading['c_min'])} (set at L = {reading['c_min_depth']})"
  if reading["slope"] is None:
    return text + f"; {reading['note']}"
  interval = reading.get("slope_interval")
  level = round(100 * reading["level"])
  interval = f"[{interval[0]:.2f}, {interval[1]:.2f}] ({level}%)" if interval else "(no interval)"
  best = reading["best"] or f"none ({reading['note'] or 'not separated by the seeds'})"
  r2 = ", ".join(f"{law} {v['r2']:.2f}" for law, v in reading["laws"].items())
  return text + f"; log-log slope {reading['slope']:.2f} {interval}; best law: {best} (R² {r2})"


def _pm(value, spread, i) -> str:
  if value is None:
    return "nan"
  return _fmt(value) + (f"±{spread[i]:.2g}" if spread and spread[i] is not None else "")


def _fmt(value) -> str:
  return "nan" if value is None else f"{value:.3g}"
