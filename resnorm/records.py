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
from collections.abc import Iterable
from typing import Any, Union

import numpy as np
from etils import epath

from resnorm import signal

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
  """

  by_kind: dict[str, signal.DeltaStats]
  profile: dict[str, list[float]]

  @property
  def block(self) -> signal.DeltaStats:
    """The statistics of the identity blocks, the theorem's domain."""
    return self.by_kind["block"]

  @classmethod
  def from_report(cls, report: signal.SignalReport) -> Measurement:
    kinds = sorted(set(report.kinds))
    return cls({kind: signal.summarize(report, kind) for kind in kinds}, signal.layer_profile(report))

  def to_json(self) -> dict:
    return jsonable({"by_kind": {k: dataclasses.asdict(v) for k, v in self.by_kind.items()},
                     "profile": self.profile})

  @classmethod
  def from_json(cls, data: dict) -> Measurement:
    by_kind = {k: signal.DeltaStats(**_known_fields(signal.DeltaStats, v)) for k, v in data["by_kind"].items()}
    return cls(by_kind, data["profile"])


@dataclasses.dataclass(frozen=True)
class HistoryPoint:
  """The block δ statistics of one measurement during training."""

  step: int
  delta_max: float | None
  delta_mean: float | None
  log_gain: float | None

  @classmethod
  def of(cls, step: int, measurement: Measurement) -> HistoryPoint:
    return cls(step, *(getattr(measurement.block, key) for key in HISTORY_KEYS))


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

  def measurement(self, stage: str) -> Measurement | None:
    """``init`` or ``trained`` by name."""
    if stage not in STAGES:
      raise ValueError(f"stage = {stage!r}: expected one of {list(STAGES)}")
    return getattr(self, stage)

  def to_json(self) -> dict:
    data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    data["init"] = self.init.to_json()
    data["trained"] = self.trained.to_json() if self.trained else None
    data["history"] = [dataclasses.asdict(h) for h in self.history]
    if self.test_accuracy is None:
      del data["test_accuracy"]  # regression runs have none
    if self.trained is None:
      del data["trained"]
    for key in ("best_test_accuracy", "best_step", "images_per_second"):
      if data[key] is None:
        del data[key]  # absent, as in the files written before these fields
    return jsonable(data)

  @classmethod
  def from_json(cls, data: dict) -> RunRecord:
    data = _known_fields(cls, data)
    data["init"] = Measurement.from_json(data["init"])
    if data.get("trained") is not None:
      data["trained"] = Measurement.from_json(data["trained"])
    data["history"] = [HistoryPoint(**h) for h in data.get("history", [])]
    return cls(**data)


# ----------------------------------------------------------------------------- a sweep


@dataclasses.dataclass(frozen=True)
class Stage:
  """One family's block δ statistics across depths at one stage, and their fit to c·log(2L)/L.

  Each list is aligned with the family's ``depths``; an entry is ``None`` where the run has no
  such measurement (a diverged run after training) or no finite ratio.
  """

  delta_max: list[float | None]
  delta_mean: list[float | None]
  delta_p50: list[float | None]
  delta_p90: list[float | None]
  delta_p99: list[float | None]
  log_gain: list[float | None]
  fit: dict

  @classmethod
  def columns(cls, runs: list[RunRecord], stage: str, fit) -> Stage:
    """The columns of ``runs`` (sorted by depth) at ``stage``; ``fit(depths, deltas) -> dict``."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != "fit"]
    measured = [r.measurement(stage) for r in runs]
    columns = {key: [getattr(m.block, key) if m else None for m in measured] for key in names}
    return cls(**columns, fit=fit([r.depth for r in runs], columns["delta_max"]))


@dataclasses.dataclass(frozen=True)
class FamilyResults:
  """One model family across the sweep's depths."""

  depths: list[int]
  diverged: list[bool]
  diverged_at_step: list[int | None]
  train_loss: list[float | None]
  test_loss: list[float | None]
  init: Stage
  trained: Stage
  test_accuracy: list[float | None] | None = None  # classification only

  def stage(self, name: str) -> Stage:
    if name not in STAGES:
      raise ValueError(f"stage = {name!r}: expected one of {list(STAGES)}")
    return getattr(self, name)

  def to_json(self) -> dict:
    data = dataclasses.asdict(self)
    if self.test_accuracy is None:
      del data["test_accuracy"]
    return jsonable(data)

  @classmethod
  def from_json(cls, data: dict) -> FamilyResults:
    data = _known_fields(cls, data)
    for stage in STAGES:
      data[stage] = Stage(**_known_fields(Stage, data[stage]))
    return cls(**data)


@dataclasses.dataclass(frozen=True)
class SweepSummary:
  """A sweep's results (``workdir/summary.json``).

  ``models`` maps every family, in the config's order, to its results; the first is the
  reference family whose trained block δ's the JSON file also holds at its top level
  (``depths``, ``delta_max``, ``delta_mean``, ``diverged``, ``fit``: the public contract).
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
    return jsonable({
        "reference_model": self.reference_model,
        "depths": reference.depths,
        "delta_max": reference.trained.delta_max,
        "delta_mean": reference.trained.delta_mean,
        "diverged": reference.diverged,
        "fit": reference.trained.fit,
        "models": {name: family.to_json() for name, family in self.models.items()},
    })

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


def write_text(location: PathLike, text: str) -> None:
  """Writes ``text`` atomically: to a temporary file, then renamed over ``location``, so a
  reader or a run killed mid-write never sees half a file."""
  location = path(location)
  tmp = location.with_name(location.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(location)


def write_json(location: PathLike, tree) -> None:
  """``tree`` made :func:`jsonable`, written atomically."""
  write_text(location, json.dumps(jsonable(tree), indent=1))


def read_json(location: PathLike):
  return json.loads(path(location).read_text())


class JsonlLog:
  """A log of JSON records, one per line, on any filesystem ``epath`` reaches.

  Every :meth:`append` rewrites the file atomically (cloud storage has no append), so the file
  always holds every record up to the last one appended, and a kill between or during writes
  loses none of them. Only the process that writes (``write=True``) touches the file.
  """

  def __init__(self, location: PathLike, write: bool = True):
    self.location, self.write = path(location), write
    self.records = json_lines(self.location.read_text()) if self.location.exists() else []

  def rewind(self, step: int) -> list[dict]:
    """Keeps the records up to ``step``, the step a run resumes from, and returns them.

    A run that stopped after logging past its last checkpoint logs those steps again when it
    resumes; cutting the log back first keeps every step once.
    """
    kept = [r for r in self.records if r["step"] <= step]
    if len(kept) < len(self.records):
      self.records = kept
      self._flush()
    return list(kept)

  def append(self, record: dict) -> None:
    self.records.append(jsonable(record))
    self._flush()

  def _flush(self) -> None:
    if self.write:
      write_text(self.location, "".join(json.dumps(r) + "\n" for r in self.records))


def json_lines(text: str) -> list[dict]:
  """The records of JSONL text."""
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_run(run_dir: PathLike) -> RunRecord:
  return RunRecord.from_json(read_json(path(run_dir) / "summary.json"))


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
