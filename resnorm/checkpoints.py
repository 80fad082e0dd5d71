"""A run's checkpoints: Orbax saves with a record of what the arrays alone do not say, and
restores that fall back to the newest step whose arrays are the ones that were saved.

``workdir/checkpoints/<step>/`` holds the train state (Orbax, the last two steps). Beside it,
``workdir/checkpoints.json`` holds per step

* ``sha256``: the digest of the state's arrays as they were saved (:func:`digest`), checked
  against the arrays a restore returns, so a flipped byte that Orbax reads without complaint is
  caught like a checkpoint that does not read;
* ``losses_since_log``: the train losses of the steps between the last logged row and the step,
  so that the first row logged after a resume averages the same steps as the uninterrupted run's.

A checkpoint whose entry is lost (``checkpoints.json`` gone or damaged) restores unverified, with
a warning, and its first row after the resume averages the steps since the resume.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
from typing import NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from resnorm import records

INDEX = "checkpoints.json"
# Errors of a save that are the disk's (reported as records.WriteFailed), by errno and by the text
# TensorStore gives them.
_DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)
DISK_MESSAGES = ("No space left on device", "Read-only file system", "Permission denied", "Disk quota exceeded")


class Restored(NamedTuple):
  """The newest checkpoint that restores: its step (0 when none), state and losses since the last log."""

  step: int
  state: object
  losses_since_log: list[float]


def manager(directory, local: bool) -> ocp.CheckpointManager:
  """Keeps the last two checkpoints, saved in the background; with ``local``, this process alone
  saves and restores."""
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  if local and jax.process_count() > 1:
    process = jax.process_index()
    directory.mkdir(parents=True, exist_ok=True)  # Orbax creates it only when every process takes part
    options = ocp.CheckpointManagerOptions(
      max_to_keep=2,
      create=False,
      multiprocessing_options=(
        ocp.options.MultiprocessingOptions(
          primary_host=process, active_processes={process}, barrier_sync_key_prefix=f"process{process}"
        )
      ),
    )
  return ocp.CheckpointManager(directory, options=options)


def steps(directory) -> list[int]:
  """The steps of the finished checkpoints in ``directory`` (a save cut short leaves a temporary
  directory whose name is not a number)."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def digest(state) -> str:
  """SHA-256 over every leaf of ``state`` in tree order: its dtype, shape and bytes. Leaves are
  replicated (every process holds the whole array), so every process computes the same digest."""
  hasher = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)  # the whole array: the state is replicated
    array = np.ascontiguousarray(np.asarray(leaf))
    hasher.update(f"{array.dtype.str}{array.shape}".encode())
    hasher.update(array.tobytes())
  return hasher.hexdigest()


def _index(workdir) -> dict:
  """The entries of ``workdir/checkpoints.json`` by step; an index that does not read is empty."""
  location = workdir / INDEX
  if not location.exists():
    return {}
  try:
    entries = {int(step): entry for step, entry in records.read_json(location).items()}
  except (records.UnreadableRecord, AttributeError, ValueError) as error:
    logging.warning("%s does not read (%s): checkpoints restore unverified", location, error)
    return {}
  malformed = [step for step, entry in entries.items() if not _well_formed(entry)]
  if malformed:
    logging.warning(
      "%s: the entries of steps %s are malformed: those checkpoints restore unverified", location, malformed
    )
  return {step: entry for step, entry in entries.items() if step not in malformed}


def _well_formed(entry) -> bool:
  """An index entry: a digest (a string) and the losses since the last log (a list of numbers)."""
  return (
    isinstance(entry, dict)
    and isinstance(entry.get("sha256"), str)
    and isinstance(entry.get("losses_since_log"), list)
    and all(isinstance(loss, (int, float)) and not isinstance(loss, bool) for loss in entry["losses_since_log"])
  )


def _disk_failure(error: BaseException) -> str | None:
  """Why a save failed, when the disk is the reason (full, read-only, not permitted)."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
      return error.strerror or str(error)
    for message in DISK_MESSAGES:
      if message in str(error):
        return message
    error = error.__cause__ or error.__context__
  return None


@contextlib.contextmanager
def _disk_errors_as_write_failed(what: str):
  """Inside, a disk's refusal (full, read-only) becomes :class:`resnorm.records.WriteFailed` naming ``what``."""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except  (Orbax and TensorStore raise many kinds)
    reason = _disk_failure(error)
    if reason is None:
      raise
    raise records.WriteFailed(f"could not save {what}: {reason} (the checkpoints saved before are intact)") from error


