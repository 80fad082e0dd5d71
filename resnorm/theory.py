"""The depth law of norm preservation and fits of measured δ(L) to it.

Theorem 1 of Zaeemzadeh, Rahnavard & Shah ("Norm-Preservation: Why Residual Networks Can Become
Extremely Deep?", TPAMI 2020) shows that a smooth invertible map can be represented by L
residual blocks whose backward ratios satisfy

    (1 − δ) ‖∂E/∂x_{l+1}‖ ≤ ‖∂E/∂x_l‖ ≤ (1 + δ) ‖∂E/∂x_{l+1}‖,     δ = c·log(2L)/L,

so δ shrinks as the network deepens. :func:`fit_delta` fits measured δ's to that law and to the
alternatives c/L, c/√L and c (no depth dependence), each as a one-parameter least-squares fit of
log δ = log c + log g(L), and reports R² in log space for each.
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
  total = np.sum((log_delta - log_delta.mean()) ** 2)

  def r_squared(residual):
    return float(1.0 - np.sum(residual**2) / total) if total > 0 else float(np.all(residual == 0))

  laws = {}
  for name, shape in LAWS.items():
    log_c = np.mean(log_delta - np.log(shape(L)))
    laws[name] = LawFit(c=float(np.exp(log_c)), r2=r_squared(log_delta - log_c - np.log(shape(L))))
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
