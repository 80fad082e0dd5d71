"""Every benchmark script runs one tiny step on CPU and writes its rows, so none can rot.

Each runs in its own process (as gpu.sh runs them; XLA_FLAGS must be set before jax is
imported), with results going to a temporary results.json.
"""

import json
import subprocess
import sys

import pytest

import helpers
from benchmarks import common
from helpers import REPO

TINY = ["--platform", "cpu", "--image", "8"]


def run_benchmark(tmp_path, module, *args, devices=None, timeout=240):
  """``python -m benchmarks.<module> args``; returns (stdout, results.json rows with the variant
  as the script names it, the XLA flags it appends taken off)."""
  results = tmp_path / "results.json"
  env = helpers.cpu_env(devices, BENCHMARK_RESULTS=str(results))
  done = subprocess.run(
    [sys.executable, "-m", f"benchmarks.{module}", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  rows = json.loads(results.read_text()) if results.exists() else []
  flags = f"; XLA_FLAGS={env['XLA_FLAGS']}" if env["XLA_FLAGS"] else ""
  for row in rows:  # every row says which XLA flags it ran with (the session's, conftest.py)
    assert row["variant"].endswith(flags), (row["variant"], flags)
    row["variant"] = row["variant"].removesuffix(flags)
  return done.stdout, rows


def test_models_benchmark_times_the_library_step(tmp_path):
  out, (row,) = run_benchmark(
    tmp_path, "models", *TINY, "--batch", "2", "--repeats", "1", "--width_multiplier", "0.25", "--depths", "resnet=8"
  )
  assert "| resnet | 8 |" in out
  assert (row["script"], row["model"], row["depth"], row["batch"], row["variant"]) == (
    "models",
    "resnet",
    8,
    2,
    "width×0.25",
  )
  assert row["step_ms"] > 0 and row["compile_s"] > 0 and row["peak_mem_gib"] is None  # CPU: no memory stats


def test_a_rerun_replaces_its_rows_and_keeps_the_others(tmp_path):
  path = str(tmp_path / "results.json")
  first = dict(device="d", jax_version="j", script="s", model="m", depth=1, batch=2, dtype="float32", variant="v")
  common.record([dict(first, step_ms=1.0), dict(first, variant="w", step_ms=2.0)], path)
  common.record([dict(first, step_ms=3.0)], path)
  rows = json.loads((tmp_path / "results.json").read_text())
  assert sorted((row["variant"], row["step_ms"]) for row in rows) == [("v", 3.0), ("w", 2.0)]


@pytest.mark.slow
def test_projection_benchmark_writes_a_row_per_kernel_and_method(tmp_path):
  """benchmarks/projection.py runs and writes its rows; only here (the projection's numerics: test_procrustes.py)."""
  _, rows = run_benchmark(tmp_path, "projection", "--platform", "cpu", "--repeats", "1")
  assert {row["variant"] for row in rows} == {"newton_schulz", "svd"} and len(rows) == 10


@pytest.mark.slow
def test_projection_overhead_benchmark_writes_its_five_rows(tmp_path):
  """benchmarks/projection_overhead.py runs on a tiny ProcResNet and writes its five rows; only here."""
  _, rows = run_benchmark(
    tmp_path,
    "projection_overhead",
    *TINY,
    "--depth",
    "13",
    "--batch",
    "2",
    "--width_multiplier",
    "0.25",
    "--no-scan",
    "--rounds",
    "1",
    "--per_round",
    "1",
  )
  assert [row["variant"] for row in rows] == [
    "no projection",
    "procrustes(every=1), lax.cond",
    "procrustes(probability=0.5), lax.cond",
    "project=True: every step, no conditional",
    "probability 0.5 decided on the host, two compiled steps",
  ]


@pytest.mark.slow
def test_profile_step_summarises_a_cpu_trace_and_the_floor(tmp_path):
  """benchmarks/profile_step.py records a CPU trace and summarises it against its floor; only here."""
  out, (row,) = run_benchmark(
    tmp_path,
    "profile_step",
    *TINY,
    "--batch",
    "2",
    "--width_multiplier",
    "0.25",
    "--models",
    "resnet=8",
    "--repeats",
    "1",
    "--steps",
    "1",
  )
  assert "| kernel class |" in out and "The floor on cpu" in out and "| `conv" in out  # the top kernels
  assert row["kernels_per_step"] > 0 and row["flops"] > 0 and row["bytes_accessed"] > 0
  assert 0 < sum(row["class_ms"].values()) and "convolution / GEMM" in row["class_ms"]


@pytest.mark.slow
def test_step_on_8_simulated_devices_matches_one_device(tmp_path):
  """benchmarks/sharded_step.py: the train step on 8 simulated devices equals one device's; only here at 8."""
  out, _ = run_benchmark(tmp_path, "sharded_step", "--platform", "cpu", devices=8)
  assert "over 8 cpu devices" in out


@pytest.mark.slow
def test_stem_projection_benchmark_tables_the_error_against_rounds(tmp_path):
  """benchmarks/stem_projection.py tables the error against rounds and read-back conventions; only here."""
  out, _ = run_benchmark(tmp_path, "stem_projection", "--platform", "cpu", "--repeats", "1", "--no-padded")
  assert "| pytorch | 3 |" in out and "| chainer | 1 |" in out


@pytest.mark.slow
def test_input_pipeline_benchmark_times_the_host(tmp_path):
  """benchmarks/input_pipeline.py times the host's batches; only here."""
  out, _ = run_benchmark(tmp_path, "input_pipeline", "--batches=5", "--train_size=256", "--batch_size=32")
  assert "batches/s" in out


@pytest.mark.slow
def test_end_to_end_benchmark_compares_the_entry_point_with_the_bare_step(tmp_path):
  """benchmarks/end_to_end.py times the entry point against the bare step, part by part; only here."""
  out, rows = run_benchmark(
    tmp_path, "end_to_end", "--steps=6", "--width=0.25", "--depth=13", "--noscan", "--batch_size=8"
  )
  assert "| measurement | images/s | vs bare step |" in out
  assert [row["variant"] for row in rows] == [
    "bare step",
    "+ projection schedule",
    "+ input pipeline",
    "bare step, again",
    "entry point (experiments.train)",
  ]


@pytest.mark.slow
def test_sweep_throughput_benchmark_splits_a_tiny_sweep_and_sets_it_against_its_floor(tmp_path):
  """benchmarks/sweep_throughput.py on a tiny sweep: programs, compilations, parts and the floor; only here."""
  out, rows = run_benchmark(tmp_path, "sweep_throughput", "--quick", "--long_run", "20", "--floor_steps", "5")
  sweep_row, long_row = rows
  # Residual and plain runs of one depth share a program: 2 programs, each compiling at least its stretch.
  assert sweep_row["variant"] == "quick; first run" and sweep_row["runs"] == 4 and sweep_row["programs"] == 2
  assert sweep_row["compiles"] >= sweep_row["programs"] and "XLA compilations" in out
  assert sweep_row["wall_s"] > sweep_row["floor_s"] > 0 and sweep_row["parts_in_one_process"]["train"] > 0
  assert {"compile", "measure", "outputs and figures", "figures"} <= set(sweep_row["parts_in_one_process"])
  assert long_row["variant"] == "one run of 20 steps" and long_row["over_floor"] > 1
  assert "the floor" in out
