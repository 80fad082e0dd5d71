"""The typed records of runs and sweeps, and the files they are kept in.

Every result a run or a sweep reports is a field of one of the dataclasses below; their field
names are the keys of the JSON files on disk (README, "What the sweep writes"), so renaming a
field is one edit here. ``to_json`` gives plain JSON values (NaN and ±inf become ``null``);
``from_json`` reads them back, and also reads the files of earlier versions, which lack the
fields added since (they load as ``None``).

Files: every path goes through :func:`path` (``etils.epath``: local directories and ``gs://``
alike). :func:`write_json` replaces a file atomically (a reader never sees half of it);
:class:`JsonlLog` keeps a log of one record per line that is complete on disk after every
record, and cuts it back to the step a run resumes from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Iterable
from typing import Any, Union

import numpy as np
from absl import logging
from etils import epath

from resnorm import signal, validation

PathLike = Union[str, os.PathLike]
STAGES = ("init", "trained")  # a run is measured at initialisation and after training
HISTORY_KEYS = ("delta_max", "delta_mean", "log_gain")


def jsonable(tree):
  """Floats that JSON cannot hold (NaN, inf) become null; NumPy scalars become Python's."""
  if isinstance(tree, dict):
    return {k: jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [jsonable(v) for v in tree]
  if isinstance(tree, (float, np.floating)):
    return float(tree) if np.isfinite(tree) else None
  if isinstance(tree, np.integer):
    return int(tree)
  if isinstance(tree, np.bool_):
    return bool(tree)
  return tree


def _unset_dropped(data: dict, names) -> dict:
  """``data`` without the entries of ``names`` that are None: fields added since the first
  version are left out of a file when unset, so a file of that version reads back unchanged."""
  return {k: v for k, v in data.items() if not (k in names and v is None)}


def _added_fields(cls) -> tuple[str, ...]:
  """The fields of ``cls`` that default to None (added after the first file format)."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.default is None)


def _known_fields(cls, data: dict) -> dict:
  """The entries of ``data`` that are fields of ``cls`` (files of later versions may hold more)."""
  names = {f.name for f in dataclasses.fields(cls)}
  return {k: v for k, v in data.items() if k in names}


# ----------------------------------------------------------------------------- one run


@dataclasses.dataclass(frozen=True)
class Measurement:
  """The backward ratios of one network state on the held-out examples.

  Attributes:
    by_kind: kind of layer (``stem``, ``block``, ``transition``) -> its δ statistics.
    profile: per-block means over examples (:func:`resnorm.signal.layer_profile`).
    layers: every layer in stream order, transitions included (:func:`resnorm.signal.stream_profile`);
      with ``train_batch_ratio``, where measured, each layer's ratio of whole mini-batch gradient
      norms in train mode on the next training batch (:func:`resnorm.signal.batch_ratios`).
  """

  by_kind: dict[str, signal.DeltaStats]
  profile: dict[str, list[float]]
  layers: dict[str, list] | None = None

  @property
  def block(self) -> signal.DeltaStats | None:
    """The statistics of the identity blocks, the theorem's domain (None for a network without
    any, such as a pre-activation ResNet with one block per stage: every block a transition)."""
    return self.by_kind.get("block")

  @classmethod
  def from_report(
    cls,
    report: signal.SignalReport,
    free: dict[str, float] | None = None,
    train_batch: signal.SignalReport | None = None,
  ) -> Measurement:
    """The statistics of ``report``; ``free``: the identity blocks' direction-free fields
    (:func:`resnorm.signal.direction_free`), where they were measured; ``train_batch``: the same
    network measured in train mode on a training batch, where it was."""
    by_kind = {kind: signal.summarize(report, kind) for kind in signal.report_kinds(report)}
    if free is not None and "block" in by_kind:
      by_kind["block"] = dataclasses.replace(by_kind["block"], **free)
    layers = signal.stream_profile(report)
    if train_batch is not None:
      layers["train_batch_ratio"] = signal.batch_ratios(train_batch)
    return cls(by_kind, signal.layer_profile(report), layers)

  def to_json(self) -> dict:
    added = _added_fields(signal.DeltaStats)
    by_kind = {k: _unset_dropped(jsonable(dataclasses.asdict(v)), added) for k, v in self.by_kind.items()}
    return _unset_dropped(jsonable({"by_kind": by_kind, "profile": self.profile, "layers": self.layers}), ("layers",))

  @classmethod
  def from_json(cls, data: dict) -> Measurement:
    by_kind = {k: signal.DeltaStats(**_known_fields(signal.DeltaStats, v)) for k, v in data["by_kind"].items()}
    return cls(by_kind, data["profile"], data.get("layers"))


@dataclasses.dataclass(frozen=True)
class HistoryPoint:
  """The block δ statistics of one measurement during training."""

  step: int
  delta_max: float | None
  delta_mean: float | None
  log_gain: float | None

  @classmethod
  def of(cls, step: int, measurement: Measurement) -> HistoryPoint:
    block = measurement.block
    return cls(step, *(getattr(block, key) if block else None for key in HISTORY_KEYS))


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What one run reports (``workdir/summary.json``).

  Attributes:
    model, depth: the registry family and its depth.
    steps: optimizer steps taken (the divergence step for a diverged run).
    diverged: whether a loss or a parameter stopped being finite; then ``diverged_at_step`` is
      the step it was detected at, the run has no ``trained`` measurement and no test metrics.
    last_checkpoint: step of the last checkpoint kept (None: none saved).
    train_loss: mean train loss over the last logging window (over the steps since the
      previous log, up to the divergence for a diverged run).
    train_seconds: wall time of the training loop in this process's last session.
    init: measurement at initialisation; ``trained``: after the last step.
    history: block δ statistics every ``config.signal.every`` steps.
    test_loss, test_accuracy: on the whole test split (accuracy for classification only).
    best_test_accuracy, best_step: the best accuracy of the evaluations during training (every
      ``config.eval_every`` steps) and the step it was reached at.
    images_per_second: training throughput of the last session, input pipeline and logging
      included, from the first log onwards (compilation left out); None when too short to tell.
    setting, seed: the sweep setting the run belongs to and its ``config.seed`` (None for runs
      outside a sweep and in files written before settings existed).
    target_variance: regression only: the mean over output coordinates of the training
      targets' variance, the loss of predicting their mean; loss / target_variance = 1 − R².
    init_test_loss, init_test_accuracy: the test metrics of the initial network.
    convergence: the verdict on the train loss (:func:`resnorm.train.convergence`): ``change``,
      its ``from_step`` and ``to_step``, ``window``, ``tolerance`` and ``converged``.
    budget: what "trained" means for this run: ``steps``, ``optimizer``, ``learning_rate``,
      ``schedule``, ``batch_size`` and ``block_lr_scale``.
    construction: for a run started from the theorem's constructed network (``init_from =
      'constructed'``): ``block_bound_max``, the largest per-block bound on ‖J_l − I‖₂ that the
      construction promises.
    group_size: the runs trained together as one program (seeds vmapped), this one included;
      ``train_seconds`` and ``images_per_second`` are the group's, shared.
  """

  model: str
  depth: int
  steps: int
  diverged: bool
  diverged_at_step: int | None
  last_checkpoint: int | None
  train_loss: float | None
  train_seconds: float
  init: Measurement
  history: list[HistoryPoint]
  test_loss: float | None = None
  test_accuracy: float | None = None
  trained: Measurement | None = None
  best_test_accuracy: float | None = None
  best_step: int | None = None
  images_per_second: float | None = None
  setting: str | None = None
  seed: int | None = None
  target_variance: float | None = None
  init_test_loss: float | None = None
  init_test_accuracy: float | None = None
  convergence: dict | None = None
  budget: dict | None = None
  construction: dict | None = None
  group_size: int | None = None

  def measurement(self, stage: str) -> Measurement | None:
    """``init`` or ``trained`` by name."""
    if stage not in STAGES:
      raise validation.invalid("stage", stage, f"one of {list(STAGES)}")
    return getattr(self, stage)

  def to_json(self) -> dict:
    data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    data["init"] = self.init.to_json()
    data["trained"] = self.trained.to_json() if self.trained else None
    data["history"] = [dataclasses.asdict(h) for h in self.history]
    # regression runs have no accuracy, diverged ones no trained measurement
    return _unset_dropped(jsonable(data), ("test_accuracy", "trained") + _added_fields(RunRecord))

  @classmethod
  def from_json(cls, data: dict) -> RunRecord:
    data = _known_fields(cls, data)
    data["init"] = Measurement.from_json(data["init"])
    if data.get("trained") is not None:
      data["trained"] = Measurement.from_json(data["trained"])
    data["history"] = [HistoryPoint(**h) for h in data.get("history", [])]
    return cls(**data)


