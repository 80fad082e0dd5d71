"""Flags of the entry points for runs over several processes (hosts of a pod or a cluster).

One process per host, each started with the same command. ``--distributed`` lets
``jax.distributed.initialize()`` find the coordinator itself (TPU pods, SLURM, Open MPI);
elsewhere give ``--coordinator=HOST:PORT --num_processes=N --process_id=I``.
"""

import jax
from absl import flags

DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
COORDINATOR = flags.DEFINE_string("coordinator", None, "Coordinator address HOST:PORT (multi-host).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")


def initialize() -> None:
  """Joins the other processes when the flags ask for it; a no-op for one process."""
  if DISTRIBUTED.value or COORDINATOR.value:
    jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
