"""Intervals over seeds for means, differences and slopes, paired by seed where runs share one.

Every estimate here is a linear combination θ = Σ_g a_g·ȳ_g of the means of independent groups
of samples y_g (a setting's seeds at one depth; or, paired, each seed's difference between two
runs that share it). With s_g² the sample variance and n_g the size of group g,

    SE² = Σ_g a_g² s_g²/n_g,      θ ± t_ν·SE,      ν = SE⁴ / Σ_g (a_g² s_g²/n_g)² / (n_g − 1),

Student's t at the Welch–Satterthwaite degrees of freedom ν (:func:`combination`), which holds
its level for a few seeds and lets the noise differ from group to group. A difference between two
stages or settings is an interval on the difference itself (:func:`difference`,
:func:`slope_difference`): overlap of two intervals is no test of a change (it is far stricter
than the intervals' level, and ignores the pairing). Positive quantities are taken on the log
scale (``log=True``): the centre is then the geometric mean over seeds and the interval, mapped
back, stays positive.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

from resnorm import validation


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A linear combination of means over seeds and its interval.

  Attributes:
    value: the estimate (on the log scale for ``log=True`` estimates, before mapping back).
    interval: [low, high] at ``level``; None where a group has one sample or none has spread.
    dof: the interval's Welch–Satterthwaite degrees of freedom.
    paired: for a difference, whether it was taken seed by seed.
    count: the samples it rests on (for a paired difference, the shared seeds).
  """

  value: float
  interval: list[float] | None
  dof: float | None
  level: float
  paired: bool | None = None
  count: int = 0

  @property
  def excludes_zero(self) -> bool:
    """Whether the interval lies wholly on one side of 0 (a change detected at ``level``)."""
    return self.interval is not None and (self.interval[0] > 0 or self.interval[1] < 0)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def combination(groups: list[tuple[float, np.ndarray]], level: float = 0.9) -> Estimate:
  """Σ_g a_g·ȳ_g with its Welch–Satterthwaite t interval; ``groups``: (a_g, samples of g)."""
  validation.level("level", level)
  groups = [(float(a), np.asarray(y, np.float64)) for a, y in groups]
  if not groups or any(len(y) == 0 for _, y in groups):
    raise ValueError(f"groups = {[len(y) for _, y in groups]} samples: expected at least one sample in every group")
  value = float(sum(a * y.mean() for a, y in groups))
  count = int(sum(len(y) for _, y in groups))
  if any(len(y) < 2 for _, y in groups):
    return Estimate(value, None, None, level, count=count)
  parts = np.array([a**2 * y.var(ddof=1) / len(y) for a, y in groups])
  if not np.any(parts > 0):
    return Estimate(value, None, None, level, count=count)
  error = math.sqrt(parts.sum())
  dof = error**4 / float(np.sum(parts**2 / np.array([len(y) - 1 for _, y in groups])))
  half = float(stats.t.ppf(0.5 + level / 2, dof)) * error
  return Estimate(value, [value - half, value + half], float(dof), level, count=count)


def by_seed(values, seeds) -> dict[int, float]:
  """The finite values (one per seed, aligned with ``seeds``), keyed by seed."""
  return {s: float(v) for s, v in zip(seeds, values) if v is not None and np.isfinite(v)}


def _scaled(values: dict[int, float], log: bool) -> dict[int, float]:
  return {s: math.log(v) for s, v in values.items() if v > 0} if log else values


def mean(values, seeds, level: float = 0.9, log: bool = False) -> Estimate | None:
  """The mean over seeds of ``values`` with its t interval (None: no finite value); ``log``:
  of log values (the geometric mean and its interval, mapped back by :func:`shown`)."""
  samples = _scaled(by_seed(values, seeds), log)
  return combination([(1.0, list(samples.values()))], level) if samples else None


def difference(before, seeds_before, after, seeds_after, level: float = 0.9, log: bool = False) -> Estimate | None:
  """after − before (``log``: log after − log before, a log ratio), paired by seed where the two
  share two seeds or more (then over the shared seeds only), else Welch's unpaired interval."""
  a, b = _scaled(by_seed(before, seeds_before), log), _scaled(by_seed(after, seeds_after), log)
  if not a or not b:
    return None
  shared = sorted(set(a) & set(b))
  if len(shared) >= 2:
    estimate = combination([(1.0, [b[s] - a[s] for s in shared])], level)
    return dataclasses.replace(estimate, paired=True)
  return dataclasses.replace(combination([(1.0, list(b.values())), (-1.0, list(a.values()))], level), paired=False)


def slope_weights(depths) -> np.ndarray:
  """w_j with Σ_j w_j·m_j the least-squares slope of the means m_j against x_j = log L_j."""
  x = np.log(np.asarray(depths, np.float64))
  return (x - x.mean()) / np.sum((x - x.mean()) ** 2)


def slope(depths, per_depth: list[dict[int, float]], level: float = 0.9) -> Estimate:
  """The least-squares slope of the per-depth means of ``per_depth`` (samples by seed, already on
  the scale to fit, e.g. log δ) against log L."""
  return combination([(w, list(y.values())) for w, y in zip(slope_weights(depths), per_depth)], level)


def slope_difference(depths, before: list[dict[int, float]], after: list[dict[int, float]], level=0.9) -> Estimate:
  """The slope of ``after`` less that of ``before`` over the same depths (samples by seed, on the
  fitted scale): paired by seed where every depth shares two seeds or more, else unpaired."""
  weights = slope_weights(depths)
  shared = [sorted(set(a) & set(b)) for a, b in zip(before, after)]
  if all(len(s) >= 2 for s in shared):
    groups = [(w, [b[s] - a[s] for s in keep]) for w, a, b, keep in zip(weights, before, after, shared)]
    return dataclasses.replace(combination(groups, level), paired=True)
  groups = [(w, list(b.values())) for w, b in zip(weights, after)]
  groups += [(-w, list(a.values())) for w, a in zip(weights, before)]
  return dataclasses.replace(combination(groups, level), paired=False)


def shown(estimate: Estimate | None, log: bool = False, digits: str = ".3g") -> str:
  """ "0.123 [0.101, 0.145]" (``log``: the values mapped back by exp), or "—"."""
  if estimate is None:
    return "—"
  f = math.exp if log else float
  text = format(f(estimate.value), digits)
  if estimate.interval:
    text += " [{}, {}]".format(*(format(f(v), digits) for v in estimate.interval))
  return text.replace("-", "−")
