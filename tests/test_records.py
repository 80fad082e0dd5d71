"""The typed records round-trip through JSON; the path layer on a local directory and on a
``gs://`` workdir (``etils.epath.testing.mock_epath`` standing in for cloud storage)."""

import json
import math
import os

import pytest
from etils.epath import testing as epath_testing

from resnorm import records, statistics


def _stats(delta_max):
  """Every registered statistic, as a measurement computes them, with δ_max = ``delta_max``."""
  stats = {name: 0.125 for name in statistics.REGISTRY}
  return {**stats, "delta_max": delta_max, "direction_free_delta_max": None}


def _record(**changes):
  init = records.Measurement({"block": _stats(0.5), "stem": _stats(0.25)}, {"delta_mean": [0.1, 0.2]}, None)
  fields = dict(
    model="mlp_residual",
    depth=2,
    steps=20,
    diverged=False,
    diverged_at_step=None,
    last_checkpoint=20,
    train_loss=0.5,
    train_seconds=1.25,
    init=init,
    history=[{"step": 10, "delta_max": 0.4, "delta_mean": 0.1, "log_gain": 0.2}],
    setting="residual",
    seed=0,
    budget=dict(steps=20, optimizer="adam", learning_rate=1e-3, schedule="cosine", batch_size=32, block_lr_scale="1"),
    group_size=1,
    init_test_loss=1.0,
    test_loss=0.75,
    trained=records.Measurement({"block": _stats(0.375)}, {"delta_mean": [0.3, 0.1]}, None),
  )
  return records.RunRecord(**{**fields, **changes})


def test_run_record_round_trips_through_json():
  record = _record()
  data = json.loads(json.dumps(record.to_json()))
  assert records.RunRecord.from_json(data) == record
  assert data["format"] == records.FORMAT and data["init"]["by_kind"]["block"]["delta_max"] == 0.5
  assert data["test_accuracy"] is None  # every field is written, unset ones as null


def test_a_diverged_record_writes_nan_as_null_and_has_no_trained_measurement():
  record = _record(diverged=True, diverged_at_step=6, train_loss=math.nan, test_loss=None, trained=None)
  data = json.loads(json.dumps(record.to_json()))  # strict JSON: no bare NaN
  assert data["train_loss"] is None and data["trained"] is None and data["diverged_at_step"] == 6
  assert records.RunRecord.from_json(data).trained is None


def test_a_record_of_another_format_or_missing_a_field_is_refused_naming_its_file(tmp_path):
  """A record without this format (written by an earlier resnorm) is refused with the command that
  converts it; one of this format missing a field is unreadable, naming the file."""
  run = tmp_path / "run"
  run.mkdir()
  data = _record().to_json()
  records.write_json(run / "summary.json", {k: v for k, v in data.items() if k != "format"})
  with pytest.raises(
    records.FormatError, match=f"{run}/summary.json was written by an earlier resnorm.*experiments.migrate"
  ):
    records.read_run(run)
  records.write_json(run / "summary.json", {**data, "format": records.FORMAT + 1})
  with pytest.raises(records.FormatError, match=f"in format {records.FORMAT + 1}"):
    records.read_run(run)
  records.write_json(run / "summary.json", {k: v for k, v in data.items() if k != "budget"})
  with pytest.raises(records.UnreadableRecord, match=f"{run}/summary.json is not a run record.*budget"):
    records.read_run(run)


def test_jsonl_log_appends_rewinds_and_keeps_every_record_across_a_kill(tmp_path, caplog):
  log = records.JsonlLog(tmp_path / "metrics.jsonl")
  for step in (5, 10, 15):
    log.append({"step": step, "train_loss": 1.0 / step})
  assert [r["step"] for r in records.JsonlLog(tmp_path / "metrics.jsonl").records] == [5, 10, 15]
  # A kill during the next append: its line is cut short; every complete record is kept.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 20, "train_lo')
  resumed = records.JsonlLog(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in resumed.records] == [5, 10, 15] and "dropped its last line" in caplog.text
  resumed.append({"step": 20, "train_loss": 0.05})  # rewrites the file without the cut line
  assert [r["step"] for r in records.JsonlLog(tmp_path / "metrics.jsonl").records] == [5, 10, 15, 20]
  assert [r["step"] for r in resumed.rewind(10)] == [5, 10]
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2
  reader = records.JsonlLog(tmp_path / "metrics.jsonl", write=False)
  reader.rewind(5)
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2  # a reader never writes


