"""Intervals on means, differences and slopes over seeds, against direct computations and scipy."""

import numpy as np
import pytest
import scipy.stats

from resnorm import intervals

SEEDS = [0, 1, 2, 3, 4]


def test_a_paired_difference_is_the_t_interval_of_the_per_seed_differences():
  before = [0.31, 0.28, 0.35, 0.30, 0.33]
  after = [0.36, 0.30, 0.41, 0.33, 0.40]
  estimate = intervals.difference(before, SEEDS, after, SEEDS, level=0.9)
  d = np.subtract(after, before)
  half = scipy.stats.t.ppf(0.95, 4) * d.std(ddof=1) / np.sqrt(5)
  assert estimate.paired and estimate.count == 5 and estimate.dof == pytest.approx(4)
  assert estimate.value == pytest.approx(d.mean()) and estimate.interval == pytest.approx(
    [d.mean() - half, d.mean() + half]
  )
  scipy_interval = scipy.stats.ttest_rel(after, before).confidence_interval(0.9)
  assert estimate.interval == pytest.approx([scipy_interval.low, scipy_interval.high], rel=1e-10)
  assert estimate.excludes_zero  # every seed rose: the change is detected …
  a, b = (intervals.mean(v, SEEDS) for v in (before, after))
  assert a.interval[1] > b.interval[0]  # … though the two means' own intervals overlap


def test_an_unpaired_difference_is_welchs_interval():
  before, after = [0.31, 0.28, 0.35], [0.36, 0.30, 0.41, 0.33, 0.40]
  estimate = intervals.difference(before, [0, 1, 2], after, [10, 11, 12, 13, 14], level=0.9)
  welch = scipy.stats.ttest_ind(after, before, equal_var=False).confidence_interval(0.9)
  assert estimate.paired is False
  assert estimate.interval == pytest.approx([welch.low, welch.high], rel=1e-10)


def test_a_difference_pairs_only_the_seeds_both_sides_hold_and_takes_logs_on_request():
  before = [0.1, 0.2, None, 0.4]
  after = [0.2, 0.3, 0.5, float("nan")]
  estimate = intervals.difference(before, [0, 1, 2, 3], after, [0, 1, 2, 3], log=True)
  assert estimate.paired and estimate.count == 2  # seeds 0 and 1: 2 lacks a before, 3 an after
  assert estimate.value == pytest.approx(np.mean(np.log([2.0, 1.5])))
  assert intervals.difference([None], [0], [0.1], [0]) is None


def test_the_difference_interval_covers_a_known_change_at_its_level():
  """300 simulated init → trained pairs of 5 seeds with a shared seed effect (σ 0.1) and a change
  +0.05 with noise σ 0.03: the paired 90% interval holds +0.05 in ≥ 85% of them; the slope
  difference over 4 depths likewise holds its true change, −0.1."""
  rng = np.random.default_rng(0)
  covered = covered_slope = 0
  depths = np.array([2, 8, 32, 128])
  for _ in range(300):
    seed_effect = rng.normal(0, 0.1, 5)
    before = 1.0 + seed_effect
    after = before + 0.05 + rng.normal(0, 0.03, 5)
    low, high = intervals.difference(before, SEEDS, after, SEEDS, level=0.9).interval
    covered += low <= 0.05 <= high
    logs_before = [dict(enumerate(-0.3 * np.log(L) + seed_effect + rng.normal(0, 0.05, 5))) for L in depths]
    logs_after = [
      {s: v - 0.1 * np.log(L) + rng.normal(0, 0.05) for s, v in y.items()} for L, y in zip(depths, logs_before)
    ]
    estimate = intervals.slope_difference(depths, logs_before, logs_after, level=0.9)
    covered_slope += estimate.interval[0] <= -0.1 <= estimate.interval[1]
  assert covered / 300 >= 0.85 and covered_slope / 300 >= 0.85, (covered, covered_slope)


def test_the_slope_difference_is_the_slope_of_the_paired_differences():
  depths = [2, 8, 32]
  before = [{0: 0.0, 1: 0.1}, {0: -0.5, 1: -0.3}, {0: -1.0, 1: -0.9}]
  after = [{0: 0.1, 1: 0.3}, {0: -0.2, 1: 0.1}, {0: -0.4, 1: -0.1}]
  estimate = intervals.slope_difference(depths, before, after)
  x = np.log(depths)
  differences = [np.mean([a[s] - b[s] for s in (0, 1)]) for a, b in zip(after, before)]
  assert estimate.paired and estimate.value == pytest.approx(np.polyfit(x, differences, 1)[0], rel=1e-12)
  unpaired = intervals.slope_difference(depths, before, [{5: v} | {6: v + 0.1} for v in (0.1, -0.2, -0.4)])
  assert unpaired.paired is False


def test_shown_maps_log_estimates_back_and_says_when_there_is_none():
  estimate = intervals.mean([1.0, 4.0], [0, 1], log=True)
  assert intervals.shown(estimate, log=True).startswith("2 [") and intervals.shown(None) == "—"
  assert intervals.shown(intervals.combination([(1.0, [-0.5])])) == "−0.5"
  with pytest.raises(ValueError, match="at least one sample in every group"):
    intervals.combination([(1.0, [])])
