r"""Host batches/s of the CIFAR input pipeline against the device's step rate.

    python -m benchmarks.input_pipeline [--batches=200] [--train_size=10000]

Builds CIFAR-shaped batches (batch 128, 32×32×3, gather + random crop + flip, placed on the
device) as the loop does, one step after another on this thread and ahead on the prefetching
thread while a consumer waits on each; prints batches/s of each and the step rate the device
would have to exceed to starve (ProcResNet-166 on an H200: about 29 ms a step, 34 steps/s).
"""

import time

import jax
import numpy as np
from absl import app, flags

from resnorm import data as data_lib

_BATCHES = flags.DEFINE_integer("batches", 200, "Batches timed.")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", 10_000, "Synthetic training examples.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size.")


def batch_fn(dataset, batch_size: int):
  """The loop's batch of a step: rows, augmentation, and the transfer to the device."""
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def batch_at(step):
    rows = data_lib.batch_indices(len(dataset.x_train), batch_size, step, 0)
    x = data_lib.augment(dataset.x_train[rows], seed=0, step=step)
    return jax.device_put(x, sharding), jax.device_put(dataset.y_train[rows], sharding)

  return batch_at


def batches_per_second(batches) -> float:
  started, count = time.perf_counter(), 0
  for x, _ in batches:
    x.block_until_ready()
    count += 1
  return count / (time.perf_counter() - started)


def main(argv):
  del argv
  dataset = data_lib.synthetic(train_size=_TRAIN_SIZE.value, test_size=8)
  batch_at = batch_fn(dataset, _BATCH_SIZE.value)
  batch_at(0)  # warm up
  count = _BATCHES.value
  synchronous = batches_per_second(map(batch_at, range(count)))
  prefetched = batches_per_second(data_lib.prefetch(map(batch_at, range(count)), 2))
  started = time.perf_counter()
  for step in range(count):
    rows = data_lib.batch_indices(len(dataset.x_train), _BATCH_SIZE.value, step, 0)
    data_lib.augment(dataset.x_train[rows], seed=0, step=step)
  augment_only = count / (time.perf_counter() - started)
  print(f"| {jax.devices()[0].platform} | {_BATCH_SIZE.value} | {synchronous:.0f} | {prefetched:.0f} | "
        f"{augment_only:.0f} | {synchronous * _BATCH_SIZE.value:.0f} |")
  print("columns: platform | batch | batches/s synchronous | batches/s prefetched | batches/s gather+augment "
        "(numpy only) | images/s synchronous")


if __name__ == "__main__":
  app.run(main)
