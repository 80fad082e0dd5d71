"""What the benchmarks share: the library's train step on synthetic CIFAR batches, the device's
memory, and the rows every script writes to ``benchmarks/results.json``.

The step timed is the project's own: :func:`resnorm.train.train_step` (loss, gradients,
BatchNorm statistics, finiteness check) on a :class:`resnorm.train.TrainState` built by
:func:`resnorm.train.create_train_state`, with the optimizer of ``configs/cifar.py`` (SGD,
momentum 0.9, weight decay 1e-4, cosine schedule) from :func:`resnorm.train.make_optimizer`,
jitted with the state donated, as the training loop does. ``BENCHMARK_RESULTS`` names another
results file (the tests use one of their own). SIGUSR1 prints every thread's stack to stderr and
lets the script go on: ``benchmarks/gpu.sh`` sends it to a step that overruns its time limit, so
its log says where the time went (compiling, autotuning, running) before the step is killed.
"""

from __future__ import annotations

import dataclasses
import datetime
import faulthandler
import functools
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from resnorm import train
from resnorm.models import resnet

RESULTS = os.environ.get("BENCHMARK_RESULTS", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json"))
# A row replaces an earlier row with the same values of these fields.
KEY = ("device", "jax_version", "script", "model", "depth", "batch", "dtype", "variant")
GIB = 2.0**30
faulthandler.register(signal.SIGUSR1, all_threads=True)


def optimizer(model: str, image: int, probability: float | None = None, every: int = 0):
  """configs/cifar.py's optimizer; with ``probability`` or ``every``, ProcResNet's projection
  (``probability`` per step, or every ``every`` steps, when the step leaves the decision to it)
  chained last."""
  project = probability is not None or every > 0
  config = default.get_config()
  config.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine")
  config.num_steps = 64_000
  config.procrustes.update(enabled=project, probability=0.5 if probability is None else probability, every=every)
  targets = resnet.procresnet_projection_targets((image, image)) if project else None
  if project and model != "procresnet":
    raise ValueError(f"only procresnet has kernels to project, not {model}")
  return train.make_optimizer(config, targets, steps_per_epoch=50_000 // 128)


def synthetic_batch(batch: int, image: int, seed: int = 0):
  """Normal ``batch``×``image``×``image``×3 inputs and integer labels in [0, 10)."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, image, image, 3)), jnp.float32)
  return x, jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)


def library_step(model, tx, batch, donate: bool = True, project: bool | None = None):
  """``(jitted step, initial TrainState)``: the library's train step for ``model`` and ``tx``
  (``project``: as in :func:`resnorm.train.train_step`)."""
  state = train.create_train_state(model, jax.random.key(0), batch[0][:1], tx)
  step = functools.partial(train.train_step, loss_fn=train.loss_function("classification"), project=project)
  return jax.jit(step, donate_argnums=0 if donate else ()), state


@dataclasses.dataclass
class Compiled:
  """A lowered and compiled step with the seconds each took."""

  executable: object
  lower_s: float
  compile_s: float


def compile_step(step, state, batch) -> Compiled:
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  executable = lowered.compile()
  return Compiled(executable, lower_s, time.perf_counter() - start)


def run_steps(executable, state, batch, count: int):
  """``count`` steps, then waits for the last; returns the final state."""
  for _ in range(count):
    state, metrics = executable(state, batch)
  jax.block_until_ready((state, metrics))
  return state


def step_seconds(executable, state, batch, repeats: int, warmup: int = 1) -> tuple[float, object]:
  """Median over ``repeats`` of one step's wall time (each waiting for its result), after
  ``warmup`` steps; returns it with the state."""
  state = run_steps(executable, state, batch, warmup)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state = run_steps(executable, state, batch, 1)
    times.append(time.perf_counter() - start)
  return float(np.median(times)), state


def call_seconds(fn, arg, repeats: int, warmup: int = 1) -> list[float]:
  """The wall time of each of ``repeats`` calls ``fn(arg)`` (each waiting for its result), after
  ``warmup`` calls (compiling and first-run costs)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(arg))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(arg))
    times.append(time.perf_counter() - start)
  return times


def peak_memory_gib() -> float | None:
  """The device's peak bytes in use so far in this process, in GiB (None where the backend does
  not report it, e.g. CPU). A process-wide high-water mark: give each model its own process to
  read its own peak."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / GIB


def program_memory_gib(executable) -> float | None:
  """Arguments, outputs and temporaries of one compiled program, less donated aliases, in GiB."""
  try:
    stats = executable.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    return None
  if stats is None:
    return None
  total = (
    stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
  )
  return total / GIB


def device_name() -> str:
  return jax.devices()[0].device_kind


def row(
  script: str,
  model: str,
  depth: int,
  batch: int,
  dtype: str,
  variant: str,
  step_s: float | None,
  compile_s: float | None,
  **extra,
) -> dict:
  """One results.json row; ``variant`` says what differs from the baseline step (XLA_FLAGS from
  the environment are added to it); ``step_s`` None for a step compiled but not run."""
  flags = os.environ.get("XLA_FLAGS", "").strip()
  if flags:
    variant = f"{variant}; XLA_FLAGS={flags}"
  return dict(
    device=device_name(),
    jax_version=jax.__version__,
    script=script,
    model=model,
    depth=depth,
    batch=batch,
    dtype=dtype,
    variant=variant,
    img_per_s=batch / step_s if batch and step_s else None,
    step_ms=None if step_s is None else 1e3 * step_s,
    compile_s=compile_s,
    peak_mem_gib=peak_memory_gib(),
    date=datetime.date.today().isoformat(),
    **extra,
  )


def record(rows: list[dict], path: str | None = None) -> None:
  """Adds ``rows`` to the results file, replacing earlier rows with the same :data:`KEY`."""
  path = path or RESULTS
  existing = []
  if os.path.exists(path):
    with open(path) as f:
      existing = json.load(f)
  keys = {tuple(r[k] for k in KEY) for r in rows}
  kept = [r for r in existing if tuple(r.get(k) for k in KEY) not in keys]
  temporary = path + ".tmp"
  with open(temporary, "w") as f:
    json.dump(kept + rows, f, indent=1)
    f.write("\n")
  os.replace(temporary, path)
