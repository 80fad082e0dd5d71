"""The library's train step with the batch split over several devices against one device.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.sharded_step --platform cpu

Runs ``--steps`` steps of :func:`resnorm.train.train_step` (:mod:`benchmarks.common`) twice from
the same initial state: on ``jax.devices()[0]`` alone, and with parameters replicated and the
batch split over every device on a mesh axis ``'data'`` (as the training loop does). BatchNorm
statistics are over the global batch in both, so losses, parameters and statistics must agree
to float32 rounding. Prints the largest differences, and exits 1 if any exceeds ``--tolerance``
(relative to the largest magnitude of each leaf). XLA_FLAGS must be set before jax is imported,
hence the environment variable.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from benchmarks import common
from resnorm import models


def run(step, state, batch, steps: int, sharded: bool):
  """Losses of ``steps`` steps and the final state, on one device or over all of them."""
  devices = jax.devices() if sharded else jax.devices()[:1]
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return np.array(losses), state


def relative_difference(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="resnet=8", metavar="FAMILY=DEPTH")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--image", type=int, default=8)
  parser.add_argument("--width_multiplier", type=float, default=0.25)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--tolerance", type=float, default=1e-4)
  parser.add_argument("--platform", help="force a JAX platform (cpu, gpu, tpu)")
  args = parser.parse_args(argv)
  if args.platform:
    jax.config.update("jax_platforms", args.platform)
  name, _, depth = args.model.partition("=")
  model = models.create_model(name, int(depth), width_multiplier=args.width_multiplier)
  batch = common.synthetic_batch(args.batch, args.image)
  tx = common.optimizer(name, args.image)
  step, state = common.library_step(model, tx, batch, donate=False)  # both runs start from ``state``
  many_losses, many = run(step, state, batch, args.steps, sharded=True)
  one_losses, one = run(step, state, batch, args.steps, sharded=False)
  differences = {
    "loss": relative_difference(many_losses, one_losses),
    "params": max(jax.tree.leaves(jax.tree.map(relative_difference, many.params, one.params))),
    "batch_stats": max(jax.tree.leaves(jax.tree.map(relative_difference, many.batch_stats, one.batch_stats))),
  }
  print(
    f"{name}-{depth}, batch {args.batch} over {jax.device_count()} {jax.devices()[0].platform} devices "
    f"against 1, {args.steps} steps; losses {one_losses.round(5).tolist()}"
  )
  for key, value in differences.items():
    print(f"largest relative difference, {key}: {value:.2e}")
  return int(max(differences.values()) > args.tolerance)


if __name__ == "__main__":
  sys.exit(main())
