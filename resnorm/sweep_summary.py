"""A sweep's summary from its run records: per setting and depth, means and spreads over the seeds,
and δ(L) read against the bound c·log(2L)/L.

:func:`summarize_sweep` is a pure function of the records, independent of their order and of
how and where they were trained: a sweep split over machines and merged
(:func:`experiments.sweep_outputs.aggregate`) has the joint sweep's summary.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from resnorm import records, theory


def _fit(depths, deltas) -> dict:
  """:func:`theory.fit_delta` where it can fit, else a note: a fit never loses a sweep."""
  values = [np.nan if d is None else d for d in deltas]
  if not theory.fittable(depths, values):
    return {"c": None, "r2": None, "note": f"no fit: fewer than two depths with a finite, positive delta ({deltas})"}
  return theory.fit_delta(depths, values).to_dict()


def setting_of(record: records.RunRecord) -> str:
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


def summarize_sweep(
  results: list[records.RunRecord], setting_order: list[str], overrides: dict | None = None, L: str = "layers"
) -> records.SweepSummary:
  """The sweep summary from run records; independent of their order and timing. ``overrides``:
  each setting's overrides (:func:`resnorm.sweep_plan.setting_overrides`), kept with its results; ``L``: what the
  bound reading takes as L (``config.bound_L``, :data:`resnorm.records.BOUND_LENGTHS`)."""
  by_setting = {name: _family([r for r in results if setting_of(r) == name], L) for name in setting_order}
  if overrides:
    by_setting = {
      name: dataclasses.replace(family, overrides=records.config_dict(overrides.get(name, {})))
      for name, family in by_setting.items()
    }
  return records.SweepSummary(setting_order[0], by_setting)
