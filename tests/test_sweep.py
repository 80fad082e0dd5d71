"""The depth sweep end to end: outputs, aggregation, reuse, divergence, bad input."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import helpers
from configs import default as config_default
from configs import depth_sweep as config_depth_sweep
from experiments import migrate, sweep_outputs, sweep_runner
from helpers import tiny_image_sweep, tiny_sweep
from resnorm import intervals, loop, plots, records, report, statistics, sweep_plan, sweep_summary, theory, train
from resnorm.config_validation import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
  """A joint sweep over L ∈ {2, 4} and the same sweep split into two single-depth jobs."""
  root = tmp_path_factory.mktemp("sweeps")
  joint = sweep_runner.run_sweep(tiny_sweep(), str(root / "joint"), progress=False)
  for depth in (2, 4):
    sweep_runner.run_sweep(tiny_sweep(depths=(depth,)), str(root / f"L{depth}"), progress=False)
  return root, joint


def _read(path):
  with open(path) as f:
    return json.load(f)


@pytest.mark.slow
def test_sweep_writes_complete_summary_csv_and_figure(sweeps):
  """A real tiny sweep writes summary.json (the public contract's keys), results.csv, report.md and the figures; only
  here end to end."""
  root, joint = sweeps
  summary = _read(root / "joint" / "summary.json")
  assert summary == joint.to_json()
  assert records.SweepSummary.from_json(summary) == joint
  assert summary["depths"] == [2, 4] and summary["diverged"] == [False, False]
  assert all(d > 0 for d in summary["delta_max"] + summary["delta_mean"])
  assert {"c", "r2", "slope", "laws"} <= set(summary["fit"])
  assert set(summary["models"]) == {"mlp_residual", "mlp_plain"}
  assert summary["models"]["mlp_residual"]["seeds"] == [0]
  assert all(0 < v for v in summary["models"]["mlp_residual"]["test_loss_relative"])
  for entry in summary["models"].values():
    assert len(entry["test_loss"]) == 2 and all(loss > 0 for loss in entry["test_loss"])
    for stage in ("init", "trained"):
      assert len(entry[stage]["delta_p99"]) == 2 and "fit" in entry[stage]
  with open(root / "joint" / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted((r["setting"], int(r["depth"])) for r in rows) == sorted(
    (m, L) for m in ("mlp_residual", "mlp_plain") for L in (2, 4)
  )
  assert all(float(r["trained_delta_max"]) > 0 for r in rows)
  for figure in ("delta_vs_depth.png", "delta_during_training.png", "task_vs_depth.png", "ratio_profile.png"):
    with open(root / "joint" / figure, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert (root / "joint" / "report.md").read_text() == report.render(joint)  # generated from the summary
  history = _read(root / "joint" / "runs" / sweep_plan.run_name("mlp_residual", 4, 0) / "summary.json")["history"]
  assert [h["step"] for h in history] == [10, 20]
  assert history[-1]["delta_max"] == summary["delta_max"][1]  # the last measurement is the trained one
  table = report.format_table(joint)
  assert "c_min" in table and "log-log slope" in table


@pytest.mark.slow
def test_aggregating_single_depth_jobs_equals_the_joint_sweep(sweeps, tmp_path):
  """Single-depth sweeps merged equal the joint sweep, and a run in two workdirs is refused; only here on real
  sweeps."""
  root, _ = sweeps
  merged = sweep_outputs.aggregate([str(root / "L4"), str(root / "L2")], str(tmp_path / "merged"))
  assert merged.to_json() == _read(root / "joint" / "summary.json")
  assert _read(tmp_path / "merged" / "config.json")["depths"] == [2, 4]
  with pytest.raises(ValueError, match="in both"):
    sweep_outputs.aggregate([str(root / "L2"), str(root / "joint")], str(tmp_path / "twice"))


@pytest.mark.slow
def test_aggregate_from_the_command_line(sweeps, tmp_path):
  """--aggregate through the entry point; only here."""
  root, _ = sweeps
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.sweep",
      "--aggregate",
      f"--workdir={tmp_path}",
      str(root / "L2"),
      str(root / "L4"),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert _read(tmp_path / "summary.json") == _read(root / "joint" / "summary.json")
  assert "mlp_residual (mlp_residual, 1 seed" in result.stdout and "δ_max init" in result.stdout


@pytest.mark.slow
def test_a_sweep_in_worker_processes_equals_the_sweep_in_one_process(sweeps, tmp_path):
  """``parallel_runs = 2``: the groups train in two spawned worker processes, and the summary is
  the one the same sweep wrote training them one after another in this process."""
  root, joint = sweeps
  config = tiny_sweep()
  config.parallel_runs = 2
  assert len(sweep_plan.groups(sweep_plan.plan(config))) == 2  # one group a worker
  assert sweep_runner.run_sweep(config, str(tmp_path), progress=False) == joint


@pytest.mark.slow
def test_a_finished_sweep_is_reused_not_retrained(sweeps, monkeypatch):
  """A finished sweep run again trains nothing and returns its summary; a changed num_steps is refused; only here."""
  root, joint = sweeps

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(loop, "train_group", no_training)
  assert sweep_runner.run_sweep(tiny_sweep(), str(root / "joint"), progress=False) == joint
  changed = tiny_sweep()
  changed.num_steps = 30
  with pytest.raises(ValueError, match="another config"):
    sweep_runner.run_sweep(changed, str(root / "joint"), progress=False)


def test_a_diverging_depth_is_recorded_and_the_sweep_goes_on(tmp_path):
  config = tiny_sweep(depths=(2, 64), settings=("mlp_residual",))
  # Unscaled branches double the mean square per block: 2^64 overflows the SGD step at L = 64.
  config.model.branch_scale = "1"
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.01
  summary = sweep_runner.run_sweep(config, str(tmp_path), progress=False)
  assert summary.reference.diverged == [False, True]
  assert summary.reference.trained.means["delta_max"][0] > 0 and summary.reference.trained.means["delta_max"][1] is None
  assert summary.reference.trained.fit["c"] is None
  assert "diverged@" in report.format_table(summary)
  with open(tmp_path / "results.csv") as f:
    assert [r["diverged"] for r in csv.DictReader(f)] == ["False", "True"]


@pytest.mark.parametrize(
  "change, field, allowed",
  [
    (dict(settings=("mlp_residual", "resnet_mlp")), "config.settings", "residual_zero_init"),
    (dict(settings=()), "config.settings", "non-empty"),
    (dict(seeds=(0, -1)), "config.seeds", "integers >= 0"),
    (dict(seeds=(0, 0)), "config.seeds", "distinct seeds"),
    (dict(learning_rate=float("inf")), "config.optimizer.learning_rate", "positive number"),
    (dict(block_lr_scale="1/L^2"), "config.optimizer.block_lr_scale", "1/sqrt(L)"),
    (dict(init_from="trained"), "config.init_from", "['constructed', 'random']"),
    (dict(depths=(2, 0)), "config.depths", "positive integers"),
    (dict(depths=()), "config.depths", "non-empty"),
    (dict(bound_L="blocks"), "config.bound_L", "['depth', 'layers']"),
    (dict(width=0), "config.model.width", "positive integer"),
    (dict(learning_rate=-0.1), "config.optimizer.learning_rate", "positive number"),
    (dict(branch_scale="1/L^2"), "config.model.branch_scale", "1/sqrt(L)"),
    (dict(depth=99), "config.model.depth", "override config.depths instead"),
    (dict(name="mlp_plain"), "config.model.name", "override config.settings instead"),
  ],
)
def test_bad_sweep_config_fails_before_any_run(tmp_path, change, field, allowed):
  config = tiny_sweep()
  for key, value in change.items():
    section = (
      config.model
      if key in ("width", "branch_scale", "depth", "name")
      else config.optimizer
      if key in ("learning_rate", "block_lr_scale")
      else config
    )
    section[key] = value
  with pytest.raises(ConfigError) as error:
    sweep_runner.run_sweep(config, str(tmp_path / "sweep"), progress=False)
  assert error.value.field == field and allowed in str(error.value)


def test_a_setting_on_another_dataset_takes_that_dataset_s_options_only():
  """The tasks variant: a setting whose data names another dataset replaces the sweep's data
  section; one that names the same dataset changes only the fields it gives."""
  config = config_depth_sweep.get_config("tasks")
  digits = sweep_plan.run_config(config, "zero_init_digits", 8, 0)
  assert digits.data.to_dict() == {"name": "digits", "test_size": 297}
  assert sweep_plan.run_config(config, "zero_init_teacher", 8, 0).data == config.data
  config.overrides.zero_init_teacher.data = dict(name="teacher", train_size=512)
  teacher = sweep_plan.run_config(config, "zero_init_teacher", 8, 0).data
  assert teacher.train_size == 512 and teacher.num_maps == config.data.num_maps
  long = sweep_plan.run_config(config, "zero_init_random_mlp_constant_10000", 8, 0)
  assert long.num_steps == 10_000 and long.optimizer.schedule == "constant" and long.data.name == "random_mlp"
  deep = config_depth_sweep.get_config("deep")
  assert deep.depths == (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) and deep.num_steps == 100
  assert sweep_plan.run_config(deep, "plain", 1024, 2).model.name == "mlp_plain"
  assert config_depth_sweep.get_config().depths == (2, 4, 8, 16, 32, 64, 128)


@pytest.mark.slow  # a real sweep on two datasets: the one test of a group loading its own data
def test_settings_on_different_datasets_each_train_on_their_own(tmp_path):
  """One sweep, the residual MLP on the teacher (regression) and on the digits (classification):
  each run's record is of its own task; a bad option of a setting's dataset is named under the
  setting, before anything runs; only here."""
  config = tiny_sweep(depths=(2,), settings=("teacher", "digits"))
  config.overrides = dict(
    teacher=dict(name="mlp_residual"), digits=dict(name="mlp_residual", data=dict(name="digits", test_size=297))
  )
  summary = sweep_runner.run_sweep(config, str(tmp_path / "sweep"), progress=False)
  assert summary.models["teacher"].test_accuracy is None and summary.models["teacher"].test_loss_relative
  assert summary.models["digits"].test_accuracy[0] > 0 and summary.models["digits"].test_loss_relative is None
  config.overrides.digits.data.test_size = 0
  with pytest.raises(ConfigError) as error:
    sweep_runner.run_sweep(config, str(tmp_path / "refused"), progress=False)
  assert error.value.field == "config.overrides.digits.data.test_size"
  assert not os.path.exists(tmp_path / "refused")


def test_a_bad_setting_override_names_its_field(tmp_path):
  config = tiny_sweep(settings=("residual_zero_init",))
  config.overrides.residual_zero_init.branch_scale = "1/L^2"
  with pytest.raises(ConfigError) as error:
    sweep_runner.run_sweep(config, str(tmp_path / "sweep"), progress=False)
  assert error.value.field == "config.overrides.residual_zero_init.branch_scale"
  assert not os.path.exists(tmp_path / "sweep")


def test_a_workdir_of_the_previous_format_is_converted_once_and_then_aggregates_as_its_summary(tmp_path):
  """tests/data/sweep_workdir_unversioned: a tiny sweep written by the code before the file format
  (commit 57e07df). Read as it is, it is refused with the command that converts it; converted,
  its summary (made again from its converted runs) keeps every number it held, the merge of its
  converted runs equals it, and the originals are kept beside the new files."""
  old = tmp_path / "old"
  shutil.copytree(os.path.join(REPO, "tests", "data", "sweep_workdir_unversioned"), old)
  with pytest.raises(records.FormatError, match="experiments.migrate"):
    sweep_outputs.aggregate([str(old)], str(tmp_path / "merged"))
  before = _read(old / "summary.json")
  done = migrate.migrate([str(old)])
  assert len(done) == 12  # the sweep's summary, config, runs.json and report, its four runs' summaries and configs
  assert _read(old / "summary.json.unversioned") == before
  after = _read(old / "summary.json")
  for name, family in before["models"].items():
    for stage in ("init", "trained"):
      converted = after["models"][name][stage]
      kept = {key: family[stage][migrate._earlier(key)] for key in converted if migrate._earlier(key) in family[stage]}
      assert len(kept) >= 20  # every column it kept is the same, made again from the runs
      for key, value in kept.items():
        if key not in ("std", "bound", "fit"):
          assert converted[key] == value, (name, stage, key)
      assert converted["bound_L"] == family[stage]["L"]
  assert migrate.migrate([str(old)]) == []  # converted once
  merged = sweep_outputs.aggregate([str(old)], str(tmp_path / "merged")).to_json()
  assert _holds(merged, _read(old / "summary.json"))  # every number it kept; the merge adds those it did not
  assert merged["models"]["plain"]["trained"]["num_ratios"] == [64, 128]  # (2 and 4 blocks × 32 examples)


def test_a_workdir_of_format_1_gains_its_loss_histories_and_the_verdicts_of_today_s_rule(tmp_path):
  """tests/data/sweep_workdir_format1: a tiny sweep written in format 1 (commit dc30bc1), with
  its runs' metrics.jsonl. Converted, every run holds its logged train losses and the verdict of
  today's rule on them; the summary, made again from the runs, keeps its means and gains every
  seed's values; runs.json and the report are written beside it."""
  old = tmp_path / "old"
  shutil.copytree(os.path.join(REPO, "tests", "data", "sweep_workdir_format1"), old)
  before = _read(old / "summary.json")
  migrate.migrate([str(old)])
  rule = config_default.get_config().convergence
  for run_dir in sorted((old / "runs").iterdir()):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [[row["step"], row["train_loss"]] for row in rows if "train_loss" in row]
    record = records.read_run(run_dir)
    assert record.train_losses == losses and len(losses) == 8
    steps, values = zip(*losses)
    assert record.convergence == train.convergence(steps, values, rule.window, rule.tolerance, rule.trend_tolerance)
    assert _read(run_dir / "summary.json.unversioned")["convergence"]["change"] is not None  # the old rule's
  summary = records.read_summary(old / "summary.json")
  for name, family in before["models"].items():
    np.testing.assert_allclose(summary.models[name].trained.means["delta_max"], family["trained"]["delta_max"])
    assert summary.models[name].trained.per_seed["delta_max"][0][1] is not None  # seed 1 at L = 2
  entries = _read(old / records.RUNS_FILE)["runs"]
  assert len(entries) == 8 and all(e["train_losses"] for e in entries)
  assert (old / "report.md").read_text() == report.render(summary)
  assert migrate.migrate([str(old)]) == []  # converted once


def test_every_verdict_is_recomputed_from_the_summary_and_runs_json_alone(tmp_path):
  """From summary.json and runs.json only (the format-1 sweep converted): every run's convergence
  verdict from its logged losses, the counts and mean falls the summary holds, and the bound
  reading's slope interval and c_L from the per-seed values."""
  workdir = tmp_path / "sweep"
  shutil.copytree(os.path.join(REPO, "tests", "data", "sweep_workdir_format1"), workdir)
  migrate.migrate([str(workdir)])
  summary = _read(workdir / "summary.json")
  entries = _read(workdir / summary["runs_file"])["runs"]
  for entry in entries:
    rule = {k: entry["convergence"][k] for k in ("window", "tolerance", "trend_tolerance")}
    assert train.convergence(*zip(*entry["train_losses"]), **rule) == entry["convergence"]
  for name, family in summary["models"].items():
    mine = [[e for e in entries if e["setting"] == name and e["depth"] == L] for L in family["depths"]]
    assert family["num_converged"] == [sum(e["convergence"]["converged"] for e in at) for at in mine]
    np.testing.assert_allclose(
      family["train_loss_fall"], [np.mean([e["convergence"]["fall"] for e in at]) for at in mine]
    )
  family = summary["models"]["residual_zero_init"]
  logs = [
    {s: np.log(v) for s, v in zip(family["seeds"], seeds)} for seeds in family["trained"]["per_seed"]["delta_max"]
  ]
  slope = intervals.slope(family["depths"], logs)
  reading = family["trained"]["bound"]["delta_max"]
  assert slope.interval is not None and reading["slope_interval"] == pytest.approx(slope.interval, rel=1e-12)
  needed = [np.exp(np.mean(list(y.values()))) * L / np.log(2 * L) for y, L in zip(logs, family["depths"])]
  assert reading["c_needed"] == pytest.approx(needed, rel=1e-12)


def _holds(new, old) -> bool:
  """Every entry of ``old`` that is not None is in ``new`` with the same value."""
  if isinstance(old, dict):
    return isinstance(new, dict) and all(k in new and _holds(new[k], v) for k, v in old.items())
  if isinstance(old, list):
    return isinstance(new, list) and len(new) == len(old) and all(map(_holds, new, old))
  return old is None or new == old


def test_the_first_format_is_refused_naming_it_and_nothing_is_converted(tmp_path):
  """tests/data/sweep_workdir_v0, written before sweeps had settings and seeds: no conversion."""
  old = tmp_path / "v0"
  shutil.copytree(os.path.join(REPO, "tests", "data", "sweep_workdir_v0"), old)
  files = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
  with pytest.raises(migrate.Unconvertible, match="the first format") as error:
    migrate.migrate([str(old)])
  assert "config.json" in str(error.value) and "mlp_plain_L00002/summary.json" in str(error.value)
  assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == files


def test_zero_initialised_branches_give_a_note_not_a_lost_sweep(tmp_path):
  """δ = 0 at every depth at initialisation (every block the identity, as test_signal.py measures
  of zero-initialised branches): no law can be fitted there, the sweep still writes its summary,
  with the note, and c_min = 0."""
  runs = []
  for depth, delta in ((2, 0.3), (4, 0.2)):
    run = _synthetic_run(depth, 0, depth, delta)
    zero = records.Measurement({"block": {**run.init.block, "delta_max": 0.0}}, {}, None)
    runs.append(dataclasses.replace(run, init=zero))
  summary = sweep_summary.summarize_sweep(runs, PREACT)
  init = summary.reference.init
  assert init.means["delta_max"] == [0.0, 0.0] and init.fit["c"] is None and "no fit" in init.fit["note"]
  assert init.bound["delta_max"].c_min == 0.0 and init.bound["delta_max"].slope is None
  assert summary.reference.trained.fit["c"] > 0
  sweep_outputs.write_outputs(tmp_path, summary, runs)
  assert _read(tmp_path / "summary.json")["fit"] == summary.reference.trained.fit


@pytest.mark.slow
def test_seeds_are_averaged_with_their_spread_and_bootstrapped(tmp_path):
  """Several seeds of a real sweep: means, spreads and the bound reading over them; only here end to end."""
  summary = sweep_runner.run_sweep(tiny_sweep(settings=("mlp_residual",), seeds=(0, 1)), str(tmp_path), progress=False)
  family = summary.reference
  runs = [
    records.read_run(tmp_path / sweep_plan.RUNS / sweep_plan.run_name("mlp_residual", 4, seed)) for seed in (0, 1)
  ]
  assert family.seeds == [0, 1]
  assert family.trained.means["delta_max"][1] == pytest.approx(np.mean([r.trained.block["delta_max"] for r in runs]))
  assert family.trained.std["delta_max"][1] == pytest.approx(
    np.std([r.trained.block["delta_max"] for r in runs], ddof=1)
  )
  reading = family.trained.bound["delta_max"]
  low, high = reading.slope_interval
  assert low <= reading.slope <= high and reading.seeds == [2, 2]
  assert reading.c_min == pytest.approx(
    theory.c_min(
      [2, 2, 4, 4],
      [
        records.read_run(tmp_path / sweep_plan.RUNS / sweep_plan.run_name("mlp_residual", L, s)).trained.block[
          "delta_max"
        ]
        for L in (2, 4)
        for s in (0, 1)
      ],
    )
  )


@pytest.fixture(scope="module")
def image_sweep(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("images")
  return workdir, sweep_runner.run_sweep(tiny_image_sweep(), str(workdir), progress=False)


@pytest.mark.slow
def test_image_sweep_reports_delta_per_kind_of_layer(image_sweep):
  """The pre-activation ResNet at n = 1 (depth 11: every block a transition, no identity block)
  and n = 2 (depth 20: one identity block per stage), ProcResNet at n = 1: δ per kind, the bound
  read against the identity blocks, and a network without them summarised, tabled and drawn
  with that kind empty."""
  workdir, summary = image_sweep
  data = _read(workdir / "summary.json")
  assert list(data["models"]) == ["preact_resnet", "procresnet"] and data["depths"] == [11, 20]
  preact, proc = data["models"]["preact_resnet"], data["models"]["procresnet"]
  assert proc["depths"] == [13]  # the setting's own depths
  assert preact["trained"]["num_layers"] == [None, 3] and proc["trained"]["num_layers"] == [3]
  assert preact["trained"]["delta_max"][0] is None and preact["trained"]["bound_L"] == "layers"
  runs = {(r.setting, r.depth): r for r in records.runs_in([workdir], sweep_plan.RUNS)}
  assert preact["trained"]["delta_max"][1] == runs["preact_resnet", 20].trained.block["delta_max"]
  assert runs["preact_resnet", 11].trained.block is None
  for name, transitions in (("preact_resnet", 3), ("procresnet", 2)):  # each stage's first block; T₁, T₂
    entry = data["models"][name]
    assert set(entry["by_kind"]) == {"stem", "transition"}, name
    assert entry["by_kind"]["transition"]["trained"]["num_layers"] == [transitions] * len(entry["depths"]), name
  assert preact["test_accuracy"] == [runs["preact_resnet", L].test_accuracy for L in (11, 20)]
  run = runs["procresnet", 13]
  assert run.init.layers["kind"].count("transition") == 2 and run.setting == "procresnet"
  assert json.loads((workdir / sweep_plan.RUNS / sweep_plan.run_name("procresnet", 13, 0) / "config.json").read_text())[
    "procrustes"
  ]["enabled"]
  with open(workdir / "results.csv") as f:
    rows = {(r["setting"], r["depth"]): r for r in csv.DictReader(f)}
  assert rows["preact_resnet", "11"]["trained_delta_max"] == "" and rows["preact_resnet", "20"]["trained_delta_max"]
  for figure in (
    "delta_by_kind.png",
    "ratio_profile.png",
    "task_vs_depth.png",
    "delta_vs_depth.png",
    "ratio_heatmap.png",
  ):
    assert (workdir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # the paper's figure: one row per layer of the network, the stem and every transition included,
  # in eval mode per example and in the reference's train-mode mini-batch measure
  heatmap = sweep_outputs._heatmap_runs([workdir], list(runs.values()), ["preact_resnet", "procresnet"])
  for (label, rows), run in zip(heatmap.items(), (runs["preact_resnet", 20], runs["procresnet", 13])):
    assert plots.ratio_measures(rows) == ["ratio_mean", "train_batch_ratio"], label
    grid, kinds = plots.ratio_grid(rows)
    assert grid.shape == (len(run.init.layers["kind"]), 2) and kinds == run.init.layers["kind"], label
    assert kinds.count("stem") == 1 and kinds.count("transition") == (3 if run.setting == "preact_resnet" else 2)
    in_train_mode, _ = plots.ratio_grid(rows, "train_batch_ratio")
    assert in_train_mode.shape == grid.shape and not np.allclose(in_train_mode, grid, rtol=1e-3), label
  table = report.format_table(summary)
  assert "transition δ_max [L = transitions]" in table and "depth  blocks" in table


PREACT = {"preact_resnet": {"name": "preact_resnet"}}  # one setting, the family as configured


def _synthetic_run(
  depth: int, seed: int, blocks: int, delta: float, train_loss: float = 0.1, transition: float = 0.5
) -> records.RunRecord:
  """A run whose identity blocks (``blocks`` of them; none when 0) all have δ_max = ``delta``,
  with two transitions of δ_max ``transition``."""

  def stats(value, layers):
    values = {name: None if name.startswith("direction_free_") else value for name in statistics.REGISTRY}
    return {**values, "delta_mean": value / 2, "num_layers": layers, "num_examples": 8, "num_ratios": 8 * layers}

  by_kind = {"transition": stats(transition, 2), **({"block": stats(delta, blocks)} if blocks else {})}
  measurement = records.Measurement(by_kind, {}, None)
  return records.RunRecord(
    model="preact_resnet",
    depth=depth,
    steps=10,
    diverged=False,
    diverged_at_step=None,
    last_checkpoint=None,
    train_loss=train_loss,
    train_seconds=1.0,
    init=measurement,
    history=[],
    trained=measurement,
    setting="preact_resnet",
    seed=seed,
    budget=dict(
      steps=10,
      optimizer="sgd",
      learning_rate=0.1,
      schedule="constant",
      warmup_epochs=0.0,
      batch_size=8,
      block_lr_scale="1",
    ),
    group_size=1,
    init_test_loss=0.3,
    test_loss=0.2,
    test_accuracy=0.9,
  )


def test_the_bound_reads_L_as_the_identity_blocks_or_as_the_depth_and_c_min_moves_as_the_law_says():
  """Pre-activation networks of depth 9n+2 hold 3(n−1) identity blocks: with δ_max = 2·log(2L)/L
  in L = blocks, the reading against blocks gives c_min = 2 and the law's slope exactly; against
  the depth, c_min is δ·D/log(2D) at the depth that needs most; the depth without blocks is left
  out of both, and the tables say which L they use."""
  depths, blocks = (11, 29, 47, 83), (0, 6, 12, 24)
  runs = [
    _synthetic_run(D, s, n, float(theory.delta_bound(n, 2.0)) if n else 0.0)
    for D, n in zip(depths, blocks)
    for s in (0, 1)
  ]
  by_blocks = sweep_summary.summarize_sweep(runs, PREACT).models["preact_resnet"]
  by_depth = sweep_summary.summarize_sweep(runs, PREACT, bound_L="depth").models["preact_resnet"]
  reading = by_blocks.trained.bound["delta_max"]
  assert by_blocks.trained.means["num_layers"] == [None, 6, 12, 24] and by_blocks.trained.bound_L == "layers"
  assert reading.c_min == pytest.approx(2.0) and reading.seeds == [2, 2, 2]
  assert reading.slope == pytest.approx(reading.laws["c*log(2L)/L"].slope)
  needed = [float(theory.delta_bound(n, 2.0)) * D / np.log(2 * D) for D, n in zip(depths[1:], blocks[1:])]
  assert by_depth.trained.bound["delta_max"].c_min == pytest.approx(max(needed))
  assert by_depth.trained.bound["delta_max"].c_min_depth == depths[1 + int(np.argmax(needed))]
  # transitions: two at every depth, so one L and no slope; c_min = 0.5·2/log 4 against their count
  transitions = by_blocks.by_kind["transition"]["trained"].bound["delta_max"]
  assert transitions.c_min == pytest.approx(0.5 * 2 / np.log(4)) and transitions.slope is None
  table = report.format_table(sweep_summary.summarize_sweep(runs, PREACT))
  assert "depth  blocks" in table and "[L = identity blocks]" in table and "[L = transitions]" in table
  assert "[L = network depth]" in report.format_table(sweep_summary.summarize_sweep(runs, PREACT, bound_L="depth"))


def test_the_report_of_an_image_sweep_counts_blocks_reads_transitions_and_degradation_from_train_loss():
  """Its table has the identity blocks beside the depth; the transitions get their own reading
  and a comparison with the blocks, a ratio paired by seed, that names the depths it holds at; the
  train loss's change from the shallowest to the deepest network is a ratio paired by seed."""
  depths, blocks = (11, 29, 47), (0, 6, 12)
  rising = [
    _synthetic_run(D, s, n, 0.1 if n else 0.0, train_loss=0.1 * (1 + i) + 0.01 * s, transition=0.5 + 0.05 * (s - 1))
    for i, (D, n) in enumerate(zip(depths, blocks))
    for s in (0, 1, 2)
  ]
  text = report.render(sweep_summary.summarize_sweep(rising, PREACT))
  assert "| depth | L (identity blocks) | seeds |" in text and "| 11 | 0 | 3 |" in text
  assert "transition δ_max (L = 2 transitions): fewer than two values of L" in text
  # transitions' mean δ 0.25·(0.9, 1, 1.1) against the blocks' 0.05 where there are blocks: ×4.98 (geometric)
  assert (
    "Mean δ of the transition layers over the identity blocks' in the same runs (a ratio with its 90% interval, "
    "paired by seed): above at depths 29, 47 (29: ×4.98 ["
  ) in text
  assert "Train loss from depth 11 to depth 47: 0.11 [" in text and "(paired by seed): detected." in text
  flat = [
    _synthetic_run(D, s, n, 0.1 if n else 0.0, train_loss=0.1 + 0.05 * s + 0.005 * ((i + s) % 3))
    for i, (D, n) in enumerate(zip(depths, blocks))
    for s in (0, 1, 2)
  ]
  flat_text = report.render(sweep_summary.summarize_sweep(flat, PREACT))
  assert "Train loss from depth 11 to depth 47" in flat_text and "(paired by seed): not detectable" in flat_text


@pytest.mark.slow
def test_a_second_sweep_reads_every_program_from_the_persistent_cache(tmp_path):
  """``--compilation_cache``: a sweep in a new process (a new workdir, the same cache) after a first
  one compiles nothing. The cache keeps one entry per compiled program (the sweep caches programs
  of any compile time), so the second adds none; a program whose trace held a number that
  differs between the processes would add one."""
  cache = tmp_path / "cache"
  flags = [
    "--config=configs/depth_sweep.py",
    "--config.depths=(2,)",
    "--config.settings=('residual_zero_init','plain')",
    "--config.overrides.residual_zero_init.seeds=(0,)",
    "--config.seeds=(0,)",
    "--config.num_steps=20",
    "--config.log_every=10",
    "--config.signal.every=10",
    "--config.data.train_size=256",
    "--config.data.test_size=64",
    "--config.signal.num_examples=32",
    f"--compilation_cache={cache}",
  ]
  env = {k: v for k, v in helpers.cpu_env().items() if k != "JAX_COMPILATION_CACHE_DIR"}  # the session's would win
  entries = []
  for attempt in ("first", "second"):
    done = subprocess.run(
      [sys.executable, "-m", "experiments.sweep", f"--workdir={tmp_path / attempt}", *flags],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    entries.append(sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file() and "atime" not in p.name))
  assert len(entries[0]) >= 5 and entries[1] == entries[0]  # stretch, states, ratios, direction-free δ, evaluation
  assert _read(tmp_path / "second" / "summary.json") == _read(tmp_path / "first" / "summary.json")
