"""The training loop: ``train_and_evaluate(config, workdir)``, as in flax/examples.

One run trains ``config.model.name`` at depth ``config.model.depth`` on ``config.data``,
measures the backward ratios (:mod:`resnorm.measure`) on held-out examples at initialisation and
after training, and writes ``workdir/``:

* ``config.json`` — the resolved config;
* ``checkpoints/`` — Orbax checkpoints every ``checkpoint_every`` steps; a run started again
  in the same workdir resumes from the latest one;
* ``checkpoints.json`` — per checkpoint, the digest of its arrays and the losses since the last
  log (:mod:`resnorm.checkpoints`);
* ``metrics.jsonl`` — every ``log_every`` steps, the train loss averaged over the steps since
  the previous log; the test metrics at every evaluation;
* ``signal.jsonl`` — with ``signal.every`` > 0, the δ statistics and per-layer profiles every
  ``signal.every`` steps during training;
* ``summary.json`` — the :class:`resnorm.records.RunRecord`.

Runs that differ only in :data:`MEMBER_FIELDS` train together (:func:`train_group`): one
compiled program holds every run's parameters and optimizer state on a leading *member* axis
(``jax.vmap``), each member's numbers are those of its run alone, and each writes its own
workdir. A single run is a group of one.

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
import functools
import json
import sys
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from resnorm import checkpoints, models, ownership, preemption, procrustes, records, train, validation, writers
from resnorm import data as data_lib
from resnorm import measure as measure_lib

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


def run_seed(config) -> int:
  """A run's seed: ``config.seed`` mixed with model name and depth, so runs are independent
  of which other runs share the sweep (a split sweep reproduces the joint one exactly)."""
  return zlib.crc32(f"{config.seed}/{config.model.name}/{config.model.depth}".encode())


def shardings(devices) -> tuple[jax.sharding.NamedSharding, jax.sharding.NamedSharding]:
  """(replicated, batch split over axis ``'data'``) on a one-axis mesh of ``devices``."""
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  return (
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
  )


def optimizer(config, dataset, steps_per_epoch: int) -> optax.GradientTransformation:
  """The run's optimizer, with the Procrustes projection of the family's kernels chained last
  when ``config.procrustes.enabled``. The host decides, step by step, whether the projection acts
  (:func:`projects`) and passes the decision to the step as a static argument: each choice has its
  own compiled step, since a conditional on device would cost about as much as the projection it
  skips."""
  if not config.procrustes.enabled:
    return train.make_optimizer(config, steps_per_epoch=steps_per_epoch)
  targets = models.family(config.model.name).projection_targets(
    dataset.x_train.shape, stem_convention=config.procrustes.stem
  )
  return train.make_optimizer(config, targets, steps_per_epoch=steps_per_epoch)


def projects(config, step: int) -> bool:
  """Whether the projection acts after optimizer step ``step`` (1, 2, …)."""
  return config.procrustes.enabled and procrustes.acts(
    step, probability=config.procrustes.probability, every=config.procrustes.every or None, seed=config.seed
  )


def budget(config, num_steps: int) -> dict:
  """What "trained" means for a run of ``config``: steps, optimizer, learning rate, its schedule and
  warm-up, batch."""
  opt = config.optimizer
  return dict(
    steps=num_steps,
    optimizer=opt.name,
    learning_rate=opt.learning_rate,
    schedule=opt.schedule,
    warmup_epochs=opt.warmup_epochs,
    batch_size=config.batch_size,
    block_lr_scale=opt.block_lr_scale,
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


@dataclasses.dataclass(frozen=True)
class Divergence:
  """A non-finite loss or parameter, or a train loss above the run's limit (:func:`loss_limit`),
  first after optimizer step ``step``; ``loss`` is the mean train loss from the previous log to
  that step."""

  step: int
  loss: float


def loss_limit(config, init_test_loss: float, target_variance: float | None) -> float:
  """The train loss above which a run has diverged: ``config.divergence_factor`` times its
  starting loss, the initial network's test loss, or for regression the loss of predicting the
  targets' mean (their variance) where that is larger: a start far below it (a constructed
  network) is not a scale for divergence."""
  return config.divergence_factor * max(init_test_loss, target_variance or 0.0)


@dataclasses.dataclass
class _Member:
  """What the loop keeps for one run of a group: its files, what it has logged so far, and the
  measurements that go into its record."""

  config: ml_collections.ConfigDict
  workdir: Any
  checkpoints: ocp.CheckpointManager
  writer: writers.MetricWriter
  history: list[dict]  # the tracked statistics every signal.every steps (records.history_point)
  train_rows: list[dict]  # the logged train rows, earlier sessions' included
  evaluations: list[dict]  # the logged test rows, earlier sessions' included
  losses: list[float]  # the step losses since the last log
  loss_limit: float  # a train loss above it has diverged (:func:`loss_limit`)
  init: records.Measurement
  init_metrics: dict
  construction: dict | None
  divergence: Divergence | None = None
  trained: records.Measurement | None = None
  closed: bool = False

  @classmethod
  def open(cls, config, run_dir, start: int, *, lead: bool, local: bool, **measured) -> _Member:
    """Member ``config`` of a group in ``run_dir``: its checkpoint manager, and its logs rewound
    to ``start`` (an earlier session's rows after it dropped); ``measured``: its ``losses`` since
    the last log, ``init``, ``init_metrics``, ``construction`` and ``loss_limit``."""
    writer = writers.MetricWriter(run_dir, write=lead, tensorboard=config.tensorboard)
    logged, signal_rows = writer.rewind(start)
    return cls(
      config,
      run_dir,
      checkpoints.manager(run_dir / "checkpoints", local),
      writer,
      history=[records.history_point(r["step"], records.Measurement.from_json(r)) for r in signal_rows],
      train_rows=[r for r in logged if "train_loss" in r],
      evaluations=[r for r in logged if "test_loss" in r],
      **measured,
    )

  @property
  def alive(self) -> bool:
    return self.divergence is None

  def close(self) -> int | None:
    """Closes the checkpoint manager and the writer; returns the step of the last checkpoint kept."""
    last = self.checkpoints.latest_step()
    self.checkpoints.close()
    self.writer.close()
    self.closed = True
    return last

  def ensure_closed(self) -> None:
    """After a failure, closes what :meth:`close` would have, without raising again (the failure
    is what is reported): no background save is left to fail as the process ends."""
    if not self.closed:
      self.closed = True
      with contextlib.suppress(Exception):
        self.checkpoints.close()
      with contextlib.suppress(Exception):
        self.writer.close()


@dataclasses.dataclass(frozen=True)
class _GroupEnd:
  """What a group's members share once it has trained."""

  num_steps: int
  train_seconds: float
  images_per_second: float | None
  target_variance: float | None
  size: int


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


def train_group(
  configs, workdirs, dataset=None, *, local: bool = False, should_stop=preemption.never
) -> list[records.RunRecord]:
  """Trains runs whose configs differ only in :data:`MEMBER_FIELDS` as one program, each member's
  numbers those of its run alone (same initial keys, same batches, same steps), and writes each
  run's workdir as :func:`train_and_evaluate` does.

  A group resumes as a whole, from the newest step every member saved (:func:`_resume`), and
  finishes as a whole: its records are committed together (:func:`resnorm.records.write_group_runs`),
  so that a group stopped at any moment resumes as the same program from the same step.

  Returns:
    The records, in the order of ``configs``.
  """
  configs, workdirs = list(configs), [records.path(w) for w in workdirs]
  _check_group(configs)
  with contextlib.ExitStack() as locks:
    if local or jax.process_count() == 1:  # one writer per run (a process of several cannot refuse alone)
      for run_dir in workdirs:
        records.make_dir(run_dir)
        locks.enter_context(ownership.WorkdirLock(run_dir))
    return _train_group(configs, workdirs, dataset, local=local, should_stop=should_stop)


def _train_group(configs, workdirs, dataset, *, local: bool, should_stop) -> list[records.RunRecord]:
  """:func:`train_group` once it holds its runs' locks."""
  config = configs[0]
  dataset = dataset or data_lib.load(config.data)
  lead = local or jax.process_index() == 0  # one process writes the files
  for run_dir, member_config in zip(workdirs, configs):
    ownership.refuse_another_config(run_dir, member_config)
    records.make_dir(run_dir)
  model = models.from_config(config.model, dataset.num_outputs)
  loss_fn = train.loss_function(dataset.task)
  replicated, batch_sharding = shardings(jax.local_devices() if local else jax.devices())
  seeds = [run_seed(c) for c in configs]
  steps_per_epoch = len(dataset.x_train) // config.batch_size
  num_steps = train.total_steps(config, steps_per_epoch)
  eval_every = steps_per_epoch if config.eval_every is None else config.eval_every
  schedule = train.learning_rate_schedule(config, steps_per_epoch)

  # The initial networks, measured and evaluated, and the step each run resumes from.
  state, constructions = _initial_states(configs, seeds, dataset, steps_per_epoch, replicated)
  parameters = train.parameter_count(state)  # the group's, which choose its measurements' compiler options
  measure = measure_lib.Measure(config, model, loss_fn, dataset, parameters)
  evaluate = _Evaluation(loss_fn, dataset, config.eval_batch_size, batch_sharding, parameters)
  init = measure(train.variables(state), calibrate=True, direction_free=True)
  init_metrics = evaluate(state)
  target_variance = float(np.mean(np.var(dataset.y_train, axis=0))) if dataset.task == "regression" else None
  take, stack = _member_ops(replicated)
  state, start, losses_since_log = _resume(state, workdirs, local, take, stack, replicated, write=lead)
  if start:
    logging.info("resumed %s from step %d of %d", ", ".join(map(str, workdirs)), start, num_steps)
  if lead:
    for run_dir, member_config in zip(workdirs, configs):
      records.write_json(run_dir / "config.json", records.config_dict(member_config))
  members = [
    _Member.open(
      configs[m],
      workdirs[m],
      start,
      lead=lead,
      local=local,
      losses=losses_since_log[m],
      init=init[m],
      init_metrics=init_metrics[m],
      construction=constructions[m],
      loss_limit=loss_limit(configs[m], init_metrics[m]["test_loss"], target_variance),
    )
    for m in range(len(configs))
  ]

  with contextlib.ExitStack() as closing:  # the files closed on every way out: no save left running
    for member in members:
      closing.callback(member.ensure_closed)

    # Training, a stretch of steps per dispatch, up to the next step that logs, measures, evaluates
    # or checkpoints.
    per_step = bool(config.procrustes.enabled)  # the host decides, step by step, whether to project
    capacity = 1 if per_step or config.augment else config.steps_per_dispatch
    train_steps = _TrainSteps(config, dataset, seeds, loss_fn, capacity, replicated, batch_sharding, start, num_steps)
    intervals = (config.log_every, config.checkpoint_every, config.signal.every, eval_every)
    progress = writers.Progress(
      lead, _show_bar(config), start, num_steps, steps_per_epoch, config.batch_size * len(members)
    )
    started = time.time()
    step, stopped = start, False
    with contextlib.closing(train_steps):
      while step < num_steps:
        end = min([num_steps, step + capacity] + [(step // k + 1) * k for k in intervals if k])
        state, metrics = train_steps(state, step, end - step, projects(config, end) if per_step else None)
        _account(members, jax.device_get(metrics), step, end - step)
        step = end
        if not any(member.alive for member in members):
          break
        stopped = should_stop() or (
          jax.process_count() > 1 and not local and members[0].checkpoints.reached_preemption(step)
        )
        if step % config.log_every == 0 or step == num_steps:
          _log_training(members, step, float(schedule(step - 1)), progress, steps_per_epoch)
        if config.signal.every and step % config.signal.every == 0 and step < num_steps:  # the last: below
          _log_measurements(members, step, measure(train.variables(state), train_batch_step=step, seeds=seeds))
        if eval_every and step % eval_every == 0 or step == num_steps:
          _log_evaluations(members, step, evaluate(state))
        if stopped or config.checkpoint_every and (step % config.checkpoint_every == 0 or step == num_steps):
          _save(members, step, take, state, lead=lead, host_copies=local and jax.process_count() > 1, force=stopped)
        if stopped:
          break
    progress.close()
    for member in members:
      checkpoints.wait(member.checkpoints, member.workdir)
    if stopped:
      for member in members:
        member.close()
      raise preemption.Preempted(step, [member.workdir for member in members])

    # The trained networks: measured in every direction, evaluated where the loop has not yet.
    if any(member.alive for member in members):
      periodic = config.signal.every and num_steps % config.signal.every == 0
      trained = measure(
        train.variables(state), direction_free=True, train_batch_step=num_steps if periodic else None, seeds=seeds
      )
      for member, measured in zip(members, trained):
        member.trained = measured
      if periodic:
        _log_measurements(members, num_steps, trained)
    if any(member.alive and not _logged(member.evaluations, num_steps) for member in members):
      _log_evaluations(members, num_steps, evaluate(state))
    end = _GroupEnd(
      num_steps=num_steps,
      train_seconds=time.time() - started,
      images_per_second=None if progress.throughput() is None else progress.throughput() / len(members),
      target_variance=target_variance,
      size=len(members),
    )
    results = [_record(member, end, member.close()) for member in members]
    if lead:
      records.write_group_runs(workdirs, results)
    return results


def _check_group(configs) -> None:
  names = [(c.setting, c.seed) for c in configs]
  if len(set(names)) != len(names):
    raise validation.invalid("(setting, seed)", names, "distinct runs in one group")
  if len({group_key(c) for c in configs}) > 1:
    differences = [
      d
      for d in ownership.config_differences(records.config_dict(configs[0]), configs[-1])
      if d.split(":")[0] not in MEMBER_FIELDS
    ]
    raise ValueError(
      f"configs differ in {'; '.join(differences)}: expected one group (they may differ only in "
      f"{', '.join(MEMBER_FIELDS)})"
    )
  if len(configs) > 1 and not groupable(configs[0]):
    raise ValueError("procrustes.enabled or augment: expected one run per group (the host decides per run)")


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
    kind = json.dumps([config.model.to_dict(), config.init_from, config.optimizer.block_lr_scale], default=str)
    kinds.setdefault(kind, []).append(m)
  parts, constructions = [None] * len(configs), [None] * len(configs)
  starts = [
    (
      models.from_config(configs[members[0]].model, dataset.num_outputs),
      optimizer(configs[members[0]], dataset, steps_per_epoch),
      jnp.stack([jax.random.key(seeds[m]) for m in members]),
    )
    for members in kinds.values()
  ]
  states = train.create_train_states(starts, dataset.x_train[:1], compiler_options=train.few_calls_options())
  for members, (model, _, _), state in zip(kinds.values(), starts, states):
    config = configs[members[0]]
    if config.init_from == "constructed":
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


def _member_ops(sharding):
  """(take, stack): member m of a stacked tree, and member trees stacked, both placed on ``sharding``."""
  take = train.jit_few_calls(
    lambda tree, m: jax.tree.map(lambda leaf: jax.lax.dynamic_index_in_dim(leaf, m, keepdims=False), tree),
    out_shardings=sharding,
  )
  stack = train.jit_few_calls(
    lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees), out_shardings=sharding
  )
  return take, stack


def _resume(state, workdirs, local: bool, take, stack, sharding, *, write: bool):
  """(the group's state, the step to start from, each member's losses since its last log): the
  initial ``state`` where the members share no checkpoint, else every member's checkpoint of the
  newest step that all of them saved and that restores for each (:func:`resnorm.checkpoints.restore`),
  stacked. The group resumes as the program it was, from one step: a member's checkpoints after
  that step (saves are written member by member, and a kill may fall between them) are moved to
  ``uncommitted_checkpoints/`` by the process that writes (``write``)."""
  host_copies = local and jax.process_count() > 1  # a process training alone among several saves host copies
  common = min((checkpoints.steps(run_dir / "checkpoints") or [0])[-1] for run_dir in workdirs)
  while True:  # lower the step until every member's checkpoint of it restores
    restored = [
      checkpoints.restore(take(state, m), run_dir, local, host_copies, sharding, at_most=common)
      for m, run_dir in enumerate(workdirs)
    ]
    common = min(member.step for member in restored)
    if all(member.step == common for member in restored):
      break
  for run_dir in workdirs if write else ():
    if later := checkpoints.set_aside_after(run_dir, common):
      logging.warning(
        "%s: moved its checkpoints of steps %s to uncommitted_checkpoints/: the group resumes from step %d, "
        "the newest that every member saved",
        run_dir,
        later,
        common,
      )
  if not common:
    return state, 0, [[] for _ in restored]
  return stack([member.state for member in restored]), common, [list(member.losses_since_log) for member in restored]


def _replicated(tree, sharding):
  """Host arrays (the same on every process) as arrays on every device of ``sharding``."""
  return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)), tree)


