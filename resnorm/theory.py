"""The depth law of norm preservation and fits of measured δ(L) to it.

Theorem 1 of Zaeemzadeh, Rahnavard & Shah ("Norm-Preservation: Why Residual Networks Can Become
Extremely Deep?", TPAMI 2020) shows that a smooth invertible map can be represented by L
residual blocks whose backward ratios satisfy

    (1 − δ) ‖∂E/∂x_{l+1}‖ ≤ ‖∂E/∂x_l‖ ≤ (1 + δ) ‖∂E/∂x_{l+1}‖,     δ = c·log(2L)/L,

so δ shrinks as the network deepens. The theorem is an existence result: it bounds δ from
above for *some* network of L blocks, so a measured δ(L) is read against it as a bound.

* :func:`fit_delta` fits measured δ's to that law and to the alternatives c/L, c/√L and c (no
  depth dependence), each as a one-parameter least-squares fit of log δ = log c + log g(L), and
  reports R² in log space for each.
* :func:`read_bound` reads δ(L) as a bound: c_min = max_L δ(L)·L/log(2L), the smallest c for
  which δ ≤ c·log(2L)/L holds at every measured depth (the envelope :func:`delta_bound` with
  c = c_min), and the free log–log slope and the law fits with bootstrap intervals over seeds.
  It never raises for data it cannot fit: too few points is a ``note``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from resnorm import validation

LAWS = {
    "c*log(2L)/L": lambda L: np.log(2 * L) / L,
    "c/L": lambda L: 1.0 / L,
    "c/sqrt(L)": lambda L: 1.0 / np.sqrt(L),
    "c": lambda L: np.ones_like(L),
}
THEOREM_LAW = "c*log(2L)/L"


def delta_bound(L, c):
  """δ = c·log(2L)/L, elementwise in L (L ≥ 1)."""
  L = np.asarray(L, dtype=np.float64)
  if np.any(L < 1):
    raise validation.invalid("L", L.tolist(), "depths >= 1")
  return c * np.log(2 * L) / L


@dataclasses.dataclass(frozen=True)
class LawFit:
  c: float
  r2: float


@dataclasses.dataclass(frozen=True)
class DeltaFit:
  """Fits of δ(L); ``c`` and ``r2`` are those of the theorem's law c·log(2L)/L.

  Attributes:
    c, r2: the theorem's law.
    slope, intercept: the free line log δ = slope·log L + intercept.
    laws: every law in :data:`LAWS` with its fitted c and R² (in log space).
    best: the law with the highest R².
    num_points: depths used (finite, positive δ).
  """

  c: float
  r2: float
  slope: float
  intercept: float
  laws: dict[str, LawFit]
  best: str
  num_points: int

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def fittable(depths, deltas) -> bool:
  """Whether :func:`fit_delta` can fit: finite, positive δ's at two depths or more."""
  depths, deltas = np.asarray(depths, dtype=np.float64), np.asarray(deltas, dtype=np.float64)
  keep = np.isfinite(deltas) & (deltas > 0)
  return depths.shape == deltas.shape and len(np.unique(depths[keep])) >= 2


def fit_delta(depths, deltas) -> DeltaFit:
  """Fits δ(L) to each law in :data:`LAWS`; non-finite or non-positive δ's are left out."""
  depths = np.asarray(depths, dtype=np.float64)
  deltas = np.asarray(deltas, dtype=np.float64)
  if depths.shape != deltas.shape or depths.ndim != 1:
    raise validation.invalid("deltas", deltas.tolist(), f"a list as long as depths ({depths.size}), both 1-D")
  keep = np.isfinite(deltas) & (deltas > 0)
  if len(np.unique(depths[keep])) < 2:
    raise validation.invalid("deltas", deltas.tolist(), "finite, positive deltas at two depths or more")
  L, log_delta = depths[keep], np.log(deltas[keep])
  laws = _law_fits(L, log_delta)
  slope, intercept = np.polyfit(np.log(L), log_delta, 1)
  return DeltaFit(
      c=laws[THEOREM_LAW].c,
      r2=laws[THEOREM_LAW].r2,
      slope=float(slope),
      intercept=float(intercept),
      laws=laws,
      best=max(laws, key=lambda name: laws[name].r2),
      num_points=int(keep.sum()),
  )


def _law_fits(L, log_delta) -> dict[str, LawFit]:
  """Every law g of :data:`LAWS` fitted to (L, log δ) by least squares in log space,
  log c = mean(log δ − log g(L)), with its R² there."""
  total = np.sum((log_delta - log_delta.mean()) ** 2)
  fits = {}
  for name, shape in LAWS.items():
    log_g = np.log(shape(L))
    log_c = np.mean(log_delta - log_g)
    residual = log_delta - log_c - log_g
    r2 = float(1.0 - np.sum(residual**2) / total) if total > 0 else float(np.all(residual == 0))
    fits[name] = LawFit(c=float(np.exp(log_c)), r2=r2)
  return fits


