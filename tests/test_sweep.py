"""The depth sweep end to end: outputs, aggregation, reuse, divergence, bad input."""

import csv
import json
import os
import subprocess
import sys

import pytest
from helpers import tiny_sweep

from resnorm import loop, records, sweep
from resnorm.config_validation import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
  """A joint sweep over L ∈ {2, 4} and the same sweep split into two single-depth jobs."""
  root = tmp_path_factory.mktemp("sweeps")
  joint = sweep.run_sweep(tiny_sweep(), str(root / "joint"), progress=False)
  for depth in (2, 4):
    sweep.run_sweep(tiny_sweep(depths=(depth,)), str(root / f"L{depth}"), progress=False)
  return root, joint


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_sweep_writes_complete_summary_csv_and_figure(sweeps):
  root, joint = sweeps
  summary = _read(root / "joint" / "summary.json")
  assert summary == joint.to_json()
  assert records.SweepSummary.from_json(summary) == joint
  assert summary["depths"] == [2, 4] and summary["diverged"] == [False, False]
  assert all(d > 0 for d in summary["delta_max"] + summary["delta_mean"])
  assert {"c", "r2", "slope", "best", "laws"} <= set(summary["fit"])
  assert set(summary["models"]) == {"mlp_residual", "mlp_plain"}
  for entry in summary["models"].values():
    assert len(entry["test_loss"]) == 2 and all(loss > 0 for loss in entry["test_loss"])
    for stage in ("init", "trained"):
      assert len(entry[stage]["delta_p99"]) == 2 and "fit" in entry[stage]
  with open(root / "joint" / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted((r["model"], int(r["depth"])) for r in rows) == sorted(
      (m, L) for m in ("mlp_residual", "mlp_plain") for L in (2, 4))
  assert all(float(r["trained_delta_max"]) > 0 for r in rows)
  for figure in ("delta_vs_depth.png", "delta_during_training.png"):
    with open(root / "joint" / figure, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  history = _read(root / "joint" / "runs" / sweep.run_name("mlp_residual", 4) / "summary.json")["history"]
  assert [h["step"] for h in history] == [10, 20]
  assert history[-1]["delta_max"] == summary["delta_max"][1]  # the last measurement is the trained one
  table = sweep.format_table(joint)
  assert len(table.splitlines()) == 4 and "log(2L)/L" in table


def test_aggregating_single_depth_jobs_equals_the_joint_sweep(sweeps, tmp_path):
  root, _ = sweeps
  merged = sweep.aggregate([str(root / "L4"), str(root / "L2")], str(tmp_path / "merged"))
  assert merged.to_json() == _read(root / "joint" / "summary.json")
  assert _read(tmp_path / "merged" / "config.json")["depths"] == [2, 4]
  with pytest.raises(ValueError, match="in both"):
    sweep.aggregate([str(root / "L2"), str(root / "joint")], str(tmp_path / "twice"))


def test_aggregate_from_the_command_line(sweeps, tmp_path):
  root, _ = sweeps
  result = subprocess.run(
      [sys.executable, "-m", "experiments.sweep", "--aggregate", f"--workdir={tmp_path}", str(root / "L2"),
       str(root / "L4")], cwd=REPO, capture_output=True, text=True, check=False,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert _read(tmp_path / "summary.json") == _read(root / "joint" / "summary.json")
  assert "mlp_residual δmax init" in result.stdout


def test_a_finished_sweep_is_reused_not_retrained(sweeps, monkeypatch):
  root, joint = sweeps

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(loop, "train_and_evaluate", no_training)
  assert sweep.run_sweep(tiny_sweep(), str(root / "joint"), progress=False) == joint
  changed = tiny_sweep()
  changed.num_steps = 30
  with pytest.raises(ValueError, match="another config"):
    sweep.run_sweep(changed, str(root / "joint"), progress=False)


def test_a_diverging_depth_is_recorded_and_the_sweep_goes_on(tmp_path):
  config = tiny_sweep(depths=(2, 64), models=("mlp_residual",))
  # Unscaled branches double the mean square per block: 2^64 overflows the SGD step at L = 64.
  config.model.branch_scale = "1"
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.01
  summary = sweep.run_sweep(config, str(tmp_path), progress=False)
  assert summary.reference.diverged == [False, True]
  assert summary.reference.trained.delta_max[0] > 0 and summary.reference.trained.delta_max[1] is None
  assert summary.reference.trained.fit["c"] is None
  assert "diverged@" in sweep.format_table(summary)
  with open(tmp_path / "results.csv") as f:
    assert [r["diverged"] for r in csv.DictReader(f)] == ["False", "True"]


@pytest.mark.parametrize(
    "change, field, allowed",
    [
        (dict(models=("mlp_residual", "resnet_mlp")), "config.models", "mlp_plain"),
        (dict(depths=(2, 0)), "config.depths", "positive integers"),
        (dict(depths=()), "config.depths", "non-empty"),
        (dict(width=0), "config.model.width", "positive integer"),
        (dict(learning_rate=-0.1), "config.optimizer.learning_rate", "positive number"),
        (dict(branch_scale="1/L^2"), "config.model.branch_scale", "1/sqrt(L)"),
        (dict(depth=99), "config.model.depth", "override config.depths instead"),
        (dict(name="mlp_plain"), "config.model.name", "override config.models instead"),
    ],
)
def test_bad_sweep_config_fails_before_any_run(tmp_path, change, field, allowed):
  config = tiny_sweep()
  for key, value in change.items():
    section = config.model if key in ("width", "branch_scale", "depth", "name") else config.optimizer if key == "learning_rate" else config
    section[key] = value
  with pytest.raises(ConfigError) as error:
    sweep.run_sweep(config, str(tmp_path / "sweep"), progress=False)
  assert error.value.field == field and allowed in str(error.value)
  assert not os.path.exists(tmp_path / "sweep")


def test_a_workdir_of_the_previous_format_still_loads_and_aggregates(tmp_path):
  """tests/data/sweep_workdir_v0: a tiny sweep written by the code before the typed records."""
  old = os.path.join(REPO, "tests", "data", "sweep_workdir_v0")
  runs = records.runs_in([old])
  assert sorted((r.model, r.depth) for r in runs) == [(m, L) for m in ("mlp_plain", "mlp_residual") for L in (2, 4)]
  for run, path in ((r, os.path.join(old, "runs", sweep.run_name(r.model, r.depth), "summary.json")) for r in runs):
    assert run.to_json() == _read(path)  # read and written back, field for field
  assert records.SweepSummary.from_json(_read(os.path.join(old, "summary.json"))).to_json() == _read(
      os.path.join(old, "summary.json"))
  merged = sweep.aggregate([old], str(tmp_path / "merged"))
  assert merged.to_json() == _read(os.path.join(old, "summary.json"))
