"""The sweep over two processes (jax.distributed on 127.0.0.1, gloo CPU collectives), in both
placements, against the one-process sweep; a failing run names itself instead of hanging."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import helpers
from experiments import sweep_runner
from helpers import tiny_sweep
from resnorm import records, sweep_plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tiny_sweep(settings=("mlp_residual",)) as command-line overrides of the real config file.
TINY = dict(
  depths="(2,4)",
  settings="('mlp_residual',)",
  seeds="(0,)",
  **{
    "model.branch_scale": "1/L",
    "data.train_size": 256,
    "data.test_size": 64,
    "model.width": 8,
    "model.hidden": 8,
    "batch_size": 32,
    "num_steps": 20,
    "log_every": 10,
    "checkpoint_every": 10,
    "signal.num_examples": 32,
    "signal.every": 10,
  },
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_process_sweep(workdir, placement: str, timeout: int = 240):
  """Runs the sweep entry point as two processes; returns their (returncode, stdout, stderr)."""
  port = _free_port()
  env = helpers.cpu_env(devices=1, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  overrides = [f"--config.{k}={v}" for k, v in dict(TINY, placement=placement).items()]
  processes = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.sweep",
        "--config=configs/depth_sweep.py",
        f"--workdir={workdir}",
        f"--coordinator=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        *overrides,
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
      cwd=REPO,
    )
    for i in range(2)
  ]
  try:
    return [(p, *p.communicate(timeout=timeout)) for p in processes]
  finally:
    for p in processes:
      p.kill()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one")
  return workdir, sweep_runner.run_sweep(tiny_sweep(settings=("mlp_residual",)), str(workdir), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("placement, rtol", [("spread", 0), ("mesh", 1e-4)])
def test_two_processes_sweep_like_one(one_process, tmp_path, placement, rtol):
  """spread: each run on one process's single device, as in the one-process sweep (equal);
  mesh: each run's batch split over both processes' devices (equal to float32 rounding)."""
  workdir, single = one_process
  for p, out, err in _two_process_sweep(tmp_path, placement):
    assert p.returncode == 0, err[-3000:]
  two = records.read_summary(tmp_path / "summary.json")
  assert two.depths == single.depths == [2, 4] and two.reference.diverged == [False, False]
  for stage in records.STAGES:
    for key in ("delta_max", "delta_mean", "delta_p90", "log_gain"):
      np.testing.assert_allclose(
        two.reference.stage(stage).means[key],
        single.reference.stage(stage).means[key],
        rtol=rtol,
        atol=0 if rtol == 0 else 1e-6,
      )
  np.testing.assert_allclose(two.reference.test_loss, single.reference.test_loss, rtol=rtol)
  assert sorted(os.listdir(tmp_path)) == sorted(os.listdir(workdir))
  assert sorted(os.listdir(tmp_path / "runs")) == sorted(os.listdir(workdir / "runs"))


@pytest.mark.slow
def test_a_failing_run_in_the_spread_placement_names_itself_instead_of_hanging(tmp_path):
  """Two processes, spread placement, one run failing: every process fails naming it instead of waiting at the
  barrier; only here."""
  # One run directory holds a checkpoint that does not restore (and passes the door, which
  # reads configs and records only): that process's run raises when it resumes.
  broken = tmp_path / "runs" / sweep_plan.run_name("mlp_residual", 4, 0) / "checkpoints" / "10"
  broken.mkdir(parents=True)
  (broken / "garbage").write_text("not a checkpoint")
  results = _two_process_sweep(tmp_path, "spread", timeout=180)
  for p, out, err in results:
    assert p.returncode != 0
    assert "mlp_residual_L00004_s0" in err and "no checkpoint restores" in err, err[-3000:]
  assert (
    tmp_path / "runs" / sweep_plan.run_name("mlp_residual", 2, 0) / "summary.json"
  ).exists()  # the other run finished