class _TrainSteps:
  """The group's compiled training steps: ``(state, step, count)`` runs steps ``step`` …
  ``step + count − 1`` (0-based) of every member in one dispatch (:func:`resnorm.train.train_steps`).

  Where the training set stays on the host's side of the pipeline (host augmentation), each
  dispatch is one step on the batch :func:`resnorm.data.training_batches` built; otherwise the
  training set is placed on every device once and each dispatch gathers its batches there, by
  the rows :func:`resnorm.data.batch_indices` draws for (seed, step) on the host.
  """

  def __init__(self, config, dataset, seeds, loss_fn, capacity, replicated, batch_sharding, start, num_steps):
    self.capacity, self.seeds, self.batch_size = capacity, seeds, config.batch_size
    self.num_examples, self.replicated = len(dataset.x_train), replicated
    if config.augment:
      self.batches = data_lib.training_batches(
        dataset,
        config.batch_size,
        batch_sharding,
        seeds[0],
        range(start, num_steps),
        data_lib.augment_padding(config),
        config.prefetch,
      )

      def steps(state, batch, project):
        return jax.vmap(lambda member: train.train_steps(member, lambda i: batch, 1, 1, loss_fn, project))(state)

    else:
      self.batches = None
      self.data = _replicated((dataset.x_train, dataset.y_train), replicated)

      def steps(state, data, rows, num_steps, project):
        def member(state, rows):
          def batch_at(i):
            return jax.lax.with_sharding_constraint((data[0][rows[i]], data[1][rows[i]]), batch_sharding)

          return train.train_steps(state, batch_at, num_steps, capacity, loss_fn, project)

        return jax.vmap(member)(state, rows)

    self.program = jax.jit(steps, donate_argnums=0, static_argnames="project")

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


