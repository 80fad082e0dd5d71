"""A statistic is one object: registering it is the one edit that puts it in every measurement,
record, summary, CSV column, report, text table and figure."""

import csv
import subprocess
import sys

import numpy as np
import pytest

import helpers
from experiments import sweep_outputs
from resnorm import records, report, signal, statistics, sweep_summary


@pytest.fixture
def delta_rms():
  """The README's example: the root mean square of δ, read as a bound."""
  statistic = statistics.register(
    statistics.Statistic(
      "delta_rms",
      lambda r: float(np.sqrt(np.mean(r.delta**2))) if r.delta.size else float("nan"),
      "δ_rms, the root mean square of |r − 1| over blocks × examples",
      bound=True,
      csv=True,
      style="x:",
    )
  )
  yield statistic
  del statistics.REGISTRY[statistic.name]


def _run(depth: int, seed: int, rng) -> tuple[records.RunRecord, np.ndarray]:
  """A run of ``depth`` blocks whose ratios (returned beside it) are drawn about 1 with a spread
  that shrinks with depth; the stem's ratio is the first row."""
  ratio = 1 + rng.normal(0, 0.5 / depth, (depth + 1, 8))
  report_ = signal.SignalReport(
    grad_norm=np.ones((depth + 2, 8)),
    ratio=ratio,
    stream_norm=np.ones((depth + 2, 8)),
    branch_ratio=np.ones((depth + 1, 8)),
    q=np.ones(depth + 2),
    c=np.zeros(depth + 2),
    kinds=("stem",) + ("block",) * depth,
  )
  measurement = records.Measurement.from_report(report_)
  budget = dict(
    steps=10,
    optimizer="adam",
    learning_rate=1e-3,
    schedule="cosine",
    warmup_epochs=0.0,
    batch_size=8,
    block_lr_scale="1",
  )
  record = records.RunRecord(
    model="mlp_residual",
    depth=depth,
    steps=10,
    diverged=False,
    diverged_at_step=None,
    last_checkpoint=None,
    train_loss=0.1,
    train_seconds=1.0,
    init=measurement,
    history=[records.history_point(10, measurement)],
    setting="mlp_residual",
    seed=seed,
    budget=budget,
    group_size=1,
    init_test_loss=0.2,
    test_loss=0.1,
    trained=measurement,
  )
  return record, ratio


def test_registering_a_statistic_is_the_one_edit_that_puts_it_everywhere(delta_rms, tmp_path):
  rng = np.random.default_rng(0)
  drawn = [_run(depth, seed, rng) for depth in (2, 8, 32) for seed in (0, 1, 2)]
  runs = [run for run, _ in drawn]
  for run, ratio in drawn:  # in every measurement: the blocks' rows, the root mean square of their δ
    own = np.sqrt(np.mean((ratio[1:] - 1) ** 2))
    assert run.trained.block["delta_rms"] == pytest.approx(own, rel=1e-12)
  summary = sweep_summary.summarize_sweep(runs, {"mlp_residual": {"name": "mlp_residual"}})
  stage = summary.reference.trained
  per_depth = [[r.trained.block["delta_rms"] for r in runs if r.depth == L] for L in (2, 8, 32)]
  np.testing.assert_allclose(stage.means["delta_rms"], [np.mean(v) for v in per_depth], rtol=1e-12)
  np.testing.assert_allclose(stage.std["delta_rms"], [np.std(v, ddof=1) for v in per_depth], rtol=1e-12)
  assert stage.bound["delta_rms"].slope < 0  # read as a bound: its spread shrinks as 1/L
  assert records.SweepSummary.from_json(summary.to_json()) == summary  # kept in the summary file
  sweep_outputs.write_outputs(tmp_path, summary, runs)
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert {"init_delta_rms", "trained_delta_rms"} <= set(rows[0])
  assert "δ_rms slope" in (tmp_path / "report.md").read_text()
  assert "δ_rms" in report.format_table(summary)
  assert "delta_rms" not in records.history_point(10, runs[0].trained)  # not tracked: not asked for


def test_a_name_is_registered_once():
  with pytest.raises(ValueError, match="delta_max"):
    statistics.register(statistics.Statistic("delta_max", lambda r: 0.0, "again"))


CONFIG_WITH_A_STATISTIC = """
import numpy as np

from configs import depth_sweep
from resnorm import statistics

statistics.register(
  statistics.Statistic(
    "delta_rms",
    lambda r: float(np.sqrt(np.mean(r.delta**2))) if r.delta.size else float("nan"),
    "δ_rms, the root mean square of |r − 1| over blocks × examples",
    bound=True,
    csv=True,
  )
)


def get_config():
  config = depth_sweep.get_config()
  config.depths, config.settings, config.seeds = (2, 4), ("residual_zero_init",), (0,)
  config.overrides.residual_zero_init.seeds = (0,)
  config.data.train_size, config.data.test_size = 256, 64
  config.model.width, config.model.hidden = 8, 8
  config.batch_size, config.num_steps, config.log_every, config.checkpoint_every = 32, 10, 5, 0
  config.signal.num_examples, config.signal.every, config.signal.direction_free_examples = 16, 0, 0
  config.parallel_runs = 2
  return config
"""


@pytest.mark.slow  # a sweep's worker processes, which must register it too
def test_a_statistic_registered_in_a_config_file_reaches_the_sweep_s_worker_processes(tmp_path):
  """A config file that registers a statistic at import (and sweeps built-in families): the sweep's
  worker processes run the file too, so every run, the summary and the CSV have the statistic."""
  config = tmp_path / "with_a_statistic.py"
  config.write_text(CONFIG_WITH_A_STATISTIC)
  result = subprocess.run(
    [sys.executable, "-m", "experiments.sweep", f"--config={config}", f"--workdir={tmp_path / 'sweep'}"],
    cwd=helpers.REPO,
    env=helpers.cpu_env(),
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = records.read_summary(tmp_path / "sweep" / "summary.json")
  values = summary.reference.trained.means["delta_rms"]
  assert len(values) == 2 and all(v > 0 for v in values)
  with open(tmp_path / "sweep" / "results.csv") as f:
    assert "trained_delta_rms" in next(csv.reader(f))