# ----------------------------------------------------------------------------- a sweep


# The statistics read as bounds: over blocks × examples, per block (a sample that does not grow
# with L), the typical block, the whole batch, and in every direction.
BOUND_KEYS = ("delta_max", "layer_p90_max", "delta_mean", "batch_delta_max", "free_delta_max")
# What L is in the bound reading: the number of layers of the kind measured, or the network's depth.
BOUND_LENGTHS = ("layers", "depth")


def _finite(values: list) -> list:
  return [v for v in values if v is not None and np.isfinite(v)]


def seed_mean(values: list) -> float | None:
  """The mean of the finite values (one per seed); None when there is none."""
  finite = _finite(values)
  return float(np.mean(finite)) if finite else None


def seed_std(values: list) -> float | None:
  """The sample standard deviation (ddof 1) of the finite values; None for fewer than two."""
  finite = _finite(values)
  return float(np.std(finite, ddof=1)) if len(finite) > 1 else None


@dataclasses.dataclass(frozen=True)
class Stage:
  """One setting's δ statistics of one kind of layer across depths at one stage.

  Each list is aligned with the setting's ``depths`` and holds the mean over its seeds; an
  entry is ``None`` where no seed has such a measurement (a diverged run after training) or a
  finite ratio. ``fit``: the fit of δ_max to c·log(2L)/L (:func:`resnorm.theory.fit_delta`, or
  a note). Added since the first format (``None`` in older files):

    layer_mean_max … batch_delta_mean: the depth-fair statistics of :class:`signal.DeltaStats`.
    std: statistic -> the standard deviation over seeds per depth (None with one seed).
    bound: statistic in :data:`BOUND_KEYS` -> :func:`resnorm.theory.read_bound` over the seeds.
    free_delta_max, free_delta_mean, free_layer_p90_max, free_examples: δ in every direction
      (:class:`signal.DeltaStats`).
    token_c_last: on a stream of sequences (``block`` stage), the tokens' mean cosine similarity
      after the last block (:func:`resnorm.probes.token_cosine`: rank collapse as it nears 1).
    num_layers: per depth, the layers of this kind (identity blocks for ``block``; None where a
      network has none).
    L: what the bound reading and the fit take as L: ``'layers'``, the number of layers of this
      kind the statistic is taken over (Theorem 1 counts blocks), or ``'depth'``, the network's
      depth. None in older files, which read the network's depth.
  """

  delta_max: list[float | None]
  delta_mean: list[float | None]
  delta_p50: list[float | None]
  delta_p90: list[float | None]
  delta_p99: list[float | None]
  log_gain: list[float | None]
  fit: dict
  layer_mean_max: list[float | None] | None = None
  layer_p90_max: list[float | None] | None = None
  layer_p90_mean: list[float | None] | None = None
  batch_delta_max: list[float | None] | None = None
  batch_delta_mean: list[float | None] | None = None
  std: dict[str, list[float | None]] | None = None
  bound: dict[str, dict] | None = None
  free_delta_max: list[float | None] | None = None
  free_delta_mean: list[float | None] | None = None
  free_layer_p90_max: list[float | None] | None = None
  free_examples: list[float | None] | None = None
  num_layers: list[int | None] | None = None
  token_c_last: list[float | None] | None = None
  L: str | None = None

  @classmethod
  def columns(
    cls, groups: list[list[RunRecord]], stage: str, fit, bound, kind: str = "block", L: str = "layers"
  ) -> Stage:
    """The columns of ``groups`` (one list of seeds' runs per depth, ascending) at ``stage`` for
    layers of ``kind``; ``fit(lengths, deltas) -> dict``, ``bound(lengths, per_seed) -> dict``,
    with the lengths ``L`` names (depths where the network has no layer of ``kind`` left out)."""
    if L not in BOUND_LENGTHS:
      raise validation.invalid("L", L, f"one of {list(BOUND_LENGTHS)}")
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("fit", "std", "bound", "L")]

    def values(runs, key):
      measured = [r.measurement(stage) for r in runs]
      if key == "token_c_last":
        return [
          m.profile["token_c"][-1] if m and kind == "block" and "token_c" in m.profile else None for m in measured
        ]
      return [getattr(m.by_kind[kind], key) if m and kind in m.by_kind else None for m in measured]

    per_seed = {key: [values(runs, key) for runs in groups] for key in names}
    columns = {key: [seed_mean(v) for v in per_seed[key]] for key in names}
    columns["num_layers"] = [None if n is None else int(n) for n in columns["num_layers"]]
    measured = any(v is not None for v in columns["delta_max"])
    if L == "layers" and measured and all(n is None for n in columns["num_layers"]):
      L = "depth"  # files of the first formats did not count their layers
    lengths = columns["num_layers"] if L == "layers" else [runs[0].depth for runs in groups]
    kept = [i for i, n in enumerate(lengths) if n]

    def at_kept(values):
      return [values[i] for i in kept]

    return cls(
      **columns,
      L=L,
      fit=fit(at_kept(lengths), at_kept(columns["delta_max"])),
      std={key: [seed_std(v) for v in per_seed[key]] for key in names},
      bound={key: bound(at_kept(lengths), at_kept(per_seed[key])) for key in BOUND_KEYS},
    )

  def to_json(self) -> dict:
    return _unset_dropped(jsonable(dataclasses.asdict(self)), _added_fields(Stage))


