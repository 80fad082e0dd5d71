"""The training loop: ``train_and_evaluate(config, workdir)``, as in flax/examples.

One run trains ``config.model.name`` at depth ``config.model.depth`` on ``config.data``,
measures the backward ratios (:mod:`resnorm.signal`) on held-out examples at initialisation and
after training, and writes ``workdir/``:

* ``config.json`` — the resolved config;
* ``checkpoints/`` — Orbax checkpoints every ``checkpoint_every`` steps; a run started again
  in the same workdir resumes from the latest one;
* ``checkpoints.json`` — per checkpoint, the digest of its arrays and the losses since the last
  log (:mod:`resnorm.checkpoints`);
* ``metrics.jsonl`` — every ``log_every`` steps, the train loss averaged over the steps since
  the previous log;
* ``signal.jsonl`` — with ``signal.every`` > 0, the δ statistics and per-layer profiles every
  ``signal.every`` steps during training;
* ``summary.json`` — the :class:`resnorm.records.RunRecord`.

Runs that differ only in their seed train together (:func:`train_group`): one compiled program
holds every run's parameters and optimizer state on a leading *member* axis (``jax.vmap``), and
each member's numbers are those of its run alone; each writes its own workdir. A single run is a
group of one.

Steps run in stretches: one dispatch runs every step up to the next log, measurement,
evaluation or checkpoint (at most ``config.steps_per_dispatch``) in a compiled loop
(:func:`resnorm.train.train_steps`), drawing each batch on the device from the training set held
there, by rows that are a pure function of (seed, step). Runs with host-side augmentation build
each batch on the host instead, and runs whose Procrustes projection the host decides step by
step take one step per dispatch.

Parameters are replicated and batches split over the mesh axis ``'data'``; with several
processes, every process runs the same program and process 0 writes the files. A step whose loss
or parameters are not finite stops its run (the others of its group go on): the checkpoint
directory keeps the last good state and the record says ``diverged`` with the first step that
was not finite. The config is validated by the entry points (:mod:`resnorm.config_validation`)
before it gets here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import socket
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from absl import logging
from flax import traverse_util

from resnorm import checkpoints as checkpoints_lib
from resnorm import data as data_lib
from resnorm import models, preemption, procrustes, records, signal, spectra, train, validation, writers


@dataclasses.dataclass(frozen=True)
class Divergence:
  """A non-finite loss or parameter, first after optimizer step ``step``; ``loss`` is the mean
  train loss from the previous log to that step."""

  step: int
  loss: float


def run_seed(config) -> int:
  """A run's seed: ``config.seed`` mixed with model name and depth, so runs are independent
  of which other runs share the sweep (a split sweep reproduces the joint one exactly)."""
  return zlib.crc32(f"{config.seed}/{config.model.name}/{config.model.depth}".encode())


def build_model(config, num_outputs: int):
  """``config.model`` built through the registry (options other families take are dropped)."""
  options = {k: v for k, v in config.model.items() if k not in ("name", "depth")}
  return models.create_model(
    config.model.name,
    config.model.depth,
    num_classes=num_outputs,
    **models.accepted_options(config.model.name, options, prefix=""),
  )


def shardings(devices) -> tuple[jax.sharding.NamedSharding, jax.sharding.NamedSharding]:
  """(replicated, batch split over axis ``'data'``) on a one-axis mesh of ``devices``."""
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  return (
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
  )


def _global_batch(sharding, x, y, rows, transform=None):
  """The global batch ``rows`` as arrays split over the mesh; this process supplies its share
  (all of it when the mesh holds only this process's devices)."""
  if not sharding.is_fully_addressable:
    rows = data_lib.process_rows(rows)
  x, y = x[rows], y[rows]
  if transform is not None:
    x = transform(x)
  return tuple(jax.make_array_from_process_local_data(sharding, a) for a in (x, y))


def training_batch(config, dataset, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
  """The whole training batch of (0-based) ``step`` as host arrays, augmented where the run
  augments, as a one-process run trains on it."""
  rows = data_lib.batch_indices(len(dataset.x_train), config.batch_size, step, seed)
  augment = _augmentation(config, seed, step)
  x = dataset.x_train[rows]
  return (x if augment is None else augment(x)), dataset.y_train[rows]


def _augmentation(config, seed: int, step: int):
  """The crops and flips of ``step``'s batch (a function of the images), None without augmentation."""
  if not config.augment:
    return None
  return functools.partial(data_lib.augment, seed=seed, step=step, mode=config.get("augment_padding", "zero"))


def training_batches(config, dataset, sharding, seed: int, steps: range) -> Iterator[tuple[jax.Array, ...]]:
  """The global training batches of ``steps`` on ``sharding``, ``config.prefetch`` ahead on a
  background thread: rows (:func:`resnorm.data.batch_indices`) and augmentation are pure
  functions of (``seed``, step), so a resumed run sees the batches an uninterrupted one would."""

  def batch_at(step):
    rows = data_lib.batch_indices(len(dataset.x_train), config.batch_size, step, seed)
    return _global_batch(sharding, dataset.x_train, dataset.y_train, rows, _augmentation(config, seed, step))

  return data_lib.prefetch(map(batch_at, steps), config.get("prefetch", 0))


def evaluate(eval_fn, state, dataset, batch_size, sharding) -> list[dict[str, float]]:
  """Every member's averages over the whole test split (the last, smaller batch included);
  ``eval_fn(state, batch)`` returns per-member sums."""
  totals = {}
  num_test = len(dataset.x_test)
  for start in range(0, num_test, batch_size):
    rows = np.arange(start, min(start + batch_size, num_test))
    if len(rows) % sharding.mesh.size:
      batch = (jnp.asarray(dataset.x_test[rows]), jnp.asarray(dataset.y_test[rows]))
    else:
      batch = _global_batch(sharding, dataset.x_test, dataset.y_test, rows)
    for key, value in eval_fn(state, batch).items():
      totals[key] = totals.get(key, 0) + value
  totals = jax.device_get(totals)
  results = [{"test_loss": float(loss / count)} for loss, count in zip(totals["loss"], totals["count"])]
  for result, correct, count in zip(results, totals.get("correct", ()), totals["count"]):
    result["test_accuracy"] = float(correct / count)
  return results


# A seldom program whose group holds fewer parameters than this (all members together) compiles
# through XLA:CPU's older LLVM-IR emitters: 2–8× faster to compile, 1.1–1.8× slower to run, which
# the measurements of the default sweep's groups at L = 128 (1.6 M and 10 M parameters) do not
# repay, and those at L ≤ 32 (the same sweep's others but one) do (benchmarks/RESULTS.md, section 1).
FUSED_ABOVE_PARAMETERS = 1_000_000
UNFUSED_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def seldom_options(parameters: int = 0) -> dict | None:
  """The compiler options of a program a run calls a handful of times (creating its state,
  measurements, evaluations) for a group of ``parameters`` parameters in all: on XLA:CPU, LLVM's
  optimisations cost more to compile than they save, so it compiles at optimisation level 0, and
  below :data:`FUSED_ABOVE_PARAMETERS` through the older emitters too (``parameters = 0``: a
  program run once, such as the one creating a group's state, whose values are the same to the
  bit either way). An XLA that does not know the emitter option gets the level alone. (A
  function: the backend must not start at import, before ``jax.distributed.initialize``.)"""
  if jax.default_backend() != "cpu":
    return None
  options = {"xla_backend_optimization_level": 0}
  if parameters < FUSED_ABOVE_PARAMETERS and _cpu_takes(tuple(UNFUSED_CPU_OPTIONS.items())):
    options.update(UNFUSED_CPU_OPTIONS)
  return options


@functools.cache
def _cpu_takes(options: tuple) -> bool:
  """Whether XLA:CPU compiles a program with ``options`` ((name, value) pairs)."""
  try:
    jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(compiler_options=dict(options))
  except jax.errors.JaxRuntimeError as error:  # "No such compile option"
    logging.warning("XLA:CPU refused %s (%s); seldom programs compile without it", options, error)
    return False
  return True


def jit_seldom(fn, parameters: int = 0, **kwargs):
  """``jax.jit`` for a program called a handful of times per run (:func:`seldom_options`)."""
  return jax.jit(fn, compiler_options=seldom_options(parameters), **kwargs)


def parameter_count(state) -> int:
  """The parameters of a (stacked) train state, every member's."""
  return sum(leaf.size for leaf in jax.tree.leaves(state.params))


class Measurer:
  """Every member's backward ratios (and direction-free δ) on the first held-out examples.

  ``config.signal.num_examples`` examples for the ratios; with ``config.signal.free_examples`` > 0
  and a family that extracts its blocks, the first that many for the block Jacobians' extreme
  singular values (dense SVDs up to width 256, else Lanczos); with ``config.signal.train_batch``,
  each member's training batch of a given step for the ratios in train mode. Programs are
  compiled once per group, with the options of a group of ``parameters`` parameters in all
  (:func:`seldom_options`).
  """

  DENSE_WIDTH = 256  # block Jacobians up to this width are formed and decomposed

  def __init__(self, config, model, loss_fn, dataset, parameters: int = 0):
    self.inputs = dataset.x_test[: config.signal.num_examples]
    self.targets = dataset.y_test[: config.signal.num_examples]
    one = functools.partial(signal.measure, model, loss_fn=loss_fn, train=False)
    self.ratios = jit_seldom(jax.vmap(one, in_axes=(0, None, None)), parameters)
    self.config, self.dataset = config, dataset
    self.reports = None  # the eval-mode ratios of the latest call, on the host
    self.train_ratios = config.signal.get("train_batch", False) and jit_seldom(
      jax.vmap(functools.partial(signal.measure, model, loss_fn=loss_fn, train=True)), parameters
    )
    family = models.family(config.model.name)
    calibrate = family.calibrate_batch_stats
    self.calibrate = calibrate and jit_seldom(
      jax.vmap(functools.partial(calibrate, model), in_axes=(0, None)), parameters
    )
    examples = min(config.signal.get("free_examples", 0), len(self.inputs))
    self.free = None
    if examples and family.block_stack is not None:
      self.free_inputs = self.inputs[:examples]

      def extremes(variables, inputs):
        blocks = family.block_stack(model, variables, inputs)
        dense = math.prod(blocks.inputs.shape[2:]) <= self.DENSE_WIDTH
        return spectra.block_extremes(blocks, dense=dense)

      self.free = jit_seldom(jax.vmap(extremes, in_axes=(0, None)), parameters)

  def __call__(
    self,
    variables,
    *,
    initial: bool = False,
    free: bool = False,
    step: int | None = None,
    seeds: list[int] | None = None,
    again: bool = False,
  ) -> list[records.Measurement]:
    """The measurements of the stacked ``variables``, one per member. ``initial``: first set
    BatchNorm's running statistics to those of the measured batch (eval mode with the initial
    statistics, mean 0 and variance 1, would make every BatchNorm the identity); ``free``: add
    the direction-free δ; ``step`` and the members' ``seeds``: with ``config.signal.train_batch``,
    add the train-mode ratios on each member's batch of that (0-based) step, the batch the
    step after the measurement trains on; ``again``: ``variables`` are those of the previous call,
    whose eval-mode ratios are reused (a run's last step, measured in the loop already, measured
    again with the direction-free δ)."""
    if initial and self.calibrate is not None:
      variables = self.calibrate(variables, self.inputs)
    if not again:
      self.reports = jax.device_get(self.ratios(variables, self.inputs, self.targets))
    reports = self.reports
    extremes = None
    if free and self.free:
      extremes = jax.device_get(self.free(variables, self.free_inputs))
    in_train_mode = None
    if self.train_ratios and step is not None:
      batches = [training_batch(self.config, self.dataset, seed, step) for seed in seeds]
      in_train_mode = jax.device_get(self.train_ratios(variables, *map(np.stack, zip(*batches))))
    return [
      records.Measurement.from_report(
        _member(reports, m),
        extremes and signal.direction_free(*_member(extremes, m)),
        None if in_train_mode is None else _member(in_train_mode, m),
      )
      for m in range(len(reports.grad_norm))
    ]


def _member(tree, m: int):
  """Member ``m`` of a tree of host arrays stacked on a leading member axis."""
  return jax.tree.map(lambda leaf: leaf[m], tree)


def optimizer(config, dataset, steps_per_epoch: int) -> optax.GradientTransformation:
  """The run's optimizer, with the Procrustes projection of the family's kernels chained last
  when ``config.procrustes.enabled``. The host decides, step by step, whether the projection acts
  (:func:`projects`) and passes the decision to the step as a static argument: each choice has its
  own compiled step, since a conditional on device would cost about as much as the projection it
  skips (``benchmarks/RESULTS.md``)."""
  if not config.procrustes.enabled:
    return train.make_optimizer(config, steps_per_epoch=steps_per_epoch)
  targets = models.family(config.model.name).projection_targets(
    dataset.x_train.shape, stem_convention=config.procrustes.get("stem", "correct")
  )
  return train.make_optimizer(config, targets, steps_per_epoch=steps_per_epoch)


def projects(config, step: int) -> bool:
  """Whether the projection acts after optimizer step ``step`` (1, 2, …)."""
  return config.procrustes.enabled and procrustes.acts(
    step, probability=config.procrustes.probability, every=config.procrustes.every or None, seed=config.seed
  )


# ----------------------------------------------------------------------------- the workdir

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
      holder = self._holder()
      if holder is not None and self._alive(holder):
        since = datetime.datetime.fromtimestamp(holder.get("started", 0)).isoformat(timespec="seconds")
        raise records.WorkdirError(
          f"{self.path.parent} is in use by process {holder.get('pid')} on {holder.get('host')} (since "
          f"{since}): wait for it to end or stop it; a lock left by a process that is gone is taken over "
          f"({self.path})"
        )
      self._set_aside(holder)
    raise records.WorkdirError(
      f"{self.path}: could not take the lock of {self.path.parent} (another process keeps taking it)"
    )

  def __exit__(self, *exc):
    self._stop.set()
    if self._heartbeat is not None:
      self._heartbeat.join()
    if self._mine(self._holder()):
      self.path.unlink(missing_ok=True)

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
    return self._mine(self._holder())

  def _create_exclusive(self) -> bool:
    text = json.dumps(self._record())
    try:
      descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(descriptor, "w") as f:
      f.write(text)
    return True

  def _holder(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
      return None

  def _alive(self, holder: dict) -> bool:
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
      if not self._mine(self._holder()):
        return  # taken over meanwhile: leave it
      records.write_text(self.path, json.dumps(self._record(time.time())))


def config_differences(saved: dict, config, resumable=RESUMABLE_FIELDS) -> list[str]:
  """``field: saved -> now`` for each field (outside ``resumable``) that differs."""
  saved, now = (traverse_util.flatten_dict(tree, sep=".") for tree in (saved, records.config_dict(config)))
  return [
    f"{key}: {saved.get(key, '(absent)')!r} there, {now.get(key, '(absent)')!r} now"
    for key in sorted(set(saved) | set(now))
    if key not in resumable and saved.get(key) != now.get(key)
  ]


def check_workdir(workdir, config) -> None:
  """Refuses a workdir whose checkpoints belong to another model or config, naming the fields
  that differ; reads only."""
  steps = checkpoints_lib.steps(workdir / "checkpoints")
  if not steps or not (workdir / "config.json").exists():
    return
  differences = config_differences(records.read_json(workdir / "config.json"), config)
  if differences:
    raise records.WorkdirError(
      f"{workdir} holds checkpoints (steps {steps}) of another config; fields that differ: "
      f"{'; '.join(differences)}. Nothing was changed: use another --workdir, or the same config to resume."
    )


# ----------------------------------------------------------------------------- what a person watches


class _Progress:
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


def _best(evaluations: list[dict]) -> tuple[float | None, int | None]:
  """The best test accuracy among evaluation rows and its step (the earliest on ties)."""
  scored = [row for row in evaluations if row.get("test_accuracy") is not None]
  if not scored:
    return None, None
  best = max(scored, key=lambda row: (row["test_accuracy"], -row["step"]))
  return best["test_accuracy"], best["step"]


# ----------------------------------------------------------------------------- the run

STEPS_PER_DISPATCH = 100  # the default longest stretch of steps one dispatch runs


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir, dataset=None, *, local: bool = False, should_stop=preemption.never
) -> records.RunRecord:
  """Trains one model, measures it before and after, writes ``workdir`` (see module docstring).

  Args:
    config: a validated run config (``configs/default.py``).
    workdir: output directory, local or ``gs://``; an existing checkpoint there is resumed.
    dataset: the loaded ``config.data`` (a sweep loads it once for all runs).
    local: train on this process's devices alone, and write the files from this process (a
      sweep that spreads its runs over the processes); otherwise every process takes part and
      process 0 writes.
    should_stop: read between stretches of steps; once it returns True the run saves a checkpoint
      of its current step and raises :class:`resnorm.preemption.Preempted`
      (:class:`resnorm.preemption.StopSignals`: on SIGTERM or Ctrl-C).

  Returns:
    The record written to ``workdir/summary.json``.

  Raises:
    records.WorkdirError: the workdir holds checkpoints of another config, or none that restores.
    preemption.Preempted: ``should_stop`` said stop; a checkpoint of the current step is saved.
  """
  return train_group([config], [workdir], dataset, local=local, should_stop=should_stop)[0]


@dataclasses.dataclass
class _Member:
  """What the loop keeps for one run of a group: its files and what it has logged so far."""

  config: ml_collections.ConfigDict
  workdir: Any
  checkpoints: ocp.CheckpointManager
  writer: writers.MetricWriter
  history: list
  train_rows: list  # the logged train rows, earlier sessions' included
  evaluations: list
  losses: list = dataclasses.field(default_factory=list)  # step losses since the last log
  divergence: Divergence | None = None


# The fields in which the runs of one group may differ: numbers the program reads from the state
# (the branch scale from the model's constants, the blocks' learning-rate scale from the optimizer
# state), how the parameters start, and the names of the runs.
MEMBER_FIELDS = (
  "seed",
  "setting",
  "model.branch_scale",
  "model.zero_init_last",
  "init_from",
  "optimizer.block_lr_scale",
)


def groupable(config) -> bool:
  """Whether runs of ``config`` may share a program with others: not when the host decides step by
  step whether each run projects (the coins differ by seed), nor with host augmentation."""
  return not (config.procrustes.enabled or config.augment)


def group_key(config) -> str:
  """Runs with equal keys share one program (:func:`train_group`): their configs agree outside
  :data:`MEMBER_FIELDS`, and their families run one program (:attr:`resnorm.models.Family.program`)."""
  flat = traverse_util.flatten_dict(records.config_dict(config), sep=".")
  flat["model.name"] = models.family(config.model.name).program or config.model.name
  return json.dumps({k: v for k, v in sorted(flat.items()) if k not in MEMBER_FIELDS})


def _check_group(configs) -> None:
  names = [(c.get("setting"), c.seed) for c in configs]
  if len(set(names)) != len(names):
    raise validation.invalid("(setting, seed)", names, "distinct runs in one group")
  if len({group_key(c) for c in configs}) > 1:
    differences = [
      d
      for d in config_differences(records.config_dict(configs[0]), configs[-1])
      if d.split(":")[0] not in MEMBER_FIELDS
    ]
    raise ValueError(
      f"configs differ in {'; '.join(differences)}: expected one group (they may differ only in "
      f"{', '.join(MEMBER_FIELDS)})"
    )
  if len(configs) > 1 and not groupable(configs[0]):
    raise ValueError("procrustes.enabled or augment: expected one run per group (the host decides per run)")


def train_group(
  configs, workdirs, dataset=None, *, local: bool = False, should_stop=preemption.never
) -> list[records.RunRecord]:
  """Trains runs whose configs differ only in :data:`MEMBER_FIELDS` as one program, each member's
  numbers those of its run alone (same initial keys, same batches, same steps), and writes each
  run's workdir as :func:`train_and_evaluate` does. Members that left off at different steps in an
  earlier session go on as separate groups.

  Returns:
    The records, in the order of ``configs``.
  """
  configs, config = list(configs), configs[0]
  _check_group(configs)
  dataset = dataset or data_lib.load(config.data)
  lead = local or jax.process_index() == 0  # one process writes the files
  workdirs = [records.path(w) for w in workdirs]
  for workdir, member_config in zip(workdirs, configs):
    check_workdir(workdir, member_config)
  for workdir in workdirs:
    records.make_dir(workdir)
  model = build_model(config, dataset.num_outputs)
  loss_fn = train.loss_function(dataset.task)
  replicated, batch_sharding = shardings(jax.local_devices() if local else jax.devices())
  seeds = [run_seed(c) for c in configs]
  steps_per_epoch = len(dataset.x_train) // config.batch_size
  num_steps = train.total_steps(config, steps_per_epoch)
  eval_every = steps_per_epoch if config.get("eval_every") is None else config.eval_every
  schedule = train.learning_rate_schedule(config, steps_per_epoch)
  state, constructions = _initial_states(configs, seeds, dataset, steps_per_epoch, replicated)
  parameters = parameter_count(state)  # the group's, which choose its seldom programs' options
  measure = Measurer(config, model, loss_fn, dataset, parameters)
  init = measure(train.variables(state), initial=True, free=True)
  eval_fn = jit_seldom(
    jax.vmap(functools.partial(train.eval_step, loss_fn=loss_fn, task=dataset.task), in_axes=(0, None)), parameters
  )
  init_metrics = evaluate(eval_fn, state, dataset, config.eval_batch_size, batch_sharding)

  # Orbax saves device arrays only when every process takes part; a process training alone
  # among several saves and restores host copies.
  host_copies = local and jax.process_count() > 1
  take, stack = _member_ops(replicated)
  restored = [
    checkpoints_lib.restore(take(state, m), workdir, local, host_copies, replicated)
    if checkpoints_lib.steps(workdir / "checkpoints")
    else checkpoints_lib.Restored(0, None, [])
    for m, workdir in enumerate(workdirs)
  ]
  starts = sorted({member.step for member in restored})
  if len(starts) > 1:  # members left off at different steps: each step's members go on together
    results = [None] * len(configs)
    for start in starts:
      chosen = [m for m, member in enumerate(restored) if member.step == start]
      group = train_group(
        [configs[m] for m in chosen], [workdirs[m] for m in chosen], dataset, local=local, should_stop=should_stop
      )
      for m, record in zip(chosen, group):
        results[m] = record
    return results
  start = starts[0]
  if start:
    state = stack([member.state for member in restored])
    logging.info("resumed %s from step %d of %d", ", ".join(map(str, workdirs)), start, num_steps)
  if lead:
    for workdir, member_config in zip(workdirs, configs):
      records.write_json(workdir / "config.json", records.config_dict(member_config))

  managers = [checkpoints_lib.manager(workdir / "checkpoints", local) for workdir in workdirs]
  members = []
  for member_config, workdir, manager, resumed in zip(configs, workdirs, managers, restored):
    writer = writers.MetricWriter(workdir, write=lead, tensorboard=member_config.get("tensorboard", False))
    logged, measured = writer.rewind(start)
    members.append(
      _Member(
        member_config,
        workdir,
        manager,
        writer,
        history=[records.HistoryPoint.of(r["step"], records.Measurement.from_json(r)) for r in measured],
        train_rows=[r for r in logged if "train_loss" in r],
        evaluations=[r for r in logged if "test_loss" in r],
        losses=list(resumed.losses_since_log),
      )
    )

  measured_at = None  # the step of the loop's latest measurement
  per_step = bool(config.procrustes.enabled)  # the host decides, step by step, whether to project
  capacity = 1 if per_step or config.augment else config.get("steps_per_dispatch", STEPS_PER_DISPATCH)
  run_stretch = _Stretches(config, dataset, seeds, loss_fn, capacity, replicated, batch_sharding, start, num_steps)
  intervals = (config.log_every, config.checkpoint_every, config.signal.every, eval_every)
  started = time.time()
  preempted = None  # the step a stop request stopped the group at
  progress = _Progress(lead, _show_bar(config), start, num_steps, steps_per_epoch, config.batch_size * len(members))
  with contextlib.closing(run_stretch):
    step = start
    while step < num_steps:
      done = min([num_steps, step + capacity] + [(step // k + 1) * k for k in intervals if k])
      project = projects(config, done) if per_step else None  # static: one compiled step per choice
      state, metrics = run_stretch(state, step, done - step, project)
      _account(members, jax.device_get(metrics), done - step, step)
      step = done
      alive = [m for m in members if m.divergence is None]
      if not alive:
        break
      stop_now = should_stop() or (jax.process_count() > 1 and not local and managers[0].reached_preemption(done))
      if done % config.log_every == 0 or done == num_steps:
        learning_rate = float(schedule(done - 1))
        for member in alive:
          member.train_rows.append(
            {
              "step": done,
              "train_loss": float(np.mean(member.losses)),
              "learning_rate": learning_rate,
              "epoch": done / steps_per_epoch,
            }
          )
          member.losses = []
        images_per_second = progress.update(
          done, float(np.mean([m.train_rows[-1]["train_loss"] for m in alive])), learning_rate
        )
        for member in alive:
          row = {k: v for k, v in member.train_rows[-1].items() if k != "step"}
          member.writer.train(done, row, images_per_second=images_per_second / len(members))
      if config.signal.every and done % config.signal.every == 0:
        measured, measured_at = measure(train.variables(state), step=done, seeds=seeds), done
        for m, member in enumerate(members):
          if member.divergence is None:
            member.history.append(records.HistoryPoint.of(done, measured[m]))
            member.writer.measurement(done, measured[m])
      if eval_every and done % eval_every == 0 or done == num_steps:
        evaluated = evaluate(eval_fn, state, dataset, config.eval_batch_size, batch_sharding)
        for m, member in enumerate(members):
          if member.divergence is None:
            member.evaluations.append({"step": done, **evaluated[m]})
            member.writer.evaluation(done, member.evaluations[-1])
            _log_evaluation(member, done)
      if stop_now or config.checkpoint_every and (done % config.checkpoint_every == 0 or done == num_steps):
        for m, member in enumerate(members):
          if member.divergence is None:
            checkpoints_lib.save(
              member.checkpoints,
              member.workdir,
              done,
              take(state, m),
              losses_since_log=member.losses,
              host_copies=host_copies,
              force=stop_now,
              write=lead,
            )
        logging.info(
          "checkpoint of step %d saved in %s", done, ", ".join(str(m.workdir / "checkpoints") for m in alive)
        )
      if stop_now:
        preempted = done
        break
  progress.close()
  for member in members:
    checkpoints_lib.wait(member.checkpoints, member.workdir)
  last_checkpoints = [member.checkpoints.latest_step() for member in members]
  for member in members:
    member.checkpoints.close()
    member.writer.close()
  if preempted is not None:
    raise preemption.Preempted(preempted, [m.workdir for m in members])

  alive = any(m.divergence is None for m in members)
  again = measured_at == num_steps  # the loop measured the last step's ratios
  final = measure(train.variables(state), free=True, again=again) if alive else [None] * len(members)
  unevaluated = any(
    m.divergence is None and not (m.evaluations and m.evaluations[-1]["step"] == num_steps) for m in members
  )
  last_evaluation = evaluate(eval_fn, state, dataset, config.eval_batch_size, batch_sharding) if unevaluated else None
  train_seconds = time.time() - started
  results = []
  for m, member in enumerate(members):
    results.append(
      _record(
        member,
        init[m],
        init_metrics[m],
        final[m],
        last_evaluation and last_evaluation[m],
        last_checkpoints[m],
        num_steps,
        train_seconds,
        progress.throughput(),
        dataset,
        constructions[m],
        len(members),
      )
    )
    if lead:
      records.write_run(member.workdir, results[-1])
  return results


def _member_ops(sharding):
  """(take, stack): member m of a stacked tree, and member trees stacked, both placed on ``sharding``."""
  take = jit_seldom(
    lambda tree, m: jax.tree.map(lambda leaf: jax.lax.dynamic_index_in_dim(leaf, m, keepdims=False), tree),
    out_shardings=sharding,
  )
  stack = jit_seldom(lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees), out_shardings=sharding)
  return take, stack


def _replicated(tree, sharding):
  """Host arrays (the same on every process) as arrays on every device of ``sharding``."""
  return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)), tree)


def _initial_states(configs, seeds, dataset, steps_per_epoch: int, sharding):
  """Every member's initial train state, stacked, and per member what its construction promises
  (None for a random start).

  Members that start alike (the same model options, start and optimizer) are created together,
  and every kind by one program (:func:`resnorm.train.create_train_states`); the stacks are joined
  in member order. A constructed start replaces the parameters by the theorem's network for the
  data's teacher (:attr:`resnorm.models.Family.construct`) and keeps the optimizer state as
  created: Adam's and SGD's depend only on the parameters' shapes.
  """
  kinds = {}
  for m, config in enumerate(configs):
    kinds.setdefault(
      json.dumps(
        [config.model.to_dict(), config.get("init_from", "random"), config.optimizer.get("block_lr_scale", "1")],
        default=str,
      ),
      [],
    ).append(m)
  parts, constructions = [None] * len(configs), [None] * len(configs)
  starts = [
    (
      build_model(configs[members[0]], dataset.num_outputs),
      optimizer(configs[members[0]], dataset, steps_per_epoch),
      jnp.stack([jax.random.key(seeds[m]) for m in members]),
    )
    for members in kinds.values()
  ]
  states = train.create_train_states(starts, dataset.x_train[:1], compiler_options=seldom_options())
  for members, (model, _, _), state in zip(kinds.values(), starts, states):
    config = configs[members[0]]
    if config.get("init_from", "random") == "constructed":
      template = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), state.params)
      built = models.family(config.model.name).construct(model, {"params": template}, dataset.flow)
      params = jax.tree.map(lambda leaf: np.broadcast_to(leaf, (len(members),) + leaf.shape), built.variables["params"])
      state = state.replace(params=jax.tree.map(jnp.asarray, params))
      for m in members:
        constructions[m] = {"block_bound_max": float(built.block_bounds.max())}
    for i, m in enumerate(members):
      parts[m] = (state, i)

  def arrays(state):  # the state without its static fields (each kind has its own optimizer object)
    return state.step, state.params, state.opt_state, state.batch_stats, state.constants

  on_host = {id(state): jax.device_get(arrays(state)) for state, _ in parts}  # indexed on the host: no program per leaf
  members = [jax.tree.map(lambda leaf, i=i: leaf[i], on_host[id(state)]) for state, i in parts]
  step, params, opt_state, batch_stats, constants = jax.tree.map(lambda *leaves: np.stack(leaves), *members)
  group = parts[0][0].replace(
    step=step, params=params, opt_state=opt_state, batch_stats=batch_stats, constants=constants
  )
  return _replicated(group, sharding), constructions


