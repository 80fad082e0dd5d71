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