def _bound_constants(depths, deltas) -> tuple[np.ndarray, np.ndarray]:
  """(L, δ·L/log(2L)) at the finite δ's: the c each point needs for δ ≤ c·log(2L)/L."""
  depths, deltas = np.asarray(depths, dtype=np.float64), np.asarray(deltas, dtype=np.float64)
  keep = np.isfinite(deltas)
  return depths[keep], deltas[keep] * depths[keep] / np.log(2 * depths[keep])


def c_min(depths, deltas) -> float | None:
  """max over the finite δ's of δ·L/log(2L): the smallest c with δ ≤ c·log(2L)/L at every point.

  δ = 0 counts (it bounds nothing away); None when no δ is finite.
  """
  _, needed = _bound_constants(depths, deltas)
  return float(needed.max()) if needed.size else None


def read_bound(depths, per_seed, *, replicates: int = 2000, level: float = 0.9, seed: int = 0) -> dict:
  """δ(L) read as a bound, with bootstrap intervals over seeds.

  Args:
    depths: the L's, one per entry of ``per_seed``.
    per_seed: for every depth, the δ's of its seeds (``None`` or NaN: no measurement).
    replicates: bootstrap replicates; each draws, at every depth, as many seeds as it has with
      replacement and averages them.
    level: the intervals' coverage (central percentiles).

  Returns:
    ``c_min`` (:func:`c_min` over every seed's δ, so the envelope c_min·log(2L)/L lies on or
    above every measured network) and ``c_min_depth`` (the L that sets it); ``slope`` of the
    free line log δ̄ = slope·log L + b through the seed means δ̄ and its ``slope_interval``;
    ``laws``: each law's R² and R² interval; ``best``: the law whose R² exceeds every other
    law's in a fraction ``level`` of the replicates, else None (the data do not separate the
    laws, fewer than three depths, or a depth with a single seed). The constant law's R² is 0
    by construction (its fit is the mean), so it "wins" whenever every other law does worse
    than the mean, also when δ̄ rises with L; it is named only when the slope interval holds 0.
    ``num_points`` (depths with δ̄ > 0), ``seeds`` (per depth), ``note``.
    Fewer than two positive δ̄'s give c_min alone and a note, never an exception.
  """
  depths = np.asarray(depths, dtype=np.float64)
  samples = [np.array([np.nan if v is None else v for v in values], dtype=np.float64) for values in per_seed]
  samples = [s[np.isfinite(s)] for s in samples]
  flat_L = np.concatenate([np.full(len(s), L) for L, s in zip(depths, samples)]) if samples else np.zeros(0)
  every_L, needed = _bound_constants(flat_L, np.concatenate(samples) if samples else np.zeros(0))
  reading = dict(c_min=None, c_min_depth=None, slope=None, slope_interval=None, laws=None, best=None,
                 num_points=0, seeds=[len(s) for s in samples], level=level, note=None)
  if needed.size:
    reading.update(c_min=float(needed.max()), c_min_depth=int(every_L[np.argmax(needed)]))
  means = np.array([s.mean() if len(s) else np.nan for s in samples])
  keep = np.isfinite(means) & (means > 0)
  reading["num_points"] = int(keep.sum())
  if len(np.unique(depths[keep])) < 2:
    reading["note"] = "fewer than two depths with a finite, positive delta: no slope or law fit"
    return reading
  L = depths[keep]
  kept = [s for s, k in zip(samples, keep) if k]

  def statistics(values):
    log_delta = np.log(values)
    return np.polyfit(np.log(L), log_delta, 1)[0], {name: fit.r2 for name, fit in _law_fits(L, log_delta).items()}

  slope, r2 = statistics(means[keep])
  rng = np.random.default_rng(seed)
  slopes, r2s = [], []
  for _ in range(replicates):
    resampled = np.array([rng.choice(s, size=len(s)).mean() for s in kept])
    if np.all(resampled > 0):
      s_, r_ = statistics(resampled)
      slopes.append(s_)
      r2s.append([r_[name] for name in LAWS])
  tail = 100 * (1 - level) / 2
  r2s = np.array(r2s).reshape(-1, len(LAWS))
  laws, best = {}, None
  for j, name in enumerate(LAWS):
    laws[name] = dict(r2=r2[name], r2_interval=np.percentile(r2s[:, j], [tail, 100 - tail]).tolist())
    margin = r2s[:, j] - np.max(np.delete(r2s, j, axis=1), axis=1)
    if len(margin) and np.percentile(margin, 100 - level * 100) > 0:
      best = name
  low, high = np.percentile(slopes, [tail, 100 - tail])
  reading.update(slope=float(slope), slope_interval=[float(low), float(high)], laws=laws, best=best)
  if best == "c" and not low <= 0 <= high:  # every decreasing law fits worse than the mean
    trend = "rises with L" if low > 0 else "falls more slowly than any law"
    reading.update(best=None, note=f"no law fits: δ {trend}")
  if min(len(s) for s in kept) < 2:
    reading.update(best=None, note="a depth with one seed: no interval covers its seed-to-seed spread, no law is named")
  elif len(L) < 3:
    reading.update(best=None, note="two depths: every one-parameter law is a slope through two points, no law is named")
  return reading
