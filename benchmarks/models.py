"""Compile time and step time of the CIFAR ResNets' train step against depth.

  python -m benchmarks.models                                     # defaults sized for one GPU
  python -m benchmarks.models --platform cpu --batch 8 --repeats 2 \\
      --depths resnet=20,110 --depths preact_resnet=164,1001 --depths procresnet=166,1003
  python -m benchmarks.models --dtype bfloat16 --remat            # bf16 compute, rematerialised blocks
  python -m benchmarks.models --no-scan --depths resnet=20,56     # the unrolled build, for contrast

One row per (family, depth): the jitted train step (forward, backward, BatchNorm statistics,
SGD with momentum 0.9) on a batch of random ``--image``×``--image``×3 inputs. ``lower`` is the
time to trace and lower it, ``compile`` the XLA compilation, ``step`` the median over
``--repeats`` steps after one warm-up step, each waiting for its result. With every stage
scanned, the program does not grow with depth, so compile time should stay flat (the goal:
ResNet-1001's step compiles within 2× ResNet-164's) while step time grows linearly with depth
(``ms/layer`` about constant). ``--procrustes`` adds a ProcResNet row whose step also projects
the stem and transition kernels (acting on every step: the worst case).

Needs only jax, flax, optax and numpy (no ml_collections, no TFDS). Rows print as they finish,
so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnorm import models, procrustes, validation
from resnorm.models import resnet

DEFAULT_DEPTHS = {
    "resnet": (110, 1202),
    "preact_resnet": (164, 272, 632, 1001),
    "procresnet": (166, 1003),
}


def train_step(model, tx):
  """A pure step ``(params, batch_stats, opt_state, x, y) -> (..., loss)``, as in resnorm.train."""

  def step(params, batch_stats, opt_state, x, y):
    def loss_fn(params):
      logits, state = model.apply(
          {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, state["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  return step


def measure(name: str, depth: int, args, project: bool = False) -> dict:
  """Lower, compile and time one train step; returns a table row."""
  model = models.create_model(
      name, depth, dtype=args.dtype, remat=args.remat, scan=args.scan, width_multiplier=args.width_multiplier
  )
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(args.batch, args.image, args.image, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=args.batch), jnp.int32)
  variables = jax.jit(lambda key: model.init(key, x[:1], train=False))(jax.random.key(0))
  params, batch_stats = variables["params"], variables["batch_stats"]
  tx = optax.sgd(0.1, momentum=0.9)
  if project:
    targets = resnet.procresnet_projection_targets((args.image, args.image))
    tx = optax.chain(tx, procrustes.procrustes(targets, every=1))
  opt_state = tx.init(params)
  step = jax.jit(train_step(model, tx), donate_argnums=(0, 1, 2))

  start = time.perf_counter()
  lowered = step.lower(params, batch_stats, opt_state, x, y)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  state = compiled(params, batch_stats, opt_state, x, y)
  jax.block_until_ready(state)
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    state = compiled(*state[:3], x, y)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  count = sum(leaf.size for leaf in jax.tree.leaves(state[0]))
  return dict(
      family=name + (" + procrustes" if project else ""),
      depth=depth,
      params=count / 1e6,
      lower=lower_s,
      compile=compile_s,
      step=1e3 * step_s,
      per_layer=1e3 * step_s / depth,
      images=args.batch / step_s,
  )


COLUMNS = (
    ("family", "{}"),
    ("depth", "{}"),
    ("params", "{:.2f}M"),
    ("lower", "{:.1f} s"),
    ("compile", "{:.1f} s"),
    ("step", "{:.1f} ms"),
    ("per_layer", "{:.3f} ms"),
    ("images", "{:.3g}/s"),
)


def header(args) -> str:
  device = jax.devices()[0]
  lines = [
      f"Device: {device.device_kind} ({device.platform}, {jax.device_count()} device(s)); "
      f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
      f"Python {platform.python_version()}; {datetime.date.today().isoformat()}.",
      f"Train step: batch {args.batch} of {args.image}×{args.image}×3, dtype {args.dtype}, "
      f"{'scanned' if args.scan else 'unrolled'}{', remat' if args.remat else ''}, "
      f"width ×{args.width_multiplier}, SGD momentum 0.9; step = median of {args.repeats}.",
      "",
      "| family | depth | params | lower | compile | step | ms/layer | images/s |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  return "\n".join(lines)


def row(result: dict) -> str:
  return "| " + " | ".join(fmt.format(result[key]) for key, fmt in COLUMNS) + " |"


def summary(results: list[dict]) -> list[str]:
  """Per family: deepest/shallowest compile time, and the spread of ms per layer."""
  lines = []
  for family in dict.fromkeys(r["family"] for r in results):
    rows = sorted((r for r in results if r["family"] == family), key=lambda r: r["depth"])
    if len(rows) < 2:
      continue
    first, last = rows[0], rows[-1]
    per_layer = [r["per_layer"] for r in rows]
    lines.append(
        f"{family}: compile {last['depth']} / {first['depth']} = {last['compile'] / first['compile']:.2f}×; "
        f"step {last['depth']} / {first['depth']} = {last['step'] / first['step']:.2f}× for "
        f"{last['depth'] / first['depth']:.2f}× the depth (ms/layer {min(per_layer):.3f}–{max(per_layer):.3f})"
    )
  return lines


def parse_depths(values) -> dict[str, tuple[int, ...]]:
  if not values:
    return dict(DEFAULT_DEPTHS)
  depths = {}
  for value in values:
    name, _, listed = value.partition("=")
    validation.one_of("family", name, resnet.LAYOUTS)
    depths[name] = tuple(int(d) for d in listed.split(","))
    for depth in depths[name]:
      models.family(name).check_depth(depth)
  return depths


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--depths", action="append", metavar="FAMILY=D1,D2,...",
                      help="depths of one family (repeat the flag per family); default: %s" % DEFAULT_DEPTHS)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", choices=sorted(resnet.DTYPES), default="float32")
  parser.add_argument("--width_multiplier", type=float, default=1.0)
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--scan", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--procrustes", action="store_true",
                      help="also time ProcResNet steps that project its kernels (every step)")
  parser.add_argument("--platform", help="force a JAX platform (cpu, gpu, tpu)")
  args = parser.parse_args(argv)
  if args.platform:
    jax.config.update("jax_platforms", args.platform)
  try:
    depths = parse_depths(args.depths)
  except ValueError as error:  # a ConfigError (unknown family, bad depth) or a bad number
    parser.error(str(error))

  print(header(args), flush=True)
  results = []
  for name, family_depths in depths.items():
    for depth in family_depths:
      results.append(measure(name, depth, args))
      print(row(results[-1]), flush=True)
    if args.procrustes and name == "procresnet":
      for depth in family_depths:
        results.append(measure(name, depth, args, project=True))
        print(row(results[-1]), flush=True)
  print()
  for line in summary(results):
    print(line, flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