class _Evaluation:
  """Every member's averages over the whole test split (the last, smaller batch included): the
  test loss, and the accuracy for classification."""

  def __init__(self, loss_fn, dataset, batch_size: int, sharding, parameters: int):
    step = functools.partial(train.eval_step, loss_fn=loss_fn, task=dataset.task)
    self.program = train.jit_few_calls(jax.vmap(step, in_axes=(0, None)), parameters)
    self.dataset, self.batch_size, self.sharding = dataset, batch_size, sharding

  def __call__(self, state) -> list[dict[str, float]]:
    totals = {}
    x, y = self.dataset.x_test, self.dataset.y_test
    for start in range(0, len(x), self.batch_size):
      rows = np.arange(start, min(start + self.batch_size, len(x)))
      if len(rows) % self.sharding.mesh.size:
        batch = (jnp.asarray(x[rows]), jnp.asarray(y[rows]))
      else:
        batch = data_lib.global_batch(self.sharding, x, y, rows)
      for key, value in self.program(state, batch).items():
        totals[key] = totals.get(key, 0) + value
    totals = jax.device_get(totals)
    results = [{"test_loss": float(loss / count)} for loss, count in zip(totals["loss"], totals["count"])]
    for result, correct, count in zip(results, totals.get("correct", ()), totals["count"]):
      result["test_accuracy"] = float(correct / count)
    return results


