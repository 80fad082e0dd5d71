"""δ(L) = c·log(2L)/L and the law fits, on synthetic data with known answers."""

import numpy as np
import pytest
import scipy.stats

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
  # Least squares in log space: log c is the mean of log δ − log g(L), so c comes back moved by the
  # noise's mean alone, and R² = 1 − (the noise's spread)/(log δ's spread), 0 for the constant law.
  assert fit.laws[law].c == pytest.approx(c * np.exp(noise.mean()), rel=1e-12)
  log_delta = np.log(deltas)
  r2 = 1.0 - np.sum((noise - noise.mean()) ** 2) / np.sum((log_delta - log_delta.mean()) ** 2)
  assert fit.laws[law].r2 == pytest.approx(r2, rel=1e-12, abs=1e-12)
  assert fit.num_points == len(DEPTHS)


def test_theorem_law_fields_and_slope():
  deltas = theory.delta_bound(DEPTHS, 0.2)
  fit = theory.fit_delta(DEPTHS, deltas)
  assert fit.c == pytest.approx(0.2, rel=1e-12) and fit.r2 == pytest.approx(1.0)
  # The slope is the least-squares line through (log L, log δ), computed here on its own.
  log_l, log_delta = np.log(np.asarray(DEPTHS, np.float64)), np.log(deltas)
  expected = np.sum((log_l - log_l.mean()) * (log_delta - log_delta.mean())) / np.sum((log_l - log_l.mean()) ** 2)
  assert fit.slope == pytest.approx(expected, rel=1e-10)
  assert -0.87 < fit.slope < -0.28  # d log δ / d log L = 1/log(2L) − 1: −0.28 at L = 2, −0.87 at L = 1024
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


def test_read_bound_on_exact_data_recovers_c_min_and_slope_without_an_interval():
  seeds = [[0.5 / L, 0.5 / L, 0.5 / L] for L in DEPTHS]  # δ = 0.5/L exactly, three equal seeds
  reading = theory.read_bound(DEPTHS, seeds)
  assert reading.slope == pytest.approx(-1.0, abs=1e-9) and reading.slope_interval is None
  assert reading.c_min == pytest.approx(0.5 / np.log(4)) and reading.c_min_depth == 2  # log(2L) largest / L
  assert reading.laws["c/L"].r2 == pytest.approx(1.0) and reading.laws["c/L"].c == pytest.approx(0.5)
  assert reading.best is None and "deterministic" in reading.note  # no spread: nothing to name a law against


def test_welch_interval_by_hand():
  """Two depths, the slope is the difference of the mean logs over log(L2/L1); its variance
  v1/n1 + v2/n2 over log(L2/L1)², with Welch–Satterthwaite's degrees of freedom."""
  low, high = np.log([0.3, 0.32, 0.35]), np.log([0.1, 0.13])
  reading = theory.read_bound([2, 8], [np.exp(low), np.exp(high)], level=0.9)
  span = np.log(4)
  a, b = low.var(ddof=1) / 3, high.var(ddof=1) / 2
  dof = (a + b) ** 2 / (a**2 / 2 + b**2 / 1)
  half = scipy.stats.t.ppf(0.95, dof) * np.sqrt(a + b) / span
  slope = (high.mean() - low.mean()) / span
  assert reading.slope == pytest.approx(slope, rel=1e-12) and reading.dof == pytest.approx(dof, rel=1e-12)
  assert reading.slope_interval == pytest.approx([slope - half, slope + half], rel=1e-12)


@pytest.mark.parametrize("seeds, noise", [(5, "equal"), (3, "equal"), (5, "unequal"), (3, "unequal"), (2, "equal")])
def test_the_slope_interval_covers_the_true_slope_at_its_level(seeds, noise):
  """300 simulated sweeps at the default depths, δ = 0.3·L^−0.7 with log-normal seed noise like the
  measured one (σ = 0.12 at every depth, or 0.12, 0.06, 0.015, 0.03 as δ_mean's): the nominal 90%
  interval holds −0.7 in at least 85% of them (a bootstrap over the seeds covered 78% at 3 seeds)."""
  rng = np.random.default_rng(seeds)
  depths = np.array([2, 8, 32, 128])
  sigma = np.full(4, 0.12) if noise == "equal" else np.array([0.12, 0.06, 0.015, 0.03])
  covered = 0
  for _ in range(300):
    per_seed = [0.3 * L**-0.7 * np.exp(rng.normal(0, s, seeds)) for L, s in zip(depths, sigma)]
    low, high = theory.read_bound(depths, per_seed).slope_interval
    covered += low <= -0.7 <= high
  assert covered / 300 >= 0.85, covered


