r"""How far training runs as one vmapped program moves their numbers: two workdirs of one sweep
config, one trained grouped (``group_seeds=True``, the default) and one with a program per run
(``--config.group_seeds=False``), compared run by run.

    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/grouped
    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/alone --config.group_seeds=False
    python benchmarks/grouping.py /tmp/grouped /tmp/alone

For every statistic of the identity blocks at initialisation and after training, and for the
losses, the relative difference |grouped − alone| / |alone| of each run: its median, 90th
percentile and maximum over the runs (with the run where it is largest), and the runs whose
convergence verdict differs. A program of several members rounds otherwise than a program of one
(XLA fuses and orders the reductions of a batched program differently); training then carries a
rounding difference forward, further the more chaotic the run.
"""

from __future__ import annotations

import sys

import numpy as np

from resnorm import records, statistics, sweep_plan

BY_SETTING = ("trained delta_max", "trained layer_max_median", "trained delta_mean", "test_loss")


def _runs(workdir) -> dict[str, records.RunRecord]:
  return {sweep_plan.run_name(r.setting, r.depth, r.seed): r for r in records.runs_in([workdir], sweep_plan.RUNS)}


def _values(record: records.RunRecord) -> dict[str, float | None]:
  """The compared numbers of one run: the block statistics at both stages and the losses."""
  values = {"train_loss": record.train_loss, "test_loss": record.test_loss}
  for stage in records.STAGES:
    measured = record.measurement(stage)
    block = measured.block if measured else None
    for name in statistics.REGISTRY:
      values[f"{stage} {name}"] = block.get(name) if block else None
  return values


def compare(grouped_dir, alone_dir) -> tuple[dict[str, dict], dict[str, dict], list[str], int]:
  """Per compared number, the median, 90th percentile and maximum relative difference and the run
  of the maximum; per setting, the relative differences of :data:`BY_SETTING`; the runs whose
  convergence verdict differs; the number of runs compared."""
  grouped, alone = _runs(grouped_dir), _runs(alone_dir)
  names = sorted(set(grouped) & set(alone))
  differences = {}
  for name in names:
    ours, theirs = _values(grouped[name]), _values(alone[name])
    for key, value in theirs.items():
      if value is None or ours[key] is None or not np.isfinite(value) or not np.isfinite(ours[key]):
        continue
      scale = abs(value)
      relative = abs(ours[key] - value) / scale if scale else (0.0 if ours[key] == value else float("inf"))
      differences.setdefault(key, []).append((relative, name))
  table = {}
  for key, found in differences.items():
    relatives = np.array([r for r, _ in found])
    worst = max(found)
    table[key] = dict(
      median=float(np.median(relatives)),
      p90=float(np.percentile(relatives, 90)),
      max=worst[0],
      worst_run=worst[1],
      runs=len(found),
    )
  by_setting = {}
  for key in BY_SETTING:
    for relative, name in differences.get(key, []):
      setting = grouped[name].setting
      by_setting.setdefault(setting, {}).setdefault(key, []).append(relative)
  flipped = [
    name
    for name in names
    if (grouped[name].convergence or {}).get("converged") != (alone[name].convergence or {}).get("converged")
  ]
  return table, by_setting, flipped, len(names)


def main(argv: list[str]) -> None:
  if len(argv) != 3:
    sys.exit("usage: python benchmarks/grouping.py GROUPED_WORKDIR ALONE_WORKDIR")
  table, by_setting, flipped, count = compare(argv[1], argv[2])
  print(f"{count} runs compared; relative difference |grouped - alone| / |alone|\n")
  print("| number | median | 90th percentile | max | run of the max |")
  print("|---|---:|---:|---:|---|")
  for key in sorted(table):
    row = table[key]
    print(f"| {key} | {row['median']:.2g} | {row['p90']:.2g} | {row['max']:.2g} | {row['worst_run']} |")
  print("\nper setting, the largest relative difference over its runs\n")
  print("| setting | " + " | ".join(BY_SETTING) + " |")
  print("|---|" + "---:|" * len(BY_SETTING))
  for setting in sorted(by_setting):
    cells = [f"{max(by_setting[setting].get(key, [float('nan')])):.2g}" for key in BY_SETTING]
    print(f"| {setting} | " + " | ".join(cells) + " |")
  print(f"\nconvergence verdicts that differ: {len(flipped)} ({', '.join(flipped) or 'none'})")


if __name__ == "__main__":
  main(sys.argv)
