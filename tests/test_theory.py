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
def test_fit_recovers_c_and_r2_from_noisy_deltas(law):
  c = 0.37
  noise = np.random.default_rng(0).normal(0.0, 0.05, DEPTHS.shape)
  deltas = c * theory.LAWS[law](DEPTHS.astype(float)) * np.exp(noise)
  fit = theory.fit_delta(DEPTHS, deltas)
  # Least squares in log space: log c is the mean of log δ − log g(L), so c comes back moved by the
  # noise's mean alone, and R² = 1 − (the noise's spread)/(log δ's spread); none for the constant
  # law, whose R² is 0 by definition.
  assert fit.laws[law].c == pytest.approx(c * np.exp(noise.mean()), rel=1e-12)
  log_delta = np.log(deltas)
  r2 = 1.0 - np.sum((noise - noise.mean()) ** 2) / np.sum((log_delta - log_delta.mean()) ** 2)
  assert fit.laws[law].r2 == (None if law == "c" else pytest.approx(r2, rel=1e-12, abs=1e-12))
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
  with pytest.raises(ValueError, match=r"deltas = \[\[0.1\]\]: expected one entry per depth \(2 depths\)"):
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
  assert reading.laws["c/L"].c == pytest.approx(0.5) and reading.laws["c/L"].chi2 is None  # no spread, no test
  assert reading.bounded is None and reading.power_law is None and "deterministic" in reading.note
  # c_L = δ·L/log(2L) = 0.5/log(2L) at every depth, falling: the bound holds at one c.
  np.testing.assert_allclose(reading.c_needed, 0.5 / np.log(2 * DEPTHS), rtol=1e-12)
  assert reading.c_slope == pytest.approx(
    -1.0 - theory.read_bound(DEPTHS, [[np.log(2 * L) / L] * 2 for L in DEPTHS]).slope
  )


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


def _lack_of_fit_by_hand(depths, per_seed, log_g):
  """The lack-of-fit F-test with replicates, written out: fit log c to every seed's log δ − log g,
  then the sum of squares of the depths' means about the fit against the seeds' pure error."""
  y = [np.log(np.asarray(v)) for v in per_seed]
  n = np.array([len(v) for v in y])
  log_c = np.concatenate([v - g for v, g in zip(y, log_g)]).mean()
  lof = sum(k * (v.mean() - log_c - g) ** 2 for k, v, g in zip(n, y, log_g))
  pure = sum(((v - v.mean()) ** 2).sum() for v in y)
  dof, pure_dof = len(y) - 1, n.sum() - len(y)
  return lof / (pure / pure_dof), scipy.stats.f.sf(lof / dof / (pure / pure_dof), dof, pure_dof)


def test_c_needed_and_the_lack_of_fit_test_against_hand_computed_values():
  """A small table: c_L is the geometric mean over seeds of δ·L/log(2L) with a t interval on the
  log scale; the law's χ² and p are the replicate lack-of-fit test written out by hand."""
  depths = np.array([2, 8, 32])
  per_seed = [[0.30, 0.36, 0.33], [0.12, 0.10, 0.15], [0.061, 0.050, 0.055]]
  reading = theory.read_bound(depths, per_seed, level=0.9)
  for L, values, c, interval in zip(depths, per_seed, reading.c_needed, reading.c_needed_interval):
    logs = np.log(np.array(values) * L / np.log(2 * L))
    half = scipy.stats.t.ppf(0.95, 2) * logs.std(ddof=1) / np.sqrt(3)
    assert c == pytest.approx(np.exp(logs.mean()), rel=1e-12)
    assert interval == pytest.approx(np.exp([logs.mean() - half, logs.mean() + half]), rel=1e-12)
  chi2, p = _lack_of_fit_by_hand(depths, per_seed, np.log(np.log(2 * depths) / depths))
  law = reading.laws[theory.THEOREM_LAW]
  assert (law.chi2, law.p, law.dof) == (pytest.approx(chi2, rel=1e-10), pytest.approx(p, rel=1e-10), 2)
  assert reading.laws[theory.FREE_POWER_LAW].dof == 1


