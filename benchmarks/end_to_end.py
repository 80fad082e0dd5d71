r"""Images/s of the real entry point, input pipeline included, against the bare train step.

    python -m benchmarks.end_to_end                                   # ProcResNet-166, 300 steps
    python -m benchmarks.end_to_end --variant=procresnet166 --steps=300 --width=1.0
    python -m benchmarks.end_to_end --steps=30 --width=0.25 --depth=13 --no-scan   # a CPU smoke run

Runs ``python -m experiments.train --config=configs/cifar.py:VARIANT,synthetic`` for ``--steps``
steps (random CIFAR-shaped data, no checkpoints, no evaluation or measurement until the end) and
reads its throughput from ``summary.json`` (``images_per_second``: from the first log, after
compilation, to the last step). Then times the jitted train step alone, in this process, on one
batch already on the device. Prints a markdown row; the gap is what the input pipeline, the
logging and the loop cost, and should stay under 5%.
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
from absl import app, flags

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
  values = {"num_epochs": 0, "num_steps": steps, "log_every": max(steps // 6, 1), "checkpoint_every": 0,
            "eval_every": 0, "signal.every": 0, "batch_size": _BATCH.value, "model.width_multiplier": _WIDTH.value,
            "model.scan": _SCAN.value, "data.train_size": 10_000, "data.test_size": 1_000,
            "tensorboard": importlib.util.find_spec("tensorboard") is not None}
  if _DEPTH.value:
    values["model.depth"] = _DEPTH.value
  return values


def end_to_end(workdir: str) -> float:
  """The entry point's images/s, as it records them."""
  command = [sys.executable, "-m", "experiments.train", f"--config=configs/cifar.py:{_VARIANT.value},synthetic",
             f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides().items())]
  subprocess.run(command, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)["images_per_second"]


def bare_step() -> float:
  """The jitted train step's images/s on one device-resident batch, after compilation."""
  config = cifar.get_config(f"{_VARIANT.value},synthetic")
  for key, value in overrides().items():
    *parents, leaf = key.split(".")
    (config[parents[0]] if parents else config)[leaf] = value
  dataset = data_lib.synthetic(train_size=config.batch_size, test_size=8)
  steps_per_epoch = 50_000 // config.batch_size
  model = loop.build_model(config, dataset.num_outputs)
  targets = models.family(config.model.name).projection_targets
  # The loop's step that does not project: the projection's cost on the steps it acts is the
  # projection benchmark's; this one measures the loop and its input pipeline around the step.
  tx = train.make_optimizer(config, targets(dataset.x_train.shape) if config.procrustes.enabled else None,
                            project=False, steps_per_epoch=steps_per_epoch)
  state = train.create_train_state(model, jax.random.key(0), dataset.x_train[:1], tx)
  step = jax.jit(functools.partial(train.train_step, loss_fn=train.loss_function("classification")),
                 donate_argnums=0)
  batch = jax.device_put((dataset.x_train, dataset.y_train))
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  started = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  return _STEPS.value * config.batch_size / (time.perf_counter() - started)


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as workdir:
    measured = end_to_end(workdir)
  bare = bare_step()
  gap = 100 * (1 - measured / bare)
  device = jax.devices()[0].device_kind
  name = f"{_VARIANT.value} (depth {_DEPTH.value or 'as named'}, width {_WIDTH.value})"
  print("| device | model | batch | steps | end to end images/s | bare step images/s | gap |")
  print("|---|---|---|---|---|---|---|")
  print(f"| {device} | {name} | {_BATCH.value} | {_STEPS.value} | {measured:.0f} | {bare:.0f} | {gap:.1f}% |")


if __name__ == "__main__":
  app.run(main)
