"""Time one Procrustes projection of ProcResNet's kernels; or the Newton–Schulz convergence study.

  python -m benchmarks.projection                  # timings on jax.devices()[0], markdown table
  python -m benchmarks.projection --platform cpu   # force a platform
  python -m benchmarks.projection --study          # error vs iterations and condition number

Timings: float32, jitted, warm (compiled and run twice first), median over ``--repeats`` calls
that each wait for their result; each timing is also a results.json row (model: the projected
kernel, variant: the method). Needs only jax, flax, optax and numpy (no ml_collections, no TFDS).
The goal they serve: the projection adds at most 2% to a ProcResNet-166 train step.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from resnorm import models, procrustes

# name, kernel shape (kh, kw, c_in, c_out), input (H, W), stride: ProcResNet's projected kernels.
KERNELS = (
  ("stem 3→64, 3×3 on 32×32", (3, 3, 3, 64), (32, 32), 1),
  ("transition 64→128, 1×1/2 on 32×32", (1, 1, 64, 128), (32, 32), 2),
  ("transition 128→256, 1×1/2 on 16×16", (1, 1, 128, 256), (16, 16), 2),
)
CONDITION_NUMBERS = (1.0, 10.0, 1e2, 1e3, 1e4)
# shape, complex: square, tall, wide complex, batched.
STUDY_MATRICES = (((64, 64), False), ((128, 64), False), ((32, 96), True), ((8, 16, 16), False))


def median_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def kernels(seed: int = 0) -> dict:
  keys = jax.random.split(jax.random.key(seed), len(KERNELS))
  return {
    name: jax.random.normal(key, shape, jnp.float32) / np.sqrt(np.prod(shape[:3]))
    for key, (name, shape, _, _) in zip(keys, KERNELS)
  }


def timings(repeats: int) -> list[tuple[str, float, float]]:
  """(row, Newton–Schulz ms, SVD ms) per kernel, for all three in one program, and one optax step."""
  weights = kernels()
  rows = []
  for name, _, spatial, stride in KERNELS:
    row = [name]
    for method in procrustes.METHODS:
      fn = jax.jit(lambda k, s=spatial, t=stride, m=method: procrustes.project_conv(k, s, stride=t, method=m))
      row.append(1e3 * median_seconds(fn, weights[name], repeats=repeats))
    rows.append(tuple(row))

  targets = {(name,): models.ConvTarget(spatial, stride) for name, _, spatial, stride in KERNELS}
  row = ["all three, one procrustes() update (acting)"]
  for method in procrustes.METHODS:
    tx = procrustes.procrustes(targets, probability=1.0, method=method)
    step = jax.jit(lambda u, s, p, tx=tx: tx.update(u, s, p)[0])
    zeros = jax.tree.map(jnp.zeros_like, weights)
    row.append(1e3 * median_seconds(step, zeros, tx.init(weights), weights, repeats=repeats))
  rows.append(tuple(row))
  tx = procrustes.procrustes(targets, probability=0.0)
  step = jax.jit(lambda u, s, p: tx.update(u, s, p)[0])
  idle = 1e3 * median_seconds(step, jax.tree.map(jnp.zeros_like, weights), tx.init(weights), weights, repeats=repeats)
  rows.append(("same update, not acting (probability 0)", idle, idle))
  return rows


def random_matrix(rng, shape, kappa: float, is_complex: bool) -> np.ndarray:
  """Singular values geometrically spaced from 1 to 1/kappa, random singular vectors."""
  *batch, m, n = shape

  def orthonormal(size):
    a = rng.standard_normal((*batch, size, size))
    if is_complex:
      a = a + 1j * rng.standard_normal((*batch, size, size))
    return np.linalg.qr(a)[0][..., : min(m, n)]

  u, v = orthonormal(m), orthonormal(n)
  return (u * np.geomspace(1, 1 / kappa, min(m, n))) @ np.conj(np.swapaxes(v, -1, -2))


def svd_polar(x: np.ndarray) -> np.ndarray:
  u, _, vh = np.linalg.svd(x.astype(np.complex128 if np.iscomplexobj(x) else np.float64), full_matrices=False)
  return u @ vh


def study(iterations=range(1, 17), seed: int = 0) -> dict:
  """max relative error of Newton–Schulz vs float64 SVD, per (dtype, kappa, iterations)."""
  rng = np.random.default_rng(seed)
  errors = {}
  for kappa in CONDITION_NUMBERS:
    matrices = [random_matrix(rng, shape, kappa, c) for shape, c in STUDY_MATRICES]
    for dtype in ("float64", "float32"):
      inputs = [
        m.astype(np.complex128 if dtype == "float64" else np.complex64) if np.iscomplexobj(m) else m.astype(dtype)
        for m in matrices
      ]
      references = [svd_polar(x) for x in inputs]
      for k in iterations:
        errors[dtype, kappa, k] = max(
          np.linalg.norm(np.asarray(procrustes.polar(x, iterations=k)) - r) / np.linalg.norm(r)
          for x, r in zip(inputs, references)
        )
  return errors


def header() -> str:
  device = jax.devices()[0]
  return (
    f"device: {device.device_kind} ({device.platform}, {jax.device_count()} device(s)); "
    f"jax {jax.__version__}, optax {optax.__version__}, Python {platform.python_version()}; "
    f"{datetime.date.today().isoformat()}"
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--platform", help="cpu, gpu or tpu (default: jax's choice)")
  parser.add_argument("--repeats", type=int, default=50)
  parser.add_argument("--study", action="store_true", help="the convergence study instead of timings")
  args = parser.parse_args(argv)
  if args.platform:
    jax.config.update("jax_platforms", args.platform)
  print(header())
  print()
  if args.study:
    jax.config.update("jax_enable_x64", True)
    errors = study()
    columns = [(d, k) for d in ("float64", "float32") for k in CONDITION_NUMBERS]
    print("| iterations | " + " | ".join(f"{d} κ={k:g}" for d, k in columns) + " |")
    print("|---:|" + "---:|" * len(columns))
    for it in sorted({k for _, _, k in errors}):
      print(f"| {it} | " + " | ".join(f"{errors[d, k, it]:.0e}" for d, k in columns) + " |")
    return
  print("| projection (float32, jitted, warm) | Newton–Schulz (ms) | SVD (ms) |")
  print("|---|---:|---:|")
  rows = timings(args.repeats)
  for name, ns, svd in rows:
    print(f"| {name} | {ns:.3f} | {svd:.3f} |")
  common.record(
    [
      common.row("projection", name, None, None, "float32", method, ms / 1e3, None)
      for name, *times in rows
      for method, ms in zip(procrustes.METHODS, times)
    ]
  )


if __name__ == "__main__":
  main()
