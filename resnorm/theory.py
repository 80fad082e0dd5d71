"""The depth law of norm preservation and fits of measured δ(L) to it.

Theorem 1 of Zaeemzadeh, Rahnavard & Shah ("Norm-Preservation: Why Residual Networks Can Become
Extremely Deep?", TPAMI 2020) shows that a smooth invertible map can be represented by L
residual blocks whose backward ratios satisfy

    (1 − δ) ‖∂E/∂x_{l+1}‖ ≤ ‖∂E/∂x_l‖ ≤ (1 + δ) ‖∂E/∂x_{l+1}‖,     δ = c·log(2L)/L,

so δ shrinks as the network deepens. The theorem is an existence result: it bounds δ from
above for *some* network of L blocks, so a measured δ(L) is read against it as a bound, never
as a law that trained networks must follow.

* :func:`read_bound` reads δ(L) as a bound: the c each depth needs, c_L = δ·L/log(2L), with
  intervals over seeds, and whether it grows with L; c_min = max_L c_L, the envelope
  :func:`delta_bound` at c = c_min; the free log–log slope as a description; local slopes
  between neighbouring depths; and a lack-of-fit test of each law and of a free power law, which
  says when no power law describes δ(L) at all (a curve, a minimum). It never raises for data
  it cannot read: too few points is a ``note``.
* :func:`fit_delta` fits δ's to that law and to the alternatives c/L, c/√L and c (no depth
  dependence), each as a one-parameter least-squares fit of log δ = log c + log g(L), with R²
  in log space (none for the constant law, whose R² is 0 by definition).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

from resnorm import intervals, validation

LAWS = {
  "c*log(2L)/L": lambda L: np.log(2 * L) / L,
  "c/L": lambda L: 1.0 / L,
  "c/sqrt(L)": lambda L: 1.0 / np.sqrt(L),
  "c": lambda L: np.ones_like(L),
}
THEOREM_LAW = "c*log(2L)/L"


def _depths(depths) -> np.ndarray:
  """``depths`` as a 1-D float array, every one a finite L ≥ 1."""
  L = np.asarray(depths, dtype=np.float64)
  if L.ndim != 1 or not np.all(np.isfinite(L)) or np.any(L < 1):
    raise validation.invalid("depths", np.asarray(depths).tolist(), "a list of depths L >= 1")
  return L


def _deltas(name: str, deltas, count: int) -> list[np.ndarray]:
  """Per depth, the δ's (``None`` and NaN: missing) as float arrays; ``count`` depths, and no
  finite δ below 0 (δ = |r − 1|)."""
  values = [np.array([np.nan if v is None else v for v in np.atleast_1d(d)], dtype=np.float64) for d in deltas]
  if len(values) != count:
    raise validation.invalid(name, [v.tolist() for v in values], f"one entry per depth ({count} depths)")
  if any(np.any(v[np.isfinite(v)] < 0) for v in values):
    raise validation.invalid(name, [v.tolist() for v in values], "deltas >= 0 (None or NaN where missing)")
  return values


def delta_bound(L, c):
  """δ = c·log(2L)/L, elementwise in L (L ≥ 1)."""
  L = np.asarray(L, dtype=np.float64)
  if np.any(L < 1):
    raise validation.invalid("L", L.tolist(), "depths >= 1")
  return c * np.log(2 * L) / L


@dataclasses.dataclass(frozen=True)
class LawFit:
  c: float
  r2: float | None


@dataclasses.dataclass(frozen=True)
class DeltaFit:
  """Fits of δ(L); ``c`` and ``r2`` are those of the theorem's law c·log(2L)/L.

  Attributes:
    c, r2: the theorem's law.
    slope, intercept: the free line log δ = slope·log L + intercept.
    laws: every law in :data:`LAWS` with its fitted c and R² (in log space; None for the
      constant law).
    num_points: depths used (finite, positive δ).
  """

  c: float
  r2: float
  slope: float
  intercept: float
  laws: dict[str, LawFit]
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
  depths = _depths(depths)
  deltas = np.concatenate(_deltas("deltas", deltas, depths.size))
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
    num_points=int(keep.sum()),
  )


def _law_fits(L, log_delta) -> dict[str, LawFit]:
  """Every law g of :data:`LAWS` fitted to (L, log δ) by least squares in log space,
  log c = mean(log δ − log g(L)), with its R² there (None for the constant law: its fit is the
  mean, so its R² is 0 whatever the data)."""
  total = np.sum((log_delta - log_delta.mean()) ** 2)
  fits = {}
  for name, shape in LAWS.items():
    log_g = np.log(shape(L))
    log_c = np.mean(log_delta - log_g)
    residual = log_delta - log_c - log_g
    r2 = float(1.0 - np.sum(residual**2) / total) if total > 0 else float(np.all(residual == 0))
    if name == "c":
      r2 = None
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
  depths = _depths(depths)
  _, needed = _bound_constants(depths, np.concatenate(_deltas("deltas", deltas, depths.size)))
  return float(needed.max()) if needed.size else None


@dataclasses.dataclass(frozen=True)
class LackOfFit:
  """How far the depths' mean log δ lie from one law, beyond the seeds' own scatter.

  The lack-of-fit test with replicates: the law is fitted by least squares to every seed's
  log δ; SS_lof = Σ_j n_j (m_j − fitted_j)² over the J depths' means m_j is compared with the
  pure error SS_pe = Σ_j Σ_s (y_js − m_j)² (N − J degrees of freedom), F = (SS_lof/dof) /
  (SS_pe/(N − J)), exact for log-normal noise of one size at every depth (noise whose size
  differs from depth to depth makes it reject more often than 1 − level: 15% at a nominal 10%
  with σ from 0.05 to 0.2 in tests/test_theory.py's simulation). ``chi2`` = dof·F is SS_lof in
  units of the seeds' variance.

  Attributes:
    c: the fitted constant (for the free power law c·L^slope, its c).
    slope: the law's own least-squares slope of log g(L) over the depths (free: the fitted one).
    chi2, dof, p: the statistic, its degrees of freedom (J − 1 for a law c·g(L), J − 2 for the
      free power law) and its p-value; None where the seeds have no spread or too few depths.
  """

  c: float
  slope: float
  chi2: float | None
  dof: int
  p: float | None


FREE_POWER_LAW = "c*L^b"


@dataclasses.dataclass(frozen=True)
class BoundReading:
  """δ(L) read as a bound (:func:`read_bound`).

  Attributes:
    c_min, c_min_depth: the smallest c with δ ≤ c·log(2L)/L at every measured network, and the
      L that sets it (None when no δ is finite).
    depths: the depths with a finite, positive δ, which the rest is read over.
    c_needed, c_needed_interval: per depth, the c it needs, c_L = δ·L/log(2L), as the geometric
      mean over seeds with its interval on the log scale.
    c_slope, c_slope_interval: the least-squares slope of log c_L on log L with its interval;
      ``bounded``: True where the interval's upper end is ≤ 0 (c_L does not grow: consistent
      with δ ≤ c·log(2L)/L at one c as L grows), False where its lower end is > 0 (c_L grows:
      δ falls more slowly than the bound), None where the interval holds both or is missing.
    slope, slope_interval, dof: the free log–log slope of δ (a description, not a law).
    local_slopes: between neighbouring depths, ``{"from", "to", "slope", "interval"}``.
    laws: every law of :data:`LAWS` and the free power law (:data:`FREE_POWER_LAW`) -> its
      :class:`LackOfFit`; ``power_law``: whether the free power law passes its lack-of-fit test
      at ``level`` (None: untested); ``shape``: what the local slopes show where it fails.
    num_points: depths with a finite, positive δ; ``seeds``: per depth, the finite δ's.
    level: the intervals' coverage (and 1 − level the tests' size); ``note``: why a part is missing.
  """

  c_min: float | None = None
  c_min_depth: int | None = None
  depths: list[int] = dataclasses.field(default_factory=list)
  c_needed: list[float] = dataclasses.field(default_factory=list)
  c_needed_interval: list[list[float] | None] = dataclasses.field(default_factory=list)
  c_slope: float | None = None
  c_slope_interval: list[float] | None = None
  bounded: bool | None = None
  slope: float | None = None
  slope_interval: list[float] | None = None
  dof: float | None = None
  local_slopes: list[dict] = dataclasses.field(default_factory=list)
  laws: dict[str, LackOfFit] | None = None
  power_law: bool | None = None
  shape: str | None = None
  num_points: int = 0
  seeds: list[int] = dataclasses.field(default_factory=list)
  level: float = 0.9
  note: str | None = None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> BoundReading:
    laws = data["laws"] and {name: LackOfFit(**law) for name, law in data["laws"].items()}
    return cls(**{**data, "laws": laws})


def read_bound(depths, per_seed, *, level: float = 0.9) -> BoundReading:
  """δ(L) read as a bound: the c each depth needs, whether it grows, and the shape of δ(L).

  With y_js = log δ of seed s at depth L_j and m_j, n_j the mean and count over the seeds:

  * c_L = δ·L/log(2L) per depth (the constant the bound needs there), on the log scale with a t
    interval over the seeds, and the least-squares slope of log c_L on log L. Theorem 1 is an
    existence result and an upper bound: measured δ's are *consistent* with it at one c where
    c_L does not grow with L (the slope's upper end ≤ 0), whether δ falls as fast as the bound
    or faster; c_L growing (lower end > 0) says δ falls more slowly than c·log(2L)/L here.
  * The free slope of log δ on log L, Σ_j w_j m_j with w_j = (x_j − x̄)/Σ_k (x_k − x̄)² and
    x_j = log L_j, with its Welch–Satterthwaite interval (:func:`resnorm.intervals.combination`)
    — a description: a single slope cannot tell c·log(2L)/L from L^−0.67 over 2…128, nor see a
    curve. The slope of log c_L is this slope less the theorem law's Σ_j w_j log(log(2L_j)/L_j).
  * The shape: local slopes between neighbouring depths with Welch intervals, and every law's
    lack-of-fit test (:class:`LackOfFit`), the free power law's included: where that fails at
    ``level``, no power law describes δ(L), and ``shape`` names a minimum or maximum that the
    local slopes show (a detected fall followed by a detected rise, or the reverse).

  Args:
    depths: the L's, one per entry of ``per_seed``.
    per_seed: for every depth, the δ's of its seeds (``None``, NaN or ≤ 0: left out of every
      log-scale reading; every finite one counts for c_min).
    level: the intervals' coverage; the tests reject at 1 − level.

  Returns:
    The :class:`BoundReading`; it never raises for data it cannot read (fewer than two depths
    with a positive δ give c_min alone and a note; one seed at a depth, or seeds that all agree,
    give estimates without intervals or tests).

  Raises:
    ValueError: naming the argument, for a ``level`` outside (0, 1), a depth below 1, an entry
      count of ``per_seed`` other than the depths', or a negative δ.
  """
  validation.level("level", level)
  depths = _depths(depths)
  samples = _deltas("per_seed", per_seed, depths.size)
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
  theorem = np.log(LAWS[THEOREM_LAW](L))
  c_logs = [intervals.combination([(1.0, y - g)], level) for y, g in zip(logs, theorem)]
  slope = intervals.slope(L, [dict(enumerate(y)) for y in logs], level)
  theorem_slope = float(intervals.slope_weights(L) @ theorem)
  bound.update(
    depths=[int(v) for v in L],
    c_needed=[float(np.exp(c.value)) for c in c_logs],
    c_needed_interval=[c.interval and [float(np.exp(v)) for v in c.interval] for c in c_logs],
    c_slope=slope.value - theorem_slope,
    c_slope_interval=slope.interval and [v - theorem_slope for v in slope.interval],
    slope=slope.value,
    slope_interval=slope.interval,
    dof=slope.dof,
    local_slopes=_local_slopes(L, logs, level),
  )
  if slope.interval:
    low, high = bound["c_slope_interval"]
    bound["bounded"] = True if high <= 0 else False if low > 0 else None
  laws = _lack_of_fit(L, logs)
  free = laws[FREE_POWER_LAW]
  note = None
  if slope.interval is None:
    note = (
      "a depth with one seed: no interval or test"
      if min(len(y) for y in logs) < 2
      else "the same δ at every seed (a deterministic network): no interval or test"
    )
  power_law = None if free.p is None else bool(free.p >= 1 - level)
  shape = _shape(bound["local_slopes"]) if power_law is False else None
  return BoundReading(**bound, laws=laws, power_law=power_law, shape=shape, note=note)


def _local_slopes(L: np.ndarray, logs: list[np.ndarray], level: float) -> list[dict]:
  """Between neighbouring depths, (m_b − m_a)/log(L_b/L_a) with its Welch interval."""
  slopes = []
  for (La, a), (Lb, b) in zip(zip(L, logs), zip(L[1:], logs[1:])):
    span = float(np.log(Lb / La))
    estimate = intervals.combination([(1 / span, b), (-1 / span, a)], level)
    slopes.append({"from": int(La), "to": int(Lb), "slope": estimate.value, "interval": estimate.interval})
  return slopes


def _lack_of_fit(L: np.ndarray, logs: list[np.ndarray]) -> dict[str, LackOfFit]:
  """Every law's :class:`LackOfFit` against the seeds' pure error."""
  counts = np.array([len(y) for y in logs], dtype=np.float64)
  means = np.array([y.mean() for y in logs])
  x = np.log(L)
  pure = float(sum(np.sum((y - y.mean()) ** 2) for y in logs))
  pure_dof = int(counts.sum()) - len(L)
  variance = pure / pure_dof if pure_dof > 0 and pure > 0 else None

  def test(residuals, dof):
    if variance is None or dof < 1:
      return None, None
    chi2 = float(np.sum(counts * residuals**2) / variance)
    return chi2, float(stats.f.sf(chi2 / dof, dof, pure_dof))

  weights = intervals.slope_weights(L)
  laws = {}
  for name, shape in LAWS.items():
    log_g = np.log(shape(L))
    log_c = float(np.sum(counts * (means - log_g)) / counts.sum())
    chi2, p = test(means - log_c - log_g, len(L) - 1)
    laws[name] = LackOfFit(float(np.exp(log_c)), float(weights @ log_g), chi2, len(L) - 1, p)
  center = np.sum(counts * x) / counts.sum()
  b = float(np.sum(counts * (x - center) * means) / np.sum(counts * (x - center) ** 2))
  a = float(np.sum(counts * (means - b * x)) / counts.sum())
  chi2, p = test(means - a - b * x, len(L) - 2)
  laws[FREE_POWER_LAW] = LackOfFit(float(np.exp(a)), b, chi2, len(L) - 2, p)
  return laws


def _shape(local_slopes: list[dict]) -> str:
  """What the local slopes show where no power law fits: a minimum (a detected fall, later a
  detected rise), a maximum, or a bend."""
  signs = [(-1 if s["interval"][1] < 0 else 1 if s["interval"][0] > 0 else 0, s) for s in local_slopes if s["interval"]]
  detected = [(sign, s) for sign, s in signs if sign]
  for (first, a), (second, b) in zip(detected, detected[1:]):
    if first != second:
      kind = "a minimum" if first < 0 else "a maximum"
      return f"{kind} between L = {a['from']} and L = {b['to']}"
  return "a bend: the local slopes change more than the seeds allow for one power law"