@dataclasses.dataclass(frozen=True)
class FamilyResults:
  """One sweep setting (a model family with its overrides) across the sweep's depths.

  Per-depth lists hold means over the setting's seeds; ``diverged`` is True at a depth where
  any seed diverged (``num_diverged`` of ``seeds`` did, ``diverged_at_step`` is the earliest).
  ``init`` and ``trained`` are the identity blocks' statistics, the theorem's domain. Added
  since the first format (``None`` in older files):

    model: the registry family; ``seeds``: the seeds run at every depth.
    train_loss_relative, test_loss_relative: regression: loss / target variance (1 − R²).
    std: train_loss, test_loss, test_accuracy -> the standard deviation over seeds per depth.
    by_kind: the other kinds of layer (``stem``, ``transition``) -> {stage: :class:`Stage`}.
    init_test_loss (and ``init_test_loss_relative``, ``init_test_accuracy``): of the initial networks.
    num_converged: per depth, the seeds whose train loss had stopped changing
      (:func:`resnorm.train.convergence`); ``convergence_change``: the mean relative change over
      the seeds; ``convergence``: the verdict's ``window`` and ``tolerance``.
    budget: the runs' budget (:class:`RunRecord`); ``construction``: per depth, the constructed
      network's promised ``block_bound_max`` (settings started from it only).
    overrides: what the setting is (its family and overrides, ``config.overrides.<setting>``).
  """

  depths: list[int]
  diverged: list[bool]
  diverged_at_step: list[int | None]
  train_loss: list[float | None]
  test_loss: list[float | None]
  init: Stage
  trained: Stage
  test_accuracy: list[float | None] | None = None  # classification only
  model: str | None = None
  seeds: list[int] | None = None
  num_diverged: list[int] | None = None
  train_loss_relative: list[float | None] | None = None
  test_loss_relative: list[float | None] | None = None
  std: dict[str, list[float | None]] | None = None
  by_kind: dict[str, dict[str, Stage]] | None = None
  init_test_loss: list[float | None] | None = None
  init_test_loss_relative: list[float | None] | None = None
  init_test_accuracy: list[float | None] | None = None
  num_converged: list[int] | None = None
  convergence_change: list[float | None] | None = None
  convergence: dict | None = None
  budget: dict | None = None
  construction: dict[str, list] | None = None
  overrides: dict | None = None

  def block_counts(self) -> list[int | None] | None:
    """Per depth, the identity blocks that the bound reading took as L, where they differ from the
    network's depth (None where they are the depth, as in the MLPs, or the depth was the L)."""
    trained = self.trained
    return trained.num_layers if trained.L == "layers" and trained.num_layers != self.depths else None

  def stage(self, name: str, kind: str = "block") -> Stage | None:
    """The :class:`Stage` ``init`` or ``trained`` of layers of ``kind`` (None: no such layers)."""
    if name not in STAGES:
      raise validation.invalid("stage", name, f"one of {list(STAGES)}")
    if kind == "block":
      return getattr(self, name)
    return (self.by_kind or {}).get(kind, {}).get(name)

  def to_json(self) -> dict:
    data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    data["init"], data["trained"] = self.init.to_json(), self.trained.to_json()
    if self.by_kind is not None:
      data["by_kind"] = {k: {s: v.to_json() for s, v in stages.items()} for k, stages in self.by_kind.items()}
    return _unset_dropped(jsonable(data), _added_fields(FamilyResults))

  @classmethod
  def from_json(cls, data: dict) -> FamilyResults:
    data = _known_fields(cls, data)
    for stage in STAGES:
      data[stage] = Stage(**_known_fields(Stage, data[stage]))
    if data.get("by_kind") is not None:
      data["by_kind"] = {
        k: {s: Stage(**_known_fields(Stage, v)) for s, v in stages.items()} for k, stages in data["by_kind"].items()
      }
    return cls(**data)


