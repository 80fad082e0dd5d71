"""The typed records of runs and sweeps, and the files they are kept in.

Every result a run or a sweep reports is a field of one of the dataclasses below; their field
names are the keys of the JSON files on disk, so renaming a field is one edit here. The δ
statistics are kept by name (:mod:`resnorm.statistics`): a statistic registered there is in every
record without an edit here. ``to_json`` gives plain JSON values (NaN and ±inf become ``null``)
and the file format, :data:`FORMAT`; ``from_json`` reads them back. :func:`read_run` and
:func:`read_summary` read the files, and refuse one of another format with :class:`FormatError`,
naming the command that converts an earlier one (``python -m experiments.migrate``).

Files: every path goes through :func:`path` (``etils.epath``: local directories and ``gs://``
alike). :func:`write_json` replaces a file atomically (a reader never sees half of it);
:class:`JsonlLog` keeps a log of one record per line that is complete on disk after every
record, and cuts it back to the step a run resumes from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import threading
from collections.abc import Iterable
from typing import Any, Union

import numpy as np
from absl import logging
from etils import epath

from resnorm import signal, statistics, theory, validation

PathLike = Union[str, os.PathLike]
FORMAT = 2  # of run records and sweep summaries; experiments/migrate.py converts the files of earlier ones
STAGES = ("init", "trained")  # a run is measured at initialisation and after training
BOUND_LENGTHS = ("layers", "depth")  # what L is in a bound reading: the layers measured, or the network's depth


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


def check_format(data: dict, what: str) -> None:
  """Raises :class:`FormatError` unless ``data`` (the JSON of a run record or a sweep summary,
  read from ``what``) is of :data:`FORMAT`."""
  found = data.get("format") if isinstance(data, dict) else None
  if found != FORMAT:
    written = "by an earlier resnorm (no format)" if found is None else f"in format {found!r}"
    raise FormatError(
      f"{what} was written {written}; this resnorm reads format {FORMAT}: convert the workdir with "
      "`python -m experiments.migrate WORKDIR` (it keeps the old files beside the new)"
    )


# ----------------------------------------------------------------------------- one run


@dataclasses.dataclass(frozen=True)
class Measurement:
  """The backward ratios of one network state on the held-out examples.

  Attributes:
    by_kind: kind of layer (``stem``, ``block``, ``transition``) -> its statistics, every
      registered one by name (:func:`resnorm.signal.delta_statistics`).
    profile: per-block means over examples (:func:`resnorm.signal.layer_profile`).
    layers: every layer in stream order, transitions included (:func:`resnorm.signal.stream_profile`);
      with ``train_batch_ratio``, where measured, each layer's ratio of whole mini-batch gradient
      norms in train mode on the next training batch (:func:`resnorm.signal.batch_ratios`).
  """

  by_kind: dict[str, dict[str, float | int | None]]
  profile: dict[str, list[float]]
  layers: dict[str, list] | None  # None in records converted from before stream profiles

  @property
  def block(self) -> dict[str, float | int | None] | None:
    """The statistics of the identity blocks, the theorem's domain (None for a network without
    any, such as a pre-activation ResNet with one block per stage: every block a transition)."""
    return self.by_kind.get("block")

  @classmethod
  def from_report(
    cls,
    report: signal.SignalReport,
    direction_free: np.ndarray | None = None,
    train_batch: signal.SignalReport | None = None,
  ) -> Measurement:
    """The statistics of ``report``; ``direction_free``: the identity blocks' δ in every direction
    (:func:`resnorm.signal.direction_free`), where it was measured; ``train_batch``: the same
    network measured in train mode on a training batch, where it was."""
    by_kind = {
      kind: signal.delta_statistics(report, kind, direction_free if kind == "block" else None)
      for kind in signal.report_kinds(report)
    }
    layers = signal.stream_profile(report)
    if train_batch is not None:
      layers["train_batch_ratio"] = signal.batch_ratios(train_batch)
    return cls(by_kind, signal.layer_profile(report), layers)

  def to_json(self) -> dict:
    return jsonable(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, data: dict) -> Measurement:
    return cls(data["by_kind"], data["profile"], data["layers"])


# The JSON types of a record's annotated field types (``Measurement``s are read from objects).
_JSON_TYPES = {
  "int": (int,),
  "float": (int, float),
  "bool": (bool,),
  "str": (str,),
  "dict": (dict,),
  "None": (type(None),),
}
_JSON_TYPES.update(list=(list,), Measurement=(dict,))


def _check_type(name: str, value, annotation: str) -> None:
  """Raises ``TypeError`` naming field ``name`` when ``value`` is not of its ``annotation`` (``int``,
  ``float | None``, ``list[dict]``, …) as JSON holds it: a number stored as a string is refused
  where it is read, not where it is used."""
  allowed = tuple(t for part in annotation.split(" | ") for t in _JSON_TYPES[part.split("[")[0]])
  if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
    raise TypeError(f"field {name} is {value!r}: expected {annotation}")


def history_point(step: int, measurement: Measurement) -> dict:
  """The identity blocks' tracked statistics (``history=True``) of a measurement during training."""
  block = measurement.block
  return {"step": step, **{s.name: block[s.name] if block else None for s in statistics.tracked()}}


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
    history: the identity blocks' tracked statistics every ``config.signal.every`` steps
      (:func:`history_point`).
    test_loss, test_accuracy: on the whole test split (accuracy for classification only).
    best_test_accuracy, best_step: the best accuracy of the evaluations during training (every
      ``config.eval_every`` steps) and the step it was reached at.
    images_per_second: training throughput of the last session, input pipeline and logging
      included, from the first log onwards (compilation left out); None when too short to tell.
    setting, seed: the sweep setting the run belongs to (None for a run outside a sweep) and its
      ``config.seed``.
    target_variance: regression only: the mean over output coordinates of the training
      targets' variance, the loss of predicting their mean; loss / target_variance = 1 − R².
    init_test_loss, init_test_accuracy: the test metrics of the initial network.
    convergence: the verdict on the train loss (:func:`resnorm.train.convergence`): ``fall``
      (over ``from_step`` to ``to_step``) and ``trend``, ``window``, ``tolerance``,
      ``trend_tolerance`` and ``converged``; None for a diverged run.
    budget: what "trained" means for this run: ``steps``, ``optimizer``, ``learning_rate``,
      ``schedule``, ``warmup_epochs``, ``batch_size`` and ``block_lr_scale``.
    construction: for a run started from the theorem's constructed network (``init_from =
      'constructed'``): ``block_bound_max``, the largest per-block bound on ‖J_l − I‖₂ that the
      construction promises.
    group_size: the runs trained together as one program (seeds vmapped), this one included;
      ``train_seconds`` and ``images_per_second`` are the group's, shared.
    train_losses: the logged train losses as [step, loss] pairs, earlier sessions' included:
      what the convergence verdict is computed from.
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
  history: list[dict]
  setting: str | None
  seed: int
  budget: dict
  group_size: int
  init_test_loss: float | None
  init_test_accuracy: float | None = None
  test_loss: float | None = None
  test_accuracy: float | None = None
  trained: Measurement | None = None
  best_test_accuracy: float | None = None
  best_step: int | None = None
  images_per_second: float | None = None
  target_variance: float | None = None
  convergence: dict | None = None
  construction: dict | None = None
  train_losses: list[list] | None = None

  def measurement(self, stage: str) -> Measurement | None:
    """``init`` or ``trained`` by name."""
    if stage not in STAGES:
      raise validation.invalid("stage", stage, f"one of {list(STAGES)}")
    return getattr(self, stage)

  def to_json(self) -> dict:
    data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    data["init"] = self.init.to_json()
    data["trained"] = self.trained and self.trained.to_json()
    return jsonable({"format": FORMAT, **data})

  @classmethod
  def from_json(cls, data: dict) -> RunRecord:
    data = {f.name: data[f.name] for f in dataclasses.fields(cls)}
    for field in dataclasses.fields(cls):
      _check_type(field.name, data[field.name], field.type)
    data["init"] = Measurement.from_json(data["init"])
    data["trained"] = data["trained"] and Measurement.from_json(data["trained"])
    return cls(**data)


