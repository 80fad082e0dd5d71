"""What the Procrustes projection adds to a ProcResNet train step, by how it is switched on.

  python -m benchmarks.projection_overhead [--depth 166] [--batch 128] [--rounds 20] [--per_round 5]

Rows: the step without projection; with ``procrustes(every=1)`` and ``procrustes(probability=0.5)``
(both choose inside the step with ``lax.cond``); and with the projection applied on every step
without a conditional (the same projections, composed directly). The difference between the
cond rows and the unconditional row is the cost of the conditional itself. The configurations
take turns, round after round, so that GPU clock and temperature drift reach them alike (timed
one after another, the first configuration measured up to 20% slower on an H200). Needs only jax,
flax, optax and numpy.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from benchmarks.models import train_step
from resnorm import models, procrustes
from resnorm.models import resnet


def always_project(targets) -> optax.GradientTransformation:
  """The targeted kernels projected after every step, with no conditional (for comparison)."""

  def update(updates, state, params):
    flat_updates, flat_params = traverse_util.flatten_dict(updates), traverse_util.flatten_dict(params)
    for path, target in targets.items():
      w = flat_params[path]
      flat_updates[path] = procrustes.project_conv(
          w + flat_updates[path], target.spatial_shape, target.scale, target.stride) - w
    return traverse_util.unflatten_dict(flat_updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def compiled_step(model, tx, x, y):
  """A warmed-up step and its state; the step donates and returns the state."""
  variables = jax.jit(lambda key: model.init(key, x[:1], train=False))(jax.random.key(0))
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
  step = jax.jit(train_step(model, tx), donate_argnums=(0, 1, 2))
  for _ in range(3):
    state = step(*state, x, y)[:3]
  jax.block_until_ready(state)
  return step, state


def interleaved_times(steps: dict, x, y, rounds: int, per_round: int) -> dict[str, float]:
  """Median over ``rounds`` of the mean step time in ms, the configurations taking turns in
  every round so that clock and thermal drift reach them all alike."""
  states = {name: state for name, (_, state) in steps.items()}
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name, (step, _) in steps.items():
      start = time.perf_counter()
      state = states[name]
      for _ in range(per_round):
        state = step(*state, x, y)[:3]
      jax.block_until_ready(state)
      states[name] = state
      times[name].append(1e3 * (time.perf_counter() - start) / per_round)
  return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=166)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--per_round", type=int, default=5)
  args = parser.parse_args()
  model = models.create_model("procresnet", args.depth)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(args.batch, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=args.batch), jnp.int32)
  targets = resnet.procresnet_projection_targets((32, 32))
  sgd = optax.sgd(0.1, momentum=0.9)
  rows = {
      "no projection": sgd,
      "procrustes(every=1), lax.cond": optax.chain(sgd, procrustes.procrustes(targets, every=1)),
      "procrustes(probability=0.5), lax.cond": optax.chain(sgd, procrustes.procrustes(targets)),
      "projection on every step, no conditional": optax.chain(sgd, always_project(targets)),
  }
  steps = {name: compiled_step(model, tx, x, y) for name, tx in rows.items()}
  times = interleaved_times(steps, x, y, args.rounds, args.per_round)
  device = jax.devices()[0]
  print(f"device: {device.device_kind}; jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}; "
        f"{datetime.date.today().isoformat()}; ProcResNet-{args.depth}, batch {args.batch}; median over "
        f"{args.rounds} interleaved rounds of {args.per_round} steps")
  print("\n| optimizer | step (ms) | vs no projection |\n|---|---:|---:|")
  base = times["no projection"]
  for name, ms in times.items():
    print(f"| {name} | {ms:.2f} | {100 * (ms / base - 1):+.1f}% |")


if __name__ == "__main__":
  main()
