"""Where a train step's time goes: a profiler trace of the library's step, per model, against
the floor its FLOPs and bytes set on the device.

  python -m benchmarks.profile_step                       # the speed issue's four models, batch 128
  python -m benchmarks.profile_step --models preact_resnet=164 --dtype bfloat16 --scan_unroll 2
  python -m benchmarks.profile_step --platform cpu --batch 4 --image 8 --models resnet=8

Per model (``--models FAMILY=DEPTH``, repeated): the jitted ``resnorm.train.train_step``
(:mod:`benchmarks.common`) is compiled, timed (median of ``--repeats`` untraced steps) and then
traced for ``--steps`` steps with ``jax.profiler.trace``. From the trace (``perfetto_trace.json.gz``,
or the ``*.trace.json.gz`` beside it) it reports, per step, the kernels launched and the time of
each kernel class (:data:`CLASSES`, matched on the kernel's and its HLO op's names), the device's
busy time (union of kernel intervals) and the rest of the step (launch gaps, host round trips,
loop control). On a GPU the kernels are the events of the device's stream threads; on a CPU, the
XLA thunks' events (self time, so a while loop's body is not counted twice), whose names differ.

The floor: XLA's cost analysis of the compiled step gives FLOPs and bytes accessed, but counts a
``while`` body once, so a scanned build's numbers do not grow with depth. The floor is therefore
taken from the unrolled build (``scan=False``) at n = 1 and 2 blocks per stage, compiled, and
extrapolated linearly to the model's n (exact for FLOPs: the blocks of a stage are identical).
It is divided by the device's peak rates (:data:`PEAKS`, matched on ``device_kind``; unknown
devices get the measured numbers only). Rows go to results.json; printed as markdown tables.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import tempfile

import jax

from benchmarks import common
from resnorm import models
from resnorm.models import resnet

DEFAULT_MODELS = ("preact_resnet=164", "procresnet=166", "preact_resnet=1001", "resnet=110")
# device_kind substring -> peak dense rates: fp32 (non-tensor) TFLOP/s, TF32 TFLOP/s, bf16 TFLOP/s,
# HBM TB/s. First match wins (PCIe before SXM).
PEAKS = {
  "H200": (67.0, 495.0, 990.0, 4.8),
  "H100 PCIe": (51.0, 378.0, 756.0, 2.0),
  "H100": (67.0, 495.0, 990.0, 3.35),
}
# Kernel class -> pattern searched in the lower-cased kernel name, then (for names that match
# none) in its HLO op's name; first match wins. The op's name is not searched for loop control:
# every kernel of a scanned stage runs inside a while loop, and its path says so.
CONTROL = ("while-loop / control", r"dtoh|d2h|memcpy.?dtoh|condition|command.?buffer|graph")
CLASSES = (
  ("convolution / GEMM", r"conv|gemm|xmma|cutlass|cudnn|cublas|dot|matmul|wgrad|dgrad|fprop|triton|sm\d\d_"),
  ("copy / transpose", r"copy|transpose|memcpy|memset|dynamic.?update.?slice|dynamic.?slice|concatenate|reverse"),
  ("BatchNorm-style reduction", r"reduc|batch.?norm"),
  ("elementwise / fusion", r"fusion|loop|elementwise|add|multiply|select|maximum|convert|broadcast"),
)
OTHER = "other"
TOP_KERNELS = 12  # the kernels named in each profile, by time


def peaks(device_kind: str):
  """(fp32, TF32, bf16 TFLOP/s, HBM TB/s) for ``device_kind``, or None when unknown."""
  for key, rates in PEAKS.items():
    if key.lower() in device_kind.lower():
      return rates
  return None


def classify(kernel: str, op: str = "") -> str:
  """The class of a kernel named ``kernel`` that runs HLO op ``op`` (see :data:`CLASSES`)."""
  for text, classes in ((kernel.lower(), (CONTROL,) + CLASSES), (op.lower(), CLASSES)):
    for label, pattern in classes:
      if re.search(pattern, text):
        return label
  return OTHER


# ----------------------------------------------------------------------------- trace


def trace_events(directory: str) -> list[dict]:
  """The Chrome-format events of the trace written under ``directory``."""
  paths = glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True) or glob.glob(
    os.path.join(directory, "**", "*.trace.json.gz"), recursive=True
  )
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz or *.trace.json.gz under {directory}")
  with gzip.open(sorted(paths)[-1]) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def kernel_events(events: list[dict]) -> list[dict]:
  """Kernels: complete events on a device's stream threads (GPU); else, without a device in the
  trace, the XLA ops the CPU runtime records (events naming an ``hlo_op``)."""
  processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "process_name"}
  threads = {
    (e["pid"], e.get("tid")): e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "thread_name"
  }
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
  devices = {pid for pid, name in processes.items() if "/device:" in name and "cpu" not in name.lower()}
  on_streams = [
    e for e in complete if e["pid"] in devices and "stream" in threads.get((e["pid"], e.get("tid")), "").lower()
  ]
  if on_streams:
    return on_streams
  return [e for e in complete if "hlo_op" in e.get("args", {}) and not e["name"].startswith("end:")]


def self_times(kernels: list[dict]) -> list[float]:
  """Each event's duration less that of the events nested in it on the same thread (µs)."""
  order = sorted(
    range(len(kernels)), key=lambda i: (kernels[i]["pid"], kernels[i].get("tid"), kernels[i]["ts"], -kernels[i]["dur"])
  )
  own = [float(k["dur"]) for k in kernels]
  stack = []  # indices of the open events on the current thread
  thread = None
  for i in order:
    event = kernels[i]
    if (event["pid"], event.get("tid")) != thread:
      stack, thread = [], (event["pid"], event.get("tid"))
    while stack and kernels[stack[-1]]["ts"] + kernels[stack[-1]]["dur"] <= event["ts"]:
      stack.pop()
    if stack:
      own[stack[-1]] -= event["dur"]
    stack.append(i)
  return own


