r"""The depth sweep: δ(L) of trained residual and plain networks against c·log(2L)/L.

    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/sweep
    python -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/L64 --config.depths=64
    python -m experiments.sweep --aggregate --workdir=/tmp/merged /tmp/L32 /tmp/L64

Several hosts: the same command on every host, plus ``--distributed`` (or
``--coordinator/--num_processes/--process_id``); ``--config.placement`` chooses whether each run
uses every host (``mesh``) or the runs are spread over the hosts (``spread``).
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cli, cluster, sweep_outputs, sweep_runner
from resnorm import config_validation, preemption, records, report, sweep_plan

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for runs and results.", required=True)
_AGGREGATE = flags.DEFINE_bool(
  "aggregate", False, "Merge the finished sweep workdirs given as arguments into --workdir."
)
_ALLOW_INCOMPLETE = flags.DEFINE_bool(
  "allow_incomplete", False, "With --aggregate: merge although some planned runs did not finish."
)


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows it
  cluster.initialize()
  cli.report_disk_errors_once()
  if not _AGGREGATE.value:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]} (use --aggregate to merge workdirs)")
    if _CONFIG.value is None:
      raise app.UsageError("--config is required unless --aggregate is given")
  try:
    if _AGGREGATE.value:
      summary = sweep_outputs.aggregate(argv[1:], _WORKDIR.value, allow_incomplete=_ALLOW_INCOMPLETE.value)
    else:
      _say_which_settings_keep_their_seeds(sys.argv)
      with preemption.StopSignals() as stop:  # SIGTERM or Ctrl-C: the runs stop at a saved step
        summary = sweep_runner.run_sweep(_CONFIG.value, _WORKDIR.value, should_stop=stop)
  except (
    config_validation.ConfigError,
    records.WorkdirError,
    preemption.Preempted,
    records.WriteFailed,
    records.UnreadableRecord,
  ) as error:
    sys.exit(f"error: {error}")  # one line, exit status 1, before anything compiles or changes
  if jax.process_index() == 0:
    print(report.format_table(summary))
  logging.info("wrote summary.json, results.csv and the figures to %s", _WORKDIR.value)


def _say_which_settings_keep_their_seeds(argv: list[str]) -> None:
  """Where ``--config.seeds`` is given, warns of the settings it does not reach (their own seeds)."""
  if not any(arg.lstrip("-").startswith("config.seeds") for arg in argv[1:]):
    return
  kept = {
    name: seeds
    for name, seeds in sweep_plan.own_seeds(_CONFIG.value).items()
    if not any(arg.lstrip("-").startswith(f"config.overrides.{name}.seeds") for arg in argv[1:])
  }
  if kept:
    logging.warning(
      "--config.seeds=%s does not reach %s, which keep seeds of their own (%s): set "
      "--config.overrides.<setting>.seeds to change them",
      tuple(_CONFIG.value.seeds),
      ", ".join(kept),
      "; ".join(f"{name}: {seeds}" for name, seeds in kept.items()),
    )


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
