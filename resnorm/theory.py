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
  c = c_min), and the free log–log slope with a Welch–Satterthwaite t interval over seeds, which
  each law either fits (its own slope over the depths lies in the interval) or does not. It
  never raises for data it cannot fit: too few points is a ``note``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

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


@dataclasses.dataclass(frozen=True)
class LawReading:
  """One law c·g(L) against a bound reading's slope interval.

  Attributes:
    slope: the law's own least-squares slope of log g(L) over the measured depths.
    fits: whether that slope lies in the interval (None without an interval).
    c, c_interval: the law's fitted c (log space, on the depths' means) and its interval.
    r2: the fit's R² in log space.
  """

  slope: float
  fits: bool | None
  c: float
  c_interval: list[float] | None
  r2: float


@dataclasses.dataclass(frozen=True)
class BoundReading:
  """δ(L) read as a bound (:func:`read_bound`).

  Attributes:
    c_min, c_min_depth: the smallest c with δ ≤ c·log(2L)/L at every measured network, and the
      L that sets it (None when no δ is finite).
    slope, slope_interval, dof: the free log–log slope, its interval and the interval's degrees
      of freedom (None where there is no slope or no interval).
    laws: every law of :data:`LAWS` against the interval (None without a slope).
    best: the one law that fits, where exactly one does.
    num_points: depths with a finite, positive δ; ``seeds``: per depth, the finite δ's.
    level: the intervals' coverage; ``note``: why a part is missing, or how the laws fared.
  """

  c_min: float | None = None
  c_min_depth: int | None = None
  slope: float | None = None
  slope_interval: list[float] | None = None
  dof: float | None = None
  laws: dict[str, LawReading] | None = None
  best: str | None = None
  num_points: int = 0
  seeds: list[int] = dataclasses.field(default_factory=list)
  level: float = 0.9
  note: str | None = None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> BoundReading:
    laws = data["laws"] and {name: LawReading(**law) for name, law in data["laws"].items()}
    return cls(**{**data, "laws": laws})


