"""Figures from saved results.

Every figure is a ``draw_*(fig or ax, ...)`` function that fills what it is given and returns
its figure, and :func:`save` writes one: a notebook draws into pyplot's figures and shows them
inline, an experiment draws into a bare ``matplotlib.figure.Figure`` (no display, the caller's
backend left alone) and saves it.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from resnorm import records, recurrence, theory


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


def save(fig, path) -> None:
  """Writes ``fig`` to ``path``, local or ``gs://`` (the format from its extension, e.g. PNG), at 120 dpi."""
  path = records.path(path)
  with path.open("wb") as f:
    fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=120)


def draw_delta_vs_depth(fig, summary: dict):
  """Fills ``fig`` with one log–log panel of δ against depth per family of ``summary``."""
  names = list(summary["models"])
  axes = fig.subplots(1, len(names), squeeze=False, sharey=True)
  for ax, name in zip(axes[0], names):
    delta_vs_depth_axes(ax, name, summary["models"][name])
  axes[0][0].set_ylabel(r"$\delta = |r - 1|,\ \ r = \|\partial E/\partial x_l\| \,/\, \|\partial E/\partial x_{l+1}\|$")
  fig.tight_layout()
  return fig


def delta_vs_depth(summary: dict, path: str) -> None:
  """:func:`draw_delta_vs_depth`, 5 inches wide per family, saved to ``path``."""
  save(draw_delta_vs_depth(Figure(figsize=(5 * len(summary["models"]), 4)), summary), path)


