"""A sweep config's runs: every (setting, depth, seed) with its single-run config, and the groups
that train as one program.

A *setting* is a model family with overrides (``config.overrides.<setting>``: ``name`` = the
family; options of ``config.model``; top-level run fields such as ``num_steps`` or
``init_from``; a dict for another config section, e.g. ``procrustes=dict(enabled=True)``;
optionally its own ``depths`` and ``seeds``); a setting named like a family with no overrides
entry is that family as configured. A sweep runs every setting at every depth with every seed of
``config.seeds`` (or its own), each run in ``runs/<setting>_L<depth>_s<seed>/`` of the sweep's
workdir. Runs are independent: each seeds itself from its seed, model and depth
(:func:`resnorm.loop.run_seed`), so any split of a sweep reproduces it.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from resnorm import loop

RUNS = "runs"  # the folder of a sweep workdir that holds its runs
# The fields of a sweep config that a single run does not have.
SWEEP_FIELDS = ("depths", "settings", "overrides", "seeds", "parallel_runs", "placement", "bound_L", "group_seeds")


def run_name(setting: str, depth: int, seed: int) -> str:
  return f"{setting}_L{depth:05d}_s{seed}"


@dataclasses.dataclass(frozen=True)
class Run:
  """One (setting, depth, seed) of a sweep and its single-run ``config``."""

  setting: str
  depth: int
  seed: int
  config: ml_collections.ConfigDict

  @property
  def name(self) -> str:
    """Its directory under the sweep workdir's ``runs/``."""
    return run_name(self.setting, self.depth, self.seed)


def settings(config) -> tuple[str, ...]:
  return tuple(config.settings) if isinstance(config.settings, (tuple, list)) else (config.settings,)


def setting_overrides(config, setting: str) -> dict:
  """``config.overrides.<setting>`` as a dict, ``{'name': setting}`` for a bare family name."""
  overrides = config.get("overrides") or {}
  if setting not in overrides:
    return {"name": setting}
  entry = overrides[setting]
  return entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)


def setting_depths(config, setting: str) -> tuple[int, ...]:
  depths = setting_overrides(config, setting).get("depths", config.depths)
  return tuple(sorted(set(depths if isinstance(depths, (tuple, list)) else (depths,))))


def setting_seeds(config, setting: str) -> tuple[int, ...]:
  seeds = setting_overrides(config, setting).get("seeds", config.seeds)
  return tuple(seeds) if isinstance(seeds, (tuple, list)) else (seeds,)


def own_seeds(config) -> dict[str, tuple[int, ...]]:
  """The settings that run seeds of their own (``config.overrides.<setting>.seeds``), not
  ``config.seeds``, with those seeds."""
  return {name: setting_seeds(config, name) for name in settings(config) if "seeds" in setting_overrides(config, name)}


def run_config(config, setting: str, depth: int, seed: int) -> ml_collections.ConfigDict:
  """The single-run config of one triple: the sweep config without its lists, the setting's
  overrides applied (to ``config.model`` unless the key is a top-level run field), ``seed`` and
  ``setting`` filled in."""
  single = ml_collections.ConfigDict(config.to_dict())
  for field in SWEEP_FIELDS:
    if field in single:
      del single[field]
  for key, value in setting_overrides(config, setting).items():
    if key in ("depths", "seeds"):
      continue
    if isinstance(value, (dict, ml_collections.ConfigDict)):  # a section, e.g. procrustes=dict(enabled=True)
      if "name" in value and value["name"] != single[key].get("name"):  # another dataset: its own options only
        single[key] = ml_collections.ConfigDict(dict(value))
      else:
        single[key].update(dict(value))
    elif key in single.model or key not in single:
      single.model[key] = value
    else:  # a top-level run field, e.g. num_steps or init_from
      single[key] = value
  single.model.depth, single.seed, single.setting = depth, seed, setting
  return single


def plan(config) -> list[Run]:
  """Every run of a sweep config, in config order (settings, then depths, then seeds)."""
  return [
    Run(setting, depth, seed, run_config(config, setting, depth, seed))
    for setting in settings(config)
    for depth in setting_depths(config, setting)
    for seed in setting_seeds(config, setting)
  ]


def groups(runs: list[Run], together: bool = True) -> list[list[Run]]:
  """``runs`` in the groups that train as one program (:func:`resnorm.loop.train_group`): at each
  depth, the runs whose configs differ only in the fields of :data:`resnorm.loop.MEMBER_FIELDS`
  (seed, branch scale, initialisation, the blocks' learning-rate scale, and the family where
  families share a program), where :func:`resnorm.loop.groupable` and ``together`` (the sweep's
  ``group_seeds``); every other run alone. Groups keep the order of their first runs."""
  grouped = {}
  for run in runs:
    key = loop.group_key(run.config) if together and loop.groupable(run.config) else run.name
    grouped.setdefault(key, []).append(run)
  return list(grouped.values())


def record_mismatch(run: Run, record, saved_config: dict | None) -> list[str]:
  """Why a finished run's files do not prove it is ``run`` of this sweep (empty when they do):
  its ``config.json`` (``saved_config``) missing, or its record's setting, model, depth, seed or
  budget (:func:`resnorm.loop.budget`) other than the run's. The budget's steps are checked where
  the config fixes them (``num_steps``); a run of ``num_epochs`` epochs must have taken a whole
  number of epochs. Whether ``config.json`` equals the run's config is the workdir's check
  (:func:`experiments.sweep_runner.refuse_runs_of_another_config`)."""
  if saved_config is None:
    return ["config.json: absent, so nothing shows which config trained it"]
  config = run.config
  expected = dict(setting=run.setting, model=config.model.name, depth=run.depth, seed=run.seed)
  problems = [
    f"{field}: {getattr(record, field)!r} in its record, {value!r} for this run"
    for field, value in expected.items()
    if getattr(record, field) != value
  ]
  steps = config.num_steps or record.budget.get("steps")
  budget = loop.budget(config, steps)
  problems += [
    f"budget.{field}: {record.budget.get(field, '(absent)')!r} in its record, {value!r} for this run"
    for field, value in budget.items()
    if record.budget.get(field) != value
  ]
  if not config.num_steps and not (isinstance(steps, int) and steps > 0 and steps % config.num_epochs == 0):
    problems.append(f"budget.steps: {steps!r} in its record, not {config.num_epochs} whole epochs")
  if not record.diverged and record.steps != steps:
    problems.append(f"steps: {record.steps!r} in its record, its budget {steps!r}")
  return problems