# ----------------------------------------------------------------------------- a sweep


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
  """One setting's statistics of one kind of layer across depths at one stage (``init`` or
  ``trained``), built by :func:`resnorm.sweep_summary.summarize_sweep`.

  Each list is aligned with the setting's ``depths``; an entry is None where no seed has such a
  measurement (a diverged run after training) or a finite value.

  Attributes:
    means: every registered statistic (:mod:`resnorm.statistics`) -> its mean over the seeds;
      and on a stream of sequences (``block`` stage), ``token_c_last``, the tokens' mean cosine
      similarity after the last block (:func:`resnorm.probes.token_cosine`: rank collapse as it
      nears 1), None elsewhere.
    std: the same -> the standard deviation over the seeds (None with one seed).
    per_seed: every statistic read as a bound and ``token_c_last`` -> per depth, the value of each
      of the setting's ``seeds`` (None where that seed has none): what every interval and
      difference is recomputed from.
    bound: every statistic read as a bound -> :func:`resnorm.theory.read_bound` over the seeds.
    fit: the fit of the mean δ_max to c·log(2L)/L (:func:`resnorm.theory.fit_delta`, or a note).
    bound_L: what the bound reading and the fit take as L: ``'layers'``, the number of layers of
      this kind the statistics are taken over (Theorem 1 counts blocks), or ``'depth'``, the
      network's depth.
  """

  means: dict[str, list[float | None]]
  std: dict[str, list[float | None]]
  per_seed: dict[str, list[list[float | None]]]
  bound: dict[str, theory.BoundReading]
  fit: dict
  bound_L: str

  def to_json(self) -> dict:
    """The means at the top level (``stage["delta_max"]``), beside the other fields."""
    bound = {name: reading.to_json() for name, reading in self.bound.items()}
    others = {"std": self.std, "per_seed": self.per_seed, "bound": bound, "fit": self.fit, "bound_L": self.bound_L}
    return jsonable({**self.means, **others})

  @classmethod
  def from_json(cls, data: dict) -> Stage:
    others = ("std", "per_seed", "bound", "fit", "bound_L")
    return cls(
      means={k: v for k, v in data.items() if k not in others},
      std=data["std"],
      per_seed=data["per_seed"],
      bound={name: theory.BoundReading.from_json(reading) for name, reading in data["bound"].items()},
      fit=data["fit"],
      bound_L=data["bound_L"],
    )