def busy_microseconds(kernels: list[dict]) -> float:
  """Length of the union of the kernels' intervals."""
  total, end = 0.0, float("-inf")
  for start, stop in sorted((k["ts"], k["ts"] + k["dur"]) for k in kernels):
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def summarise(events: list[dict], steps: int) -> dict:
  """Per step: kernel count, busy ms, and (count, ms) per kernel class."""
  kernels = kernel_events(events)
  classes, names = {}, {}
  for kernel, own in zip(kernels, self_times(kernels)):
    args = kernel.get("args", {})
    label = classify(kernel["name"], str(args.get("hlo_op", "")))
    family = re.sub(r"[._]\d+", "", kernel["name"])[:60]  # fusion_12, fusion.3 -> one row
    for table, key in ((classes, label), (names, (family, label))):
      count, ms = table.get(key, (0, 0.0))
      table[key] = (count + 1, ms + own / 1e3)
  top = sorted(names.items(), key=lambda item: -item[1][1])[:TOP_KERNELS]
  return dict(
    kernels=len(kernels) / steps,
    busy_ms=busy_microseconds(kernels) / 1e3 / steps,
    classes={label: (count / steps, ms / steps) for label, (count, ms) in classes.items()},
    top=[(name, label, count / steps, ms / steps) for (name, label), (count, ms) in top],
  )


def traced(executable, state, batch, steps: int):
  """``steps`` steps under ``jax.profiler.trace``; returns (state, trace events)."""
  directory = tempfile.mkdtemp(prefix="resnorm_trace_")
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    state = common.run_steps(executable, state, batch, steps)
  return state, trace_events(directory)


# ----------------------------------------------------------------------------- floor