def _account(members: list[_Member], metrics: dict, step: int, count: int) -> None:
  """Adds each member's losses of the stretch that ran steps ``step + 1`` … ``step + count`` and
  marks the members whose loss or parameters stopped being finite, or whose loss exceeded its
  limit, at the first such step."""
  for m, member in enumerate(members):
    if not member.alive:
      continue
    finite, losses = metrics["finite"][m, :count], metrics["loss"][m, :count]
    good = finite & (losses <= member.loss_limit)
    if good.all():
      member.losses += losses.tolist()
    else:
      first = int(np.argmin(good))
      member.losses += losses[: first + 1].tolist()
      member.divergence = Divergence(step + first + 1, float(np.mean(member.losses)))


def _log_training(members: list[_Member], step: int, learning_rate: float, progress, steps_per_epoch: int) -> None:
  """Each living member's train row: the mean loss of the steps since its last log."""
  alive = [member for member in members if member.alive]
  for member in alive:
    row = {"train_loss": float(np.mean(member.losses)), "learning_rate": learning_rate, "epoch": step / steps_per_epoch}
    member.train_rows.append({"step": step, **row})
    member.losses = []
  images_per_second = progress.update(
    step, float(np.mean([m.train_rows[-1]["train_loss"] for m in alive])), learning_rate
  )
  for member in alive:
    row = {k: v for k, v in member.train_rows[-1].items() if k != "step"}
    member.writer.train(step, row, images_per_second=images_per_second / len(members))