@dataclasses.dataclass(frozen=True)
class SweepSummary:
  """A sweep's results (``workdir/summary.json``).

  ``models`` maps every setting (a family with its overrides, or in files of the first format
  a family), in the config's order, to its results; the first is the reference setting whose
  trained block δ's (means over seeds) the JSON file also holds at its top level (``depths``,
  ``delta_max``, ``delta_mean``, ``diverged``, ``fit``: the public contract).
  """

  reference_model: str
  models: dict[str, FamilyResults]

  @property
  def reference(self) -> FamilyResults:
    return self.models[self.reference_model]

  @property
  def depths(self) -> list[int]:
    return sorted({L for family in self.models.values() for L in family.depths})

  def to_json(self) -> dict:
    reference = self.reference
    return jsonable(
      {
        "reference_model": self.reference_model,
        "depths": reference.depths,
        "delta_max": reference.trained.delta_max,
        "delta_mean": reference.trained.delta_mean,
        "diverged": reference.diverged,
        "fit": reference.trained.fit,
        "models": {name: family.to_json() for name, family in self.models.items()},
      }
    )

  @classmethod
  def from_json(cls, data: dict) -> SweepSummary:
    models = {name: FamilyResults.from_json(family) for name, family in data["models"].items()}
    return cls(data.get("reference_model", next(iter(models))), models)