def program_cost(executable) -> tuple[float, float]:
  """(FLOPs, bytes accessed) of a compiled program by XLA's cost analysis."""
  cost = executable.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def floor_cost(name: str, depth: int, options: dict, tx, batch) -> tuple[float, float]:
  """(FLOPs, bytes) of one step of ``name``-``depth``, extrapolated from the unrolled build at
  n = 1 and n = 2 blocks per stage (a scanned loop's body is counted once by XLA)."""
  layout = resnet.LAYOUTS[name]
  costs = []
  for blocks in (1, 2):
    model = models.create_model(name, layout.per_block * blocks + layout.extra, **{**options, "scan": False})
    step, state = common.library_step(model, tx, batch, donate=False)
    costs.append(program_cost(common.compile_step(step, state, batch).executable))
  (flops1, bytes1), (flops2, bytes2) = costs
  extra = layout.blocks(depth) - 1
  return flops1 + extra * (flops2 - flops1), bytes1 + extra * (bytes2 - bytes1)


# ----------------------------------------------------------------------------- one model


def profile(name: str, depth: int, args) -> dict:
  """Compile, time, trace and cost one model's step; returns its results.json row."""
  options = dict(dtype=args.dtype, width_multiplier=args.width_multiplier, scan_unroll=args.scan_unroll)
  model = models.create_model(name, depth, **options, scan=args.scan)
  batch = common.synthetic_batch(args.batch, args.image)
  tx = common.optimizer(name, args.image)
  step, state = common.library_step(model, tx, batch, donate=args.donate)
  compiled = common.compile_step(step, state, batch)
  step_s, state = common.step_seconds(compiled.executable, state, batch, args.repeats)
  try:
    state, events = traced(compiled.executable, state, batch, args.steps)
    summary = summarise(events, args.steps)
  except (RuntimeError, OSError, ValueError) as error:  # no profiler (e.g. CUPTI missing): keep the rest
    print(f"{name}-{depth}: no trace ({type(error).__name__}: {error})", flush=True)
    summary = dict(kernels=None, busy_ms=None, classes={}, top=[])
  flops, bytes_accessed = floor_cost(name, depth, options, tx, batch)
  variant = (
    ", ".join(
      p
      for p in (
        f"scan_unroll={args.scan_unroll}" if args.scan_unroll > 1 else "",
        "" if args.scan else "unrolled build",
        "" if args.donate else "not donated",
      )
      if p
    )
    or "baseline"
  )
  result = common.row(
    "profile_step",
    name,
    depth,
    args.batch,
    args.dtype,
    variant,
    step_s,
    compiled.compile_s,
    flops=flops,
    bytes_accessed=bytes_accessed,
    kernels_per_step=summary["kernels"],
    busy_ms=summary["busy_ms"],
    class_ms={label: ms for label, (_, ms) in summary["classes"].items()},
    class_kernels={label: n for label, (n, _) in summary["classes"].items()},
    top_kernels=summary["top"],
    program_mem_gib=common.program_memory_gib(compiled.executable),
  )
  common.record([result])
  return result


# ----------------------------------------------------------------------------- tables


def time_table(result: dict) -> list[str]:
  """Kernel classes of one model, per step."""
  step_ms, busy = result["step_ms"], result["busy_ms"]
  if busy is None:
    return [f"#### {result['model']}-{result['depth']}: step {step_ms:.2f} ms, no trace", ""]
  lines = [
    f"#### {result['model']}-{result['depth']}, batch {result['batch']}, {result['dtype']}, {result['variant']}",
    "",
    f"Step {step_ms:.2f} ms ({result['img_per_s']:.0f} img/s, compiled in {result['compile_s']:.1f} s); "
    f"{result['kernels_per_step']:.0f} kernels per step; device busy {busy:.2f} ms, "
    f"the rest of the step {max(step_ms - busy, 0.0):.2f} ms (gaps: launches, host, loop control).",
    "",
    "| kernel class | kernels/step | ms/step | share of busy time |",
    "|---|---:|---:|---:|",
  ]
  rows = sorted(result["class_ms"], key=lambda label: -result["class_ms"][label])
  for label in rows:
    ms = result["class_ms"][label]
    share = 100 * ms / busy if busy else 0.0
    lines.append(f"| {label} | {result['class_kernels'][label]:.0f} | {ms:.3f} | {share:.0f}% |")
  lines += [
    "",
    "| kernel (numbering dropped, first 60 characters), by time | class | per step | ms/step |",
    "|---|---|---:|---:|",
  ]
  lines += [f"| `{name}` | {label} | {count:.0f} | {ms:.3f} |" for name, label, count, ms in result["top_kernels"]]
  return lines + [""]


