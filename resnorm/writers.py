"""Where a run's numbers go while it trains: its JSONL logs, TensorBoard event files, and what a
person watches (a progress bar or a log line per log).

:class:`MetricWriter` is the one writer a run holds. Every row goes to ``metrics.jsonl`` (train
loss and learning rate every ``log_every`` steps, test loss and accuracy at each evaluation) or
to ``signal.jsonl`` (δ statistics and per-block profiles), and each scalar also to TensorBoard
(``tensorboard --logdir WORKDIR``). Scalars that differ from one session to the next (images/s)
go to TensorBoard only, so a resumed run's JSONL files equal an uninterrupted run's.

The event files are written with TensorBoard's own writer (the ``tensorboard`` package, no
TensorFlow), to a local workdir; only the process that writes (``write=True``) opens one.
"""

from __future__ import annotations

import datetime
import os
import time

import tqdm
from absl import logging

from resnorm import records, statistics

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
        f"delta/{kind}/{statistic.name}": stats[statistic.name]
        for kind, stats in measurement.by_kind.items()
        for statistic in statistics.tracked()
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


class Progress:
  """Step/total, epoch, loss, learning rate, images/s and ETA: a tqdm bar on the lead process
  when ``bar``, else one INFO line per log."""

  def __init__(self, lead: bool, bar: bool, start: int, total: int, steps_per_epoch: int, batch_size: int):
    self.lead, self.total, self.steps_per_epoch, self.batch_size = lead, total, steps_per_epoch, batch_size
    self.bar = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True) if lead and bar else None
    self.step, self.time = start, time.perf_counter()
    self.first = None  # (step, time) of the first update: throughput after it leaves out compilation

  def update(self, step: int, loss: float, learning_rate: float) -> float:
    """Reports ``step``; returns the images/s since the previous update."""
    now = time.perf_counter()
    images_per_second = (step - self.step) * self.batch_size / max(now - self.time, 1e-9)
    self.first = self.first or (step, now)
    eta = (self.total - step) * self.batch_size / max(images_per_second, 1e-9)
    epoch = step / self.steps_per_epoch
    if self.bar is not None:
      self.bar.update(step - self.step)
      self.bar.set_postfix(
        epoch=f"{epoch:.2f}", loss=f"{loss:.4g}", lr=f"{learning_rate:.3g}", img_s=f"{images_per_second:.0f}"
      )
    elif self.lead:
      logging.info(
        "step %d/%d (epoch %.2f): loss %.4g, learning rate %.3g, %.0f images/s, ETA %s",
        step,
        self.total,
        epoch,
        loss,
        learning_rate,
        images_per_second,
        datetime.timedelta(seconds=round(eta)),
      )
    self.step, self.time = step, now
    return images_per_second

  def throughput(self) -> float | None:
    """Images/s from the first update to the last (compilation left out); None before two."""
    if self.first is None or self.step == self.first[0]:
      return None
    return (self.step - self.first[0]) * self.batch_size / (self.time - self.first[1])

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