def test_a_field_of_the_wrong_type_or_a_row_without_a_step_is_unreadable_naming_it(tmp_path):
  """A number stored as a string in a run record, a log row without its step: refused where they
  are read (a sweep then sets the run aside), naming the file and the field."""
  run = tmp_path / "run"
  run.mkdir()
  records.write_json(run / "summary.json", {**_record().to_json(), "test_loss": "0.75"})
  with pytest.raises(
    records.UnreadableRecord, match=f"{run}/summary.json is not a run record.*field test_loss is '0.75'"
  ):
    records.read_run(run)
  records.write_json(run / "summary.json", {**_record().to_json(), "depth": True})
  with pytest.raises(records.UnreadableRecord, match="field depth is True: expected int"):
    records.read_run(run)
  (run / "metrics.jsonl").write_text('{"step": 5, "train_loss": 1.0}\n{"train_loss": 0.5}\n')
  with pytest.raises(records.UnreadableRecord, match="metrics.jsonl: its record 2 has no integer step"):
    records.JsonlLog(run / "metrics.jsonl")


def test_a_rewound_log_holds_each_row_once_in_step_order_whatever_wrote_it(tmp_path):
  """Rows that two writers left duplicated and out of order: the rewind keeps each (step, kind of
  row) once, in step order, up to the step, and writes the file so."""
  rows = [
    {"step": 10, "train_loss": 0.5},
    {"step": 5, "train_loss": 1.0},
    {"step": 10, "train_loss": 0.5},
    {"step": 10, "test_loss": 0.7},
    {"step": 15, "train_loss": 0.25},
    {"step": 5, "train_loss": 1.0},
  ]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  kept = records.JsonlLog(tmp_path / "metrics.jsonl").rewind(10)
  assert kept == [rows[1], rows[0], rows[3]]
  assert records.JsonlLog(tmp_path / "metrics.jsonl").records == kept


def test_a_groups_records_are_committed_together_whenever_the_writer_is_killed(tmp_path, monkeypatch):
  """Killed in the first phase (one pending record of two): no run is finished, and the pending
  one is not committed. Killed in the second (one record committed): the other's commit is
  finished from its pending record, equal to what was to be written."""
  group = [_record(seed=0), _record(seed=1)]
  real_write_json, real_write_run = records.write_json, records.write_run

  def killed_after(count, real):
    calls = []

    def write(*args):
      if len(calls) == count:
        raise SystemExit("killed")
      calls.append(args)
      real(*args)

    return write

  first, second = [tmp_path / "first" / str(seed) for seed in (0, 1)], [tmp_path / "second" / str(s) for s in (0, 1)]
  for run_dir in first + second:
    run_dir.mkdir(parents=True)
  monkeypatch.setattr(records, "write_json", killed_after(1, real_write_json))
  with pytest.raises(SystemExit):
    records.write_group_runs(first, group)
  monkeypatch.setattr(records, "write_json", real_write_json)
  assert (first[0] / records.PENDING).exists() and not (first[1] / records.PENDING).exists()
  assert not records.commit_pending(first[0]) and not (first[0] / "summary.json").exists()
  monkeypatch.setattr(records, "write_run", killed_after(1, real_write_run))
  with pytest.raises(SystemExit):
    records.write_group_runs(second, group)
  monkeypatch.setattr(records, "write_run", real_write_run)
  assert records.read_run(second[0]) == group[0] and not (second[0] / records.PENDING).exists()
  assert not (second[1] / "summary.json").exists() and records.commit_pending(second[1])
  assert records.read_run(second[1]) == group[1] and not (second[1] / records.PENDING).exists()


def test_jsonl_log_appends_without_rewriting_on_a_local_disk(tmp_path, monkeypatch):
  """Each append adds one line: the earlier lines are never written again (no atomic rewrite)."""
  log = records.JsonlLog(tmp_path / "signal.jsonl")
  log.append({"step": 1})
  monkeypatch.setattr(records, "write_text", lambda *args: pytest.fail("rewrote the whole log"))
  for step in range(2, 50):
    log.append({"step": step})
  assert [r["step"] for r in records.JsonlLog(tmp_path / "signal.jsonl").records] == list(range(1, 50))


