"""Flags every entry point shares: the processes of a run over several hosts, and the
persistent compilation cache.

One process per host, each started with the same command. ``--distributed`` lets
``jax.distributed.initialize()`` find the coordinator itself (TPU pods, SLURM, Open MPI);
elsewhere give ``--coordinator=HOST:PORT --num_processes=N --process_id=I``.

Compiled programs are kept in ``--compilation_cache`` (default ``~/.cache/resnorm/jax``; empty
turns it off; a ``JAX_COMPILATION_CACHE_DIR`` in the environment wins), so a rerun or another
sweep of the same shapes compiles nothing.
"""

import contextlib
import glob
import os
import re
import warnings

import jax
from absl import flags, logging

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
  replace_unreadable_cache_entries()
  if DISTRIBUTED.value or COORDINATOR.value:
    jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)


_UNREADABLE_ENTRY = re.compile(r"Error reading persistent compilation cache entry for '([^']+)'")


def replace_unreadable_cache_entries() -> None:
  """An entry of the compilation cache that does not read (a file cut short, garbage bytes) is
  removed when JAX reports it, with one line naming it, in place of JAX's warning: JAX then
  compiles the program and writes the entry again (it never overwrites an entry), so the next
  run reads it instead of warning again. JAX names only the program, so every entry of that
  program (``<name>-<key>-cache``) is removed; the others are compiled again when next used."""
  shown = warnings.showwarning

  def show(message, category, filename, lineno, file=None, line=None):
    found = _UNREADABLE_ENTRY.match(str(message))
    cache = jax.config.jax_compilation_cache_dir
    if found is None or not cache or "://" in cache:
      return shown(message, category, filename, lineno, file, line)
    name = found.group(1)
    removed = sorted(glob.glob(os.path.join(glob.escape(cache), f"{glob.escape(name)}-*-cache")))
    for entry in removed:
      with contextlib.suppress(FileNotFoundError):
        os.remove(entry)
    logging.warning(
      "the compilation cache %s held an entry for %r that does not read: removed %d file(s); it is compiled and "
      "cached again",
      cache,
      name,
      len(removed),
    )

  warnings.showwarning = show
