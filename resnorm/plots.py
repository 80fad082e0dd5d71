"""Figures from saved results (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402

from resnorm import theory  # noqa: E402


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


def delta_vs_depth(summary: dict, path: str | None = None):
  """Residual and plain families side by side; saved to ``path`` when given. Returns the figure."""
  names = list(summary["models"])
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False, sharey=True)
  for ax, name in zip(axes[0], names):
    delta_vs_depth_axes(ax, name, summary["models"][name])
  axes[0][0].set_ylabel("δ = |r − 1|,  r = ‖∂E/∂x_l‖ / ‖∂E/∂x_{l+1}‖")
  fig.tight_layout()
  if path:
    fig.savefig(path, dpi=120)
    plt.close(fig)
  return fig
