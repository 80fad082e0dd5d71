"""The depth sweep: train every (model, depth) pair, collect δ(L), fit it, write the results.

A sweep workdir holds one run directory per pair (``runs/<model>_L<depth>/``, written by
:func:`resnorm.train.train_and_evaluate`) and the sweep's own outputs:

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
import json
import os

import ml_collections
import numpy as np
import tqdm

from resnorm import data as data_lib
from resnorm import models, plots, theory, train, validation

RUNS = "runs"
DELTA_KEYS = ("delta_max", "delta_mean", "delta_p50", "delta_p90", "delta_p99", "log_gain")


def run_name(model: str, depth: int) -> str:
  return f"{model}_L{depth:05d}"


def run_config(config, model: str, depth: int) -> ml_collections.ConfigDict:
  """The single-run config of one pair: the sweep config without its lists."""
  single = ml_collections.ConfigDict(config.to_dict())
  del single["depths"], single["models"], single["parallel_runs"]
  single.model.name, single.model.depth = model, depth
  return single


def plan(config, dataset) -> list[tuple[str, int, ml_collections.ConfigDict]]:
  """Every (model, depth, run config), each validated before anything compiles."""
  depths = validation.positive_ints("config.depths", config.depths)
  names = config.models if isinstance(config.models, (tuple, list)) else (config.models,)
  if not names:
    raise validation.ConfigError("config.models", config.models, f"a non-empty list from {sorted(models.FAMILIES)}")
  for name in names:
    validation.one_of("config.models", name, models.FAMILIES)
  validation.positive_int("config.parallel_runs", config.parallel_runs)
  runs = [(name, depth, run_config(config, name, depth)) for name in names for depth in sorted(set(depths))]
  for _, _, single in runs:
    train.validate(single, dataset)
  return runs


def run_sweep(config, workdir: str, progress: bool = True) -> dict:
  """Runs (or reuses) every pair of the sweep and writes the sweep outputs to ``workdir``."""
  dataset = data_lib.load(config.data)
  runs = plan(config, dataset)
  os.makedirs(workdir, exist_ok=True)
  train.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  def run(name, depth, single):
    run_dir = os.path.join(workdir, RUNS, run_name(name, depth))
    return _finished(run_dir, single) or train.train_and_evaluate(single, run_dir, dataset)

  # Deepest runs first, `parallel_runs` at a time: one run's compilation (single-threaded)
  # overlaps another's training, and the longest runs do not end up last.
  runs_by_cost = sorted(runs, key=lambda run: -run[1])
  results = []
  with concurrent.futures.ThreadPoolExecutor(config.parallel_runs) as pool:
    futures = [pool.submit(run, *r) for r in runs_by_cost]
    bar = tqdm.tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="sweep", unit="run",
                    disable=not progress)
    for future in bar:
      results.append(future.result())
      bar.set_postfix_str(f"{results[-1]['model']} L={results[-1]['depth']} done")
  summary = summarize(results, list(dict.fromkeys(name for name, _, _ in runs)))
  write_outputs(workdir, summary, results)
  return summary


def _finished(run_dir: str, single) -> dict | None:
  """The summary of a run already completed in ``run_dir`` with the same config, else None."""
  summary_path = os.path.join(run_dir, "summary.json")
  if not os.path.exists(summary_path):
    return None
  with open(os.path.join(run_dir, "config.json")) as f:
    if json.load(f) != json.loads(json.dumps(train.jsonable(single.to_dict()))):
      raise ValueError(f"{run_dir} holds a finished run with another config; choose a new --workdir")
  with open(summary_path) as f:
    return json.load(f)


def _column(results, stage: str, key: str) -> list:
  return [r[stage]["by_kind"]["block"][key] if stage in r else None for r in results]


def _fit(depths, deltas) -> dict:
  points = [(L, d) for L, d in zip(depths, deltas) if d is not None]
  if len({L for L, _ in points}) < 2:
    return {"c": None, "r2": None, "note": "fewer than two depths with a finite delta"}
  return theory.fit_delta(*zip(*points)).to_dict()


def summarize(results: list[dict], model_order: list[str]) -> dict:
  """The sweep summary (module docstring) from run summaries; order and timing independent."""
  by_model = {}
  for name in model_order:
    runs = sorted((r for r in results if r["model"] == name), key=lambda r: r["depth"])
    depths = [r["depth"] for r in runs]
    entry = {
        "depths": depths,
        "diverged": [r["diverged"] for r in runs],
        "diverged_at_step": [r["diverged_at_step"] for r in runs],
        "train_loss": [r["train_loss"] for r in runs],
        "test_loss": [r.get("test_loss") for r in runs],
    }
    if any("test_accuracy" in r for r in runs):
      entry["test_accuracy"] = [r.get("test_accuracy") for r in runs]
    for stage in ("init", "trained"):
      entry[stage] = {key: _column(runs, stage, key) for key in DELTA_KEYS}
      entry[stage]["fit"] = _fit(depths, entry[stage]["delta_max"])
    by_model[name] = entry
  reference = by_model[model_order[0]]
  return {
      "reference_model": model_order[0],
      "depths": reference["depths"],
      "delta_max": reference["trained"]["delta_max"],
      "delta_mean": reference["trained"]["delta_mean"],
      "diverged": reference["diverged"],
      "fit": reference["trained"]["fit"],
      "models": by_model,
  }


CSV_FIELDS = ("model", "depth", "diverged", "diverged_at_step", "train_loss", "test_loss", "test_accuracy",
              "train_seconds") + tuple(f"init_{k}" for k in DELTA_KEYS) + tuple(f"trained_{k}" for k in DELTA_KEYS)


def write_outputs(workdir: str, summary: dict, results: list[dict]) -> None:
  train.write_json(os.path.join(workdir, "summary.json"), summary)
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, CSV_FIELDS)
    writer.writeheader()
    for r in sorted(results, key=lambda r: (r["model"], r["depth"])):
      row = {k: r.get(k) for k in CSV_FIELDS}
      for stage in ("init", "trained"):
        row.update({f"{stage}_{k}": r[stage]["by_kind"]["block"][k] if stage in r else None for k in DELTA_KEYS})
      writer.writerow(train.jsonable(row))
  plots.delta_vs_depth(summary, os.path.join(workdir, "delta_vs_depth.png"))
  if any(r.get("history") for r in results):
    plots.delta_during_training(results, list(summary["models"]), os.path.join(workdir, "delta_during_training.png"))


def collect(workdir: str) -> tuple[dict, list[dict]]:
  """The sweep config and finished run summaries stored in one workdir."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  results = []
  runs_dir = os.path.join(workdir, RUNS)
  for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
    path = os.path.join(runs_dir, name, "summary.json")
    if os.path.exists(path):
      with open(path) as f:
        results.append(json.load(f))
  return config, results