def draw_delta_during_training(fig, results: list[dict], names: list[str]):
  """δ_max over blocks against the training step, one panel per family in ``names`` and one line
  per depth (runs' ``history``; the point at step 0 is the measurement at initialisation)."""
  axes = fig.subplots(1, len(names), squeeze=False, sharey=True)
  depths = sorted({r["depth"] for r in results})
  colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(depths)))
  for ax, name in zip(axes[0], names):
    for r in sorted((r for r in results if r["model"] == name), key=lambda r: r["depth"]):
      measured = [(0, r["init"]["by_kind"]["block"])] + [(h["step"], h) for h in r.get("history", [])]
      points = [(step, m["delta_max"]) for step, m in measured if m["delta_max"]]  # None: no finite ratio
      if points:
        ax.plot(*zip(*points), "o-", ms=3, color=colors[depths.index(r["depth"])], label=f"L = {r['depth']}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_title(name)
    ax.grid(True, which="both", alpha=0.3)
  axes[0][-1].legend(fontsize=7, ncol=2, loc="lower right")  # colours mean the same depth in every panel
  axes[0][0].set_ylabel("δ_max over blocks and held-out examples")
  fig.tight_layout()
  return fig


def delta_during_training(results: list[dict], names: list[str], path: str) -> None:
  """:func:`draw_delta_during_training`, 5 inches wide per family, saved to ``path``."""
  save(draw_delta_during_training(Figure(figsize=(5 * len(names), 4)), results, names), path)


def draw_recurrence(fig, matrix, convergence):
  """Gain after L steps of A and of its residual steps, against L; the products' error against L."""
  ax_gain, ax_error = fig.subplots(1, 2)
  x0 = np.eye(matrix.shape[0])[0]
  depths = convergence.depths
  plain = recurrence.log_orbit_norms(matrix, x0, int(depths.max()))[depths]
  residual = [recurrence.log_orbit_norms(recurrence.residual_step(matrix, L), x0, int(L))[-1] for L in depths]
  ax_gain.semilogx(depths, plain / np.log(10), "o-", label="A^L e₁")
  ax_gain.semilogx(depths, np.array(residual) / np.log(10), "s-", label="(I + (A − I)/L)^L e₁")
  ax_gain.set_xlabel("steps L")
  ax_gain.set_ylabel("log10 ‖state after L steps‖")
  ax_gain.set_title("A explodes; its residual counterpart stays bounded")
  ax_gain.legend(fontsize=8)
  constant = recurrence.residual_error_constant(matrix)
  ax_error.loglog(depths, convergence.error, "o-", label="‖A_L^L − expm(A − I)‖₂")
  ax_error.loglog(depths, constant / depths, "k--", lw=1, label=f"{constant:.3f}/L")
  ax_error.set_xlabel("L")
  ax_error.set_title(f"residual product → expm(A − I), fitted order {convergence.order:.3f}")
  ax_error.legend(fontsize=8)
  for ax in (ax_gain, ax_error):
    ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  return fig


def draw_block_spectra(fig, results):
  """Histograms of block-Jacobian singular values, one panel per model, one curve per depth.

  ``results``: :func:`resnorm.depth_spectra.depth_spectra`'s.
  """
  axes = fig.subplots(1, len(results), squeeze=False)
  for ax, (name, by_depth) in zip(axes[0], results.items()):
    values = np.concatenate([r["block"].ravel() for r in by_depth.values()])
    bins = np.linspace(values.min(), values.max(), 80)
    for depth, r in sorted(by_depth.items()):
      ax.hist(r["block"].ravel(), bins=bins, density=True, histtype="step", label=f"L = {depth}")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("σ(J_l),  J_l = ∂x_{l+1}/∂x_l")
    ax.set_title(name)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def draw_stack_spectra(ax, results):
  """End-to-end σ_max, median σ and σ_min (medians over examples) against depth, per model, on ``ax``.

  ``results``: :func:`resnorm.depth_spectra.depth_spectra`'s. float32 resolves σ down to about
  1e-7·σ_max; below that (a plain ReLU stack is singular) it is rounding.
  """
  for name, by_depth in results.items():
    depths = sorted(by_depth)
    stack = {L: by_depth[L]["stack"] for L in depths}
    line, = ax.loglog(depths, [np.median(stack[L][:, 0]) for L in depths], "o-", label=f"{name} σ_max")
    ax.loglog(depths, [np.median(stack[L]) for L in depths], "^:", color=line.get_color(), label=f"{name} median σ")
    ax.loglog(depths, [np.median(stack[L][:, -1]) for L in depths], "s--", color=line.get_color(),
              label=f"{name} σ_min")
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("depth L")
  ax.set_ylabel("singular values of ∂x_L/∂x_0")
  ax.set_title("end to end, at initialisation (float32: σ < 1e-7·σ_max is rounding)", fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  ax.figure.tight_layout()
  return ax.figure


def draw_ratio_heatmap(fig, runs: dict[str, list[dict]]):
  """Per-block backward ratios during training, one panel per run side by side (e.g. ResNet
  against ProcResNet): block index × step, coloured by r_l = ‖∂E/∂x_l‖ / ‖∂E/∂x_{l+1}‖ (mean
  over examples) on one scale diverging at 1. ``runs`` maps a label to the rows of its
  ``signal.jsonl``; the reference's animated figure, as a still.
  """
  grids = {name: np.array([row["profile"]["ratio_mean"] for row in rows], dtype=float).T
           for name, rows in runs.items()}
  finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()]) if grids else np.array([1.0])
  spread = max(float(np.max(np.abs(finite - 1.0))), 1e-6)
  norm = matplotlib.colors.TwoSlopeNorm(vcenter=1.0, vmin=1.0 - spread, vmax=1.0 + spread)
  axes = fig.subplots(1, len(runs), squeeze=False, sharey=False)[0]
  for ax, (name, rows) in zip(axes, runs.items()):
    steps = [row["step"] for row in rows]
    image = ax.imshow(grids[name], aspect="auto", origin="lower", cmap="RdBu_r", norm=norm, interpolation="nearest",
                      extent=(-0.5, len(steps) - 0.5, -0.5, grids[name].shape[0] - 0.5))
    ticks = np.arange(0, len(steps), max(1, -(-len(steps) // 6)))  # at most 6, evenly spaced
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    ax.set_xlabel("step")
    ax.set_ylabel("block l")
    ax.set_title(name)
  fig.colorbar(image, ax=list(axes), label=r"$r_l = \|\partial E/\partial x_l\| \,/\, \|\partial E/\partial x_{l+1}\|$")
  return fig