class _Stretches:
  """Runs stretches of steps of the group, one dispatch each (:func:`resnorm.train.train_steps`).

  Where the training set stays on the host's side of the pipeline (host augmentation), each
  stretch is one step on the batch :func:`training_batches` built; otherwise the training set is
  placed on every device once and each stretch gathers its batches there, by the rows
  :func:`resnorm.data.batch_indices` draws for (seed, step) on the host.
  """

  def __init__(self, config, dataset, seeds, loss_fn, capacity, replicated, batch_sharding, start, num_steps):
    self.capacity, self.seeds, self.batch_size = capacity, seeds, config.batch_size
    self.num_examples, self.replicated = len(dataset.x_train), replicated
    if config.augment:
      self.batches = training_batches(config, dataset, batch_sharding, seeds[0], range(start, num_steps))

      def stretch(state, batch, project):
        return jax.vmap(lambda member: train.train_steps(member, lambda i: batch, 1, 1, loss_fn, project))(state)

    else:
      self.batches = None
      self.data = _replicated((dataset.x_train, dataset.y_train), replicated)

      def stretch(state, data, rows, num_steps, project):
        def member(state, rows):
          def batch_at(i):
            return jax.lax.with_sharding_constraint((data[0][rows[i]], data[1][rows[i]]), batch_sharding)

          return train.train_steps(state, batch_at, num_steps, capacity, loss_fn, project)

        return jax.vmap(member)(state, rows)

    self.program = jax.jit(stretch, donate_argnums=0, static_argnames="project")

  def __call__(self, state, step: int, count: int, project: bool | None = None):
    """Runs steps ``step`` … ``step + count − 1`` (0-based) of every member; returns the state and
    the steps' metrics, (members, capacity) each. ``project``: whether a Procrustes projection
    acts after the (single) step, None where there is none (:func:`resnorm.train.train_step`)."""
    if self.batches is not None:
      return self.program(state, next(self.batches), project=project)
    rows = np.zeros((len(self.seeds), self.capacity, self.batch_size), np.int32)
    for m, seed in enumerate(self.seeds):
      for i in range(count):
        rows[m, i] = data_lib.batch_indices(self.num_examples, self.batch_size, step + i, seed)
    return self.program(state, self.data, _replicated(rows, self.replicated), count, project=project)

  def close(self) -> None:
    if self.batches is not None:
      self.batches.close()


