r"""The depth sweep's wall time against its arithmetic floor, and where the rest goes.

    python -m benchmarks.sweep_throughput                       # the default sweep (configs/depth_sweep.py)
    python -m benchmarks.sweep_throughput --rerun               # then again, the compilation cache warm
    python -m benchmarks.sweep_throughput --quick               # a tiny sweep (the tests run this)

Runs the sweep as ``python -m experiments.sweep`` runs it (``config.parallel_runs`` worker
processes) on an empty persistent compilation cache: its wall time, and its XLA compilations as
the programs it adds to the cache. With worker processes, runs it again in this process, one group
at a time, on another empty cache (``--quick`` runs in this process from the start), and splits
that run's time into thread-seconds: tracing and compiling (JAX's own monitoring events), training
stretches, measurements, evaluations, creating the initial states, and writing the outputs and the
figures; each net of the compilation inside it.

The floor: one compiled stretch of ``--floor_steps`` steps of a stack of the sweep's own blocks
at the largest depth (batch, width and hidden of the config; one run, the library's
:func:`resnorm.train.train_steps`, no host work), the fastest of five calls after compiling,
measured before and after the timed runs, the lower of the two; its seconds per block-step times
the sweep's member-block-steps (Σ over runs of steps × depth) is the time the arithmetic takes on
one core. The row records the wall time over that floor. ``--long_run`` times one run of the
reference setting at the largest depth for that many steps the same way.
"""

import collections
import contextlib
import functools
import os
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from configs import depth_sweep
from experiments import sweep_outputs, sweep_runner
from resnorm import loop, measure, models, plots, sweep_plan, train

_RERUN = flags.DEFINE_bool("rerun", False, "Run the sweep a second time with the compilation cache warm.")
_QUICK = flags.DEFINE_bool("quick", False, "A tiny sweep: two depths, one seed, 20 steps (for the tests).")
_FLOOR_STEPS = flags.DEFINE_integer("floor_steps", 50, "Steps of the stretch that sets the floor.")
_CACHE = flags.DEFINE_string("cache", None, "Persistent compilation cache directory (default: a new temporary one).")
_LONG_RUN = flags.DEFINE_integer(
  "long_run",
  4_000,
  "Steps of one run of the reference setting at the largest depth, timed against its floor too (0: none).",
)

COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
)