def _logged(rows: list[dict], step: int) -> bool:
  """Whether the last of ``rows`` is of ``step``."""
  return bool(rows) and rows[-1]["step"] == step


def _log_measurements(members: list[_Member], step: int, measured: list[records.Measurement]) -> None:
  """Each living member's measurement of ``step``, into its history and ``signal.jsonl`` (where
  not there already: a run resumed at its last step logged it before)."""
  for member, measurement in zip(members, measured):
    if member.alive and not _logged(member.history, step):
      member.history.append(records.history_point(step, measurement))
      member.writer.measurement(step, measurement)


def _log_evaluations(members: list[_Member], step: int, evaluated: list[dict]) -> None:
  """Each living member's test metrics of ``step``, into ``metrics.jsonl`` and the log (where not
  there already)."""
  for member, metrics in zip(members, evaluated):
    if not member.alive or _logged(member.evaluations, step):
      continue
    member.evaluations.append({"step": step, **metrics})
    member.writer.evaluation(step, member.evaluations[-1])
    best, best_step = _best(member.evaluations)
    logging.info(
      "%s step %d: test loss %.4g%s",
      member.workdir,
      step,
      metrics["test_loss"],
      f", accuracy {metrics['test_accuracy']:.4f} (best {best:.4f} at step {best_step})" if best is not None else "",
    )