def _account(members: list[_Member], metrics: dict, count: int, step: int) -> None:
  """Adds each member's losses of the stretch that ran steps ``step + 1`` … ``step + count`` and
  marks the members whose loss or parameters stopped being finite, at the first such step."""
  for m, member in enumerate(members):
    if member.divergence is not None:
      continue
    finite, losses = metrics["finite"][m, :count], metrics["loss"][m, :count]
    if finite.all():
      member.losses += losses.tolist()
    else:
      first = int(np.argmin(finite))
      member.losses += losses[: first + 1].tolist()
      member.divergence = Divergence(step + first + 1, float(np.mean(member.losses)))


def _log_evaluation(member: _Member, step: int) -> None:
  best = _best(member.evaluations)
  latest = member.evaluations[-1]
  logging.info(
    "%s step %d: test loss %.4g%s",
    member.workdir,
    step,
    latest["test_loss"],
    f", accuracy {latest['test_accuracy']:.4f} (best {best[0]:.4f} at step {best[1]})" if best[0] is not None else "",
  )


def budget(config, num_steps: int) -> dict:
  """What "trained" means for a run of ``config``: steps, optimizer, learning rate, schedule, batch."""
  opt = config.optimizer
  return dict(
    steps=num_steps,
    optimizer=opt.name,
    learning_rate=opt.learning_rate,
    schedule=opt.schedule,
    batch_size=config.batch_size,
    block_lr_scale=opt.get("block_lr_scale", "1"),
  )