def read_bound(depths, per_seed, *, level: float = 0.9) -> BoundReading:
  """δ(L) read as a bound, with intervals over seeds that hold their level for a few seeds.

  On the log scale, with y = log δ of each seed, m_j and v_j the mean and variance of y over the
  n_j seeds of depth L_j, and x_j = log L_j, the free slope is the least-squares line through
  the depths' means, b = Σ_j w_j m_j with w_j = (x_j − x̄)/Σ_k (x_k − x̄)². The depths' seeds are
  independent, so Var b = Σ_j w_j² v_j/n_j; its interval is b ± t·SE with Student's t at the
  Welch–Satterthwaite degrees of freedom, ν = SE⁴ / Σ_j (w_j² v_j/n_j)²/(n_j − 1), which lets
  the noise differ from depth to depth (tests/test_theory.py measures its coverage on simulated
  sweeps). The slope is that of the geometric mean over seeds, a power law's exponent whatever
  the noise's size.

  A law c·g(L) *fits* when its own least-squares slope over the measured depths, Σ_j w_j log
  g(L_j), lies in the interval; the true law is thus kept with the interval's coverage. The law
  whose slope is alone in the interval is named ``best``; several: not separated; none: no law
  fits, and the note says which way δ departs.

  Args:
    depths: the L's, one per entry of ``per_seed``.
    per_seed: for every depth, the δ's of its seeds (``None``, NaN or ≤ 0: left out of the
      slope; every finite one counts for c_min).
    level: the intervals' coverage.

  Returns:
    The :class:`BoundReading`: c_min over every seed's δ (:func:`c_min`, so the envelope
    c_min·log(2L)/L lies on or above every measured network) and the slope with its interval
    and the laws. Fewer than two depths with a positive δ give c_min alone and a note, never an
    exception; a depth with one seed, or seeds that all agree (a deterministic network), give the
    slope without an interval.
  """
  depths = np.asarray(depths, dtype=np.float64)
  samples = [np.array([np.nan if v is None else v for v in values], dtype=np.float64) for values in per_seed]
  finite = [s[np.isfinite(s)] for s in samples]
  flat_L = np.concatenate([np.full(len(s), L) for L, s in zip(depths, finite)]) if finite else np.zeros(0)
  every_L, needed = _bound_constants(flat_L, np.concatenate(finite) if finite else np.zeros(0))
  bound = dict(seeds=[len(s) for s in finite], level=level)
  if needed.size:
    bound.update(c_min=float(needed.max()), c_min_depth=int(every_L[np.argmax(needed)]))
  logs = [np.log(s[s > 0]) for s in finite]
  keep = np.array([len(y) > 0 for y in logs], dtype=bool)
  bound["num_points"] = int(keep.sum())
  if len(np.unique(depths[keep])) < 2:
    return BoundReading(**bound, note="fewer than two values of L with a finite, positive delta: no slope or law fit")
  L, logs = depths[keep], [y for y, k in zip(logs, keep) if k]
  x = np.log(L)
  weights = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
  means = np.array([y.mean() for y in logs])
  slope = float(weights @ means)
  law_fits = _law_fits(L, means)
  slopes = {name: float(weights @ np.log(shape(L))) for name, shape in LAWS.items()}
  bound.update(slope=slope)
  if min(len(y) for y in logs) < 2:
    note = "a depth with one seed: no interval covers its seed-to-seed spread, no law is named"
    return BoundReading(**bound, laws=_laws(slopes, law_fits), note=note)
  counts = np.array([len(y) for y in logs])
  variances = np.array([y.var(ddof=1) for y in logs]) / counts  # of each depth's mean
  if not np.any(variances > 0):
    note = "the same δ at every seed (a deterministic network): no interval, the laws compared by R² only"
    return BoundReading(**bound, laws=_laws(slopes, law_fits), note=note)

  def interval(center, coefficients):
    """center ± t·SE for the combination Σ coefficients_j m_j."""
    parts = coefficients**2 * variances
    error = float(np.sqrt(parts.sum()))
    dof = error**4 / float(np.sum(parts**2 / (counts - 1)))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * error
    return [center - half, center + half], dof

  (low, high), dof = interval(slope, weights)
  c_intervals = {
    name: [float(np.exp(v)) for v in interval(float(np.log(fit.c)), np.full(len(L), 1 / len(L)))[0]]
    for name, fit in law_fits.items()
  }
  laws = _laws(slopes, law_fits, (low, high), c_intervals)
  fitting = [name for name, law in laws.items() if law.fits]
  best, note = None, None
  if len(fitting) == 1:
    best = fitting[0]
  elif fitting:
    note = f"not separated by the seeds: {', '.join(fitting)} all fit"
  else:
    note = f"no law fits: δ {_departure(low, high, laws)}"
  return BoundReading(**bound, slope_interval=[low, high], dof=dof, laws=laws, best=best, note=note)


def _laws(slopes: dict, fits: dict, interval=None, c_intervals=None) -> dict[str, LawReading]:
  """Every law's :class:`LawReading`, judged against ``interval`` where there is one."""
  return {
    name: LawReading(
      slope=slopes[name],
      fits=None if interval is None else bool(interval[0] <= slopes[name] <= interval[1]),
      c=fits[name].c,
      c_interval=None if c_intervals is None else c_intervals[name],
      r2=fits[name].r2,
    )
    for name in LAWS
  }


def _departure(low: float, high: float, laws: dict[str, LawReading]) -> str:
  """How a slope interval [low, high] that holds no law's slope lies among the laws' slopes."""
  by_slope = sorted(laws, key=lambda name: laws[name].slope)  # steepest first
  steeper = [name for name in by_slope if laws[name].slope < low]  # δ falls more slowly than these
  shallower = [name for name in by_slope if laws[name].slope > high]  # … and faster than these
  if not shallower:
    return "rises with L"  # above the constant law's slope 0
  if not steeper:
    return f"falls faster than {by_slope[0]}"
  slower = f"more slowly than {steeper[-1]} (slope {laws[steeper[-1]].slope:.2f})"
  if laws[shallower[0]].slope == 0:  # the constant law: δ falls, but not as fast as any decaying law
    return f"falls {slower}"
  return f"falls faster than {shallower[0]} (slope {laws[shallower[0]].slope:.2f}) and {slower}"
