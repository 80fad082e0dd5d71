"""Compile time and step time of the CIFAR ResNets' train step against depth.

  python -m benchmarks.models                                     # defaults sized for one GPU
  python -m benchmarks.models --platform cpu --batch 8 --repeats 2 \\
      --depths resnet=20,110 --depths preact_resnet=164,1001 --depths procresnet=166,1003
  python -m benchmarks.models --dtype bfloat16 --remat            # bf16 compute, rematerialised blocks
  python -m benchmarks.models --remat --remat_policy dots_saveable --depths preact_resnet=1001
  python -m benchmarks.models --platform cpu --repeats 0 --depths preact_resnet=164,1001   # memory, not run
  python -m benchmarks.models --no-scan --depths resnet=20,56     # the unrolled build, for contrast

One row per (family, depth): the library's jitted train step (:mod:`benchmarks.common`:
``resnorm.train.train_step``, forward, backward, BatchNorm statistics, configs/cifar.py's SGD,
the state donated) on a batch of random ``--image``×``--image``×3 inputs. ``lower`` is the time
to trace and lower it, ``compile`` the XLA compilation, ``step`` the median over ``--repeats``
steps after one warm-up step, each waiting for its result. With every stage scanned, the program
does not grow with depth, so compile time should stay flat (the goal: ResNet-1001's step compiles
within 2× ResNet-164's) while step time grows linearly with depth (``ms/layer`` about constant).
``--procrustes`` adds a ProcResNet row whose step also projects the stem and transition kernels
(acting on every step: the worst case). ``--scan_unroll``, ``--dtype``, ``--no-donate`` and
``XLA_FLAGS`` in the environment are the speed variants; every row also goes to results.json.

Needs only jax, flax, optax and numpy (no ml_collections, no TFDS). Rows print as they finish, so a
run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys

import flax
import jax
import optax

from benchmarks import common
from resnorm import models, validation
from resnorm.models import resnet

DEFAULT_DEPTHS = {
  "resnet": (110, 1202),
  "preact_resnet": (164, 272, 632, 1001),
  "procresnet": (166, 1003),
}


def variant(args, project: bool = False) -> str:
  """What differs from the baseline step (scanned, donated, width 1, no projection)."""
  parts = [
    f"scan_unroll={args.scan_unroll}" if args.scan_unroll > 1 else "",
    f"remat {args.remat_policy}" if args.remat else "",
    "" if args.scan else "unrolled build",
    "" if args.donate else "not donated",
    f"width×{args.width_multiplier:g}" if args.width_multiplier != 1 else "",
    "procrustes every=1" if project else "",
  ]
  return ", ".join(p for p in parts if p) or "baseline"


def measure(name: str, depth: int, args, project: bool = False) -> dict:
  """Lower, compile and time the library's train step; returns a table row (also a results.json row)."""
  model = models.create_model(
    name,
    depth,
    dtype=args.dtype,
    remat=args.remat,
    remat_policy=args.remat_policy,
    scan=args.scan,
    width_multiplier=args.width_multiplier,
    scan_unroll=args.scan_unroll,
  )
  batch = common.synthetic_batch(args.batch, args.image)
  tx = common.optimizer(name, args.image, every=1 if project else 0)
  step, state = common.library_step(model, tx, batch, donate=args.donate)
  compiled = common.compile_step(step, state, batch)
  count = sum(leaf.size for leaf in jax.tree.leaves(state.params))
  step_s = common.step_seconds(compiled.executable, state, batch, args.repeats)[0] if args.repeats else None
  result = common.row(
    "models",
    name,
    depth,
    args.batch,
    args.dtype,
    variant(args, project),
    step_s,
    compiled.compile_s,
    lower_s=compiled.lower_s,
    params_m=count / 1e6,
    program_mem_gib=common.program_memory_gib(compiled.executable),
  )
  common.record([result])
  return dict(
    family=name + (" + procrustes" if project else ""),
    depth=depth,
    params=count / 1e6,
    lower=compiled.lower_s,
    compile=compiled.compile_s,
    step=result["step_ms"],
    per_layer=step_s and 1e3 * step_s / depth,
    images=result["img_per_s"],
    program=result["program_mem_gib"],
    peak=result["peak_mem_gib"],
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
  ("program", "{:.2f} GiB"),
  ("peak", "{:.2f} GiB"),
)


