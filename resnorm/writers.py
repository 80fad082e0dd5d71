"""Where a run's numbers go while it trains: its JSONL logs and TensorBoard event files.

:class:`MetricWriter` is the one writer a run holds. Every row goes to ``metrics.jsonl`` (train
loss and learning rate every ``log_every`` steps, test loss and accuracy at each evaluation) or
to ``signal.jsonl`` (δ statistics and per-block profiles), and each scalar also to TensorBoard
(``tensorboard --logdir WORKDIR``). Scalars that differ from one session to the next (images/s)
go to TensorBoard only, so a resumed run's JSONL files equal an uninterrupted run's.

The event files are written with TensorBoard's own writer (the ``tensorboard`` package, no
TensorFlow), to a local workdir; only the process that writes (``write=True``) opens one.
"""

from __future__ import annotations

import os
import time

from resnorm import records

EVENTS_DIR = "tensorboard"  # under the workdir


class EventWriter:
  """Scalars to a TensorBoard event file in ``logdir``."""

  def __init__(self, logdir):
    from tensorboard.compat.proto import event_pb2, summary_pb2  # only a writing process needs them
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self._writer = EventFileWriter(os.fspath(logdir))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    summary = self._summary(
      value=[
        self._summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items() if value is not None
      ]
    )
    self._writer.add_event(self._event(wall_time=time.time(), step=step, summary=summary))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _tags(prefix: str, row: dict) -> dict[str, float]:
  """``row``'s numbers (``step`` aside) as TensorBoard tags under ``prefix/`` (``test_loss``
  under ``test`` is ``test/loss``)."""
  return {
    f"{prefix}/{key.removeprefix(prefix + '_')}": value
    for key, value in row.items()
    if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
  }


class MetricWriter:
  """A run's JSONL logs and, with ``tensorboard``, its event files (see the module docstring)."""

  def __init__(self, workdir, *, write: bool, tensorboard: bool):
    workdir = records.path(workdir)
    self.metrics = records.JsonlLog(workdir / "metrics.jsonl", write=write)
    self.signal = records.JsonlLog(workdir / "signal.jsonl", write=write)
    self._events = EventWriter(workdir / EVENTS_DIR) if write and tensorboard else None

  def rewind(self, step: int) -> tuple[list[dict], list[dict]]:
    """The metric and signal rows up to ``step``, the step a run resumes from (later ones dropped)."""
    return self.metrics.rewind(step), self.signal.rewind(step)

  def train(self, step: int, row: dict, **session: float) -> None:
    """A train row (``train_loss``, ``learning_rate``, ``epoch``) to the log and TensorBoard;
    ``session`` values (``images_per_second``) to TensorBoard only."""
    self.metrics.append({"step": step, **row})
    self._scalars(step, {**_tags("train", row), **_tags("train", session)})

  def evaluation(self, step: int, row: dict) -> None:
    """An evaluation row (``test_loss``, ``test_accuracy``) to the log and TensorBoard."""
    self.metrics.append({"step": step, **row})
    self._scalars(step, _tags("test", row))

  def measurement(self, step: int, measurement: records.Measurement) -> None:
    """The δ statistics of a measurement to ``signal.jsonl`` and, per kind of layer, to TensorBoard."""
    self.signal.append({"step": step, **measurement.to_json()})
    self._scalars(
      step,
      {
        f"delta/{kind}/{key}": getattr(stats, key)
        for kind, stats in measurement.by_kind.items()
        for key in records.HISTORY_KEYS
      },
    )

  def _scalars(self, step: int, values: dict[str, float]) -> None:
    if self._events is not None:
      self._events.scalars(step, values)

  def flush(self) -> None:
    """The JSONL files are complete after every row; this pushes the event file to disk too."""
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
