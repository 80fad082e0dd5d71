"""A sweep's summary from its run records: per setting and depth, means and spreads over the seeds,
and δ(L) read against the bound c·log(2L)/L.

:func:`summarize_sweep` is a pure function of the records, independent of their order and of
how and where they were trained: a sweep split over machines and merged
(:func:`experiments.sweep_outputs.aggregate`) has the joint sweep's summary.
"""

from __future__ import annotations

import numpy as np

from resnorm import records, statistics, theory


def summarize_sweep(
  results: list[records.RunRecord], overrides: dict[str, dict], bound_L: str = "layers"
) -> records.SweepSummary:
  """The sweep summary of run records.

  Args:
    results: the runs' records, in any order.
    overrides: every setting, in the sweep's order (the first is the reference), to what it is
      (its family and overrides, :func:`resnorm.sweep_plan.setting_overrides`).
    bound_L: what the bound readings take as L (``config.bound_L``): ``'layers'``, the number
      of layers of the kind measured, or ``'depth'``, the network's depth.
  """
  families = {
    name: _family([r for r in results if r.setting == name], bound_L, records.config_dict(setting))
    for name, setting in overrides.items()
  }
  return records.SweepSummary(next(iter(overrides)), families)


def _trained(run: records.RunRecord, key: str):
  """A run's ``key`` (a loss or accuracy) as the summary reads it: a diverged run's train loss,
  the loss up to its divergence, is no trained network's loss (None, as its test loss is)."""
  return None if run.diverged and key == "train_loss" else getattr(run, key)


def _family(runs: list[records.RunRecord], bound_L: str, overrides: dict) -> records.FamilyResults:
  """One setting's results: its runs grouped by depth, means and spreads over the seeds, and every
  seed's values (aligned with ``seeds``) for the intervals and differences read from them."""
  depths = sorted({r.depth for r in runs})
  seeds = sorted({r.seed for r in runs})
  groups = [sorted((r for r in runs if r.depth == L), key=lambda r: r.seed) for L in depths]
  by_seed = [{r.seed: r for r in group} for group in groups]

  def per_seed(value):
    """Per depth, ``value(run)`` of each seed (None where the seed has no run there)."""
    return [[value(at_depth[s]) if s in at_depth else None for s in seeds] for at_depth in by_seed]

  def column(key):
    return [records.seed_mean([_trained(r, key) for r in group]) for group in groups]

  def spread(key):
    return [records.seed_std([_trained(r, key) for r in group]) for group in groups]

  classification = any(r.test_accuracy is not None for r in runs)
  variance = next((r.target_variance for r in runs if r.target_variance is not None), None)
  train_loss, test_loss, init_test_loss = column("train_loss"), column("test_loss"), column("init_test_loss")
  kinds = sorted({k for r in runs for m in (r.init, r.trained) if m for k in m.by_kind} - {"block"})
  verdicts = [[r.convergence for r in group if r.convergence] for group in groups]
  judged = any(verdicts)
  losses = ("train_loss", "test_loss", "init_test_loss", "test_accuracy", "init_test_accuracy")
  verdict_keys = ("fall", "trend", "converged")
  return records.FamilyResults(
    depths=depths,
    diverged=[any(r.diverged for r in group) for group in groups],
    diverged_at_step=[min((r.diverged_at_step for r in group if r.diverged), default=None) for group in groups],
    train_loss=train_loss,
    test_loss=test_loss,
    init=_stage(groups, seeds, "init", "block", bound_L),
    trained=_stage(groups, seeds, "trained", "block", bound_L),
    model=runs[0].model,
    seeds=seeds,
    num_diverged=[sum(r.diverged for r in group) for group in groups],
    std={key: spread(key) for key in ("train_loss", "test_loss", "test_accuracy")},
    by_kind={kind: {stage: _stage(groups, seeds, stage, kind, bound_L) for stage in records.STAGES} for kind in kinds},
    init_test_loss=init_test_loss,
    budget=runs[0].budget,
    overrides=overrides,
    test_accuracy=column("test_accuracy") if classification else None,
    train_loss_relative=_relative(train_loss, variance),
    test_loss_relative=_relative(test_loss, variance),
    init_test_loss_relative=_relative(init_test_loss, variance),
    init_test_accuracy=column("init_test_accuracy") if classification else None,
    num_converged=[sum(bool(v["converged"]) for v in group) for group in verdicts] if judged else None,
    train_loss_fall=[records.seed_mean([v["fall"] for v in group]) for group in verdicts] if judged else None,
    convergence={
      k: v
      for k, v in next(v for group in verdicts for v in group).items()
      if k in ("window", "tolerance", "trend_tolerance")
    }
    if judged
    else None,
    construction={
      "block_bound_max": [
        records.seed_mean([(r.construction or {}).get("block_bound_max") for r in group]) for group in groups
      ]
    }
    if any(r.construction for r in runs)
    else None,
    per_seed={
      **{key: per_seed(lambda r, key=key: _trained(r, key)) for key in losses},
      **{key: per_seed(lambda r, key=key: (r.convergence or {}).get(key)) for key in verdict_keys},
    },
  )


