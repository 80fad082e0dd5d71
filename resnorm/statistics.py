"""The statistics of the backward ratios: each one object, registered in one place.

A :class:`Statistic` is a number computed from the ratios of the layers of one kind in one
measurement (:class:`LayerRatios`). Registering it (:func:`register`) is the one edit that adds
it everywhere: every measurement computes it (:func:`resnorm.signal.delta_statistics`), run
records keep it, sweep summaries keep its mean and spread over seeds per depth; with
``csv=True`` results.csv has its columns (at initialisation and after training); with
``history=True`` it is tracked during training (``signal.jsonl``, TensorBoard, the run's
history); with ``bound=True`` the summary reads it against c·log(2L)/L
(:func:`resnorm.theory.read_bound`), the report defines it and tables its slope, and the text
table shows it; with a ``style`` the δ-against-depth figure draws it.

Adding one, e.g. the median over blocks of each block's largest δ::

    from resnorm import statistics

    statistics.register(statistics.Statistic(
        "layer_max_median",
        lambda r: float(np.median(np.nanmax(r.delta_by_layer, axis=1))) if len(r.delta_by_layer) else float("nan"),
        "per-block max median, the median over blocks of each block's largest |r − 1|",
        bound=True,
    ))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from resnorm import validation


@dataclasses.dataclass(frozen=True)
class LayerRatios:
  """The ratios of the layers of one kind in one measurement.

  Attributes:
    ratio: (layers, examples) r_k = ‖∂E/∂x_k‖ / ‖∂E/∂x_{k+1}‖ per example; NaN where undefined.
    batch_ratio: (layers,) R_k = ‖∂E/∂x_k‖_B / ‖∂E/∂x_{k+1}‖_B with ‖g‖_B = (Σ_b ‖g_b‖²)^½, the
      ratio of the whole batch's gradient norms (the reference ProcResNet code's measure).
    direction_free: (layers, examples') δ^free_l = max(σ_max(J_l) − 1, 1 − σ_min(J_l)), the
      largest deviation of J_l from an isometry over every direction, which bounds
      |r_l − 1| (:func:`resnorm.signal.direction_free`); None where not measured.
  """

  ratio: np.ndarray
  batch_ratio: np.ndarray
  direction_free: np.ndarray | None = None

  @functools.cached_property
  def defined(self) -> np.ndarray:
    """(layers, examples): where the ratio is defined (finite and positive)."""
    return np.isfinite(self.ratio) & (self.ratio > 0)

  @functools.cached_property
  def delta(self) -> np.ndarray:
    """δ = |r − 1| of every defined ratio, flat."""
    return np.abs(self.ratio[self.defined] - 1.0)

  @functools.cached_property
  def delta_by_layer(self) -> np.ndarray:
    """(layers with a defined ratio, examples) δ, NaN where undefined."""
    delta = np.where(self.defined, np.abs(self.ratio - 1.0), np.nan)
    return delta[self.defined.any(axis=1)]


@dataclasses.dataclass(frozen=True)
class Statistic:
  """One statistic of the ratios (see the module docstring for what registering it does).

  Attributes:
    name: its key in records, summaries and ``results.csv`` (``<stage>_<name>``).
    compute: ``compute(ratios: LayerRatios)`` -> the number, NaN where it is undefined (no
      defined ratio), None where its input was not measured.
    description: what it is, as the report defines it ("δ_max, the largest |r − 1| over …"):
      the words before the first comma are its short name in tables and legends.
    bound: read against c·log(2L)/L in summaries and reports.
    csv: a column of ``results.csv``.
    history: tracked during training.
    style: its line in the δ-against-depth figure (a matplotlib format string); None: not drawn.
  """

  name: str
  compute: Callable[[LayerRatios], float | int | None]
  description: str
  bound: bool = False
  csv: bool = False
  history: bool = False
  style: str | None = None

  @property
  def label(self) -> str:
    """Its short name: the description up to the first comma."""
    return self.description.split(",")[0]


REGISTRY: dict[str, Statistic] = {}


def register(statistic: Statistic) -> Statistic:
  """Adds ``statistic`` to every measurement, record, summary, table and figure from now on."""
  if statistic.name in REGISTRY:
    raise validation.invalid("name", statistic.name, f"a statistic not yet registered (not one of {sorted(REGISTRY)})")
  REGISTRY[statistic.name] = statistic
  return statistic


def compute_all(ratios: LayerRatios) -> dict[str, float | int | None]:
  """Every registered statistic of ``ratios``, by name."""
  return {name: statistic.compute(ratios) for name, statistic in REGISTRY.items()}


def read_as_bound() -> list[Statistic]:
  return [s for s in REGISTRY.values() if s.bound]


def in_csv() -> list[Statistic]:
  return [s for s in REGISTRY.values() if s.csv]


def tracked() -> list[Statistic]:
  return [s for s in REGISTRY.values() if s.history]


def _of_delta(reduce) -> Callable[[LayerRatios], float]:
  """A statistic of δ over every defined ratio (NaN when none is)."""
  return lambda r: float(reduce(r.delta)) if r.delta.size else float("nan")


def _of_defined_ratio(reduce) -> Callable[[LayerRatios], float]:
  return lambda r: float(reduce(r.ratio[r.defined])) if r.delta.size else float("nan")


def _log_gain(r: LayerRatios) -> float:
  """The mean over examples of Σ_k log r_k = log(‖∂E/∂x_first‖ / ‖∂E/∂x_last‖)."""
  if not r.delta.size:
    return float("nan")
  return float(np.mean(np.sum(np.log(np.where(r.defined, r.ratio, 1.0)), axis=0)))


def _per_layer(reduce_layer, reduce_layers) -> Callable[[LayerRatios], float]:
  """``reduce_layers`` over the layers of ``reduce_layer`` of each layer's δ over the examples."""
  return lambda r: float(reduce_layers(reduce_layer(r.delta_by_layer))) if len(r.delta_by_layer) else float("nan")


def _of_batch(reduce) -> Callable[[LayerRatios], float]:
  def compute(r: LayerRatios) -> float:
    delta = np.abs(np.asarray(r.batch_ratio, np.float64) - 1.0)
    delta = delta[np.isfinite(delta)]
    return float(reduce(delta)) if delta.size else float("nan")

  return compute


def _of_direction_free(reduce) -> Callable[[LayerRatios], float | None]:
  return lambda r: None if r.direction_free is None else float(reduce(np.asarray(r.direction_free, np.float64)))


def _p90_by_layer(delta: np.ndarray) -> np.ndarray:
  return np.nanpercentile(delta, 90, axis=1)


# The statistics read as bounds, in the order the reports list them.
register(
  Statistic(
    "delta_max",
    _of_delta(np.max),
    "δ_max, the largest |r − 1| over blocks × held-out examples",
    bound=True,
    csv=True,
    history=True,
    style="o-",
  )
)
register(
  Statistic(
    "layer_max_median",
    _per_layer(lambda d: np.nanmax(d, axis=1), np.median),
    "per-block max median, the median over blocks of each block's largest |r − 1| over the held-out examples (a "
    "worst case over a sample of fixed size at every depth, where δ_max's sample grows with L)",
    bound=True,
    csv=True,
    style="s--",
  )
)
register(
  Statistic(
    "delta_mean", _of_delta(np.mean), "δ_mean, the mean over blocks × examples", bound=True, csv=True, history=True
  )
)
register(
  Statistic(
    "direction_free_delta_max",
    _of_direction_free(np.max),
    "direction-free δ_max, the largest max(σ_max(J_l) − 1, 1 − σ_min(J_l)) over blocks × examples, which bounds every "
    "ratio",
    bound=True,
  )
)
register(
  Statistic(
    "batch_delta_max",
    _of_batch(np.max),
    "whole-batch δ_max, the largest over blocks of |R − 1| for the ratio R of whole-batch gradient norms",
    bound=True,
    csv=True,
    style="d-.",
  )
)
# The others.
for q in (50, 90, 99):
  register(
    Statistic(
      f"delta_p{q}",
      _of_delta(functools.partial(np.percentile, q=q)),
      f"δ p{q}, the {q}th percentile of |r − 1|",
      csv=True,
    )
  )
register(Statistic("ratio_min", _of_defined_ratio(np.min), "r_min, the smallest ratio"))
register(Statistic("ratio_max", _of_defined_ratio(np.max), "r_max, the largest ratio"))
register(
  Statistic(
    "log_gain",
    _log_gain,
    "log gain, the mean over examples of Σ_k log r_k, which compounds with depth unless the ratios stay near 1",
    csv=True,
    history=True,
  )
)
register(Statistic("layer_mean_max", _per_layer(lambda d: np.nanmean(d, axis=1), np.max), "per-block mean max"))
register(Statistic("layer_p90_mean", _per_layer(_p90_by_layer, np.mean), "per-block p90 mean"))
register(
  Statistic(
    "layer_p90_max",
    _per_layer(_p90_by_layer, np.max),
    "per-block p90 max, the largest over blocks of each block's 90th percentile over the examples (a maximum over "
    "the L blocks, so its sample grows with L too)",
    csv=True,
  )
)
register(Statistic("batch_delta_mean", _of_batch(np.mean), "whole-batch δ_mean"))
register(Statistic("direction_free_delta_mean", _of_direction_free(np.mean), "direction-free δ_mean"))
register(
  Statistic(
    "direction_free_layer_p90_max",
    _of_direction_free(lambda free: np.percentile(free, 90, axis=1).max()),
    "direction-free per-block p90 max",
  )
)
register(Statistic("num_ratios", lambda r: int(r.ratio.size), "ratios, layers × examples"))
register(Statistic("num_undefined", lambda r: int((~r.defined).sum()), "undefined ratios (a zero or non-finite norm)"))
register(Statistic("num_layers", lambda r: int(r.ratio.shape[0]), "layers"))
register(Statistic("num_examples", lambda r: int(r.ratio.shape[1]), "examples"))
register(
  Statistic(
    "direction_free_examples",
    lambda r: None if r.direction_free is None else int(np.shape(r.direction_free)[1]),
    "direction-free examples, those the direction-free δ is taken over (the first of the measured ones)",
  )
)