class Clock:
  """Thread-seconds per phase; compilation inside a phase is counted as compilation only."""

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self._local = threading.local()
    self._lock = threading.Lock()
    jax.monitoring.register_event_duration_secs_listener(self._compiled)

  def _compiled(self, event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
      with self._lock:
        self.seconds["compile"] += duration
      self._local.compiled = getattr(self._local, "compiled", 0.0) + duration

  @contextlib.contextmanager
  def phase(self, name: str):
    compiled = getattr(self._local, "compiled", 0.0)
    start = time.perf_counter()
    try:
      yield
    finally:
      inside = getattr(self._local, "compiled", 0.0) - compiled
      with self._lock:
        self.seconds[name] += time.perf_counter() - start - inside

  def wrap(self, owner, attribute: str, name: str, wait: bool = False):
    """Times every call of ``owner.attribute`` as phase ``name`` (``wait``: until its results are ready)."""
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def timed(*args, **kwargs):
      with self.phase(name):
        result = original(*args, **kwargs)
        return jax.block_until_ready(result) if wait else result

    setattr(owner, attribute, timed)


def sweep_config():
  config = depth_sweep.get_config()
  if _QUICK.value:
    config.depths, config.settings, config.seeds = (2, 4), ("residual_zero_init", "plain"), (0,)
    for override in config.overrides.values():
      if "seeds" in override:
        del override["seeds"]
    config.data.train_size, config.data.test_size, config.model.width, config.model.hidden = 256, 64, 8, 8
    config.batch_size, config.num_steps, config.log_every, config.signal.every = 32, 20, 10, 10
    config.signal.num_examples, config.signal.direction_free_examples = 32, 8
    config.parallel_runs = 1  # in this process: the parts are the timed run's own
  return config


def floor_seconds_per_block_step(config, steps: int, repeats: int = 5) -> float:
  """One compiled stretch of the sweep's blocks at its largest depth: seconds per block-step,
  the fastest of ``repeats`` timed calls (a floor: a shared machine only ever adds time)."""
  depth = max(config.depths)
  model = models.create_model(
    "mlp_residual",
    depth,
    num_classes=config.data.dim,
    width=config.model.width,
    hidden=config.model.hidden,
    branch_scale="1",
  )
  tx = train.make_optimizer(_with_depth(config, depth), steps_per_epoch=64)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((steps, config.batch_size, config.data.dim)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((steps, config.batch_size, config.data.dim)), jnp.float32)
  state = train.create_train_state(model, jax.random.key(0), x[0], tx)
  loss_fn = train.loss_function("regression")
  stretch = jax.jit(lambda s: train.train_steps(s, lambda i: (x[i], y[i]), steps, steps, loss_fn))
  return min(common.call_seconds(stretch, state, repeats)) / (steps * depth)


def _with_depth(config, depth: int):
  single = config.copy_and_resolve_references()
  single.model.depth = depth
  return single


def block_steps(config) -> int:
  """Σ over the sweep's runs of steps × depth."""
  return sum(run.config.num_steps * run.depth for run in sweep_plan.plan(config))


def timed_sweep(config, cache: str) -> tuple[float, int]:
  """The sweep's wall time, and the programs it added to the persistent compilation ``cache``."""
  before = len(os.listdir(cache))
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    sweep_runner.run_sweep(config, workdir, progress=False)
    return time.perf_counter() - start, len(os.listdir(cache)) - before


def _use_cache(cache: str) -> None:
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv):
  del argv
  cache = _CACHE.value or tempfile.mkdtemp(prefix="resnorm-sweep-cache-")
  _use_cache(cache)
  config = sweep_config()
  clock = Clock()
  clock.wrap(loop._TrainSteps, "__call__", "train", wait=True)
  clock.wrap(measure.Measure, "__call__", "measure")
  clock.wrap(loop._Evaluation, "__call__", "evaluate")
  clock.wrap(loop, "_initial_states", "initial states", wait=True)
  for figure in ("delta_vs_depth", "task_vs_depth", "constructed_vs_trained", "ratio_profile", "delta_during_training"):
    clock.wrap(plots, figure, "figures")
  clock.wrap(sweep_outputs, "write_outputs", "outputs and figures")
  # The floor is measured before and after the timed runs and the lower taken: on a shared machine
  # the same stretch has run 1.7× slower in one hour than in the next.
  measured = [floor_seconds_per_block_step(config, _FLOOR_STEPS.value)]
  sweeps = []
  for variant in ("first run", "rerun, compilation cache warm")[: 2 if _RERUN.value else 1]:
    clock.seconds.clear()
    wall, compiles = timed_sweep(config, cache)
    sweeps.append((variant, wall, compiles))
    if variant == "first run":
      parts, parts_wall = dict(clock.seconds), wall
  if config.parallel_runs > 1:  # the parts: the same sweep in this process, one group at a time, on a cold cache
    _use_cache(tempfile.mkdtemp(prefix="resnorm-sweep-parts-cache-"))
    clock.seconds.clear()
    in_process = config.copy_and_resolve_references()
    in_process.parallel_runs = 1
    parts_wall, _ = timed_sweep(in_process, jax.config.jax_compilation_cache_dir)
    parts = dict(clock.seconds)
    _use_cache(cache)
  parts["outputs and figures"] = parts.get("outputs and figures", 0.0) - parts.get("figures", 0.0)
  if _LONG_RUN.value:
    single = [run for run in sweep_plan.plan(config) if run.depth == max(config.depths)][0].config
    steps = _LONG_RUN.value
    single.num_steps, single.log_every, single.signal.every = steps, steps // 8, steps // 4
    with tempfile.TemporaryDirectory() as workdir:
      start = time.perf_counter()
      loop.train_and_evaluate(single, workdir)
      long_wall = time.perf_counter() - start
  measured.append(floor_seconds_per_block_step(config, _FLOOR_STEPS.value))
  per_block_step = min(measured)
  print(f"floor per block-step measured before and after: {', '.join(f'{1e6 * s:.1f} µs' for s in measured)}")
  floor = per_block_step * block_steps(config)
  runs, groups = len(sweep_plan.plan(config)), len(sweep_plan.groups(sweep_plan.plan(config)))
  rows = []
  print(f"the same sweep in one process, one group at a time: wall {parts_wall:.1f} s, in thread-seconds")
  for name, seconds in sorted(parts.items(), key=lambda item: -item[1]):
    print(f"  {name:22s} {seconds:7.1f} thread-s")
  for variant, wall, compiles in sweeps:
    print(
      f"{variant}: {runs} runs in {groups} programs ({compiles} XLA compilations), wall {wall:.1f} s; "
      f"floor {floor:.1f} s ({1e6 * per_block_step:.1f} µs per block-step × {block_steps(config)}): "
      f"{wall / floor:.2f}× the floor"
    )
    rows.append(
      common.row(
        "sweep_throughput",
        "mlp_residual",
        max(config.depths),
        config.batch_size,
        "float32",
        ("quick; " if _QUICK.value else "") + variant,
        None,
        None,
        wall_s=wall,
        floor_s=floor,
        over_floor=wall / floor,
        runs=runs,
        programs=groups,
        compiles=compiles,
        us_per_block_step=1e6 * per_block_step,
        us_per_block_step_measured=[1e6 * s for s in measured],
        workers=config.parallel_runs,
        parts_in_one_process={k: round(v, 2) for k, v in parts.items()},
        parts_wall_s=parts_wall,
      )
    )
  if _LONG_RUN.value:
    floor = per_block_step * single.num_steps * single.model.depth
    print(
      f"one run of {single.setting} at L = {single.model.depth}, {single.num_steps} steps: wall {long_wall:.1f} s; "
      f"floor {floor:.1f} s: {long_wall / floor:.2f}× the floor"
    )
    rows.append(
      common.row(
        "sweep_throughput",
        "mlp_residual",
        single.model.depth,
        single.batch_size,
        "float32",
        f"one run of {single.num_steps} steps",
        None,
        None,
        wall_s=long_wall,
        floor_s=floor,
        over_floor=long_wall / floor,
        us_per_block_step=1e6 * per_block_step,
      )
    )
  common.record(rows)


if __name__ == "__main__":
  app.run(main)