def test_a_pure_power_law_passes_the_lack_of_fit_test_at_its_level_and_a_u_shape_fails():
  """300 sweeps of δ = 0.3·L^−0.4 at 7 depths × 5 seeds (log-normal noise σ = 0.1): the free power
  law is rejected in about 10% of them (the test's size at level 0.9); a U-shaped δ (the reference
  δ_max's shape: falling to L = 32, rising to L = 128) is rejected in nearly all, and its shape
  names the minimum."""
  rng = np.random.default_rng(3)
  depths = np.array([2, 4, 8, 16, 32, 64, 128])
  rejected = 0
  for _ in range(300):
    per_seed = [0.3 * L**-0.4 * np.exp(rng.normal(0, 0.1, 5)) for L in depths]
    rejected += theory.read_bound(depths, per_seed).power_law is False
  assert 0.04 <= rejected / 300 <= 0.16, rejected
  u_shape = 0.093 * np.exp(0.12 * np.log(depths / 32) ** 2)
  found = []
  for _ in range(50):
    reading = theory.read_bound(depths, [v * np.exp(rng.normal(0, 0.1, 5)) for v in u_shape])
    found.append((reading.power_law, reading.shape))
  assert sum(power is False for power, _ in found) >= 48, found
  assert sum(bool(shape) and shape.startswith("a minimum") for _, shape in found) >= 40, found


def test_the_bound_is_read_as_a_bound_not_as_a_law():
  """δ falling faster than c·log(2L)/L (as 1/L) is consistent with the bound (c_L falls); δ at the
  bound's own rate leaves c_L flat (no detectable growth, so not called bounded or unbounded with
  these seeds unless the interval says so); δ falling as L^−0.2 needs a c_L that grows."""
  rng = np.random.default_rng(2)
  depths = np.array([2, 4, 8, 16, 32, 64, 128])

  def reading(shape):
    return theory.read_bound(depths, [shape(L) * np.exp(rng.normal(0, 0.05, 5)) for L in depths])

  faster = reading(lambda L: 0.3 / L)
  assert faster.bounded is True and faster.c_slope_interval[1] < 0
  assert faster.laws["c/L"].p > 0.01 and faster.laws[theory.THEOREM_LAW].p < 1e-6  # the law fails, the bound holds
  slower = reading(lambda L: 0.3 * L**-0.2)
  assert slower.bounded is False and slower.c_slope_interval[0] > 0
  assert slower.c_needed[-1] > 5 * slower.c_needed[0]
  # c_L's slope is δ's slope less the law's own slope over these depths, with the same interval.
  law_slope = slower.laws[theory.THEOREM_LAW].slope
  assert slower.c_slope == pytest.approx(slower.slope - law_slope, rel=1e-12)
  assert slower.c_slope_interval == pytest.approx([v - law_slope for v in slower.slope_interval], rel=1e-12)


def test_local_slopes_are_welch_intervals_between_neighbouring_depths():
  per_seed = [[0.30, 0.36, 0.33], [0.12, 0.10, 0.15, 0.11]]
  (local,) = theory.read_bound([4, 16], per_seed).local_slopes
  a, b = np.log(per_seed[0]), np.log(per_seed[1])
  va, vb, span = a.var(ddof=1) / 3, b.var(ddof=1) / 4, np.log(4)
  dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
  half = scipy.stats.t.ppf(0.95, dof) * np.sqrt(va + vb) / span
  slope = (b.mean() - a.mean()) / span
  assert (local["from"], local["to"]) == (4, 16)
  assert local["slope"] == pytest.approx(slope, rel=1e-12)
  assert local["interval"] == pytest.approx([slope - half, slope + half], rel=1e-12)


def test_read_bound_never_raises_on_data_it_cannot_fit():
  reading = theory.read_bound([2, 8, 32], [[0.0, 0.0], [0.0], [None]])
  assert reading.c_min == 0.0 and reading.slope is None and "fewer than two" in reading.note
  assert theory.read_bound([2], [[None]]).c_min is None
  assert not theory.fittable([2, 8], [0.0, 0.0]) and theory.fittable([2, 8], [0.1, 0.2])
