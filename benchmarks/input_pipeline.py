r"""Host batches/s of the CIFAR input pipeline against the device's step rate.

    python -m benchmarks.input_pipeline [--batches=200] [--train_size=10000]

Builds CIFAR-shaped batches (batch 128, 32×32×3, gather + random crop + flip, placed on the
device) with the loop's own pipeline (:func:`resnorm.data.training_batches`), one step after
another on this thread and ahead on the prefetching thread while a consumer waits on each;
prints batches/s of each and the step rate the device would have to exceed to starve
(ProcResNet-166 on an H200: about 29 ms a step, 34 steps/s).
"""

import time

import jax
from absl import app, flags

from configs import cifar
from resnorm import data as data_lib
from resnorm import loop

_BATCHES = flags.DEFINE_integer("batches", 200, "Batches timed.")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", 10_000, "Synthetic training examples.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size.")


def batches_per_second(batches) -> float:
  started, count = time.perf_counter(), 0
  for x, _ in batches:
    x.block_until_ready()
    count += 1
  return count / (time.perf_counter() - started)


def main(argv):
  del argv
  config = cifar.get_config("procresnet166,synthetic")
  config.data.train_size, config.data.test_size, config.batch_size = _TRAIN_SIZE.value, 8, _BATCH_SIZE.value
  dataset = data_lib.load(config.data)
  _, sharding = loop.shardings(jax.devices())
  count = _BATCHES.value

  def timed(prefetch: int) -> float:
    config.prefetch = prefetch
    return batches_per_second(
      data_lib.training_batches(
        dataset, config.batch_size, sharding, 0, range(count), data_lib.augment_padding(config), config.prefetch
      )
    )

  timed(0)  # warm up
  synchronous, prefetched = timed(0), timed(2)
  started = time.perf_counter()
  for step in range(count):
    rows = data_lib.batch_indices(len(dataset.x_train), config.batch_size, step, 0)
    data_lib.augment(dataset.x_train[rows], seed=0, step=step)
  augment_only = count / (time.perf_counter() - started)
  print(
    f"| {jax.devices()[0].platform} | {config.batch_size} | {synchronous:.0f} | {prefetched:.0f} | "
    f"{augment_only:.0f} | {synchronous * config.batch_size:.0f} |"
  )
  print(
    "columns: platform | batch | batches/s synchronous | batches/s prefetched | batches/s gather+augment "
    "(numpy only) | images/s synchronous"
  )


if __name__ == "__main__":
  app.run(main)