def _record(
  member: _Member,
  init,
  init_metrics: dict,
  final,
  last_evaluation,
  last_checkpoint,
  num_steps: int,
  train_seconds: float,
  throughput,
  dataset,
  construction,
  group_size: int,
) -> records.RunRecord:
  """The record of one member once the group has trained."""
  config, divergence, rows = member.config, member.divergence, member.train_rows
  convergence = config.get("convergence") or {"window": 0.25, "tolerance": 0.05}
  record = records.RunRecord(
    model=config.model.name,
    depth=config.model.depth,
    steps=divergence.step if divergence else num_steps,
    diverged=divergence is not None,
    diverged_at_step=divergence.step if divergence else None,
    last_checkpoint=last_checkpoint,
    train_loss=divergence.loss if divergence else (rows[-1]["train_loss"] if rows else float("nan")),
    train_seconds=train_seconds,
    init=init,
    history=member.history,
    images_per_second=throughput / group_size if throughput else None,
    setting=config.get("setting"),
    seed=config.seed,
    target_variance=float(np.mean(np.var(dataset.y_train, axis=0))) if dataset.task == "regression" else None,
    init_test_loss=init_metrics["test_loss"],
    init_test_accuracy=init_metrics.get("test_accuracy"),
    convergence=None
    if divergence
    else train.convergence(
      [r["step"] for r in rows], [r["train_loss"] for r in rows], convergence["window"], convergence["tolerance"]
    ),
    budget=budget(config, num_steps),
    construction=construction,
    group_size=group_size,
  )
  if divergence:
    kept = (
      f"the last good checkpoint (step {last_checkpoint}) is kept" if last_checkpoint else "no checkpoint was saved"
    )
    logging.warning(
      "%s: training diverged at step %d (mean loss %s); %s", member.workdir, divergence.step, divergence.loss, kept
    )
    return record
  evaluations = member.evaluations
  metrics = evaluations[-1] if evaluations and evaluations[-1]["step"] == num_steps else last_evaluation
  best_accuracy, best_step = _best(evaluations)
  return dataclasses.replace(
    record,
    trained=final,
    best_test_accuracy=best_accuracy,
    best_step=best_step,
    **{k: v for k, v in metrics.items() if k != "step"},
  )


def _show_bar(config) -> bool:
  """``config.progress_bar``, or (None) whether stderr, where tqdm draws, is a terminal."""
  choice = config.get("progress_bar")
  return sys.stderr.isatty() if choice is None else choice