@dataclasses.dataclass(frozen=True)
class FamilyResults:
  """One sweep setting (a model family with its overrides) across the sweep's depths.

  Per-depth lists hold means over the setting's seeds; ``diverged`` is True at a depth where
  any seed diverged (``num_diverged`` of ``seeds`` did, ``diverged_at_step`` is the earliest).
  ``init`` and ``trained`` are the identity blocks' statistics, the theorem's domain.

  Attributes:
    model: the registry family; ``seeds``: the seeds run at every depth.
    train_loss_relative, test_loss_relative: regression: loss / target variance (1 − R²).
    std: train_loss, test_loss, test_accuracy -> the standard deviation over seeds per depth.
    by_kind: the other kinds of layer (``stem``, ``transition``) -> {stage: :class:`Stage`}.
    init_test_loss (and ``init_test_loss_relative``, ``init_test_accuracy``): of the initial networks.
    num_converged: per depth, the seeds whose train loss had stopped changing
      (:func:`resnorm.train.convergence`); ``train_loss_fall``: the mean over the seeds of the
      loss's fall over the end of the run relative to its final value; ``convergence``: the
      verdict's ``window``, ``tolerance`` and ``trend_tolerance``.
    per_seed: ``train_loss``, ``test_loss``, ``init_test_loss``, ``test_accuracy``,
      ``init_test_accuracy``, ``fall``, ``trend`` and ``converged`` -> per depth, the value of
      each of ``seeds`` (None where it has none).
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
  model: str
  seeds: list[int]
  num_diverged: list[int]
  std: dict[str, list[float | None]]
  by_kind: dict[str, dict[str, Stage]]
  init_test_loss: list[float | None]
  budget: dict
  overrides: dict
  test_accuracy: list[float | None] | None = None  # classification only
  train_loss_relative: list[float | None] | None = None  # regression only
  test_loss_relative: list[float | None] | None = None
  init_test_loss_relative: list[float | None] | None = None
  init_test_accuracy: list[float | None] | None = None
  num_converged: list[int] | None = None  # None: no run has a verdict (every one diverged)
  train_loss_fall: list[float | None] | None = None
  convergence: dict | None = None
  construction: dict[str, list] | None = None
  per_seed: dict[str, list[list]] | None = None

  def block_counts(self) -> list[int | None] | None:
    """Per depth, the identity blocks that the bound reading took as L, where they differ from the
    network's depth (None where they are the depth, as in the MLPs, or the depth was the L)."""
    counts = self.trained.means["num_layers"]
    counts = [None if n is None else int(n) for n in counts]
    return counts if self.trained.bound_L == "layers" and counts != self.depths else None

  def stage(self, name: str, kind: str = "block") -> Stage | None:
    """The :class:`Stage` ``init`` or ``trained`` of layers of ``kind`` (None: no such layers)."""
    if name not in STAGES:
      raise validation.invalid("stage", name, f"one of {list(STAGES)}")
    if kind == "block":
      return getattr(self, name)
    return self.by_kind.get(kind, {}).get(name)

  def to_json(self) -> dict:
    data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    data["init"], data["trained"] = self.init.to_json(), self.trained.to_json()
    data["by_kind"] = {k: {s: v.to_json() for s, v in stages.items()} for k, stages in self.by_kind.items()}
    return jsonable(data)

  @classmethod
  def from_json(cls, data: dict) -> FamilyResults:
    data = {f.name: data[f.name] for f in dataclasses.fields(cls)}
    for stage in STAGES:
      data[stage] = Stage.from_json(data[stage])
    data["by_kind"] = {k: {s: Stage.from_json(v) for s, v in stages.items()} for k, stages in data["by_kind"].items()}
    return cls(**data)