def test_the_true_law_fits_at_the_intervals_level_and_a_wrong_one_does_not():
  """Sweeps drawn from c·log(2L)/L keep that law in ≥ 85% of 300 (the interval's coverage); c/L,
  whose slope over 2…128 is −1 against the law's −0.67, fits in almost none at 5 seeds."""
  rng = np.random.default_rng(7)
  depths = np.array([2, 8, 32, 128])
  kept = wrong = 0
  for _ in range(300):
    per_seed = [theory.delta_bound(L, 0.2) * np.exp(rng.normal(0, 0.1, 5)) for L in depths]
    laws = theory.read_bound(depths, per_seed).laws
    kept += laws[theory.THEOREM_LAW].fits
    wrong += laws["c/L"].fits
  assert kept / 300 >= 0.85 and wrong / 300 <= 0.02, (kept, wrong)


def test_read_bound_names_no_law_when_seeds_do_not_separate_them():
  rng = np.random.default_rng(0)
  depths = np.array([16, 32, 64])
  seeds = [list(0.5 / L * np.exp(rng.normal(0, 0.5, 3))) for L in depths]  # spread about the trend's size
  reading = theory.read_bound(depths, seeds)
  top = max(reading.laws, key=lambda law: reading.laws[law].r2)  # the point estimate's pick …
  fitting = [name for name, law in reading.laws.items() if law.fits]
  assert top in fitting and len(fitting) >= 2 and reading.best is None  # … which the seeds do not single out
  assert reading.note == f"not separated by the seeds: {', '.join(fitting)} all fit"
  low, high = reading.slope_interval
  assert low < reading.slope < high and high - low > 0.2


def test_read_bound_names_the_constant_law_only_when_the_slope_interval_holds_zero():
  """The constant law's R² is 0 by construction, so R² cannot tell flat from rising data; its
  slope, 0, can: it fits flat data and not rising data."""
  rng = np.random.default_rng(1)
  depths = np.array([2, 8, 32, 128])
  flat = [list(0.3 * np.exp(rng.normal(0, 0.05, 3))) for _ in depths]
  rising = [list(0.01 * L**0.3 * np.exp(rng.normal(0, 0.05, 3))) for L in depths]
  reading = theory.read_bound(depths, flat)
  low, high = reading.slope_interval
  assert reading.best == "c" and low < 0 < high and reading.note is None
  reading = theory.read_bound(depths, rising)
  assert max(reading.laws, key=lambda law: reading.laws[law].r2) == "c"  # R² 0 against negatives
  assert reading.best is None and reading.slope_interval[0] > 0.2
  assert reading.note == "no law fits: δ rises with L"


def test_a_slope_between_two_laws_says_which():
  rng = np.random.default_rng(2)
  depths = np.array([2, 8, 32, 128])
  between = [list(0.3 * L**-0.85 * np.exp(rng.normal(0, 0.01, 5))) for L in depths]
  note = theory.read_bound(depths, between).note
  assert note.startswith("no law fits: δ falls faster than c*log(2L)/L") and "more slowly than c/L" in note
  shallow = [list(0.3 * L**-0.2 * np.exp(rng.normal(0, 0.01, 5))) for L in depths]
  assert theory.read_bound(depths, shallow).note == "no law fits: δ falls more slowly than c/sqrt(L) (slope -0.50)"


def test_read_bound_never_raises_on_data_it_cannot_fit():
  reading = theory.read_bound([2, 8, 32], [[0.0, 0.0], [0.0], [None]])
  assert reading.c_min == 0.0 and reading.slope is None and "fewer than two" in reading.note
  assert theory.read_bound([2], [[None]]).c_min is None
  assert not theory.fittable([2, 8], [0.0, 0.0]) and theory.fittable([2, 8], [0.1, 0.2])
