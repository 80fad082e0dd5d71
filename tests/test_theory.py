"""δ(L) = c·log(2L)/L and the law fits, on synthetic data with known answers."""

import numpy as np
import pytest

from resnorm import theory

DEPTHS = np.array([2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])


def test_delta_bound_closed_form():
  np.testing.assert_allclose(theory.delta_bound([1, 2, 8], 0.5), 0.5 * np.log([2, 4, 16]) / [1, 2, 8])
  with pytest.raises(ValueError, match=r"L = 0\.0: expected depths >= 1"):
    theory.delta_bound(0, 1.0)


@pytest.mark.parametrize("law", list(theory.LAWS))
def test_fit_recovers_c_and_names_the_law_from_noisy_deltas(law):
  c = 0.37
  noise = np.random.default_rng(0).normal(0.0, 0.05, DEPTHS.shape)
  deltas = c * theory.LAWS[law](DEPTHS.astype(float)) * np.exp(noise)
  fit = theory.fit_delta(DEPTHS, deltas)
  assert fit.best == law
  assert fit.laws[law].c == pytest.approx(c, rel=0.05)
  assert fit.laws[law].r2 > 0.9 or law == "c"  # a constant law has almost no variance to explain
  assert fit.num_points == len(DEPTHS)


def test_theorem_law_fields_and_slope():
  deltas = theory.delta_bound(DEPTHS, 0.2)
  fit = theory.fit_delta(DEPTHS, deltas)
  assert fit.c == pytest.approx(0.2, rel=1e-12) and fit.r2 == pytest.approx(1.0)
  # d log δ / d log L = 1/log(2L) − 1 runs from −0.28 at L = 2 to −0.87 at L = 1024.
  assert -0.87 < fit.slope < -0.28
  assert fit.to_dict()["laws"]["c/L"]["r2"] < 1.0


def test_fit_skips_diverged_and_rejects_too_few_points():
  deltas = theory.delta_bound(DEPTHS, 0.3)
  deltas[[1, 4]] = np.nan
  assert theory.fit_delta(DEPTHS, deltas).num_points == len(DEPTHS) - 2
  with pytest.raises(ValueError, match=r"deltas = \[nan, 0.1\]: expected finite, positive deltas at two depths"):
    theory.fit_delta([4, 8], [np.nan, 0.1])
  with pytest.raises(ValueError, match=r"deltas = \[0.1\]: expected a list as long as depths"):
    theory.fit_delta([4, 8], [0.1])


def test_c_min_is_the_smallest_c_of_a_bound_that_holds_at_every_depth():
  # By hand: δ·L/log(2L) = 0.5·2/log 4 = 0.7213, 0.1·8/log 16 = 0.2885, 0.3·8/log 16 = 0.8656, 0.
  depths, deltas = [2, 8, 8, 32], [0.5, 0.1, 0.3, 0.0]
  assert theory.c_min(depths, deltas) == pytest.approx(2.4 / np.log(16), rel=1e-12)
  envelope = theory.delta_bound(np.array(depths), theory.c_min(depths, deltas))
  assert np.all(envelope >= np.array(deltas)) and np.isclose(envelope[2], 0.3)
  assert theory.c_min([4], [np.nan]) is None and theory.c_min([4, 8], [0.0, 0.0]) == 0.0


def test_read_bound_on_exact_data_recovers_c_min_slope_and_law():
  seeds = [[0.5 / L, 0.5 / L, 0.5 / L] for L in DEPTHS]  # δ = 0.5/L exactly, three equal seeds
  reading = theory.read_bound(DEPTHS, seeds, replicates=50)
  assert reading["slope"] == pytest.approx(-1.0, abs=1e-9) and reading["slope_interval"] == pytest.approx([-1, -1])
  assert reading["c_min"] == pytest.approx(0.5 / np.log(4)) and reading["c_min_depth"] == 2  # log(2L) largest / L
  assert reading["best"] == "c/L" and reading["laws"]["c/L"]["r2"] == pytest.approx(1.0)
  assert reading["num_points"] == len(DEPTHS) and reading["note"] is None


def test_read_bound_names_no_law_when_seeds_do_not_separate_them():
  rng = np.random.default_rng(0)
  depths = np.array([16, 32, 64])
  seeds = [list(0.5 / L * np.exp(rng.normal(0, 0.5, 3))) for L in depths]  # spread about the trend's size
  reading = theory.read_bound(depths, seeds, replicates=500)
  assert max(reading["laws"], key=lambda law: reading["laws"][law]["r2"]) == "c*log(2L)/L"  # the point estimate's pick
  assert reading["best"] is None  # … which the seeds do not support
  low, high = reading["slope_interval"]
  assert low < reading["slope"] < high and high - low > 0.2


def test_read_bound_names_the_constant_law_only_when_the_slope_interval_holds_zero():
  """The constant law's R² is 0 by construction, so it beats every decreasing law on flat data
  and on rising data alike; only on flat data may it be named."""
  rng = np.random.default_rng(1)
  depths = np.array([2, 8, 32, 128])
  flat = [list(0.3 * np.exp(rng.normal(0, 0.05, 3))) for _ in depths]
  rising = [list(0.01 * L**0.3 * np.exp(rng.normal(0, 0.05, 3))) for L in depths]
  reading = theory.read_bound(depths, flat, replicates=500)
  low, high = reading["slope_interval"]
  assert reading["best"] == "c" and low < 0 < high and reading["note"] is None
  reading = theory.read_bound(depths, rising, replicates=500)
  assert max(reading["laws"], key=lambda law: reading["laws"][law]["r2"]) == "c"  # R² 0 against negatives
  assert reading["best"] is None and reading["slope_interval"][0] > 0.2
  assert reading["note"].startswith("no law fits: δ rises with L")


def test_read_bound_never_raises_on_data_it_cannot_fit():
  reading = theory.read_bound([2, 8, 32], [[0.0, 0.0], [0.0], [None]])
  assert reading["c_min"] == 0.0 and reading["slope"] is None and "fewer than two" in reading["note"]
  assert theory.read_bound([2], [[None]])["c_min"] is None
  assert not theory.fittable([2, 8], [0.0, 0.0]) and theory.fittable([2, 8], [0.1, 0.2])