def floor_table(results: list[dict]) -> list[str]:
  """FLOPs and bytes per step against the device's peak rates, with the measured step."""
  device = results[0]["device"]
  rates = peaks(device)
  lines = [f"#### The floor on {device}" + ("" if rates else " (rates unknown: measured numbers only)"), ""]
  if rates:
    fp32, tf32, bf16, hbm = rates
    lines += [
      f"Peak rates used: fp32 {fp32:g}, TF32 {tf32:g}, bf16 {bf16:g} TFLOP/s dense; HBM {hbm:g} TB/s.",
      "",
      "| model | batch | dtype | GFLOP/step | GB/step | compute floor fp32 / TF32 / bf16 (ms) | memory floor "
      "(ms) | measured (ms) | ms/layer measured / memory floor |",
      "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
  else:
    lines += [
      "| model | batch | dtype | GFLOP/step | GB/step | measured (ms) | ms/layer |",
      "|---|---:|---|---:|---:|---:|---:|",
    ]
  for r in results:
    head = (
      f"| {r['model']}-{r['depth']} | {r['batch']} | {r['dtype']} | {r['flops'] / 1e9:.4g} | "
      f"{r['bytes_accessed'] / 1e9:.4g} |"
    )
    if rates:
      compute = " / ".join(f"{r['flops'] / (rate * 1e12) * 1e3:.2f}" for rate in (fp32, tf32, bf16))
      memory = r["bytes_accessed"] / (hbm * 1e12) * 1e3
      lines.append(
        f"{head} {compute} | {memory:.2f} | {r['step_ms']:.2f} | "
        f"{r['step_ms'] / r['depth']:.4f} / {memory / r['depth']:.4f} |"
      )
    else:
      lines.append(f"{head} {r['step_ms']:.2f} | {r['step_ms'] / r['depth']:.4f} |")
  return lines + [""]


def parse_models(values) -> list[tuple[str, int]]:
  parsed = []
  for value in values or DEFAULT_MODELS:
    name, _, depth = value.partition("=")
    models.family(name).check_depth(int(depth))
    parsed.append((name, int(depth)))
  return parsed


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument(
    "--models",
    action="append",
    metavar="FAMILY=DEPTH",
    help="repeat per model; default: %s" % ", ".join(DEFAULT_MODELS),
  )
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image", type=int, default=32)
  parser.add_argument("--dtype", choices=sorted(resnet.DTYPES), default="float32")
  parser.add_argument("--width_multiplier", type=float, default=1.0)
  parser.add_argument("--scan_unroll", type=int, default=1, help="blocks per trip of a scanned stage")
  parser.add_argument(
    "--scan",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="--no-scan: the unrolled build, one module per block (no while loops)",
  )
  parser.add_argument("--donate", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--repeats", type=int, default=10, help="untraced steps timed (median)")
  parser.add_argument("--steps", type=int, default=3, help="steps traced")
  parser.add_argument("--platform", help="force a JAX platform (cpu, gpu, tpu)")
  args = parser.parse_args(argv)
  if args.platform:
    jax.config.update("jax_platforms", args.platform)
  try:
    chosen = parse_models(args.models)
  except ValueError as error:
    parser.error(str(error))
  print(
    f"device: {common.device_name()}; jax {jax.__version__}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
    f"{args.steps} traced steps, step time = median of {args.repeats} untraced\n",
    flush=True,
  )
  results = []
  for name, depth in chosen:
    results.append(profile(name, depth, args))
    print("\n".join(time_table(results[-1])), flush=True)
  print("\n".join(floor_table(results)), flush=True)


if __name__ == "__main__":
  main()
