"""Who may work in a workdir: one process at a time, and only with the config it was started with.

* :class:`WorkdirLock` — ``workdir/lock.json`` while a process works there (a sweep's workdir,
  and each run's directory while its group trains); a second process is refused, a lock whose
  holder is gone is taken over; :func:`refuse_if_in_use` checks without taking.
* :func:`refuse_another_config` — a workdir whose checkpoints belong to another config is refused,
  naming the fields that differ; a resume may change only :data:`RESUMABLE_FIELDS`.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time

from absl import logging
from flax import traverse_util

from resnorm import checkpoints, records

# Fields a resumed run may change: how it reports, and how long it trains.
RESUMABLE_FIELDS = (
  "log_every",
  "checkpoint_every",
  "eval_every",
  "eval_batch_size",
  "data.data_dir",
  "tensorboard",
  "progress_bar",
  "prefetch",
  "num_steps",
  "num_epochs",
)


class WorkdirLock:
  """One owner per workdir: ``workdir/lock.json`` (host, pid, start, heartbeat) while a sweep or a
  run works there; a second process is refused with :class:`resnorm.records.WorkdirError` naming the holder.

  A lock whose holder is gone is taken over, so a killed process never blocks the rerun: on the
  same host, when its pid no longer runs; from another host (a shared filesystem, ``gs://``), when
  its heartbeat, rewritten every ``lease / 4`` seconds, is older than ``lease``. On a local disk
  the lock is created atomically (``O_EXCL``) and a stale one is renamed away before it is taken,
  so one of two racing processes wins. An object store (``gs://``) has no exclusive create: a
  taker writes the lock, waits ``settle`` seconds and reads it back, and proceeds only if it
  reads its own record (the store's reads follow its writes), so of two takers whose writes both
  land within ``settle`` of the other's check the last writer alone proceeds; two processes may
  both proceed only if one's write lands more than ``settle`` after its own check.
  """

  NAME = "lock.json"

  def __init__(self, workdir, lease: float = 600.0, settle: float = 2.0):
    self.path, self.lease, self.settle = records.path(workdir) / self.NAME, lease, settle
    self.me = dict(host=socket.gethostname(), pid=os.getpid(), started=time.time())
    self._stop = threading.Event()
    self._heartbeat = None

  def __enter__(self):
    records.make_dir(self.path.parent)
    for _ in range(3):
      if self._create():
        self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="workdir-lock")
        self._heartbeat.start()
        return self
      holder = self.holder()
      if holder is not None and self.alive(holder):
        raise self.in_use(holder)
      self._set_aside(holder)
    raise records.WorkdirError(
      f"{self.path}: could not take the lock of {self.path.parent} (another process keeps taking it)"
    )

  def __exit__(self, *exc):
    self._stop.set()
    if self._heartbeat is not None:
      self._heartbeat.join()
    if self._mine(self.holder()):
      self.path.unlink(missing_ok=True)

  def in_use(self, holder: dict) -> records.WorkdirError:
    """The refusal of a workdir whose lock ``holder`` (alive) holds."""
    since = datetime.datetime.fromtimestamp(holder.get("started", 0)).isoformat(timespec="seconds")
    return records.WorkdirError(
      f"{self.path.parent} is in use by process {holder.get('pid')} on {holder.get('host')} (since "
      f"{since}): wait for it to end or stop it; a lock left by a process that is gone is taken over "
      f"({self.path})"
    )

  def _mine(self, holder: dict | None) -> bool:
    return holder is not None and all(holder.get(key) == value for key, value in self.me.items())

  def _record(self, heartbeat: float | None = None) -> dict:
    return dict(self.me, heartbeat=heartbeat or self.me["started"])

  def _create(self) -> bool:
    if "://" in str(self.path):
      return self._create_then_verify()
    return self._create_exclusive()

  def _create_then_verify(self) -> bool:
    """Write, wait ``settle`` seconds, read back: taken when the lock holds this taker's record."""
    if self.path.exists():
      return False
    records.write_text(self.path, json.dumps(self._record()))
    time.sleep(self.settle)
    return self._mine(self.holder())

  def _create_exclusive(self) -> bool:
    text = json.dumps(self._record())
    try:
      descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    except OSError as error:  # a read-only or full disk
      raise records.WriteFailed(f"could not take the lock {self.path}: {error.strerror or error}") from error
    with os.fdopen(descriptor, "w") as f:
      f.write(text)
    return True

  def holder(self) -> dict | None:
    """The lock's record (host, pid, started, heartbeat); None where there is none, or it does not read."""
    try:
      return json.loads(self.path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
      return None

  def alive(self, holder: dict) -> bool:
    """Whether ``holder``'s process still runs: on this host, its pid; elsewhere, a heartbeat within the lease."""
    if holder.get("host") == self.me["host"]:
      try:
        os.kill(int(holder.get("pid", -1)), 0)
      except (ProcessLookupError, ValueError, OverflowError):
        return False
      except PermissionError:
        return True  # another user's process
      return True
    return time.time() - float(holder.get("heartbeat", 0)) < self.lease

  def _set_aside(self, holder: dict | None) -> None:
    """Renames a stale (or unreadable) lock away, so that only one of several takers wins."""
    stale = self.path.with_name(f"{self.NAME}.stale-{self.me['host']}-{self.me['pid']}")
    try:
      self.path.rename(stale)
    except FileNotFoundError:
      return
    logging.warning(
      "%s: took over its lock (%s), whose holder is gone",
      self.path.parent,
      f"process {holder.get('pid')} on {holder.get('host')}" if holder else "unreadable",
    )
    stale.unlink(missing_ok=True)

  def _beat(self) -> None:
    while not self._stop.wait(self.lease / 4):
      if not self._mine(self.holder()):
        return  # taken over meanwhile: leave it
      records.write_text(self.path, json.dumps(self._record(time.time())))


def refuse_if_in_use(workdir) -> None:
  """Refuses (:class:`resnorm.records.WorkdirError`) a workdir whose lock a living process holds:
  a sweep leaves the runs another process trains alone, whatever happened to its own lock.
  Reads only."""
  lock = WorkdirLock(workdir)
  holder = lock.holder()
  if holder is not None and lock.alive(holder):
    raise lock.in_use(holder)


def config_differences(saved: dict, config, resumable=RESUMABLE_FIELDS) -> list[str]:
  """``field: saved -> now`` for each field (outside ``resumable``) that differs."""
  saved, now = (traverse_util.flatten_dict(tree, sep=".") for tree in (saved, records.config_dict(config)))
  return [
    f"{key}: {saved.get(key, '(absent)')!r} there, {now.get(key, '(absent)')!r} now"
    for key in sorted(set(saved) | set(now))
    if key not in resumable and saved.get(key) != now.get(key)
  ]


def refuse_another_config(workdir, config) -> None:
  """Refuses a workdir whose checkpoints belong to another model or config, naming the fields
  that differ; reads only."""
  steps = checkpoints.steps(workdir / "checkpoints")
  if not steps or not (workdir / "config.json").exists():
    return
  differences = config_differences(records.read_json(workdir / "config.json"), config)
  if differences:
    raise records.WorkdirError(
      f"{workdir} holds checkpoints (steps {steps}) of another config; fields that differ: "
      f"{'; '.join(differences)}. Nothing was changed: use another --workdir, or the same config to resume."
    )
