"""Faults a sweep meets on shared machines: mistakes at the door, files cut short or garbled,
checkpoints missing their item, workdirs merged by hand, writes that fail."""

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

import helpers
from experiments import sweep_outputs, sweep_runner
from helpers import tiny_sweep
from resnorm import checkpoints, loop, ownership, preemption, records, report, sweep_plan
from test_train import tiny_run


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
  """A finished sweep of one setting, one depth and two seeds, and its summary."""
  workdir = tmp_path_factory.mktemp("two_seeds") / "sweep"
  config = tiny_sweep(depths=(2,), settings=("mlp_residual",), seeds=(0, 1))
  return config, workdir, sweep_runner.run_sweep(config, str(workdir), progress=False)


def _copy(workdir, tmp_path):
  shutil.copytree(workdir, tmp_path / "copy")
  return tmp_path / "copy"


def _run_dir(workdir, seed):
  return workdir / sweep_plan.RUNS / sweep_plan.run_name("mlp_residual", 2, seed)


def test_runs_whose_files_do_not_read_are_set_aside_and_trained_again(two_seeds, tmp_path, caplog):
  """A summary cut in half (seed 0) and a metrics log with a row cut mid-row before its last (seed
  1; a last row cut short is what a kill during an append leaves, and is dropped): the rerun names
  each file, moves both runs to set_aside/ and ends with the uninterrupted sweep's summary."""
  config, workdir, summary = two_seeds
  copy = _copy(workdir, tmp_path)
  text = (_run_dir(copy, 0) / "summary.json").read_text()
  (_run_dir(copy, 0) / "summary.json").write_text(text[: len(text) // 2])
  lines = (_run_dir(copy, 1) / "metrics.jsonl").read_text().splitlines()
  lines[0] = lines[0][: len(lines[0]) // 2]
  (_run_dir(copy, 1) / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  rerun = sweep_runner.run_sweep(config, str(copy), progress=False)
  assert rerun.to_json() == summary.to_json()
  assert sorted(p.name.split(".")[0] for p in (copy / sweep_runner.SET_ASIDE).iterdir()) == [
    sweep_plan.run_name("mlp_residual", 2, seed) for seed in (0, 1)
  ]
  for seed, name in ((0, "summary.json"), (1, "metrics.jsonl")):
    assert str(_run_dir(copy, seed) / name) in caplog.text


def test_a_run_record_missing_a_field_is_unreadable_and_names_its_file(two_seeds, tmp_path):
  _, workdir, _ = two_seeds
  copy = _copy(workdir, tmp_path)
  data = json.loads((_run_dir(copy, 0) / "summary.json").read_text())
  del data["depth"]
  (_run_dir(copy, 0) / "summary.json").write_text(json.dumps(data))
  with pytest.raises(records.UnreadableRecord, match=str(_run_dir(copy, 0) / "summary.json")):
    records.read_run(_run_dir(copy, 0))


def test_a_rerun_with_another_config_is_refused_before_anything_changes(two_seeds, tmp_path):
  config, workdir, _ = two_seeds
  copy = _copy(workdir, tmp_path)
  before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
  changed = tiny_sweep(depths=(2,), settings=("mlp_residual",), seeds=(0, 1))
  changed.num_steps = 30
  with pytest.raises(records.WorkdirError, match=r"holds 2 runs of another config: .*num_steps: 20 there, 30 now"):
    sweep_runner.run_sweep(changed, str(copy), progress=False)
  assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_a_run_without_its_config_and_a_seed_copied_over_another_are_set_aside_and_trained_again(
  two_seeds, tmp_path, caplog
):
  """Seed 0's record copied over seed 1's (the seeds would still read (0, 1)), and seed 0's
  ``config.json`` deleted (nothing shows which config trained it): the rerun names each file and
  why, sets both runs aside and ends with the uninterrupted sweep's summary."""
  config, workdir, summary = two_seeds
  copy = _copy(workdir, tmp_path)
  shutil.copy(_run_dir(copy, 0) / "summary.json", _run_dir(copy, 1) / "summary.json")
  (_run_dir(copy, 0) / "config.json").unlink()
  rerun = sweep_runner.run_sweep(config, str(copy), progress=False)
  assert rerun.to_json() == summary.to_json()
  assert sorted(p.name.split(".")[0] for p in (copy / sweep_runner.SET_ASIDE).iterdir()) == [
    sweep_plan.run_name("mlp_residual", 2, seed) for seed in (0, 1)
  ]
  assert f"{_run_dir(copy, 0) / 'summary.json'} is not this run's record (config.json: absent" in caplog.text
  assert f"{_run_dir(copy, 1) / 'summary.json'} is not this run's record (seed: 0 in its record, 1 for" in caplog.text


def test_aggregate_refuses_a_run_whose_record_is_not_its_run_and_every_byte_stays(two_seeds, tmp_path):
  """A record whose budget says 10 steps in a 20-step sweep, and a run without ``config.json``:
  refused naming the run and the field; the source unchanged, nothing written."""
  _, workdir, _ = two_seeds
  copy = _copy(workdir, tmp_path)
  data = json.loads((_run_dir(copy, 0) / "summary.json").read_text())
  data["budget"]["steps"] = data["steps"] = 10
  (_run_dir(copy, 0) / "summary.json").write_text(json.dumps(data))
  (_run_dir(copy, 1) / "config.json").unlink()
  before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
  with pytest.raises(records.WorkdirError) as refusal:
    sweep_outputs.aggregate([str(copy)], str(tmp_path / "merged"))
  assert f"{_run_dir(copy, 0).name} (budget.steps: 10 in its record, 20 for this run" in str(refusal.value)
  assert f"{_run_dir(copy, 1).name} (config.json: absent" in str(refusal.value)
  assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
  assert not (tmp_path / "merged").exists()


def test_aggregate_into_its_source_or_a_live_workdir_is_refused_and_every_byte_stays(two_seeds, tmp_path):
  """Into one of its sources, into a sweep's workdir, and into a directory whose lock a living
  process holds: refused before anything is written, every file as it was."""
  _, workdir, _ = two_seeds
  copy = _copy(workdir, tmp_path)
  live = tmp_path / "live"
  live.mkdir()
  before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
  with pytest.raises(records.WorkdirError, match="is one of the workdirs to merge"):
    sweep_outputs.aggregate([str(copy)], str(copy), allow_incomplete=True)
  with pytest.raises(records.WorkdirError, match="is a sweep's workdir"):
    sweep_outputs.aggregate([str(workdir)], str(copy))
  with ownership.WorkdirLock(live):
    held = (live / "lock.json").read_bytes()
    with pytest.raises(records.WorkdirError, match=f"{live} is in use by process {os.getpid()}"):
      sweep_outputs.aggregate([str(copy)], str(live))
    assert [p.name for p in live.iterdir()] == ["lock.json"] and (live / "lock.json").read_bytes() == held
  assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_aggregate_refuses_runs_of_another_config_and_names_unfinished_ones(two_seeds, tmp_path):
  _, workdir, summary = two_seeds
  mixed = _copy(workdir, tmp_path)
  run_config = json.loads((_run_dir(mixed, 1) / "config.json").read_text())
  run_config["optimizer"]["learning_rate"] = 0.5
  (_run_dir(mixed, 1) / "config.json").write_text(json.dumps(run_config))
  with pytest.raises(records.WorkdirError, match="not those its sweep config plans.*s1 .*learning_rate: 0.5 there"):
    sweep_outputs.aggregate([str(mixed)], str(tmp_path / "merged"))
  assert not (tmp_path / "merged").exists()
  shutil.rmtree(mixed)
  incomplete = _copy(workdir, tmp_path)
  (_run_dir(incomplete, 1) / "summary.json").unlink()
  with pytest.raises(records.WorkdirError, match=f"1 runs are not finished: {_run_dir(incomplete, 1)}"):
    sweep_outputs.aggregate([str(incomplete)], str(tmp_path / "merged"))
  merged = sweep_outputs.aggregate([str(incomplete)], str(tmp_path / "merged"), allow_incomplete=True)
  assert merged.reference.seeds == [0] and summary.reference.seeds == [0, 1]
  with pytest.raises(records.WorkdirError, match="/nonexistent/sweep is not a sweep workdir"):
    sweep_outputs.aggregate(["/nonexistent/sweep"], str(tmp_path / "nothing"))
  with pytest.raises(records.WorkdirError, match="no workdirs to merge"):
    sweep_outputs.aggregate([], str(tmp_path / "nothing"))


def test_a_later_checkpoint_missing_its_item_falls_back_to_the_one_before(tmp_path, caplog):
  """Checkpoints at steps 10 and 20 of a 20-step run; step 20 loses its item directory. Going on
  to 30 steps resumes from step 10 and ends as the uninterrupted 30-step run."""
  loop.train_and_evaluate(tiny_run(), tmp_path / "run")
  for item in (tmp_path / "run" / "checkpoints" / "20").iterdir():
    if item.is_dir():
      shutil.rmtree(item)
  resumed = loop.train_and_evaluate(tiny_run(num_steps=30), tmp_path / "run")
  assert "resumed from step 10" in caplog.text
  assert sorted(os.listdir(tmp_path / "run" / "unreadable_checkpoints")) == ["20"]
  straight = loop.train_and_evaluate(tiny_run(num_steps=30), tmp_path / "straight")
  assert resumed.test_loss == straight.test_loss and resumed.trained == straight.trained


def test_a_malformed_checkpoint_index_entry_restores_unverified_and_the_run_goes_on(tmp_path, caplog):
  """Step 20's entry in checkpoints.json without its losses: a warning names the step, the
  checkpoint restores unverified, and the run goes on to 30 steps with the uninterrupted run's
  trained numbers (its first row after the resume averages the steps since the resume)."""
  loop.train_and_evaluate(tiny_run(), tmp_path / "run")
  index = json.loads((tmp_path / "run" / checkpoints.INDEX).read_text())
  del index["20"]["losses_since_log"]
  (tmp_path / "run" / checkpoints.INDEX).write_text(json.dumps(index))
  resumed = loop.train_and_evaluate(tiny_run(num_steps=30), tmp_path / "run")
  assert "the entries of steps [20] are malformed: those checkpoints restore unverified" in caplog.text
  straight = loop.train_and_evaluate(tiny_run(num_steps=30), tmp_path / "straight")
  assert resumed.test_loss == straight.test_loss and resumed.trained == straight.trained


def test_a_run_another_process_trains_is_left_alone(two_seeds, tmp_path):
  """A run directory whose lock a living process holds (a second sweep started on a workdir whose
  own lock was deleted): the sweep that would train it is refused naming it, before anything in
  the workdir changes, and so is a group trained there directly."""
  config, workdir, _ = two_seeds
  copy = _copy(workdir, tmp_path)
  (_run_dir(copy, 1) / "summary.json").unlink()
  with ownership.WorkdirLock(_run_dir(copy, 1)):
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(records.WorkdirError, match=f"{_run_dir(copy, 1)} is in use by process {os.getpid()}"):
      sweep_runner.run_sweep(config, str(copy), progress=False)
    with pytest.raises(records.WorkdirError, match=f"{_run_dir(copy, 1)} is in use by process {os.getpid()}"):
      loop.train_group([sweep_plan.plan(config)[1].config], [_run_dir(copy, 1)])
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_a_checkpoint_of_another_layout_of_the_state_is_refused_and_kept(tmp_path):
  """A checkpoint whose tree is not this model's state (here: the constants of an earlier layout,
  without the skip's weight) does not restore: the run stops naming the step, and nothing is
  moved or deleted."""
  real_save = checkpoints.save

  def save_another_layout(manager, workdir, step, state, **kwargs):
    constants = {"02_block": {"branch_scale": state.constants["02_block"]["branch_scale"]}}
    return real_save(manager, workdir, step, state.replace(constants=constants), **kwargs)

  config = tiny_run()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(checkpoints, "save", save_another_layout)
    loop.train_and_evaluate(config, tmp_path / "run")
  (tmp_path / "run" / "summary.json").unlink()
  saved = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
  with pytest.raises(records.WorkdirError, match="no checkpoint restores.*step 20: .*step 10: "):
    loop.train_and_evaluate(config, tmp_path / "run")
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == saved


def _flip_a_bit(directory):
  """Flips one bit in the middle of the largest file under ``directory`` (an array's data)."""
  largest = max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  data[len(data) // 2] ^= 0x40
  largest.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_checkpoint_is_caught_and_the_one_before_is_used(tmp_path, caplog):
  """Orbax's compressed chunks carry no checksum: the bit flipped decodes to other numbers, which
  the digest in checkpoints.json catches (or, where it breaks the chunk's framing, the read fails)."""
  loop.train_and_evaluate(tiny_run(), tmp_path / "run")
  _flip_a_bit(tmp_path / "run" / "checkpoints" / "20")
  resumed = loop.train_and_evaluate(tiny_run(num_steps=30), tmp_path / "run")
  assert "the later checkpoints do not restore (step 20:" in caplog.text and "resumed from step 10" in caplog.text
  assert sorted(os.listdir(tmp_path / "run" / "unreadable_checkpoints")) == ["20"]
  straight = loop.train_and_evaluate(tiny_run(num_steps=30), tmp_path / "straight")
  assert resumed.test_loss == straight.test_loss and resumed.trained == straight.trained


def test_a_checkpoint_that_reads_but_holds_other_arrays_is_refused_by_its_digest(tmp_path, caplog):
  """Step 20's directory replaced by step 10's: Orbax restores it without complaint; its arrays are
  not the ones saved as step 20, so the digest refuses it and step 10 is used."""
  loop.train_and_evaluate(tiny_run(), tmp_path / "run")
  saved = tmp_path / "run" / "checkpoints"
  shutil.rmtree(saved / "20")
  shutil.copytree(saved / "10", saved / "20")
  resumed = loop.train_and_evaluate(tiny_run(num_steps=30), tmp_path / "run")
  assert "step 20: its arrays differ from those saved (SHA-256 mismatch)" in caplog.text
  assert "resumed from step 10" in caplog.text
  straight = loop.train_and_evaluate(tiny_run(num_steps=30), tmp_path / "straight")
  assert resumed.test_loss == straight.test_loss and resumed.trained == straight.trained


def test_sigterm_during_a_save_stops_at_the_next_step_and_the_rerun_logs_what_the_uninterrupted_run_logs(
  tmp_path, monkeypatch
):
  """SIGTERM arrives while the checkpoint of step 10 is being written: the save completes, the run
  stops after the next stretch (step 13, between logs at 8 and 16) with a checkpoint there, and the
  rerun's files equal an uninterrupted run's row for row, the first log after the resume included
  (its average takes the losses of steps 9-13 from checkpoints.json)."""
  import signal

  config = tiny_run(log_every=8, steps_per_dispatch=3)
  straight = loop.train_and_evaluate(config, tmp_path / "straight")
  save = ocp.CheckpointManager.save

  def save_while_terminated(self, step, *args, **kwargs):
    if step == 10:
      os.kill(os.getpid(), signal.SIGTERM)
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save_while_terminated)
  with pytest.raises(preemption.Preempted, match="stopped by a signal at step 13"), preemption.StopSignals() as stop:
    loop.train_and_evaluate(config, tmp_path / "stopped", should_stop=stop)
  monkeypatch.undo()
  assert records.read_json(tmp_path / "stopped" / "checkpoints.json")["13"]["losses_since_log"]
  resumed = loop.train_and_evaluate(config, tmp_path / "stopped")
  assert resumed.test_loss == straight.test_loss and resumed.trained == straight.trained
  assert (tmp_path / "stopped" / "metrics.jsonl").read_text() == (tmp_path / "straight" / "metrics.jsonl").read_text()


def test_a_failed_write_names_the_file_and_leaves_the_previous_version_whole(tmp_path, monkeypatch):
  target = tmp_path / "summary.json"
  records.write_json(target, {"a": 1})

  def full_disk(fd):  # the bytes reached the page cache; the disk has no room for them
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(records.os, "fsync", full_disk)
  with pytest.raises(records.WriteFailed, match=f"could not write {target}: No space left on device"):
    records.write_json(target, {"a": 2})
  assert json.loads(target.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["summary.json"]
  with pytest.raises(records.WriteFailed, match="could not create the directory"):
    records.make_dir(target / "below_a_file")


def _sweep_command(workdir, *arguments) -> subprocess.CompletedProcess:
  """``python -m experiments.sweep --workdir=WORKDIR ARGUMENTS...`` from the repository, to its end."""
  command = [sys.executable, "-m", "experiments.sweep", f"--workdir={workdir}", *arguments]
  return subprocess.run(command, cwd=helpers.REPO, env=helpers.cpu_env(), capture_output=True, text=True, check=False)


@pytest.mark.slow
@pytest.mark.parametrize(
  "arguments, message",
  [
    (
      ["--config=configs/depth_sweep.py", "--config.nonexistent=1"],
      "error: --config.nonexistent=1: no config field 'nonexistent'",
    ),
    (["--config=configs/missing.py"], "No such file or directory: 'configs/missing.py'"),
    (["--config=configs/depth_sweep.py", "--config.num_steps=abc"], "error: flag --config.num_steps=abc"),
    (
      ["--config=configs/depth_sweep.py", "--config.optimizer.learning_rate=inf"],
      "error: config.optimizer.learning_rate = inf: expected a positive number",
    ),
    (["--aggregate"], "error: no workdirs to merge"),
    (
      ["--config=configs/depth_sweep.py", "--config.optimizer.warmup_epochs=inf"],
      "error: config.optimizer.warmup_epochs = inf: expected a finite number >= 0",
    ),
    (
      ["--config=configs/depth_sweep.py:nonexistent_variant"],
      "Error whilst parsing config file: ValueError: variant = 'nonexistent_variant': expected one of ['ladder'",
    ),
    (["--config={tmp}/broken.py"], "broken.py, line 1: invalid syntax (the config file does not load)"),
    (["--config={tmp}/imports.py"], "does not load: ModuleNotFoundError: No module named 'nothing_of_that_name'"),
    (["--config={tmp}/uses_beside.py"], "error: config.optimizer.learning_rate = -1.0: expected a positive number"),
    (
      ["--config=configs/depth_sweep.py", "--config.depths=(2,8)", "--config.depths=(4,)"],
      "error: --config.depths given 2 times ((2,8), (4,)): give each config field once",
    ),
  ],
)
def test_every_mistake_at_the_door_is_one_line_and_writes_nothing(tmp_path, arguments, message):
  """The entry point turns each kind of mistake at the door (a flag, a config file, a config value, a
  workdir) into one line and exit status 1, writing nothing; the errors themselves, in process:
  test_sweep.py (duplicate seeds among them) and the aggregate test above."""
  workdir = tmp_path / "workdir"
  (tmp_path / "broken.py").write_text("def get_config(:\n  pass\n")
  (tmp_path / "imports.py").write_text("import nothing_of_that_name\n\ndef get_config():\n  pass\n")
  (tmp_path / "beside.py").write_text("RATE = -1.0\n")  # a module beside the config file that imports it
  (tmp_path / "uses_beside.py").write_text(
    "import beside\nfrom configs import depth_sweep\n\n\ndef get_config():\n  config = depth_sweep.get_config()\n"
    "  config.optimizer.learning_rate = beside.RATE\n  return config\n"
  )
  result = _sweep_command(workdir, *(arg.replace("{tmp}", str(tmp_path)) for arg in arguments))
  assert result.returncode == 1 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_seeds_given_on_the_command_line_name_the_settings_they_do_not_reach(tmp_path):
  """``--config.seeds`` leaves the settings with seeds of their own as they are: the sweep says
  which, before anything else (here the door then refuses a learning rate)."""
  result = _sweep_command(
    tmp_path / "workdir",
    "--config=configs/depth_sweep.py",
    "--config.seeds=(0,1)",
    "--config.overrides.residual_zero_init.seeds=(0,1)",
    "--config.optimizer.learning_rate=-1",
  )
  warning, error = result.stderr.strip().splitlines()
  assert (
    "--config.seeds=(0, 1) does not reach residual_constructed, residual_constructed_gentle, which keep seeds of "
    "their own (residual_constructed: (0, 1, 2, 3, 4); residual_constructed_gentle: (0, 1, 2, 3, 4))"
  ) in warning
  assert error.startswith("error: config.optimizer.learning_rate = -1")


@pytest.mark.slow
def test_a_workdir_that_is_a_file_is_refused_in_one_line(tmp_path):
  """A --workdir that is a file, refused in one line and left as it is; only here."""
  workdir = tmp_path / "a_file"
  workdir.write_text("mine")
  result = subprocess.run(
    [sys.executable, "-m", "experiments.sweep", "--config=configs/depth_sweep.py", f"--workdir={workdir}"],
    cwd=helpers.REPO,
    env=helpers.cpu_env(),
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 1 and result.stderr.strip() == (
    f"error: --workdir {workdir} is a file: expected a directory (or a path to create)"
  ), result.stderr
  assert workdir.read_text() == "mine"


SWEEP_FLAGS = (
  "--config=configs/depth_sweep.py",
  "--config.depths=(2,)",
  "--config.settings=('residual_zero_init','plain')",
  "--config.overrides.residual_zero_init.seeds=(0,)",
  "--config.seeds=(0,)",
  "--config.num_steps=2000",
  "--config.log_every=10",
  "--config.checkpoint_every=0",
  "--config.signal.every=0",
  "--config.data.train_size=512",
  "--config.data.test_size=128",
  "--config.signal.num_examples=32",
)


def test_on_a_store_without_exclusive_create_of_two_racing_takers_only_the_last_writer_proceeds(tmp_path):
  """The object-store path (write, wait, read back) on a local file: two takers (other hosts) that
  both find no lock and write within the settling time; exactly one reads its own record back."""
  import concurrent.futures
  import threading

  takers = [ownership.WorkdirLock(tmp_path, settle=0.5) for _ in range(2)]
  for i, taker in enumerate(takers):
    taker.me = dict(host=f"host{i}", pid=1, started=float(i))
  barrier = threading.Barrier(2)

  def take(taker):
    barrier.wait()
    return taker._create_then_verify()

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    taken = list(pool.map(take, takers))
  assert sorted(taken) == [False, True]
  winner = takers[taken.index(True)]
  assert json.loads((tmp_path / "lock.json").read_text())["host"] == winner.me["host"]


def test_a_second_owner_of_a_workdir_is_refused_and_a_dead_owners_lock_is_taken_over(tmp_path):
  """While a lock is held, another taker is refused with the holder named; a lock whose process is
  gone (a pid that runs no more, here a finished child's) or, from another host, whose heartbeat
  is older than the lease, is taken over."""
  import socket

  with ownership.WorkdirLock(tmp_path):
    held = json.loads((tmp_path / "lock.json").read_text())
    assert held["pid"] == os.getpid()
    with pytest.raises(records.WorkdirError, match=f"in use by process {os.getpid()} on {socket.gethostname()}"):
      ownership.WorkdirLock(tmp_path).__enter__()
  assert not (tmp_path / "lock.json").exists()
  gone = subprocess.run(
    [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
  )
  for holder in (
    dict(host=socket.gethostname(), pid=int(gone.stdout), started=0.0, heartbeat=0.0),
    dict(host="elsewhere", pid=1, started=0.0, heartbeat=0.0),
  ):
    (tmp_path / "lock.json").write_text(json.dumps(holder))
    with ownership.WorkdirLock(tmp_path):
      assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getpid()
  (tmp_path / "lock.json").write_text(json.dumps(dict(host="elsewhere", pid=1, started=0.0, heartbeat=1e12)))
  with pytest.raises(records.WorkdirError, match="in use by process 1 on elsewhere"):
    ownership.WorkdirLock(tmp_path).__enter__()


def _small_filesystem_or_skip(directory) -> None:
  """Skips (saying why) where this machine cannot mount a tmpfs in a mount namespace of its own."""
  if shutil.which("unshare") is None:
    pytest.skip("no `unshare` on this machine to mount a small filesystem")
  probe = subprocess.run(
    ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {directory}"],
    capture_output=True,
    text=True,
    check=False,
  )
  if probe.returncode != 0:
    pytest.skip(f"this machine does not let a test mount a small filesystem: {probe.stderr.strip()}")


FULL_DISK_FLAGS = [
  arg.replace("num_steps=2000", "num_steps=200").replace("checkpoint_every=0", "checkpoint_every=50")
  for arg in SWEEP_FLAGS
]


def _full_disk_command(workdir):
  return " ".join(
    [sys.executable, "-m", "experiments.sweep", f"--workdir={workdir}", *(f'"{f}"' for f in FULL_DISK_FLAGS)]
  )


@pytest.fixture(scope="module")
def straight_sweep(tmp_path_factory):
  """The full-disk tests' sweep run with room to spare, and the KiB its outputs take (not run on a
  machine where the tests cannot mount their small filesystem: they skip)."""
  _small_filesystem_or_skip(tmp_path_factory.mktemp("mount_probe"))
  workdir = tmp_path_factory.mktemp("full_disk") / "straight"
  straight = subprocess.run(
    _full_disk_command(workdir),
    shell=True,
    cwd=helpers.REPO,
    env=helpers.cpu_env(),
    capture_output=True,
    text=True,
    check=False,
  )
  assert straight.returncode == 0, straight.stderr[-2000:]
  size = subprocess.run(["du", "-sk", workdir], capture_output=True, text=True, check=True).stdout.split()[0]
  return workdir, int(size)


@pytest.mark.slow
@pytest.mark.parametrize("share", [0.3, 0.7])
def test_a_full_disk_stops_in_one_line_and_the_rerun_after_freeing_space_ends_as_the_straight_sweep(
  tmp_path, straight_sweep, share
):
  """The sweep (two runs, checkpoints every 50 steps, figures) on a tmpfs of ``share`` of the size
  of its outputs, in a mount namespace of its own: exit 1, one line naming what could not be
  written and that the disk is full, no traceback. The filesystem grown (remounted larger), the
  same command finishes with the runs of a sweep that never ran short of space: the same steps
  and history points, the numbers to the tolerance of a group against its runs one by one (1e-5
  relative, ``test_groups.py``). Not to the bit: the two runs (residual and plain) train as one
  program, and the rerun resumes, from its checkpoint, only the run that had not written its
  record, in a program of one member, whose products round otherwise (e.g. test loss
  0.04251302034 against 0.04251301661)."""
  small = tmp_path / "small"
  small.mkdir()
  _small_filesystem_or_skip(small)
  straight, needed = straight_sweep
  out = tmp_path / "out"
  out.mkdir()
  script = f"""
    mount -t tmpfs -o size={int(share * needed)}k tmpfs {small}
    {_full_disk_command(small / "sweep")} > {out}/full.out 2> {out}/full.err; echo $? > {out}/full.rc
    mount -o remount,size={4 * needed}k {small}
    {_full_disk_command(small / "sweep")} > {out}/rerun.out 2> {out}/rerun.err; echo $? > {out}/rerun.rc
    cp -r {small}/sweep {out}/sweep
  """
  subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=helpers.REPO, env=helpers.cpu_env(), check=True)
  full_err = (out / "full.err").read_text()
  assert (out / "full.rc").read_text().strip() == "1", full_err[-2000:]
  last = full_err.strip().splitlines()[-1]
  assert last.startswith("error: could not ") and "No space left on device" in last and str(small) in last, last
  assert "Traceback" not in full_err, full_err[-3000:]
  assert (out / "rerun.rc").read_text().strip() == "0", (out / "rerun.err").read_text()[-2000:]
  for setting in ("residual_zero_init", "plain"):
    a, b = (
      records.read_run(root / sweep_plan.RUNS / sweep_plan.run_name(setting, 2, 0))
      for root in (straight, out / "sweep")
    )
    assert (b.steps, [h["step"] for h in b.history]) == (a.steps, [h["step"] for h in a.history]), setting
    for field in ("test_loss", "trained", "history"):
      _assert_equal_to_rounding(getattr(b, field), getattr(a, field), f"{setting}.{field}")


def _assert_equal_to_rounding(got, want, where: str) -> None:
  """``got`` equals ``want`` (records: dataclasses, dicts, lists, numbers) in structure and every
  other value, and in floats to 1e-5 relative (1e-7 absolute)."""
  if dataclasses.is_dataclass(want):
    assert type(got) is type(want), where
    got, want = dataclasses.asdict(got), dataclasses.asdict(want)
  if isinstance(want, dict):
    assert sorted(got) == sorted(want), where
    for key in want:
      _assert_equal_to_rounding(got[key], want[key], f"{where}.{key}")
  elif isinstance(want, (list, tuple)):
    assert len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_equal_to_rounding(g, w, f"{where}[{i}]")
  elif isinstance(want, float):
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7, nan_ok=True), where
  else:
    assert got == want, where


@pytest.mark.slow
@pytest.mark.parametrize("entry_point", ["sweep", "train"])
@pytest.mark.parametrize("workdir_exists", [False, True])
def test_a_read_only_filesystem_is_one_line(tmp_path, entry_point, workdir_exists):
  """The workdir, new or existing, on a filesystem mounted read-only (a mount namespace of its
  own): one line naming the path, exit 1, no traceback."""
  readonly = tmp_path / "readonly"
  readonly.mkdir()
  _small_filesystem_or_skip(readonly)
  config = "configs/depth_sweep.py" if entry_point == "sweep" else "configs/default.py"
  existing = f"mkdir {readonly}/work && mount -o remount,ro {readonly}" if workdir_exists else "true"
  script = (
    f"mount -t tmpfs -o size=1m,{'rw' if workdir_exists else 'ro'} tmpfs {readonly} && {existing} && "
    f"{sys.executable} -m experiments.{entry_point} --config={config} --config.num_steps=2 --workdir={readonly}/work"
  )
  result = subprocess.run(
    ["unshare", "-rm", "sh", "-c", script],
    cwd=helpers.REPO,
    env=helpers.cpu_env(),
    capture_output=True,
    text=True,
    check=False,
  )
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert lines[-1].startswith("error: could not") and "Read-only file system" in lines[-1], lines[-1]
  assert f"{readonly}/work" in lines[-1], lines[-1]


@pytest.mark.slow
def test_two_sweeps_started_at_once_on_one_workdir_one_refuses(tmp_path):
  """Two sweep processes started at once on one workdir: the lock lets one through and refuses the other in one line;
  only here with real processes."""
  workdir = tmp_path / "sweep"
  command = [sys.executable, "-m", "experiments.sweep", f"--workdir={workdir}", *SWEEP_FLAGS]
  command = [arg.replace("num_steps=2000", "num_steps=300") for arg in command]
  first, second = (
    subprocess.Popen(
      command, cwd=helpers.REPO, env=helpers.cpu_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    for _ in range(2)
  )
  errors = [p.communicate(timeout=300)[1] for p in (first, second)]
  outcomes = sorted((p.returncode, err) for p, err in zip((first, second), errors))
  (ok, _), (refused, err) = outcomes
  assert ok == 0 and refused == 1 and "is in use by process" in err and err.count("\n") == 1, err[-2000:]
  assert (workdir / "summary.json").exists() and not (workdir / "lock.json").exists()


def test_a_sweep_whose_every_run_diverged_ends_with_its_table_and_says_so(tmp_path):
  """Unscaled branches at L = 64 with SGD at 0.01 overflow (as in test_sweep's diverging depth):
  one setting, that depth only. The summary, the table and every figure are written; the table
  marks the depth diverged."""
  config = tiny_sweep(depths=(64,), settings=("mlp_residual",))
  config.model.branch_scale = "1"
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.01
  summary = sweep_runner.run_sweep(config, str(tmp_path), progress=False)
  assert summary.reference.diverged == [True] and summary.reference.trained.means["delta_max"] == [None]
  assert "diverged@" in report.format_table(summary)
  for name in ("summary.json", "results.csv", "report.md", "delta_vs_depth.png", "task_vs_depth.png"):
    assert (tmp_path / name).stat().st_size > 0, name


SECOND_CTRL_C = """
import os, signal, sys, time
from resnorm import preemption

with preemption.StopSignals() as stop:
  os.kill(os.getpid(), signal.SIGINT)
  assert stop() and stop.received == "SIGINT"
  print("stopping after the first", flush=True)
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(5)
print("not reached")
"""


def test_a_second_ctrl_c_exits_at_once_in_one_line():
  """The first Ctrl-C asks for a stop at a saved step; a second to the same process ends it at
  once, exit status 130, one line on stderr and no traceback."""
  done = subprocess.run(
    [sys.executable, "-c", SECOND_CTRL_C], cwd=helpers.REPO, capture_output=True, text=True, timeout=60, check=False
  )
  assert done.returncode == 130 and done.stdout == "stopping after the first\n"
  lines = [line for line in done.stderr.splitlines() if "second Ctrl-C" in line or "Traceback" in line]
  assert lines == [
    "second Ctrl-C: exiting now, without waiting for the save (the runs resume from their last checkpoint)"
  ]


_COMPILES = """
import jax, jax.numpy as jnp
from experiments import cluster
jax.config.update("jax_compilation_cache_dir", {cache!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
cluster.replace_unreadable_cache_entries()
print(float(jax.jit(lambda x: jnp.sin(x).sum())(jnp.ones(3))))
"""


@pytest.mark.slow
def test_an_unreadable_compilation_cache_entry_is_replaced_not_warned_about_on_every_run(tmp_path):
  """Every entry of a filled cache overwritten with garbage: the next run says so once per entry
  (one line, no JAX warning) and writes each again; the run after reads them without a word."""
  env = {k: v for k, v in helpers.cpu_env().items() if k != "JAX_COMPILATION_CACHE_DIR"}

  def run():
    script = _COMPILES.format(cache=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", script], cwd=helpers.REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and float(done.stdout) == pytest.approx(3 * 0.8414709848), done.stderr
    return done.stderr

  run()
  entries = sorted((tmp_path / "cache").iterdir())
  assert entries
  for entry in entries:
    entry.write_bytes(b"not a compiled program")
  told = [line for line in run().splitlines() if line.strip()]
  assert len(told) == len(entries) and all("does not read: removed 1 file(s)" in line for line in told), told
  assert sorted((tmp_path / "cache").iterdir()) == entries
  assert all(entry.read_bytes() != b"not a compiled program" for entry in entries)
  assert run().strip() == ""


GROUPED_FLAGS = (
  "--config=configs/depth_sweep.py",
  "--config.depths=(2,4)",
  "--config.settings=('residual_zero_init',)",
  "--config.overrides.residual_zero_init.seeds=(0,1,2)",
  "--config.num_steps=300",
  "--config.log_every=10",
  "--config.checkpoint_every=50",
  "--config.signal.every=100",
  "--config.data.train_size=512",
  "--config.data.test_size=128",
  "--config.signal.num_examples=32",
)


def _grouped_sweep(workdir, *extra, **popen):
  command = [sys.executable, "-m", "experiments.sweep", f"--workdir={workdir}", *GROUPED_FLAGS, *extra]
  return subprocess.Popen(
    command, cwd=helpers.REPO, env=helpers.cpu_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen
  )


def _finish(workdir, *extra) -> bytes:
  """Runs the grouped sweep to its end in ``workdir``; its summary.json."""
  done = _grouped_sweep(workdir, *extra)
  _, err = done.communicate(timeout=300)
  assert done.returncode == 0, err[-3000:]
  return (workdir / "summary.json").read_bytes()


def _wait_for(condition, process, what: str) -> None:
  deadline = time.time() + 240
  while not condition():
    assert time.time() < deadline and process.poll() is None, f"the sweep ended before {what}"
    time.sleep(0.002)


def _runs_dir(workdir):
  return workdir / sweep_plan.RUNS


@pytest.mark.slow
def test_a_grouped_sweep_killed_at_three_moments_resumes_to_the_uninterrupted_summary_bit_for_bit(tmp_path):
  """Two groups of three seeds (L = 4, then L = 2), checkpoints every 50 of 300 steps, killed with
  SIGKILL (nothing saved on the way out) once the first member of the first group has saved step
  100 (its fellows' saves of that step may not be written yet), once that group's commit has begun
  (records pending, or the first committed; the sweep in two worker processes, which end with it),
  and once the second group, after the first committed, has saved a step; each time the same
  command ends with the uninterrupted sweep's summary.json, byte for byte."""
  straight = _finish(tmp_path / "straight", "--config.parallel_runs=1")
  first_member = _runs_dir(tmp_path / "m0") / sweep_plan.run_name("residual_zero_init", 4, 0)
  second_group = _runs_dir(tmp_path / "m2") / sweep_plan.run_name("residual_zero_init", 2, 0)
  moments = {  # each lasts long enough to be caught by polling, whatever the machine's speed
    "m0": lambda w: checkpoints.steps(first_member / "checkpoints")[-1:] >= [100],
    "m1": lambda w: any(_runs_dir(w).glob(f"*/{records.PENDING}")) or any(_runs_dir(w).glob("*/summary.json")),
    "m2": lambda w: checkpoints.steps(second_group / "checkpoints")[-1:] >= [50],
  }
  running = {
    name: _grouped_sweep(tmp_path / name, f"--config.parallel_runs={2 if name == 'm1' else 1}") for name in moments
  }
  while running:  # the three at once: each killed at its moment
    for name, killed in list(running.items()):
      if moments[name](tmp_path / name):
        killed.kill()
        killed.communicate(timeout=60)  # the pipes close once the sweep's worker processes (m1) have ended too
        del running[name]
      else:
        assert killed.poll() is None, f"the sweep ended before {name}"
    time.sleep(0.002)
  reruns = {name: _grouped_sweep(tmp_path / name, "--config.parallel_runs=1") for name in moments}
  for name, rerun in reruns.items():
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert (tmp_path / name / "summary.json").read_bytes() == straight, name


@pytest.mark.slow
def test_sigterm_then_ctrl_c_stop_a_sweep_and_its_workers_at_a_saved_step_and_the_rerun_equals_the_uninterrupted_one(
  tmp_path,
):
  """Two groups training in the sweep's two worker processes. SIGTERM to the sweep's process alone
  (what a scheduler sends) once both logged step 30, then, resumed, Ctrl-C (SIGINT to its process
  group: the sweep and its workers) once both logged step 100: each time exit 1 with the resume
  message, no traceback and no run finished; the same command then ends with the uninterrupted
  sweep's summary.json, byte for byte."""
  import os
  import signal

  workers = "--config.parallel_runs=2"
  straight = _finish(tmp_path / "straight", "--config.parallel_runs=1")  # the workers' numbers (test_sweep.py)
  workdir = tmp_path / "stopped"
  logs = [
    _runs_dir(workdir) / sweep_plan.run_name("residual_zero_init", depth, 0) / "metrics.jsonl" for depth in (2, 4)
  ]
  for step, stop in ((30, lambda p: p.send_signal(signal.SIGTERM)), (100, lambda p: os.killpg(p.pid, signal.SIGINT))):
    stopped = _grouped_sweep(workdir, workers, start_new_session=True)
    _wait_for(
      lambda step=step: all(
        log.exists() and any(r["step"] >= step for r in records.json_lines(log.read_text())) for log in logs
      ),
      stopped,
      f"both groups logged step {step}",
    )
    stop(stopped)
    _, err = stopped.communicate(timeout=180)
    assert stopped.returncode == 1 and "run the same command to resume" in err and "Traceback" not in err, err[-3000:]
    assert not list(_runs_dir(workdir).glob("*/summary.json")), step
  assert _finish(workdir, "--config.parallel_runs=1") == straight
