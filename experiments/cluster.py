"""Flags every entry point shares: the processes of a run over several hosts, and the
persistent compilation cache.

One process per host, each started with the same command. ``--distributed`` lets
``jax.distributed.initialize()`` find the coordinator itself (TPU pods, SLURM, Open MPI);
elsewhere give ``--coordinator=HOST:PORT --num_processes=N --process_id=I``.

Compiled programs are kept in ``--compilation_cache`` (default ``~/.cache/resnorm/jax``; empty
turns it off; a ``JAX_COMPILATION_CACHE_DIR`` in the environment wins), so a rerun or another
sweep of the same shapes compiles nothing.
"""

import os

import jax
from absl import flags

DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
COORDINATOR = flags.DEFINE_string("coordinator", None, "Coordinator address HOST:PORT (multi-host).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
COMPILATION_CACHE = flags.DEFINE_string(
  "compilation_cache",
  os.path.join("~", ".cache", "resnorm", "jax"),
  "Directory of the persistent XLA compilation cache (empty: none).",
)


def initialize() -> None:
  """Turns the compilation cache on and joins the other processes when the flags ask for it."""
  if COMPILATION_CACHE.value and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(COMPILATION_CACHE.value))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the sweep's programs are small
  if DISTRIBUTED.value or COORDINATOR.value:
    jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
