"""Configs checked once, at the door: every entry point validates before anything compiles.

A wrong value raises :class:`ConfigError` naming the config field, the value and what is
allowed (``config.model.width = -3: expected a positive integer``); the entry points print that
one line and exit non-zero. Library functions check their own arguments and raise
:class:`resnorm.validation.ArgumentError` (``name``, ``value``, ``allowed``); here such errors
are caught around the call that builds a piece of the run (the data, the model, the projection)
and raised again with the config path in front of ``name``, so every rule is written once, in
the library.
"""

from __future__ import annotations

import contextlib
import json
import os

import jax

from resnorm import data as data_lib
from resnorm import loop, models, procrustes, records, signal, sweep_plan, train, validation

OPTIMIZERS = ("adam", "sgd")
PLACEMENTS = ("mesh", "spread")
SCHEDULES = ("constant", "cosine", "piecewise")
INIT_FROM = ("random", "constructed")


class ConfigError(validation.ArgumentError):
  """A config field holds a value that is not allowed; ``field`` is its path from ``config``."""

  @property
  def field(self) -> str:
    return self.name


@contextlib.contextmanager
def fields(prefix: str, rename: dict[str, str] | None = None):
  """An :class:`resnorm.validation.ArgumentError` raised inside becomes a :class:`ConfigError` on
  ``prefix + name`` (its value and what is allowed read from its attributes); any other
  ``ValueError`` becomes one on the prefix's field, with the library's message as what is allowed.

  ``rename`` maps a library argument name to the config field that holds it when they differ
  (a field outside ``prefix`` is written whole, e.g. ``{"depth": "depths"}`` under
  ``config.model.`` names ``config.depths``).
  """
  try:
    yield
  except ConfigError:
    raise
  except AttributeError as error:  # ml_collections: a field the config does not have
    name = str(error.args[0]).strip("'\"") if error.args else ""
    if not name.isidentifier():
      raise
    raise ConfigError(
      prefix + name, _Missing(), "a value: configs/default.py states every field a run reads (start from it)"
    ) from None
  except validation.ArgumentError as error:
    field = "config." + rename[error.name] if rename and error.name in rename else prefix + error.name
    raise ConfigError(field, error.value, error.allowed) from None
  except ValueError as error:
    raise ConfigError(prefix.rstrip("."), _Unnamed(), f"a value the library accepts: {error}") from error


class _Missing:
  """The value of a field the config does not have."""

  def __repr__(self) -> str:
    return "(missing)"


class _Unnamed:
  """The value of a field whose library error named no argument (its message says which)."""

  def __repr__(self) -> str:
    return "…"


def load_data(config) -> data_lib.Dataset:
  """``config.data`` loaded, its errors named by field."""
  with fields("config.data."):
    return data_lib.load(config.data)