# ----------------------------------------------------------------------------- files


def path(location: PathLike) -> epath.Path:
  """A local path or a cloud URL (``gs://…``) as an ``etils.epath.Path``, absolute.

  Every file the project reads or writes goes through this: ``epath`` handles local
  directories and cloud storage alike, as Orbax does for the checkpoints.
  """
  location = epath.Path(location)
  return location if location.is_absolute() else location.absolute()


def write_text(location: PathLike, text: str | bytes) -> None:
  """Writes ``text`` (or bytes) atomically: to a temporary file, then renamed over ``location``,
  so a reader, a run killed mid-write or a disk that fills up never leaves half a file; two
  writers at once each write their own temporary file, and the last rename wins."""
  location = path(location)
  tmp = location.with_name(f"{location.name}.tmp-{os.getpid()}-{threading.get_ident()}")
  try:
    if isinstance(text, bytes):
      tmp.write_bytes(text)
    else:
      tmp.write_text(text)
    tmp.replace(location)
  except BaseException as error:
    try:
      tmp.unlink(missing_ok=True)
    except OSError:
      pass  # the directory itself is what failed (read-only, gone)
    if isinstance(error, OSError):
      raise WriteFailed(
        f"could not write {location}: {error.strerror or error} (the file as it was is unchanged)"
      ) from error
    raise


def make_dir(location: PathLike) -> None:
  """``location`` and its parents as directories; :class:`WriteFailed` naming it where that fails."""
  location = path(location)
  try:
    location.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise WriteFailed(f"could not create the directory {location}: {error.strerror or error}") from error


def write_json(location: PathLike, tree) -> None:
  """``tree`` made :func:`jsonable`, written atomically."""
  write_text(location, json.dumps(jsonable(tree), indent=1))


class WriteFailed(OSError):
  """A record or figure could not be written (a full disk, a read-only filesystem); the message
  names the file, and the file as it was before is intact (writes are atomic)."""