@dataclasses.dataclass(frozen=True)
class SweepSummary:
  """A sweep's results (``workdir/summary.json``).

  ``models`` maps every setting (a family with its overrides), in the config's order, to its
  results; the first is the reference setting whose trained block δ's (means over seeds) the JSON
  file also holds at its top level (``depths``, ``delta_max``, ``delta_mean``, ``diverged``,
  ``fit``: the public contract). Every run's logged train losses and convergence verdict are in
  the sibling file it names, ``runs.json`` (:func:`run_entries`).
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
        "format": FORMAT,
        "reference_model": self.reference_model,
        "depths": reference.depths,
        "delta_max": reference.trained.means["delta_max"],
        "delta_mean": reference.trained.means["delta_mean"],
        "diverged": reference.diverged,
        "fit": reference.trained.fit,
        "runs_file": RUNS_FILE,
        "models": {name: family.to_json() for name, family in self.models.items()},
      }
    )

  @classmethod
  def from_json(cls, data: dict) -> SweepSummary:
    return cls(data["reference_model"], {name: FamilyResults.from_json(f) for name, f in data["models"].items()})


# The file beside a sweep's summary.json with every run's train losses and convergence verdict.
RUNS_FILE = "runs.json"


def run_entries(results: list[RunRecord]) -> dict:
  """What :data:`RUNS_FILE` holds: per run, what it is (setting, depth, seed, budget), how it
  ended, and its logged train losses with the convergence verdict on them."""
  keys = ("setting", "depth", "seed", "budget", "steps", "diverged", "diverged_at_step", "convergence", "train_losses")
  ordered = sorted(results, key=lambda r: (str(r.setting), r.depth, r.seed))
  return jsonable({"format": FORMAT, "runs": [{key: getattr(r, key) for key in keys} for r in ordered]})


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
  writers at once each write their own temporary file, and the last rename wins. On a local disk
  the temporary file is flushed to the disk (``fsync``) before the rename, so a power loss after
  it cannot leave an empty file under the name (an object store's write is whole by itself)."""
  location = path(location)
  tmp = location.with_name(f"{location.name}.tmp-{os.getpid()}-{threading.get_ident()}")
  data = text if isinstance(text, bytes) else text.encode()
  try:
    if "://" in str(location):
      tmp.write_bytes(data)
    else:
      with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
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