def check_run(config, dataset: data_lib.Dataset, members: int = 1, concurrent: int = 1) -> None:
  """Every field a single run reads (``configs/default.py`` states them all), for data like
  ``dataset``; a field the config lacks is named as missing. ``members``: the runs that train
  with it as one program (0: its program's memory is checked with another of them);
  ``concurrent``: the programs that train at once (a sweep's ``parallel_runs``), which share the
  machine's memory (:func:`_check_memory`)."""
  with fields("config.optimizer."):
    optimizer = config.optimizer
    validation.one_of("name", optimizer.name, OPTIMIZERS)
    validation.positive_float("learning_rate", optimizer.learning_rate)
    if isinstance(optimizer.momentum, bool) or not 0 <= optimizer.momentum < 1:
      raise validation.invalid("momentum", optimizer.momentum, "a number in [0, 1)")
    if isinstance(optimizer.weight_decay, bool) or not optimizer.weight_decay >= 0:
      raise validation.invalid("weight_decay", optimizer.weight_decay, "a number >= 0")
    validation.one_of("schedule", optimizer.schedule, SCHEDULES)
    _check_schedule(optimizer)
    models.resolve_branch_scale(optimizer.block_lr_scale, 1, "block_lr_scale")
  with fields("config."):
    validation.non_negative_int("seed", config.seed)
    if config.setting is not None and not isinstance(config.setting, str):
      raise validation.invalid("setting", config.setting, "a name (str) or None")
    for field in ("batch_size", "log_every", "eval_batch_size", "steps_per_dispatch"):
      validation.positive_int(field, config[field])
    _check_length(config)
    for field in ("checkpoint_every", "prefetch"):
      validation.non_negative_int(field, config[field])
    validation.one_of("init_from", config.init_from, INIT_FROM)
    if config.eval_every is not None:
      validation.non_negative_int("eval_every", config.eval_every)
    validation.boolean("augment", config.augment)
    if config.augment and dataset.x_train.ndim != 4:
      raise validation.invalid("augment", config.augment, "False for data that are not NHWC images")
    validation.one_of("augment_padding", config.augment_padding, data_lib.PADDINGS)
    validation.boolean("tensorboard", config.tensorboard)
    if config.progress_bar is not None:
      validation.boolean("progress_bar", config.progress_bar)
    devices = jax.device_count()
    if config.batch_size % devices:
      raise validation.invalid("batch_size", config.batch_size, f"a multiple of the {devices} devices")
    data_lib.batch_indices(len(dataset.x_train), config.batch_size, 0, 0)  # the batch fits the data
  with fields("config.signal."):
    examples = validation.positive_int("num_examples", config.signal.num_examples)
    if examples > len(dataset.x_test):
      raise validation.invalid("num_examples", examples, f"at most the {len(dataset.x_test)} test examples")
    validation.non_negative_int("every", config.signal.every)
    validation.non_negative_int("direction_free_examples", config.signal.direction_free_examples)
    validation.boolean("train_batch", config.signal.train_batch)
  with fields("config.convergence."):
    window, tolerance = config.convergence.window, config.convergence.tolerance
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 < window < 1:
      raise validation.invalid("window", window, "a fraction of the run in (0, 1)")
    validation.positive_float("tolerance", tolerance)
    validation.positive_float("trend_tolerance", config.convergence.trend_tolerance)
  with fields("config."):
    factor = config.divergence_factor
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 < factor < float("inf"):
      raise validation.invalid("divergence_factor", factor, "a finite number > 1 (a multiple of the starting loss)")
  with fields("config.procrustes."):
    validation.boolean("enabled", config.procrustes.enabled)
    validation.non_negative_int("every", config.procrustes.every)
    stem, probability = config.procrustes.stem, config.procrustes.probability
  model = build_model(config, dataset.num_outputs)
  if not models.family(config.model.name).build.__module__.startswith("resnorm."):
    _check_sites(config, model, dataset)
  if config.init_from == "constructed":
    _check_construction(config, model, dataset)
  if config.procrustes.enabled:
    targets = models.family(config.model.name).projection_targets
    if targets is None:
      with_targets = sorted(name for name, f in models.FAMILIES.items() if f.projection_targets)
      raise ConfigError(
        "config.procrustes.enabled", True, f"False for {config.model.name} (kernels to project: {with_targets})"
      )
    with fields("config.procrustes.", rename={"stem_convention": "procrustes.stem"}):
      procrustes.procrustes(
        targets(dataset.x_train.shape, stem_convention=stem),
        probability=probability,
        every=config.procrustes.every or None,
        seed=config.seed,
      )
  if members:
    _check_memory(config, model, dataset, members, concurrent)


