"""What the Procrustes projection adds to a ProcResNet train step, by how it is switched on.

  python -m benchmarks.projection_overhead [--depth 166] [--batch 128] [--rounds 20] [--per_round 5]

The step is the library's (:mod:`benchmarks.common`: ``resnorm.train.train_step`` with
configs/cifar.py's SGD, state donated). Rows: the step without projection; with ``procrustes(every=1)``
and ``procrustes(probability=0.5)`` choosing inside the step with ``lax.cond`` (``project=None``);
with ``project=True``, the projection on every step without a conditional (the difference
from the cond rows is the cost of the conditional itself); and probability 0.5 decided on the
host, as the training loop does (:func:`resnorm.procrustes.acts`, ``project`` a static argument:
one compiled step with ``project=True`` and one with ``project=False``). The configurations
take turns, round after round, so that GPU clock and temperature drift reach them alike (timed
one after another, the first configuration measured up to 20% slower on an H200). Every row also
goes to results.json (compile time: the first call, compilation included).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import statistics
import time

import flax
import jax
import optax

from benchmarks import common
from resnorm import models, procrustes


def host_scheduled(steps: dict, probability: float):
  """The step of each call chosen on the host: ``steps[True]`` (projecting) with ``probability``,
  by :func:`resnorm.procrustes.acts` of the call's count, as in resnorm.loop."""
  count = itertools.count(1)

  def run(state, batch):
    return steps[procrustes.acts(next(count), probability=probability)](state, batch)

  return run


def compiled_step(model, tx, batch, project=None):
  """The library's step with ``project`` (None, True, False, or "host": chosen per call by
  :func:`host_scheduled` at probability 0.5), warmed up, its state, and the seconds its first
  call took (compilation)."""
  if project == "host":
    (unprojected, state), (projecting, _) = (common.library_step(model, tx, batch, project=c) for c in (False, True))
    step = host_scheduled({False: unprojected, True: projecting}, 0.5)
  else:
    step, state = common.library_step(model, tx, batch, project=project)
  start = time.perf_counter()
  state = common.run_steps(step, state, batch, 1)
  first_s = time.perf_counter() - start
  return step, common.run_steps(step, state, batch, 2), first_s


def interleaved_times(steps: dict, batch, rounds: int, per_round: int) -> dict[str, float]:
  """Median over ``rounds`` of the mean step time in ms, the configurations taking turns in
  every round so that clock and thermal drift reach them all alike."""
  states = {name: state for name, (_, state, _) in steps.items()}
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name, (step, _, _) in steps.items():
      start = time.perf_counter()
      states[name] = common.run_steps(step, states[name], batch, per_round)
      times[name].append(1e3 * (time.perf_counter() - start) / per_round)
  return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=166)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--per_round", type=int, default=5)
  parser.add_argument("--image", type=int, default=32, help="input height and width")
  parser.add_argument("--width_multiplier", type=float, default=1.0)
  parser.add_argument("--scan", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--platform", help="force a JAX platform (cpu, gpu, tpu)")
  args = parser.parse_args(argv)
  if args.platform:
    jax.config.update("jax_platforms", args.platform)
  model = models.create_model("procresnet", args.depth, width_multiplier=args.width_multiplier, scan=args.scan)
  batch = common.synthetic_batch(args.batch, args.image)
  projecting = common.optimizer("procresnet", args.image, probability=0.5)
  rows = {
    "no projection": (common.optimizer("procresnet", args.image), None),
    "procrustes(every=1), lax.cond": (common.optimizer("procresnet", args.image, every=1), None),
    "procrustes(probability=0.5), lax.cond": (projecting, None),
    "project=True: every step, no conditional": (projecting, True),
    "probability 0.5 decided on the host, two compiled steps": (projecting, "host"),
  }
  steps = {name: compiled_step(model, tx, batch, project) for name, (tx, project) in rows.items()}
  times = interleaved_times(steps, batch, args.rounds, args.per_round)
  common.record(
    [
      common.row(
        "projection_overhead",
        "procresnet",
        args.depth,
        args.batch,
        "float32",
        name,
        ms / 1e3,
        steps[name][2],
        rounds=args.rounds,
        per_round=args.per_round,
      )
      for name, ms in times.items()
    ]
  )
  device = jax.devices()[0]
  print(
    f"device: {device.device_kind}; jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}; "
    f"{datetime.date.today().isoformat()}; ProcResNet-{args.depth}, batch {args.batch}; median over "
    f"{args.rounds} interleaved rounds of {args.per_round} steps"
  )
  print("\n| optimizer | step (ms) | vs no projection |\n|---|---:|---:|")
  base = times["no projection"]
  for name, ms in times.items():
    print(f"| {name} | {ms:.2f} | {100 * (ms / base - 1):+.1f}% |")


if __name__ == "__main__":
  main()