def save(
  checkpoints: ocp.CheckpointManager,
  workdir,
  step: int,
  state,
  *,
  losses_since_log: list[float],
  host_copies: bool,
  force: bool,
  write: bool,
) -> None:
  """Saves ``state`` as the checkpoint of ``step`` and, with ``write`` (the process that writes
  the files), its entry in ``workdir/checkpoints.json``, written first (an entry without its
  checkpoint is never read); entries of steps no longer kept are dropped.

  Raises:
    records.WriteFailed: the disk refused (full, read-only), naming the checkpoint.
  """
  what = f"the checkpoint of step {step} in {workdir / 'checkpoints'}"
  target = jax.device_get(state) if host_copies else state
  if write:  # first: a disk that refuses the entry leaves no save running in the background
    kept = set(steps(workdir / "checkpoints")) | {step}
    index = {s: entry for s, entry in _index(workdir).items() if s in kept}
    index[step] = {"sha256": digest(target), "losses_since_log": list(losses_since_log)}
    records.write_json(workdir / INDEX, {str(s): index[s] for s in sorted(index)})
  with _disk_errors_as_write_failed(what):
    checkpoints.save(step, args=ocp.args.StandardSave(target), force=force)


def set_aside_after(workdir, step: int) -> list[int]:
  """Moves the checkpoints of steps after ``step`` to ``workdir/uncommitted_checkpoints/`` (a group
  resumes from the newest step all its members saved: a member's later save is not the group's);
  returns their steps."""
  later = [s for s in steps(workdir / "checkpoints") if s > step]
  if later:
    aside = workdir / "uncommitted_checkpoints"
    aside.mkdir(parents=True, exist_ok=True)
    for s in later:
      target = aside / str(s)
      if target.exists():
        target = aside / f"{s}.{len(list(aside.iterdir()))}"
      (workdir / "checkpoints" / str(s)).rename(target)
  return later


def wait(checkpoints: ocp.CheckpointManager, workdir) -> None:
  """Waits for the saves in the background; a disk's refusal as :class:`resnorm.records.WriteFailed`."""
  with _disk_errors_as_write_failed(f"a checkpoint in {workdir / 'checkpoints'}"):
    checkpoints.wait_until_finished()


def _restore_step(workdir, local: bool, step: int, target):
  """The state of checkpoint ``step`` in the structure of ``target``."""
  checkpoints = manager(workdir / "checkpoints", local)
  try:
    return checkpoints.restore(step, args=ocp.args.StandardRestore(target))
  finally:
    checkpoints.close()


def restore(state, workdir, local: bool, host_copies: bool, sharding, at_most: int | None = None) -> Restored:
  """The newest checkpoint in ``workdir/checkpoints`` (of a step ≤ ``at_most``, where given) that
  restores to the arrays that were saved.

  A checkpoint that does not read (its item gone, its directory empty, its files cut short) or
  whose arrays differ from its recorded digest is moved to ``workdir/unreadable_checkpoints/``
  with a warning, and the one before it tried, each step by a manager of its own (a manager fixes
  its item names from the first step it reads); when checkpoints exist but none restores, the run
  stops with :class:`resnorm.records.WorkdirError` rather than starting again from scratch.
  ``state`` gives the structure, shapes and dtypes.
  """
  found = [step for step in steps(workdir / "checkpoints") if at_most is None or step <= at_most]
  index = _index(workdir)
  errors = []
  for step in sorted(found, reverse=True):
    target = jax.device_get(state) if host_copies else state
    try:
      restored = _restore_step(workdir, local, step, target)
    except Exception as error:  # pylint: disable=broad-except  (Orbax raises many kinds on bad files)
      errors.append(f"step {step}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
      continue
    entry = index.get(step)
    if entry is None:
      logging.warning("%s: no digest of the checkpoint of step %d in %s; restoring it unverified", workdir, step, INDEX)
    elif digest(restored) != entry["sha256"]:
      errors.append(f"step {step}: its arrays differ from those saved (SHA-256 mismatch)")
      continue
    if errors:
      aside = workdir / "unreadable_checkpoints"
      aside.mkdir(parents=True, exist_ok=True)
      for bad in found:
        if bad > step:
          (workdir / "checkpoints" / str(bad)).rename(aside / str(bad))
      logging.warning(
        "%s: the later checkpoints do not restore (%s); moved them to %s and resumed from step %d",
        workdir,
        "; ".join(errors),
        aside,
        step,
      )
    restored = jax.device_put(restored, sharding) if host_copies else restored
    return Restored(step, restored, list(entry["losses_since_log"]) if entry else [])
  if errors:
    raise records.WorkdirError(
      f"{workdir}/checkpoints: no checkpoint restores ({'; '.join(errors)}). Nothing was "
      "changed: move the checkpoints away to start from scratch."
    )
  return Restored(0, None, [])