def _save(members: list[_Member], step: int, take, state, *, lead: bool, host_copies: bool, force: bool) -> None:
  """A checkpoint of ``step`` for each living member (``take(state, m)``: member m's state)."""
  for m, member in enumerate(members):
    if member.alive:
      checkpoints.save(
        member.checkpoints,
        member.workdir,
        step,
        take(state, m),
        losses_since_log=member.losses,
        host_copies=host_copies,
        force=force,
        write=lead,
      )
  logging.info("checkpoint of step %d saved in %s", step, ", ".join(str(m.workdir / "checkpoints") for m in members))


def _best(evaluations: list[dict]) -> tuple[float | None, int | None]:
  """The best test accuracy among evaluation rows and its step (the earliest on ties)."""
  scored = [row for row in evaluations if row.get("test_accuracy") is not None]
  if not scored:
    return None, None
  best = max(scored, key=lambda row: (row["test_accuracy"], -row["step"]))
  return best["test_accuracy"], best["step"]


def _record(member: _Member, end: _GroupEnd, last_checkpoint: int | None) -> records.RunRecord:
  """The record of one member once its group has trained."""
  config, divergence, rows = member.config, member.divergence, member.train_rows
  record = records.RunRecord(
    model=config.model.name,
    depth=config.model.depth,
    steps=divergence.step if divergence else end.num_steps,
    diverged=divergence is not None,
    diverged_at_step=divergence.step if divergence else None,
    last_checkpoint=last_checkpoint,
    train_loss=divergence.loss if divergence else (rows[-1]["train_loss"] if rows else float("nan")),
    train_seconds=end.train_seconds,
    init=member.init,
    history=member.history,
    images_per_second=end.images_per_second,
    setting=config.setting,
    seed=config.seed,
    target_variance=end.target_variance,
    init_test_loss=member.init_metrics["test_loss"],
    init_test_accuracy=member.init_metrics.get("test_accuracy"),
    convergence=None
    if divergence
    else train.convergence(
      [r["step"] for r in rows],
      [r["train_loss"] for r in rows],
      config.convergence.window,
      config.convergence.tolerance,
      config.convergence.trend_tolerance,
    ),
    budget=budget(config, end.num_steps),
    construction=member.construction,
    group_size=end.size,
    train_losses=[[r["step"], r["train_loss"]] for r in rows],
  )
  if divergence:
    kept = (
      f"the last good checkpoint (step {last_checkpoint}) is kept" if last_checkpoint else "no checkpoint was saved"
    )
    logging.warning(
      "%s: training diverged at step %d (mean loss %s; a loss or parameter not finite, or a loss above %.4g); %s",
      member.workdir,
      divergence.step,
      divergence.loss,
      member.loss_limit,
      kept,
    )
    return record
  evaluation = member.evaluations[-1]
  best_accuracy, best_step = _best(member.evaluations)
  return dataclasses.replace(
    record,
    trained=member.trained,
    best_test_accuracy=best_accuracy,
    best_step=best_step,
    **{k: v for k, v in evaluation.items() if k != "step"},
  )


def _show_bar(config) -> bool:
  """``config.progress_bar``, or (None) whether stderr, where tqdm draws, is a terminal."""
  return sys.stderr.isatty() if config.progress_bar is None else config.progress_bar