def free_memory() -> int:
  """The bytes a run may take: the first local device's limit less what is in use where it
  reports them (GPU, TPU), else the host's available memory (``MemAvailable``, or all of it)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as f:
      return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
  except (OSError, StopIteration, ValueError):
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_memory(config, model, dataset: data_lib.Dataset, members: int, concurrent: int) -> None:
  """Refuses, before anything is allocated, a run whose program would not fit in memory: its
  group's ``members`` × (state, gradients and activations at the batch each device takes,
  :func:`resnorm.train.memory_estimate`) plus the training set placed on the device, times the
  ``concurrent`` programs, against :func:`free_memory`."""
  steps_per_epoch = max(len(dataset.x_train) // config.batch_size, 1)
  per_device = max(config.batch_size // jax.device_count(), 1)
  batch = tuple(
    jax.ShapeDtypeStruct((per_device,) + array.shape[1:], array.dtype) for array in (dataset.x_train, dataset.y_train)
  )
  estimate = train.memory_estimate(
    model, loop.optimizer(config, dataset, steps_per_epoch), batch, train.loss_function(dataset.task)
  )
  data_bytes = dataset.x_train.nbytes + dataset.y_train.nbytes
  needed = concurrent * (members * sum(estimate.values()) + data_bytes)
  free = free_memory()
  if needed > free:
    gib = 2.0**30
    raise ConfigError(
      "config.model.depth",
      config.model.depth,
      f"a network that fits in memory: {needed / gib:.3g} GiB needed ({concurrent} program(s) × ({members} run(s) × "
      f"(state {estimate['state'] / gib:.3g} + gradients {estimate['gradients'] / gib:.3g} + activations at "
      f"{per_device} examples {estimate['activations'] / gib:.3g}) + training data {data_bytes / gib:.3g}) GiB), "
      f"{free / gib:.3g} GiB free: a smaller depth, width or batch_size, or fewer parallel_runs",
    )


def _check_sites(config, model, dataset: data_lib.Dataset) -> None:
  """A family registered outside resnorm (``models.register``) must probe its stream sites in
  stream order (:mod:`resnorm.probes`); traced on two test examples, nothing computed."""
  inputs = dataset.x_test[:2]
  try:
    jax.eval_shape(
      lambda: signal.zero_probes(model, model.init(jax.random.key(0), inputs, train=False), inputs, train=False)
    )
  except ValueError as error:
    raise ConfigError("config.model.name", config.model.name, f"a model with stream sites ({error})") from error


def _check_construction(config, model, dataset: data_lib.Dataset) -> None:
  """``init_from='constructed'`` needs a family with a construction and data from a known teacher."""
  construct = models.family(config.model.name).construct
  if construct is None:
    with_construction = sorted(name for name, f in models.FAMILIES.items() if f.construct)
    raise ConfigError(
      "config.init_from",
      "constructed",
      f"'random' for {config.model.name} (families with a construction: {with_construction})",
    )
  if dataset.flow is None:
    raise ConfigError(
      "config.init_from",
      "constructed",
      f"'random' for data {config.data.name!r} (a construction needs the teacher's flow: data.name='teacher')",
    )
  template = jax.eval_shape(model.init, jax.random.key(0), dataset.x_train[:1])
  try:
    construct(model, template, dataset.flow)
  except ValueError as error:
    raise ConfigError("config.init_from", "constructed", f"'random' for this model ({error})") from None


def _check_schedule(optimizer) -> None:
  """The piecewise schedule's epochs and factor, and the warm-up (``config.optimizer.`` fields)."""
  epochs = tuple(optimizer.decay_epochs)
  if any(isinstance(e, bool) or not isinstance(e, (int, float)) or e <= 0 for e in epochs) or list(epochs) != sorted(
    set(epochs)
  ):
    raise validation.invalid("decay_epochs", optimizer.decay_epochs, "increasing positive numbers of epochs")
  factor = optimizer.decay_factor
  if isinstance(factor, bool) or not 0 < factor <= 1:
    raise validation.invalid("decay_factor", factor, "a number in (0, 1]")
  warmup = optimizer.warmup_epochs
  if isinstance(warmup, bool) or not 0 <= warmup < float("inf"):
    raise validation.invalid("warmup_epochs", warmup, "a finite number >= 0")


def _check_length(config) -> None:
  """Exactly one of ``num_steps`` and ``num_epochs`` positive, the other 0 (``config.`` fields)."""
  steps, epochs = config.num_steps, config.num_epochs
  validation.non_negative_int("num_steps", steps)
  validation.non_negative_int("num_epochs", epochs)
  if bool(steps) == bool(epochs):
    raise validation.invalid(
      "num_epochs",
      epochs,
      f"exactly one of num_steps (= {steps!r}) and num_epochs positive "
      "and the other 0, e.g. --config.num_steps=0 --config.num_epochs=300",
    )


def build_model(config, num_outputs: int):
  """``config.model`` built through the registry, its errors named by field."""
  with fields("config.model."):
    return models.from_config(config.model, num_outputs)