def header(args) -> str:
  device = jax.devices()[0]
  lines = [
    f"Device: {device.device_kind} ({device.platform}, {jax.device_count()} device(s)); "
    f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
    f"Python {platform.python_version()}; {datetime.date.today().isoformat()}.",
    f"Train step: batch {args.batch} of {args.image}×{args.image}×3, dtype {args.dtype}, "
    f"{variant(args)}; resnorm.train.train_step with configs/cifar.py's SGD; "
    + (f"step = median of {args.repeats}; " if args.repeats else "compiled, not run; ")
    + "program: XLA's buffer assignment (arguments, outputs, temporaries, less donated aliases); "
    "peak memory: the process's high-water mark so far.",
    "",
    "| family | depth | params | lower | compile | step | ms/layer | images/s | program | peak memory |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  return "\n".join(lines)


def row(result: dict) -> str:
  return "| " + " | ".join("—" if result[key] is None else fmt.format(result[key]) for key, fmt in COLUMNS) + " |"


def summary(results: list[dict]) -> list[str]:
  """Per family: deepest/shallowest compile time, and the spread of ms per layer."""
  lines = []
  for family in dict.fromkeys(r["family"] for r in results):
    rows = sorted((r for r in results if r["family"] == family), key=lambda r: r["depth"])
    if len(rows) < 2:
      continue
    first, last = rows[0], rows[-1]
    line = f"{family}: compile {last['depth']} / {first['depth']} = {last['compile'] / first['compile']:.2f}×"
    if first["step"] is not None:
      per_layer = [r["per_layer"] for r in rows]
      line += (
        f"; step {last['depth']} / {first['depth']} = {last['step'] / first['step']:.2f}× for "
        f"{last['depth'] / first['depth']:.2f}× the depth "
        f"(ms/layer {min(per_layer):.3f}–{max(per_layer):.3f})"
      )
    lines.append(line)
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
  parser.add_argument(
    "--depths",
    action="append",
    metavar="FAMILY=D1,D2,...",
    help="depths of one family (repeat the flag per family); default: %s" % DEFAULT_DEPTHS,
  )
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image", type=int, default=32)
  parser.add_argument(
    "--repeats",
    type=int,
    default=5,
    help="steps timed (median); 0: compile only, for compile time and memory (a CPU can size ResNet-1001)",
  )
  parser.add_argument("--dtype", choices=sorted(resnet.DTYPES), default="float32")
  parser.add_argument("--width_multiplier", type=float, default=1.0)
  parser.add_argument("--remat", action="store_true")
  parser.add_argument(
    "--remat_policy",
    choices=resnet.REMAT_POLICIES,
    default="nothing_saveable",
    help="what a rematerialised block keeps: its input only, or its convolutions' outputs",
  )
  parser.add_argument("--scan", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--scan_unroll", type=int, default=1, help="blocks per trip of a scanned stage")
  parser.add_argument(
    "--donate",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="donate the state to the step, as the training loop does",
  )
  parser.add_argument(
    "--procrustes", action="store_true", help="also time ProcResNet steps that project its kernels (every step)"
  )
  parser.add_argument("--platform", help="force a JAX platform (cpu, gpu, tpu)")
  args = parser.parse_args(argv)
  if args.platform:
    jax.config.update("jax_platforms", args.platform)
  try:
    depths = parse_depths(args.depths)
  except ValueError as error:  # an unknown family, a bad depth or a bad number
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
