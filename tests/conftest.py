"""Shared test fixtures and the session's compilation cache (helpers that are not fixtures live
in helpers.py)."""

import os
import shutil
import tempfile

import jax
import pytest

_CACHE = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole session, empty at its start.

  Many tests compile the same small programs (a tiny sweep's steps, a run and its resumed twin,
  the entry points in subprocesses); with the cache each is compiled once per session. The
  variable is set before the xdist workers and the tests' subprocesses start, so they all share
  it; a cache directory already in the environment is used as it is.
  """
  if _CACHE in os.environ or hasattr(config, "workerinput"):
    return
  config._resnorm_cache = os.environ[_CACHE] = tempfile.mkdtemp(prefix="resnorm-test-jax-cache-")
  # Tests are compile-bound: without LLVM's optimisations, and through XLA:CPU's older emitters
  # (2–8× faster to compile, 1.1–1.8× slower to run; benchmarks/RESULTS.md, section 1).
  flags = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE])  # this process imported jax already
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
  directory = getattr(config, "_resnorm_cache", None)
  if directory:
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def x64():
  """float64 inside one test only (never globally): ``def test_x(x64): ...``."""
  with jax.enable_x64(True):
    yield