class WorkdirError(ValueError):
  """The workdir holds what this run cannot continue (checkpoints of another config, none that
  restores, another process working there): nothing in it was changed."""


class UnreadableRecord(ValueError):
  """A record file that does not parse (cut short, overwritten, missing a field); the message
  names the file."""


def read_json(location: PathLike):
  location = path(location)
  try:
    return json.loads(location.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise UnreadableRecord(f"{location} does not read as JSON ({error})") from error


class JsonlLog:
  """A log of JSON records, one per line, on any filesystem ``epath`` reaches.

  On a local disk :meth:`append` adds the record's line and flushes it to the disk (``fsync``);
  on an object store (``gs://``), which cannot append, it rewrites the file atomically. Either way
  every record appended before a kill is in the file: a kill during an append can leave only the
  last line cut short, which the next reader drops with a warning (and the next append rewrites
  the file without it). A line that does not parse anywhere before the last is a damaged file
  (:class:`UnreadableRecord`). Only the process that writes (``write=True``) touches the file.
  """

  def __init__(self, location: PathLike, write: bool = True):
    self.location, self.write = path(location), write
    text = self.location.read_text() if self.location.exists() else ""
    lines = text.splitlines()
    cut = bool(text) and not text.endswith("\n")  # an append cut short by a kill
    try:
      self.records = [json.loads(line) for line in (lines[:-1] if cut else lines) if line.strip()]
      if cut:
        try:
          self.records.append(json.loads(lines[-1]))
        except json.JSONDecodeError:
          logging.warning("%s: dropped its last line, cut short (%d characters)", self.location, len(lines[-1]))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
      raise UnreadableRecord(f"{self.location} does not read as JSON lines ({error})") from error
    self._rewrite_next = cut  # the file's text is not its records': the next write rewrites it

  def rewind(self, step: int) -> list[dict]:
    """Keeps the records up to ``step``, the step a run resumes from, and returns them.

    A run that stopped after logging past its last checkpoint logs those steps again when it
    resumes; cutting the log back first keeps every step once.
    """
    kept = [r for r in self.records if r["step"] <= step]
    if len(kept) < len(self.records) or self._rewrite_next:
      self.records = kept
      self._rewrite()
    return list(kept)

  def append(self, record: dict) -> None:
    self.records.append(jsonable(record))
    if not self.write:
      return
    if self._rewrite_next or "://" in str(self.location):
      self._rewrite()
      return
    try:
      with open(self.location, "a") as f:
        f.write(json.dumps(self.records[-1]) + "\n")
        f.flush()
        os.fsync(f.fileno())
    except OSError as error:
      raise WriteFailed(f"could not append to {self.location}: {error.strerror or error}") from error

  def _rewrite(self) -> None:
    if self.write:
      write_text(self.location, "".join(json.dumps(r) + "\n" for r in self.records))
      self._rewrite_next = False


def json_lines(text: str) -> list[dict]:
  """The records of JSONL text."""
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_run(run_dir: PathLike) -> RunRecord:
  """The run record of ``run_dir/summary.json``; :class:`UnreadableRecord` if it does not read."""
  location = path(run_dir) / "summary.json"
  data = read_json(location)
  try:
    return RunRecord.from_json(data)
  except (KeyError, TypeError, AttributeError) as error:
    raise UnreadableRecord(f"{location} is not a run record ({type(error).__name__}: {error})") from error


def write_run(run_dir: PathLike, record: RunRecord) -> None:
  write_json(path(run_dir) / "summary.json", record.to_json())


def runs_in(workdirs: Iterable[PathLike], runs: str = "runs") -> list[RunRecord]:
  """The finished runs (those with a summary) under ``<workdir>/<runs>/*/`` of each workdir."""
  records = []
  for workdir in workdirs:
    runs_dir = path(workdir) / runs
    for run_dir in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
      if (run_dir / "summary.json").exists():
        records.append(read_run(run_dir))
  return records


def config_dict(config: Any) -> dict:
  """A config (``ml_collections.ConfigDict`` or dict) as the JSON that ``config.json`` holds."""
  return json.loads(json.dumps(jsonable(config.to_dict() if hasattr(config, "to_dict") else config)))
