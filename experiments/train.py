r"""Train one model and measure its backward ratios before and after.

    python -m experiments.train --config=configs/default.py --workdir=/tmp/run
    python -m experiments.train --config=configs/default.py --workdir=/tmp/run \
        --config.model.name=mlp_plain --config.model.depth=64

Several hosts: start one process per host with the same flags plus
``--coordinator=HOST:PORT --num_processes=N --process_id=I`` (or let
``jax.distributed.initialize()`` discover them on TPU pods and SLURM clusters with ``--distributed``).

Exit status 1 with a one-line message for a bad config, a workdir that holds another config's
checkpoints, a diverged run, and SIGTERM (after a checkpoint of the current step is saved: the
same command resumes).
"""

import json
import logging as python_logging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cli, cluster
from resnorm import config_validation, loop, plots, preemption, records

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.", required=True)


class _QuietOrbax(python_logging.Filter):
  """Drops Orbax's INFO and DEBUG lines (one per save and restore); its warnings pass."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return record.levelno >= python_logging.WARNING or "orbax" not in record.pathname


def _draw_ratio_heatmap(record: dict) -> None:
  """``workdir/ratio_heatmap.png``: every layer's ratio over training (the kind of figure the paper draws), where
  the run measured during training (``config.signal.every``)."""
  rows = records.JsonlLog(records.path(_WORKDIR.value) / "signal.jsonl", write=False).records
  if rows:
    plots.ratio_heatmap(
      {f"{record['model']}, depth {record['depth']}": rows}, records.path(_WORKDIR.value) / "ratio_heatmap.png"
    )


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)  # the run's milestones: resume, evaluations, checkpoints
  logging.get_absl_handler().addFilter(_QuietOrbax())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  cluster.initialize()
  cli.report_disk_errors_once()
  try:
    with preemption.StopSignals() as stop:  # SIGTERM or Ctrl-C: the run stops at a saved step
      dataset = config_validation.load_data(_CONFIG.value)
      config_validation.check_run(_CONFIG.value, dataset)
      record = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, dataset, should_stop=stop).to_json()
  except (config_validation.ConfigError, records.WorkdirError, preemption.Preempted, records.WriteFailed) as error:
    sys.exit(f"error: {error}")  # one line, exit status 1
  if jax.process_index() == 0:
    shown = ("steps", "diverged", "train_loss", "test_loss", "test_accuracy", "best_test_accuracy", "best_step")
    print(json.dumps({k: record[k] for k in shown + ("images_per_second",)}))
    if record["trained"]:
      print(json.dumps({"trained": record["trained"]["by_kind"]}))
    _draw_ratio_heatmap(record)
  if record["diverged"]:
    kept = record["last_checkpoint"]
    sys.exit(
      f"error: training diverged by step {record['diverged_at_step']}; "
      + (
        f"the last good checkpoint (step {kept}) is kept in {_WORKDIR.value}/checkpoints"
        if kept
        else "no checkpoint was saved before"
      )
    )


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