def test_a_line_damaged_before_the_last_is_an_unreadable_log(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"st\n{"step": 3}\n')
  with pytest.raises(records.UnreadableRecord, match="metrics.jsonl does not read as JSON lines"):
    records.JsonlLog(tmp_path / "metrics.jsonl")


def mock_cloud(root):
  """``gs://`` paths mapped onto the local directory ``root`` for every epath file operation."""

  def local(fn, path, *args, **kwargs):
    rewritten = [str(a).replace("gs://", f"{root}/") if str(a).startswith("gs://") else a for a in (path, *args)]
    return fn(*rewritten, **kwargs)

  names = (
    "copy",
    "exists",
    "glob",
    "isdir",
    "listdir",
    "makedirs",
    "mkdir",
    "open",
    "remove",
    "rename",
    "replace",
    "rmtree",
    "stat",
    "walk",
  )
  return epath_testing.mock_epath(**{name: local for name in names})


def test_records_on_a_cloud_workdir(tmp_path):
  with mock_cloud(tmp_path):
    run_dir = records.path("gs://bucket/sweep/runs/a")
    run_dir.mkdir(parents=True)
    records.write_run(run_dir, _record())
    assert records.read_run("gs://bucket/sweep/runs/a") == _record()
    assert records.runs_in(["gs://bucket/sweep"]) == [_record()]
    log = records.JsonlLog("gs://bucket/sweep/runs/a/signal.jsonl")
    log.append({"step": 1})
  assert (tmp_path / "bucket" / "sweep" / "runs" / "a" / "summary.json").exists()
  assert (tmp_path / "bucket" / "sweep" / "runs" / "a" / "signal.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.slow
def test_a_sweep_on_a_cloud_workdir_reuses_its_runs_and_aggregates(tmp_path, monkeypatch):
  """Two single-depth sweeps written to gs://, run again (the finished runs are reused), then
  merged into a third gs:// workdir: the merge equals a local joint sweep's summary."""
  from experiments import sweep_outputs, sweep_runner
  from helpers import tiny_sweep
  from resnorm import loop

  def config(depths):
    single = tiny_sweep(depths=depths, settings=("mlp_residual",))
    single.checkpoint_every, single.tensorboard = 0, False  # TensorBoard's writer is local-only
    return single

  joint = sweep_runner.run_sweep(config((2, 4)), str(tmp_path / "local"), progress=False)
  # Orbax asks the storage client itself (not epath) whether a gs:// bucket has a hierarchical namespace.
  from orbax.checkpoint._src.path import gcs_utils

  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda *args, **kwargs: False)
  with mock_cloud(tmp_path / "cloud"):
    for depth in (2, 4):
      sweep_runner.run_sweep(config((depth,)), f"gs://bucket/L{depth}", progress=False)
    monkeypatch.setattr(loop, "train_group", lambda *args, **kwargs: pytest.fail("a finished run retrained"))
    sweep_runner.run_sweep(config((2,)), "gs://bucket/L2", progress=False)
    merged = sweep_outputs.aggregate(["gs://bucket/L2", "gs://bucket/L4"], "gs://bucket/all")
  assert merged.to_json() == joint.to_json()
  written = tmp_path / "cloud" / "bucket" / "all"
  assert {"summary.json", "results.csv", "config.json", "delta_vs_depth.png"} <= {p.name for p in written.iterdir()}
  assert not (tmp_path / "gs:").exists() and not any(tmp_path.glob("**/gs:"))  # nothing escaped to a local "gs:"


def test_an_atomic_write_reaches_the_disk_before_its_name_does(tmp_path, monkeypatch):
  """write_text fsyncs the temporary file before renaming it: at the fsync the name does not
  exist yet, and the file synced is the temporary one holding every byte."""
  target, synced = tmp_path / "summary.json", []
  real_fsync = os.fsync

  def fsync(fd):
    synced.append((os.readlink(f"/proc/self/fd/{fd}"), target.exists()))
    real_fsync(fd)

  monkeypatch.setattr(records.os, "fsync", fsync)
  records.write_text(target, '{"format": 2}')
  ((written, named_yet),) = synced
  assert ".tmp-" in written and os.path.dirname(written) == str(tmp_path) and not named_yet
  assert target.read_text() == '{"format": 2}' and not list(tmp_path.glob("*.tmp-*"))
