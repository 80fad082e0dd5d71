r"""Images/s of the real entry point, input pipeline included, against the bare train step, with
the gap taken apart.

    python -m benchmarks.end_to_end                                   # ProcResNet-166, 300 steps
    python -m benchmarks.end_to_end --variant=procresnet166 --steps=300 --width=1.0
    python -m benchmarks.end_to_end --steps=30 --width=0.25 --depth=13 --noscan   # a CPU smoke run

First runs ``python -m experiments.train --config=configs/cifar.py:VARIANT,synthetic`` for
``--steps`` steps (random CIFAR-shaped data, no checkpoints, no evaluation or measurement until
the end) and reads its throughput from ``summary.json`` (``images_per_second``: from the first
log, after compilation, to the last step). Then, in this process (after the entry point's process
has ended, so the two never share the device), the loop's own compiled steps without the loop,
each for ``--steps`` steps after compilation:

1. ``bare step``: one batch already on the device, the step that does not project;
2. ``+ projection schedule``: the same batch, each step's optimizer chosen on the host as the loop
   chooses it (:func:`resnorm.loop.projects`; ProcResNet projects on about half the steps);
3. ``+ input pipeline``: batches from the loop's pipeline (:func:`resnorm.data.training_batches`:
   gather, augmentation, transfer, prefetching), with the schedule;
4. ``bare step`` again: the drift of the device between the first and the last measurement.

Row 1 → 2 is the projection's cost, 2 → 3 the input pipeline's, 3 → the entry point the loop's
own (logging, the finiteness checks, Python). The gap that counts is the entry point against
the bare step, which the issue wants under 5%. Prints a markdown table; rows go to results.json.
"""

import functools
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
from absl import app, flags

from benchmarks import common
from configs import cifar
from resnorm import data as data_lib
from resnorm import loop, models, train

_VARIANT = flags.DEFINE_string("variant", "procresnet166", "configs/cifar.py variant.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps of each measurement.")
_WIDTH = flags.DEFINE_float("width", 1.0, "model.width_multiplier.")
_DEPTH = flags.DEFINE_integer("depth", None, "model.depth (default: the variant's).")
_SCAN = flags.DEFINE_bool("scan", True, "model.scan.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")


def overrides() -> dict:
  steps = _STEPS.value
  values = {
    "num_epochs": 0,
    "num_steps": steps,
    "log_every": max(steps // 6, 1),
    "checkpoint_every": 0,
    "eval_every": 0,
    "signal.every": 0,
    "batch_size": _BATCH.value,
    "model.width_multiplier": _WIDTH.value,
    "model.scan": _SCAN.value,
    "data.train_size": 10_000,
    "data.test_size": 1_000,
    "tensorboard": importlib.util.find_spec("tensorboard") is not None,
  }
  if _DEPTH.value:
    values["model.depth"] = _DEPTH.value
  return values


def run_config():
  """The entry point's config: the variant on synthetic data with :func:`overrides`."""
  config = cifar.get_config(f"{_VARIANT.value},synthetic")
  for key, value in overrides().items():
    *parents, leaf = key.split(".")
    (config[parents[0]] if parents else config)[leaf] = value
  return config


def end_to_end(workdir: str) -> float:
  """The entry point's images/s, as it records them."""
  command = [
    sys.executable,
    "-m",
    "experiments.train",
    f"--config=configs/cifar.py:{_VARIANT.value},synthetic",
    f"--workdir={workdir}",
    *(f"--config.{k}={v}" for k, v in overrides().items()),
  ]
  subprocess.run(
    command,
    check=True,
    stdout=subprocess.DEVNULL,  # the record is read from summary.json
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)["images_per_second"]


def images_per_second(step_fn, state, batches, choose, count: int, batch_size: int):
  """Runs ``count`` steps, step i with ``project=choose(i)`` on the next of ``batches``, and
  waits for the last; returns (images/s, state)."""
  started = time.perf_counter()
  for index, batch in zip(range(count), batches):
    state, metrics = step_fn(state, batch, project=choose(index))
  jax.block_until_ready((state, metrics))
  return count * batch_size / (time.perf_counter() - started), state


def loop_steps(config) -> dict[str, float]:
  """Images/s of the loop's compiled steps without the loop (module docstring, rows 1–4)."""
  dataset = data_lib.load(config.data)
  steps_per_epoch = len(dataset.x_train) // config.batch_size
  model = models.from_config(config.model, dataset.num_outputs)
  replicated, batch_sharding = loop.shardings(jax.devices())
  tx = loop.optimizer(config, dataset, steps_per_epoch)
  state = train.create_train_state(model, jax.random.key(0), dataset.x_train[:1], tx, replicated)
  step_fn = jax.jit(
    functools.partial(train.train_step, loss_fn=train.loss_function(dataset.task)),
    donate_argnums=0,
    static_argnames="project",
  )
  seed, count, size = loop.run_seed(config), _STEPS.value, config.batch_size
  fixed = next(
    data_lib.training_batches(dataset, size, batch_sharding, seed, range(1), data_lib.augment_padding(config))
  )
  for choice in (False, True):  # compile both steps
    state, metrics = step_fn(state, fixed, project=choice)
  jax.block_until_ready(metrics)
  never, scheduled = (lambda i: False), (lambda i: loop.projects(config, i + 1))
  times = {}
  times["bare step"], state = images_per_second(step_fn, state, itertools.repeat(fixed), never, count, size)
  times["+ projection schedule"], state = images_per_second(
    step_fn, state, itertools.repeat(fixed), scheduled, count, size
  )
  batches = data_lib.training_batches(
    dataset, size, batch_sharding, seed, range(count), data_lib.augment_padding(config), config.prefetch
  )
  times["+ input pipeline"], state = images_per_second(step_fn, state, batches, scheduled, count, size)
  times["bare step, again"], state = images_per_second(step_fn, state, itertools.repeat(fixed), never, count, size)
  return times


def main(argv):
  del argv
  config = run_config()
  with tempfile.TemporaryDirectory() as workdir:
    entry_point = end_to_end(workdir)
  times = loop_steps(config)
  times["entry point (experiments.train)"] = entry_point
  bare = times["bare step"]
  depth = config.model.depth
  name = f"{_VARIANT.value} (depth {depth}, width {_WIDTH.value}{'' if _SCAN.value else ', unrolled'})"
  print(
    f"device: {common.device_name()}; jax {jax.__version__}; {name}; batch {config.batch_size}; "
    f"{_STEPS.value} steps each; prefetch {config.prefetch}"
  )
  print("\n| measurement | images/s | vs bare step |\n|---|---:|---:|")
  for label, value in times.items():
    print(f"| {label} | {value:.0f} | {100 * (value / bare - 1):+.1f}% |")
  common.record(
    [
      common.row(
        "end_to_end",
        config.model.name,
        depth,
        config.batch_size,
        "float32",
        label,
        config.batch_size / value,
        None,
        steps=_STEPS.value,
        width=_WIDTH.value,
      )
      for label, value in times.items()
    ]
  )


if __name__ == "__main__":
  app.run(main)
