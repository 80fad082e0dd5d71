r"""Convert the records an earlier resnorm wrote to this one's file format (``resnorm.records.FORMAT``).

    python -m experiments.migrate WORKDIR [WORKDIR ...]

Each WORKDIR is a sweep's workdir, a run's, or a ``summary.json``. Every record of an earlier
format is rewritten in this one, and every ``config.json`` in this format's names; each file as
it was is kept beside it (``summary.json.unversioned``). Files already in this format are left
alone. Everything is checked before anything is written: a file that cannot be converted is
named, nothing changes, and the exit status is 1.

This command is the one place the earlier layouts are known:

* unversioned (before format 1): in run records the fields left out when unset come back as
  null, a run from before groups trained alone (``group_size`` 1); a sweep summary's stage ``L``
  is ``bound_L``; the direction-free statistics ``free_*`` are ``direction_free_*``, and in
  configs ``signal.free_examples`` is ``signal.direction_free_examples``; sweep configs get
  ``bound_L = 'layers'`` and ``group_seeds = True``, the values the code used when they were
  absent. The first format (before sweeps had settings and seeds: a sweep config with
  ``models``, a run without a seed, a record without a budget) has no conversion.
* format 1: a run record's budget gains its warm-up (from the run's ``config.json``) and the
  record its logged train losses (read from the run's ``metrics.jsonl``); its convergence verdict
  is recomputed from them under this format's rule (:func:`resnorm.train.convergence`, the
  recorded window and tolerance, the default ``trend_tolerance``); a run without
  ``metrics.jsonl`` has no verdict. A sweep summary is made again from its workdir's converted
  runs (it gains every seed's values; the bound readings are this format's), with ``runs.json``
  and ``report.md`` beside it; a summary whose runs are not there cannot be converted.
* in both, statistics a measurement did not keep are null.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app

from configs import default
from experiments import cli
from resnorm import records, report, statistics, sweep_plan, train
from resnorm import sweep_summary as sweep_summary_lib

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


def run_record(data: dict, train_losses: list | None, run_config: dict) -> dict:
  """A run record of an earlier format in this one; ``train_losses``: its logged [step, loss]
  pairs (from its ``metrics.jsonl``; None where the run has none); ``run_config``: its
  ``config.json``, which holds the warm-up its budget did not record."""
  if "format" not in data:
    missing = [key for key in ("seed", "budget") if key not in data]
    if missing:
      raise Unconvertible(f"a run record without {' or '.join(missing)} (the first format): rerun the run")
    data = dict(data, group_size=data.get("group_size", 1))  # before groups, every run trained alone
  converted = {field.name: data.get(field.name) for field in dataclasses.fields(records.RunRecord)}
  converted["budget"] = {**data["budget"], "warmup_epochs": run_config["optimizer"]["warmup_epochs"]}
  converted["init"] = _measurement(data["init"])
  converted["trained"] = data.get("trained") and _measurement(data["trained"])
  converted["train_losses"] = train_losses
  earlier = data.get("convergence")
  if earlier and train_losses and not data.get("diverged"):
    steps, losses = zip(*train_losses)
    converted["convergence"] = train.convergence(
      steps, losses, earlier["window"], earlier["tolerance"], default.get_config().convergence.trend_tolerance
    )
  else:
    converted["convergence"] = None
  return {"format": records.FORMAT, **converted}


def _measurement(data: dict) -> dict:
  by_kind = {
    kind: {name: stats.get(name, stats.get(_earlier(name))) for name in statistics.REGISTRY}
    for kind, stats in data["by_kind"].items()
  }
  return {"by_kind": by_kind, "profile": data["profile"], "layers": data.get("layers")}


def sweep_summary(data: dict, runs: list[records.RunRecord]) -> dict:
  """A sweep summary of an earlier format in this one: made again from ``runs``, its workdir's
  runs in this format, for its settings' overrides and its bound's L."""
  families = data["models"]
  for name, family in families.items():
    missing = [key for key in ("seeds", "overrides", "budget", "std") if family.get(key) is None]
    if missing:
      raise Unconvertible(f"setting {name} has no {', '.join(missing)} (the first format): rerun the sweep")
  absent = sorted(name for name in families if not any(r.setting == name for r in runs))
  if absent:
    raise Unconvertible(
      f"the runs of {', '.join(absent)} are not under the summary's {sweep_plan.RUNS}/ (a summary is made again "
      "from its runs): convert the sweep's workdir, or rerun it"
    )
  trained = next(iter(families.values()))["trained"]
  bound_L = trained.get("bound_L", trained.get("L"))
  overrides = {name: family["overrides"] for name, family in families.items()}
  kept = [r for r in runs if r.setting in families]
  return sweep_summary_lib.summarize_sweep(kept, overrides, bound_L).to_json()


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
  """(file, its converted content — JSON data, or a report's text — or the :class:`Unconvertible`
  reason it has none) for every file under ``location`` that needs one: a sweep's run records
  first, then its summary made again from them."""
  location = records.path(location)
  if location.is_dir():
    workdir = location
  elif location.name == "summary.json":
    workdir = location.parent
  else:
    return [(location, Unconvertible(f"not a workdir or a summary.json: {location}"))]
  found = []
  for file in (workdir / "config.json", *sorted((workdir / sweep_plan.RUNS).glob("*/config.json"))):
    try:
      data = records.read_json(file) if file.exists() else None
      if data is not None and config(data) != data:
        found.append((file, config(data)))
    except Unconvertible as error:
      found.append((file, error))
  runs = []
  for run_dir in [workdir, *sorted(p for p in (workdir / sweep_plan.RUNS).glob("*") if p.is_dir())]:
    file = run_dir / "summary.json"
    data = records.read_json(file) if file.exists() else None
    if data is None or "models" in data:
      continue
    try:
      if data.get("format") == records.FORMAT:
        converted = data
      else:
        converted = run_record(data, _train_losses(run_dir), records.read_json(run_dir / "config.json"))
      runs.append(records.RunRecord.from_json(converted))  # it reads
      if converted is not data:
        found.append((file, converted))
    except Unconvertible as error:
      found.append((file, error))
    except (KeyError, TypeError, AttributeError, ValueError) as error:
      found.append((file, _unknown(error)))
  file = workdir / "summary.json"
  data = records.read_json(file) if file.exists() else None
  if data and "models" in data and data.get("format") != records.FORMAT:
    try:
      converted = sweep_summary(data, runs)
      summary = records.SweepSummary.from_json(converted)
      found += [
        (file, converted),
        (workdir / records.RUNS_FILE, records.run_entries([r for r in runs if r.setting in summary.models])),
        (workdir / "report.md", report.render(summary)),
      ]
    except Unconvertible as error:
      found.append((file, error))
    except (KeyError, TypeError, AttributeError, ValueError) as error:
      found.append((file, _unknown(error)))
  return found


def _unknown(error: Exception) -> Unconvertible:
  return Unconvertible(f"not a record this command knows ({type(error).__name__}: {error})")


def _train_losses(run_dir) -> list[list] | None:
  """The [step, train loss] rows of ``run_dir``'s ``metrics.jsonl`` (None: no such file)."""
  log = run_dir / "metrics.jsonl"
  if not log.exists():
    return None
  return [[row["step"], row["train_loss"]] for row in records.JsonlLog(log, write=False).records if "train_loss" in row]


def migrate(locations: list) -> list[str]:
  """Converts every file under ``locations`` that needs it (see the module docstring), or none
  when one cannot be converted; returns what was done, a line per file.

  Raises:
    Unconvertible: naming every file that cannot be converted (nothing was written).
  """
  found = [conversion for location in locations for conversion in _conversions(location)]
  refused = [f"{file}: {reason}" for file, reason in found if isinstance(reason, Unconvertible)]
  if refused:
    raise Unconvertible("nothing was converted; " + "; ".join(refused))
  done = []
  for file, converted in found:
    backup = file.with_name(file.name + BACKUP)
    if file.exists() and not backup.exists():
      records.write_text(backup, file.read_text())
    if isinstance(converted, str):  # a report, text
      records.write_text(file, converted)
    else:
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
  print("\n".join(done) if done else f"nothing to convert: every record is in format {records.FORMAT}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
