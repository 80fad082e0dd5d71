"""Figures from saved results.

Every figure is a ``draw_*(fig or ax, ...)`` function that fills what it is given and returns
its figure, and :func:`save` writes one: a notebook draws into pyplot's figures and shows them
inline, an experiment draws into a bare ``matplotlib.figure.Figure`` (no display, the caller's
backend left alone) and saves it.
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from resnorm import records, recurrence, statistics, theory


def _points(depths, values, spread=None):
  """(L, value, spread) where L and the value are positive (log axes); spread 0 where unknown."""
  spread = spread or [None] * len(depths)
  rows = [(L, v, e or 0.0) for L, v, e in zip(depths, values, spread) if L and v is not None and v > 0]
  return tuple(np.array(column) for column in zip(*rows)) if rows else (np.array([]),) * 3


def bound_lengths(entry: dict) -> tuple[list, str]:
  """(the L of each depth in the setting's bound reading, its axis label): the identity blocks
  when the summary read the bound against them (``Stage.bound_L``), else the network's depth."""
  measured = entry["trained"]
  if measured["bound_L"] == "layers":
    return measured["num_layers"], "L (identity blocks)"
  return entry["depths"], "depth L"


def _log_depth_axes(ax, title: str, xlabel: str = "depth L") -> None:
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_title(title, fontsize=9)
  ax.grid(True, which="both", alpha=0.3)


def _delta_lines() -> list[tuple[str, str, str, str]]:
  """(stage, statistic, style, label) of the δ-against-depth figure: every statistic with a
  ``style`` (:mod:`resnorm.statistics`) after training, and δ_max at initialisation."""
  drawn = [("trained", s.name, s.style, s.label) for s in statistics.REGISTRY.values() if s.style]
  return drawn + [("init", "delta_max", "^:", "δ_max at init")]


def delta_vs_depth_axes(ax, name: str, entry: dict) -> None:
  """One setting on log–log axes: the statistics with a style (:func:`_delta_lines`, means over
  seeds with their spread) after training, δ_max at initialisation, and the bound envelope
  c_min·log(2L)/L of trained δ_max (the smallest c for which the theorem's bound holds at every
  measured depth). A diverged depth is a red cross. The x axis is the L of the bound reading
  (:func:`bound_lengths`)."""
  depths, xlabel = bound_lengths(entry)
  for stage, key, style, label in _delta_lines():
    L, d, e = _points(depths, entry[stage][key], entry[stage]["std"][key])
    if len(L):
      ax.errorbar(
        L,
        d,
        yerr=np.minimum(e, 0.95 * d),
        fmt=style,
        ms=4,
        capsize=2,
        label=label,
        fillstyle="none" if stage == "init" else "full",
      )
  reading = entry["trained"]["bound"]["delta_max"]
  lengths = [L for L in depths if L]
  if reading["c_min"] and lengths:
    grid = np.geomspace(min(lengths), max(lengths), 100)
    ax.plot(
      grid,
      theory.delta_bound(grid, reading["c_min"]),
      "k-",
      lw=1,
      label=f"envelope {reading['c_min']:.2g}·log(2L)/L (c_min, set at L={reading['c_min_depth']})",
    )
  diverged = [L for L, flag in zip(depths, entry["diverged"]) if flag and L]
  if diverged:
    ax.plot(diverged, np.full(len(diverged), ax.get_ylim()[0] if ax.has_data() else 1.0), "rx", ms=10, label="diverged")
  _log_depth_axes(ax, f"{name} ({entry['model']})", xlabel)
  _legend(ax, fontsize=6)


def save(fig, path) -> None:
  """Writes ``fig`` to ``path``, local or ``gs://`` (the format from its extension, e.g. PNG), at
  120 dpi, atomically (:func:`resnorm.records.write_text`)."""
  path = records.path(path)
  image = io.BytesIO()
  fig.savefig(image, format=path.suffix.lstrip(".") or "png", dpi=120)
  records.write_text(path, image.getvalue())


def _legend(ax, **kwargs) -> None:
  """``ax.legend(**kwargs)`` where the panel has labelled lines (a panel of runs that all diverged has none)."""
  if ax.get_legend_handles_labels()[0]:
    ax.legend(**kwargs)


def _grid(fig, count: int, columns: int = 3, **kwargs):
  """``count`` axes on rows of ``columns``; the unused ones hidden."""
  rows = -(-count // columns)
  axes = fig.subplots(rows, min(count, columns), squeeze=False, **kwargs).ravel()
  for ax in axes[count:]:
    ax.set_visible(False)
  return axes[:count]


def draw_delta_vs_depth(fig, summary: dict):
  """Fills ``fig`` with one log–log panel of δ against depth per setting of ``summary``."""
  names = list(summary["models"])
  axes = _grid(fig, len(names), sharey=True)
  for ax, name in zip(axes, names):
    delta_vs_depth_axes(ax, name, summary["models"][name])
  axes[0].set_ylabel(r"$\delta = |r - 1|,\ \ r = \|\partial E/\partial x_l\| \,/\, \|\partial E/\partial x_{l+1}\|$")
  fig.tight_layout()
  return fig


def figsize(count: int, columns: int = 3, width: float = 4.5, height: float = 3.6):
  """(width, height) in inches of ``count`` panels on rows of ``columns``."""
  return (width * min(count, columns), height * -(-count // columns))


def delta_vs_depth(summary: dict, path: str) -> None:
  """:func:`draw_delta_vs_depth`, three panels a row, saved to ``path``."""
  save(draw_delta_vs_depth(Figure(figsize=figsize(len(summary["models"]))), summary), path)


def draw_constructed_vs_trained(fig, summary: dict, constructed: str):
  """The theorem's constructed network beside the trained ones, against depth (log–log): left, δ_max
  of the constructed network (the ``constructed`` setting at initialisation), its promised bound
  on ‖J_l − I‖, the reference setting after training (δ_max, δ_mean, δ in every direction) with
  its envelope c_min·log(2L)/L, and the constructed network after training; right, how well each
  fits the task (test loss / target variance). Means over seeds with their spread."""
  reference = summary["reference_model"]
  built, trained = summary["models"][constructed], summary["models"][reference]
  ax_delta, ax_loss = fig.subplots(1, 2)
  lines = (
    (built, "init", "delta_max", "o-", "constructed δ_max"),
    (trained, "trained", "delta_max", "s-", f"trained δ_max ({reference})"),
    (trained, "trained", "delta_mean", "s:", "trained δ_mean"),
    (trained, "trained", "direction_free_delta_max", "d--", "trained δ in every direction (max)"),
    (built, "trained", "delta_max", "^-.", "trained from the constructed network, δ_max"),
  )
  for entry, stage, key, style, label in lines:
    L, d, e = _points(entry["depths"], entry[stage][key], entry[stage]["std"][key])
    if len(L):
      ax_delta.errorbar(L, d, yerr=np.minimum(e, 0.95 * d), fmt=style, ms=4, capsize=2, label=label)
  L, bound, _ = _points(built["depths"], built["construction"]["block_bound_max"])
  if len(L):
    ax_delta.plot(L, bound, "k--", lw=1, label="constructed: promised bound on ‖J_l − I‖")
  reading = trained["trained"]["bound"]["delta_max"]
  if reading["c_min"]:
    grid = np.geomspace(min(trained["depths"]), max(trained["depths"]), 100)
    ax_delta.plot(
      grid,
      theory.delta_bound(grid, reading["c_min"]),
      "k-",
      lw=1,
      label=f"envelope {reading['c_min']:.2g}·log(2L)/L of trained δ_max",
    )
  _log_depth_axes(ax_delta, "δ: constructed, trained, bound")
  ax_delta.set_ylabel("δ")
  ax_delta.legend(fontsize=6)
  for entry, key, style, label in (
    (built, "init_test_loss_relative", "o-", "constructed"),
    (trained, "test_loss_relative", "s-", f"trained ({reference})"),
    (built, "test_loss_relative", "^-.", "trained from the constructed network"),
  ):
    L, v, _ = _points(entry["depths"], entry.get(key) or [])
    if len(L):
      ax_loss.plot(L, v, style, ms=4, label=label)
  _log_depth_axes(ax_loss, "fit of the task")
  ax_loss.set_ylabel("test loss / target variance")
  ax_loss.legend(fontsize=6)
  fig.tight_layout()
  return fig


def constructed_vs_trained(summary: dict, constructed: str, path: str) -> None:
  save(draw_constructed_vs_trained(Figure(figsize=(10, 4)), summary, constructed), path)


def draw_task_vs_depth(fig, summary: dict):
  """How well every depth fitted the task, per setting (means over seeds, their spread as bars):
  train and test loss relative to the targets' variance (regression), or test accuracy and test
  loss (classification). A network whose δ is small but that did not fit the task says little."""
  entries = summary["models"]
  classification = any(e.get("test_accuracy") is not None for e in entries.values())
  panels = (
    (("test_accuracy", "test accuracy"), ("test_loss", "test loss"))
    if classification
    else (
      ("train_loss_relative", "train loss / target variance"),
      ("test_loss_relative", "test loss / target variance"),
    )
  )
  axes = fig.subplots(1, 2, squeeze=False)[0]
  for ax, (key, label) in zip(axes, panels):
    for name, entry in entries.items():
      values = entry.get(key)
      if values is None:
        continue
      spread = entry["std"].get(key.replace("_relative", ""))
      if spread and key.endswith("_relative"):
        scale = [v / l if v is not None and l else None for v, l in zip(values, entry[key.replace("_relative", "")])]
        spread = [s * c if s is not None and c is not None else None for s, c in zip(spread, scale)]
      L, v, e = _points(entry["depths"], values, spread)
      if len(L):  # none where every run diverged
        ax.errorbar(L, v, yerr=e, fmt="o-", ms=4, capsize=2, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("linear" if key == "test_accuracy" else "log")
    ax.set_xlabel("depth L")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # none where every run diverged
      ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def task_vs_depth(summary: dict, path: str) -> None:
  save(draw_task_vs_depth(Figure(figsize=(10, 4)), summary), path)


KIND_STYLES = {"block": "o-", "transition": "s--", "stem": "^:"}


def draw_delta_by_kind(fig, summary: dict, key: str = "delta_max"):
  """δ (``key``, mean over seeds) against depth per kind of layer, one panel per setting:
  identity blocks (the theorem's domain), transitions (where ProcResNet's projection acts) and
  the stem; filled after training, open at initialisation."""
  names = list(summary["models"])
  axes = _grid(fig, len(names), sharey=True)
  for ax, name in zip(axes, names):
    entry = summary["models"][name]
    stages = {"block": {s: entry[s] for s in ("init", "trained")}, **entry["by_kind"]}
    for kind, by_stage in stages.items():
      for stage in ("trained", "init"):
        L, d, _ = _points(entry["depths"], by_stage[stage][key])
        if len(L):
          ax.plot(
            L,
            d,
            KIND_STYLES.get(kind, "x-"),
            ms=4,
            label=f"{kind} {stage}",
            fillstyle="none" if stage == "init" else "full",
            alpha=1.0 if stage == "trained" else 0.5,
          )
    _log_depth_axes(ax, f"{name}: {key} per kind of layer")
    ax.legend(fontsize=6)
  fig.tight_layout()
  return fig


def delta_by_kind(summary: dict, path: str) -> None:
  save(draw_delta_by_kind(Figure(figsize=figsize(len(summary["models"]))), summary), path)


def draw_ratio_profile(fig, results: list[dict], names: list[str], seed=None):
  """The ratio r_k (mean over examples) along the network, layer by layer in stream order, at
  initialisation (left) and after training (right), one row per setting and one line per
  depth, for one seed (the smallest by default). Transitions are marked ×, the stem ▲; x is the
  layer's position as a fraction of the network's layers, so depths share an axis."""
  axes = fig.subplots(len(names), 2, squeeze=False, sharey=True)
  depths = sorted({r["depth"] for r in results})
  colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(depths)))
  for row, name in zip(axes, names):
    runs = [r for r in results if r["setting"] == name and r["init"].get("layers")]
    chosen = seed if seed is not None else min((r["seed"] for r in runs), default=0)
    for r in sorted((r for r in runs if r["seed"] == chosen), key=lambda r: r["depth"]):
      for ax, stage in zip(row, ("init", "trained")):
        if not r.get(stage):
          continue
        layers = r[stage]["layers"]
        ratio = np.array([np.nan if v is None else v for v in layers["ratio_mean"]])
        x = (np.arange(len(ratio)) + 1) / len(ratio)
        color = colors[depths.index(r["depth"])]
        ax.plot(x, ratio, "-", lw=1, color=color, label=f"L = {r['depth']}")
        for kind, marker in (("transition", "x"), ("stem", "^")):
          where = np.array([k == kind for k in layers["kind"]])
          ax.plot(x[where], ratio[where], marker, color=color, ms=7)
    for ax, stage in zip(row, ("init", "trained")):
      ax.axhline(1.0, color="k", lw=0.8)
      ax.set_title(f"{name}, {stage} (seed {chosen})", fontsize=9)
      ax.set_xlabel("layer position k / layers (×: transition, ▲: stem)")
      ax.grid(True, alpha=0.3)
    row[0].set_ylabel("r_k = ‖∂E/∂x_k‖ / ‖∂E/∂x_{k+1}‖")
    _legend(row[1], fontsize=6, ncol=2)
  fig.tight_layout()
  return fig


def ratio_profile(results: list[dict], names: list[str], path: str) -> None:
  save(draw_ratio_profile(Figure(figsize=(10, 3.2 * len(names))), results, names), path)


def ratio_heatmap(runs: dict[str, list[dict]], path: str) -> None:
  measures = min((len(ratio_measures(rows)) for rows in runs.values()), default=1)
  save(
    draw_ratio_heatmap(Figure(figsize=(5.5 * len(runs) + 1.5, 4 * max(measures, 1)), layout="constrained"), runs), path
  )


def draw_delta_during_training(fig, results: list[dict], names: list[str]):
  """δ_max over blocks against the training step, one panel per setting in ``names`` and one line
  per depth (runs' ``history``, the smallest seed; the point at step 0 is the measurement at
  initialisation). ``results``: run records as JSON with their ``setting``."""
  axes = _grid(fig, len(names), sharey=True)
  depths = sorted({r["depth"] for r in results})
  colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(depths)))
  for ax, name in zip(axes, names):
    runs = [r for r in results if r["setting"] == name]
    first = min((r["seed"] for r in runs), default=0)
    for r in sorted((r for r in runs if r["seed"] == first), key=lambda r: r["depth"]):
      init = r["init"]["by_kind"].get("block", {"delta_max": None})  # none in a network without identity blocks
      measured = [(0, init)] + [(h["step"], h) for h in r["history"]]
      points = [(step, m["delta_max"]) for step, m in measured if m["delta_max"]]  # None or 0: not on log axes
      if points:
        ax.plot(*zip(*points), "o-", ms=3, color=colors[depths.index(r["depth"])], label=f"L = {r['depth']}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_title(name, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
  axes[-1].legend(fontsize=7, ncol=2, loc="lower right")  # colours mean the same depth in every panel
  axes[0].set_ylabel("δ_max over blocks and held-out examples")
  fig.tight_layout()
  return fig


def delta_during_training(results: list[dict], names: list[str], path: str) -> None:
  """:func:`draw_delta_during_training`, three panels a row, saved to ``path``."""
  save(draw_delta_during_training(Figure(figsize=figsize(len(names))), results, names), path)


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

  ``results``: :func:`experiments.depth_spectra.depth_spectra`'s.
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

  ``results``: :func:`experiments.depth_spectra.depth_spectra`'s. float32 resolves σ down to about
  1e-7·σ_max; below that (a plain ReLU stack is singular) it is rounding.
  """
  for name, by_depth in results.items():
    depths = sorted(by_depth)
    stack = {L: by_depth[L]["stack"] for L in depths}
    (line,) = ax.loglog(depths, [np.median(stack[L][:, 0]) for L in depths], "o-", label=f"{name} σ_max")
    ax.loglog(depths, [np.median(stack[L]) for L in depths], "^:", color=line.get_color(), label=f"{name} median σ")
    ax.loglog(
      depths, [np.median(stack[L][:, -1]) for L in depths], "s--", color=line.get_color(), label=f"{name} σ_min"
    )
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("depth L")
  ax.set_ylabel("singular values of ∂x_L/∂x_0")
  ax.set_title("end to end, at initialisation (float32: σ < 1e-7·σ_max is rounding)", fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  ax.figure.tight_layout()
  return ax.figure


# The two measures of the ratio over training: this project's (eval mode, per held-out example,
# mean over examples) and the reference code's (train mode, whole training mini-batch).
RATIO_MEASURES = {
  "ratio_mean": "eval mode, mean over held-out examples",
  "train_batch_ratio": "train mode, whole training mini-batch",
}


def ratio_grid(rows: list[dict], measure: str = "ratio_mean") -> tuple[np.ndarray, list[str]]:
  """(layers × measurements of r_k in ``measure``, one of :data:`RATIO_MEASURES`; the kind of each
  layer) from the rows of a ``signal.jsonl``: every layer in stream order, the stem and the
  transitions included."""
  return np.array([row["layers"][measure] for row in rows], dtype=float).T, list(rows[0]["layers"]["kind"])


def ratio_measures(rows: list[dict]) -> list[str]:
  """The measures of :data:`RATIO_MEASURES` every row of a ``signal.jsonl`` holds."""
  return [key for key in RATIO_MEASURES if rows and all(key in row["layers"] for row in rows)]


LAYER_MARKS = {"stem": "▲ stem", "transition": "× transition"}


def draw_ratio_heatmap(fig, runs: dict[str, list[dict]]):
  """Backward ratios layer by layer during training, one column per run side by side (e.g. ResNet
  against ProcResNet) and one row per measure the rows hold (:data:`RATIO_MEASURES`: eval mode
  per example, and the reference's train-mode mini-batch ratio where recorded): layer index ×
  step, coloured by r_k = ‖∂E/∂x_k‖ / ‖∂E/∂x_{k+1}‖ on one logarithmic scale diverging at r = 1
  and clipped at the 98th percentile of |log₁₀ r| (a stem whose ratio is 10⁴ would otherwise
  wash out every other layer), the stem and every transition labelled on the layer axis
  (:func:`ratio_grid`). ``runs`` maps a label to the rows of its ``signal.jsonl``; the reference's
  animated figure, as a still.
  """
  measures = [key for key in RATIO_MEASURES if all(key in ratio_measures(rows) for rows in runs.values())]
  panels = [(name, key) for key in measures for name in runs]
  grids = {(name, key): ratio_grid(runs[name], key) for name, key in panels}
  logs = {panel: np.log10(grid) for panel, (grid, _) in grids.items()}
  finite = np.concatenate([g[np.isfinite(g)] for g in logs.values()]) if logs else np.array([0.0])
  spread = max(float(np.percentile(np.abs(finite), 98)), 1e-3)  # a stray layer does not wash out the rest
  norm = matplotlib.colors.TwoSlopeNorm(vcenter=0.0, vmin=-spread, vmax=spread)
  axes = fig.subplots(max(len(measures), 1), len(runs), squeeze=False, sharey=False).ravel()
  for ax, (name, key) in zip(axes, panels):
    rows, kinds = runs[name], grids[name, key][1]
    steps = [row["step"] for row in rows]
    image = ax.imshow(
      logs[name, key],
      aspect="auto",
      origin="lower",
      cmap="RdBu_r",
      norm=norm,
      interpolation="nearest",
      extent=(-0.5, len(steps) - 0.5, -0.5, logs[name, key].shape[0] - 0.5),
    )
    ticks = np.arange(0, len(steps), max(1, -(-len(steps) // 6)))  # at most 6, evenly spaced
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    ax.set_xlabel("step")
    marked = [k for k, kind in enumerate(kinds) if kind in LAYER_MARKS]
    ax.set_yticks(marked, [f"{LAYER_MARKS[kinds[k]]} {k}" for k in marked], fontsize=6)
    ax.set_ylabel("layer k (the others: identity blocks)")
    ax.set_title(f"{name}\n{RATIO_MEASURES[key]}", fontsize=8)
  fig.colorbar(
    image,
    ax=list(axes),
    extend="both",
    label=r"$\log_{10} r_k,\ r_k = \|\partial E/\partial x_k\| \,/\, \|\partial E/\partial x_{k+1}\|$"
    f" (clipped at ±{spread:.2g})",
  )
  return fig