def check_sweep(config) -> None:
  """A sweep config (``configs/depth_sweep.py``'s shape), then the config of each of its runs
  (:func:`resnorm.sweep_plan.plan`) against its own data (loaded once per data config)."""
  with fields("config."):
    validation.positive_ints("depths", config.depths)
    validation.positive_int("parallel_runs", config.parallel_runs)
    validation.one_of("placement", config.placement, PLACEMENTS)
    validation.one_of("bound_L", config.bound_L, records.BOUND_LENGTHS)
    validation.boolean("group_seeds", config.group_seeds)
    _check_seeds("seeds", config.seeds)
    names = config.settings if isinstance(config.settings, (tuple, list)) else (config.settings,)
    overrides = config.get("overrides") or {}
    if not names:
      raise validation.invalid(
        "settings",
        config.settings,
        f"a non-empty list of names from config.overrides "
        f"({sorted(overrides)}) or of model families ({sorted(models.FAMILIES)})",
      )
    for name in names:
      if name not in overrides:
        validation.one_of("settings", name, sorted(set(overrides) | set(models.FAMILIES)))
  for name in names:
    if name in overrides:
      with fields(f"config.overrides.{name}."):
        validation.one_of("name", overrides[name].get("name"), models.FAMILIES)
        if "depths" in overrides[name]:
          validation.positive_ints("depths", overrides[name].depths)
        if "seeds" in overrides[name]:
          _check_seeds("seeds", overrides[name].seeds)
  for field, instead in (("depth", "config.depths"), ("name", "config.settings")):
    if config.model.get(field) is not None:
      raise ConfigError(
        f"config.model.{field}",
        config.model[field],
        f"None in a sweep, which sets it from {instead}: override {instead} instead",
      )
  checked, datasets, runs = set(), {}, sweep_plan.plan(config)
  # Each group's memory is checked once, with its first run (its runs share one program).
  group_size = {group[0].name: len(group) for group in sweep_plan.groups(runs, config.group_seeds)}
  for run in runs:
    setting, single = run.setting, run.config
    if (setting, run.depth) in checked:
      continue  # seeds change no field that is checked
    checked.add((setting, run.depth))
    try:
      data = json.dumps(records.config_dict(single.data), sort_keys=True)
      if data not in datasets:
        datasets[data] = load_data(single)
      check_run(single, datasets[data], group_size.get(run.name, 0), config.parallel_runs)
    except ConfigError as error:
      if error.field.startswith("config.data.") and "data" in overrides.get(setting, {}):
        field = f"config.overrides.{setting}.{error.field.removeprefix('config.')}"
        raise ConfigError(field, error.value, error.allowed) from None
      field = error.field.removeprefix("config.model.")
      if field == "depth":
        depths = f"config.overrides.{setting}.depths" if "depths" in overrides.get(setting, {}) else "config.depths"
        raise ConfigError(depths, error.value, f"{error.allowed} for {single.model.name}") from None
      if setting in overrides and field in overrides[setting]:
        raise ConfigError(f"config.overrides.{setting}.{field}", error.value, error.allowed) from None
      raise


def _check_seeds(name: str, seeds) -> None:
  listed = seeds if isinstance(seeds, (tuple, list)) else (seeds,)
  if not listed or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in listed):
    raise validation.invalid(name, seeds, "a non-empty list of integers >= 0")
  if len(set(listed)) != len(listed):
    raise validation.invalid(name, seeds, "distinct seeds (a seed names a run directory)")


def check_spectra(config) -> None:
  """The spectra experiment's config (``configs/spectra.py``)."""
  with fields("config."):
    validation.positive_ints("depths", config.depths)
    for field in ("input_dim", "num_examples", "lanczos_iterations"):
      validation.positive_int(field, config[field])
    names = (config.models,) if isinstance(config.models, str) else tuple(config.models)
    if not names:
      raise validation.invalid("models", config.models, f"a non-empty list from {sorted(models.FAMILIES)}")
    for name in names:
      validation.one_of("models", name, models.FAMILIES)
      if models.family(name).block_stack is None:
        with_blocks = sorted(n for n, f in models.FAMILIES.items() if f.block_stack)
        raise validation.invalid("models", name, f"families with a block Jacobian extractor ({with_blocks})")
  for name in names:
    for depth in config.depths:
      with fields("config.model.", rename={"depth": "depths", "name": "models"}):
        models.create_model(
          name, depth, num_classes=config.input_dim, **models.accepted_options(name, config.model.to_dict(), prefix="")
        )
