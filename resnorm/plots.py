"""Figures from saved results.

Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot, so writing them
needs no display and leaves the caller's backend alone (a notebook shows them inline).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from resnorm import theory


def _points(depths, values):
  pairs = [(L, v) for L, v in zip(depths, values) if v is not None and v > 0]
  return (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])) if pairs else (np.array([]),) * 2


def delta_vs_depth_axes(ax, name: str, entry: dict) -> None:
  """One family on log–log axes: δ_max and δ_mean after training, δ_max at init, the fit."""
  depths = entry["depths"]
  for stage, key, style in (("trained", "delta_max", "o-"), ("trained", "delta_mean", "s--"),
                            ("init", "delta_max", "^:")):
    L, d = _points(depths, entry[stage][key])
    if len(L):
      ax.plot(L, d, style, label=f"{key.replace('delta_', 'δ ')} {stage}", fillstyle="none" if stage == "init" else "full")
  fit = entry["trained"]["fit"]
  if fit.get("c") is not None:
    grid = np.geomspace(min(depths), max(depths), 100)
    ax.plot(grid, theory.delta_bound(grid, fit["c"]), "k-", lw=1,
            label=f"{fit['c']:.2g}·log(2L)/L, R²={fit['r2']:.2f}")
  diverged = [L for L, flag in zip(depths, entry["diverged"]) if flag]
  if diverged:
    ax.plot(diverged, np.full(len(diverged), ax.get_ylim()[0] if ax.has_data() else 1.0), "rx", ms=10, label="diverged")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("depth L (blocks)")
  ax.set_title(name)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)


def draw_delta_vs_depth(fig, summary: dict) -> None:
  """Fills ``fig`` (pyplot's or a bare Figure) with one log–log panel per family."""
  names = list(summary["models"])
  axes = fig.subplots(1, len(names), squeeze=False, sharey=True)
  for ax, name in zip(axes[0], names):
    delta_vs_depth_axes(ax, name, summary["models"][name])
  axes[0][0].set_ylabel("δ = |r − 1|,  r = ‖∂E/∂x_l‖ / ‖∂E/∂x_{l+1}‖")
  fig.tight_layout()


def delta_vs_depth(summary: dict, path: str) -> None:
  """Residual and plain families side by side, written to ``path`` (PNG)."""
  fig = Figure(figsize=(5 * len(summary["models"]), 4))
  draw_delta_vs_depth(fig, summary)
  fig.savefig(path, dpi=120)
