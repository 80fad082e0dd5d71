r"""Convert the records an earlier resnorm wrote to this one's file format (``resnorm.records.FORMAT``).

    python -m experiments.migrate WORKDIR [WORKDIR ...]

Each WORKDIR is a sweep's workdir, a run's, or a ``summary.json``. Every summary written without
a format (before format 1) is rewritten in format 1, and every ``config.json`` in the names of
format 1; each file as it was is kept beside it (``summary.json.unversioned``). Files already in
format 1 are left alone. Everything is checked before anything
is written: a file that cannot be converted (the first format, before sweeps had settings and
seeds: a sweep config with ``models`` instead of ``settings``, a run without a seed, a record
without a budget) is named, nothing changes, and the exit status is 1.

This command is the one place the earlier layouts are known:

* run records: the fields left out when unset come back as null; a run from before groups
  trained alone (``group_size`` 1); statistics a measurement did not keep are null;
* sweep summaries: a stage's ``L`` is ``bound_L``; the statistics and fields it did not keep are
  null at every depth;
* in both, the direction-free statistics ``free_*`` are ``direction_free_*``, and in configs
  ``signal.free_examples`` is ``signal.direction_free_examples``;
* sweep configs: ``bound_L = 'layers'`` and ``group_seeds = True``, the values the code used when
  they were absent.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app

from experiments import cli
from resnorm import records, statistics, sweep_plan

BACKUP = ".unversioned"  # appended to the name of a file that was converted
SWEEP_CONFIG_DEFAULTS = {"bound_L": "layers", "group_seeds": True}
RENAMED = {  # a statistic's name in format 1: its name before
  f"direction_free_{name}": f"free_{name}" for name in ("delta_max", "delta_mean", "layer_p90_max", "examples")
}


def _earlier(name: str) -> str:
  """A statistic's (or a stage column's) name before format 1."""
  return RENAMED.get(name, name)


class Unconvertible(ValueError):
  """A file of a layout with no conversion (the first format): the message says why."""


def run_record(data: dict) -> dict:
  """An unversioned run record (``summary.json`` of a run) in format 1."""
  missing = [key for key in ("seed", "budget") if key not in data]
  if missing:
    raise Unconvertible(f"a run record without {' or '.join(missing)} (the first format): rerun the run")
  converted = {field.name: data.get(field.name) for field in dataclasses.fields(records.RunRecord)}
  converted["group_size"] = data.get("group_size", 1)  # before groups, every run trained alone
  converted["init"] = _measurement(data["init"])
  converted["trained"] = data.get("trained") and _measurement(data["trained"])
  return {"format": records.FORMAT, **converted}


def _measurement(data: dict) -> dict:
  by_kind = {
    kind: {name: stats.get(_earlier(name)) for name in statistics.REGISTRY} for kind, stats in data["by_kind"].items()
  }
  return {"by_kind": by_kind, "profile": data["profile"], "layers": data.get("layers")}


def sweep_summary(data: dict) -> dict:
  """An unversioned sweep summary (``summary.json`` of a sweep) in format 1."""
  families = {}
  for name, family in data["models"].items():
    missing = [key for key in ("seeds", "overrides", "budget", "std") if family.get(key) is None]
    if missing:
      raise Unconvertible(f"setting {name} has no {', '.join(missing)} (the first format): rerun the sweep")
    converted = {field.name: family.get(field.name) for field in dataclasses.fields(records.FamilyResults)}
    depths = len(family["depths"])
    converted["init"], converted["trained"] = (_stage(family[stage], depths) for stage in records.STAGES)
    converted["by_kind"] = {
      kind: {stage: _stage(entry, depths) for stage, entry in stages.items()}
      for kind, stages in (family.get("by_kind") or {}).items()
    }
    families[name] = converted
  return {"format": records.FORMAT, **{k: v for k, v in data.items() if k != "models"}, "models": families}


def _stage(data: dict, depths: int) -> dict:
  if "bound" not in data or "L" not in data:
    raise Unconvertible("a stage without bound readings (the first format): rerun the sweep")
  columns = [*statistics.REGISTRY, "token_c_last"]
  means = {name: data.get(_earlier(name), [None] * depths) for name in columns}
  std = {name: data["std"].get(_earlier(name), [None] * depths) for name in columns}
  bound = {s.name: data["bound"][_earlier(s.name)] for s in statistics.read_as_bound()}
  return {**means, "std": std, "bound": bound, "fit": data["fit"], "bound_L": data["L"]}


def config(data: dict) -> dict:
  """A sweep's or a run's ``config.json`` in the names of format 1; a sweep's with the fields the
  code assumed when they were absent."""
  if "models" in data and "settings" not in data:
    raise Unconvertible("a sweep config with 'models' instead of 'settings' (the first format): rerun the sweep")
  converted = dict(data)
  if "free_examples" in data.get("signal", {}):
    signal = dict(data["signal"])
    signal["direction_free_examples"] = signal.pop("free_examples")
    converted["signal"] = signal
  if "settings" in data:
    converted = {**SWEEP_CONFIG_DEFAULTS, **converted}
  return converted


def _conversions(location) -> list[tuple]:
  """(file, converted data or the reason it has none) for every file under ``location`` that needs one."""
  location = records.path(location)
  if location.name == "summary.json":
    files = [location]
  elif location.is_dir():
    files = [location / "summary.json", location / "config.json"]
    runs = location / sweep_plan.RUNS
    if runs.is_dir():
      files += [run / name for run in sorted(runs.iterdir()) for name in ("summary.json", "config.json")]
  else:
    return [(location, f"not a workdir or a summary.json: {location}")]
  found = []
  for file in files:
    if not file.exists():
      continue
    data = records.read_json(file)
    try:
      if file.name == "config.json":
        if config(data) != data:
          found.append((file, config(data)))
      elif "format" not in data:
        converted = sweep_summary(data) if "models" in data else run_record(data)
        (records.SweepSummary if "models" in data else records.RunRecord).from_json(converted)  # it reads
        found.append((file, converted))
    except Unconvertible as error:
      found.append((file, str(error)))
    except (KeyError, TypeError, AttributeError) as error:
      found.append((file, f"not a record this command knows ({type(error).__name__}: {error})"))
  return found


def migrate(locations: list) -> list[str]:
  """Converts every file under ``locations`` that needs it (see the module docstring), or none
  when one cannot be converted; returns what was done, a line per file.

  Raises:
    Unconvertible: naming every file that cannot be converted (nothing was written).
  """
  found = [conversion for location in locations for conversion in _conversions(location)]
  refused = [f"{file}: {reason}" for file, reason in found if isinstance(reason, str)]
  if refused:
    raise Unconvertible("nothing was converted; " + "; ".join(refused))
  done = []
  for file, converted in found:
    backup = file.with_name(file.name + BACKUP)
    if not backup.exists():
      records.write_text(backup, file.read_text())
    records.write_json(file, converted)
    done.append(f"{file}: converted (the original kept as {backup.name})")
  return done


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give the workdirs (or summary.json files) to convert")
  try:
    done = migrate(argv[1:])
  except (Unconvertible, records.UnreadableRecord) as error:
    sys.exit(f"error: {error}")
  print("\n".join(done) if done else "nothing to convert: every record is in format 1")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