class FormatError(WorkdirError):
  """A record file of another format than :data:`FORMAT` (``python -m experiments.migrate``
  converts the earlier ones): nothing was changed."""


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
    for number, record in enumerate(self.records, 1):
      if not (isinstance(record, dict) and isinstance(record.get("step"), int)):
        raise UnreadableRecord(f"{self.location}: its record {number} has no integer step ({str(record)[:80]})")
    self._rewrite_next = cut  # the file's text is not its records': the next write rewrites it

  def rewind(self, step: int) -> list[dict]:
    """Keeps the records up to ``step``, the step a run resumes from, each once and in step order,
    and returns them.

    A run that stopped after logging past its last checkpoint logs those steps again when it
    resumes; cutting the log back first keeps every step once. A record of a step and kind (its
    fields) already kept is dropped too, whatever wrote it twice.
    """
    kept, seen = [], set()
    for record in sorted(self.records, key=lambda r: r["step"]):  # stable: a step's records keep their order
      kind = (record["step"], tuple(sorted(record)))
      if record["step"] <= step and kind not in seen:
        seen.add(kind)
        kept.append(record)
    if kept != self.records or self._rewrite_next:
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


def _read_record(location: PathLike, cls, what: str):
  """The ``cls`` record of the file ``location``: :class:`FormatError` if it is of another format,
  :class:`UnreadableRecord` if it does not read."""
  location = path(location)
  data = read_json(location)
  check_format(data, str(location))
  try:
    return cls.from_json(data)
  except (KeyError, TypeError, AttributeError) as error:
    raise UnreadableRecord(f"{location} is not {what} ({type(error).__name__}: {error})") from error


def read_run(run_dir: PathLike) -> RunRecord:
  """The run record of ``run_dir/summary.json`` (:func:`_read_record`)."""
  return _read_record(path(run_dir) / "summary.json", RunRecord, "a run record")


def read_summary(location: PathLike) -> SweepSummary:
  """The sweep summary of the file ``location`` (:func:`_read_record`)."""
  return _read_record(location, SweepSummary, "a sweep summary")


def write_run(run_dir: PathLike, record: RunRecord) -> None:
  write_json(path(run_dir) / "summary.json", record.to_json())


PENDING = "summary.pending.json"  # a run's record written, not yet committed with its group's


def write_group_runs(run_dirs: list[PathLike], group_records: list[RunRecord]) -> None:
  """The records of a group's runs, committed together: first each run's ``summary.pending.json``
  (the record and its group's run directories, relative to it), then each run's ``summary.json``
  (its pending record removed). A kill in the first phase leaves no run finished (the group
  resumes whole); a kill in the second leaves every record written, and :func:`commit_pending`
  finishes the commit."""
  run_dirs = [path(d) for d in run_dirs]
  for run_dir, record in zip(run_dirs, group_records):
    members = [posixpath.relpath(str(other), str(run_dir)) for other in run_dirs]
    write_json(run_dir / PENDING, {"members": members, "record": record.to_json()})
  for run_dir, record in zip(run_dirs, group_records):
    write_run(run_dir, record)
    (run_dir / PENDING).unlink()


def commit_pending(run_dir: PathLike) -> bool:
  """Finishes the commit of a group whose every record was written (:func:`write_group_runs`):
  ``run_dir``'s pending record becomes its ``summary.json`` when each run of its group has its
  record, pending or committed. Returns whether it did; a pending record of a group that did not
  write them all (or that does not read) is left for the group's next session to replace."""
  run_dir = path(run_dir)
  pending = run_dir / PENDING
  if not pending.exists():
    return False
  if (run_dir / "summary.json").exists():  # committed; the kill came before the pending record's removal
    pending.unlink()
    return False
  try:
    written = read_json(pending)
    members = [run_dir / member for member in written["members"]]
  except (UnreadableRecord, KeyError, TypeError):
    return False
  if not all((m / PENDING).exists() or (m / "summary.json").exists() for m in members):
    return False
  write_json(run_dir / "summary.json", written["record"])
  pending.unlink()
  return True


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