def aggregate(workdirs: list[str], out_dir: str) -> dict:
  """Merges finished sweep workdirs (e.g. one per depth, run on different machines).

  The workdirs must share their config except for ``depths``; a (model, depth) pair found in
  two of them is an error, since it is not clear which to keep.
  """
  if not workdirs:
    raise validation.ConfigError("aggregate workdirs", workdirs, "one or more sweep workdirs")
  merged_config, results, seen = None, [], {}
  for workdir in workdirs:
    config, found = collect(workdir)
    shared = {k: v for k, v in config.items() if k != "depths"}
    if merged_config is None:
      merged_config, first_shared = dict(config, depths=[]), shared
    elif shared != first_shared:
      differing = sorted(k for k in set(shared) | set(first_shared) if shared.get(k) != first_shared.get(k))
      raise ValueError(f"{workdir} was run with another config than {workdirs[0]} (fields {differing})")
    for result in found:
      key = (result["model"], result["depth"])
      if key in seen:
        raise ValueError(f"{result['model']} at depth {result['depth']} is in both {seen[key]} and {workdir}")
      seen[key] = workdir
      results.append(result)
  if not results:
    raise ValueError(f"no finished runs in {workdirs}")
  merged_config["depths"] = sorted({r["depth"] for r in results})
  os.makedirs(out_dir, exist_ok=True)
  train.write_json(os.path.join(out_dir, "config.json"), merged_config)
  model_order = [m for m in merged_config["models"] if any(r["model"] == m for r in results)]
  summary = summarize(results, model_order)
  write_outputs(out_dir, summary, results)
  return summary


def format_table(summary: dict) -> str:
  """A fixed-width table: one row per depth, δ_max at init and after training per family."""
  names = list(summary["models"])
  depths = sorted({L for m in summary["models"].values() for L in m["depths"]})
  header = ["L"]
  for name in names:
    header += [f"{name} δmax init", "δmax trained", "δmean trained", "test loss"]
  rows = [header]
  for L in depths:
    row = [str(L)]
    for name in names:
      entry = summary["models"][name]
      if L not in entry["depths"]:
        row += ["-"] * 4
        continue
      i = entry["depths"].index(L)
      if entry["diverged"][i]:
        row += [_fmt(entry["init"]["delta_max"][i]), f"diverged@{entry['diverged_at_step'][i]}", "-", "-"]
      else:
        row += [_fmt(entry[s][k][i]) for s, k in (("init", "delta_max"), ("trained", "delta_max"),
                                                  ("trained", "delta_mean"))] + [_fmt(entry["test_loss"][i])]
    rows.append(row)
  widths = [max(len(r[j]) for r in rows) for j in range(len(header))]
  lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
  fit = summary["fit"]
  if fit.get("c") is not None:
    lines.append(
        f"{summary['reference_model']} trained: δmax ≈ {fit['c']:.3g}·log(2L)/L (R² {fit['r2']:.3f}); "
        f"log-log slope {fit['slope']:.2f}; best law {fit['best']} (R² {fit['laws'][fit['best']]['r2']:.3f})"
    )
  return "\n".join(lines)


def _fmt(value) -> str:
  return "nan" if value is None else f"{value:.3g}"