def _stage(
  groups: list[list[records.RunRecord]], seeds: list[int], stage: str, kind: str, bound_L: str
) -> records.Stage:
  """The :class:`resnorm.records.Stage` of ``groups`` (one list of seeds' runs per depth, ascending)
  at ``stage`` for layers of ``kind``; the bound read against ``bound_L``, depths where the network
  has no layer of ``kind`` left out; per-seed values aligned with ``seeds``."""
  if bound_L not in records.BOUND_LENGTHS:
    raise ValueError(f"bound_L = {bound_L!r}: expected one of {list(records.BOUND_LENGTHS)}")
  by_seed = [{r.seed: r.measurement(stage) for r in runs} for runs in groups]
  measured = [[runs.get(seed) for seed in seeds] for runs in by_seed]  # None: no run, or no measurement
  values = {
    name: [[m.by_kind[kind][name] if m and kind in m.by_kind else None for m in row] for row in measured]
    for name in statistics.REGISTRY
  }
  values["token_c_last"] = [
    [m.profile["token_c"][-1] if m and kind == "block" and "token_c" in m.profile else None for m in row]
    for row in measured
  ]
  means = {name: [records.seed_mean(row) for row in per_depth] for name, per_depth in values.items()}
  means["num_layers"] = [None if n is None else int(n) for n in means["num_layers"]]
  lengths = means["num_layers"] if bound_L == "layers" else [runs[0].depth for runs in groups]
  kept = [i for i, n in enumerate(lengths) if n]

  def at_kept(per_depth):
    return [per_depth[i] for i in kept]

  return records.Stage(
    means=means,
    std={name: [records.seed_std(row) for row in per_depth] for name, per_depth in values.items()},
    per_seed={name: values[name] for name in [s.name for s in statistics.read_as_bound()] + ["token_c_last"]},
    bound={s.name: theory.read_bound(at_kept(lengths), at_kept(values[s.name])) for s in statistics.read_as_bound()},
    fit=_fit(at_kept(lengths), at_kept(means["delta_max"])),
    bound_L=bound_L,
  )


def _fit(depths, deltas) -> dict:
  """:func:`theory.fit_delta` where it can fit, else a note: a fit never loses a sweep."""
  values = [np.nan if d is None else d for d in deltas]
  if not theory.fittable(depths, values):
    return {"c": None, "r2": None, "note": f"no fit: fewer than two depths with a finite, positive delta ({deltas})"}
  return theory.fit_delta(depths, values).to_dict()


def _relative(losses: list, variance: float | None) -> list | None:
  if variance is None:
    return None
  return [None if loss is None else loss / variance for loss in losses]
