"""Preemption: a signal asks the runs in training to save a checkpoint of their current step and stop.

A cluster's scheduler sends SIGTERM before it takes a machine back; a person presses Ctrl-C
(SIGINT). While :class:`StopSignals` is entered (on the main thread, where Python delivers
signals), either signal sets its flag instead of ending the process. The training loop reads the
flag between stretches of steps (its ``should_stop`` argument), saves a checkpoint of the step it
reached and raises :class:`Preempted`, whose message says how to resume: run the same command.

A sweep's worker processes share the flag of the process that started them (``event``, a
``multiprocessing`` event), so a signal to the sweep stops every run in training, and a Ctrl-C,
which the terminal sends to every process of the sweep, stops each once. A second Ctrl-C to a
process that already received one ends it at once (exit status 130, one line, no traceback): a
person who does not want to wait for the save.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
  """A stop flag that SIGTERM and SIGINT set while this is entered; calling it reads the flag.

  Args:
    event: the flag, a ``threading.Event`` or a ``multiprocessing`` event shared with other
      processes (a new ``threading.Event`` by default).
  """

  def __init__(self, event=None):
    self.event = event if event is not None else threading.Event()
    self.received = None  # the name of the signal this process received, if any
    self._previous = {}

  def __enter__(self) -> StopSignals:
    for number in SIGNALS:
      self._previous[number] = signal.signal(number, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous.clear()

  def _handle(self, number, frame) -> None:
    del frame
    if number == signal.SIGINT and self.received == "SIGINT":
      sys.stderr.write(
        "second Ctrl-C: exiting now, without waiting for the save (the runs resume from their last checkpoint)\n"
      )
      sys.stderr.flush()
      os._exit(130)
    self.received = signal.Signals(number).name
    if not self.event.is_set():
      logging.warning(
        "%s: saving a checkpoint at the current step of every run in training, then stopping", self.received
      )
    self.event.set()

  def __call__(self) -> bool:
    """Whether a stop was asked for (here or, with a shared event, in a process sharing it)."""
    return self.event.is_set()


def never() -> bool:
  """The ``should_stop`` of a run that no signal stops (a library call outside an entry point)."""
  return False


class Preempted(Exception):
  """A stop request ended training after checkpoints of the current step were saved in
  ``workdirs``; ``step`` is that step (None for a sweep's runs, each at its own step)."""

  def __init__(self, step: int | None, workdirs):
    self.step, self.workdirs = step, [str(w) for w in workdirs]
    where = ", ".join(f"{w}/checkpoints" for w in self.workdirs) or "no run (none had started)"
    if step is None:
      message = f"stopped by a signal; the runs in training saved their current step in {where}"
    else:
      message = f"stopped by a signal at step {step}; the checkpoint of step {step} is saved in {where}"
    super().__init__(f"{message}: run the same command to resume")

  def __reduce__(self):  # crosses from a sweep's worker process with its fields
    return type(self), (self.step, self.workdirs)
