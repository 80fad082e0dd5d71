"""How close the projected ProcResNet stem gets to its target, against rounds, and what it costs.

  python -m benchmarks.stem_projection                  # on jax.devices()[0], markdown tables
  python -m benchmarks.stem_projection --platform cpu   # force a platform
  python -m benchmarks.stem_projection --no-padded      # skip the zero-padded operator (the slow part)

The stem is a 3×3 convolution 3 → 64 on 32×32 images, target s = sqrt(64/3) ≈ 4.62 for every
singular value. The kernel starts He-normal (fan-out, resnorm's default, seed 0) and is projected
in float32 by :func:`resnorm.procrustes.project_conv` (Newton–Schulz) with ``rounds`` r, or by
a reference code's read-back (``convention``) applied r times in a row, which is what r acting
training steps do to it when the gradient steps are small. For each result:

* circular: the operator that the projection targets (circular padding). Its 3072 singular values
  come from the kernel's 2-D DFT over 32×32 (Sedghi et al. 2019): per frequency, the singular
  values of the 3×64 matrix K̂(u, v), in float64 NumPy.
* zero-padded: the operator the network applies (Flax's padding of 1 on 32×32×3 inputs, output
  32×32×64). Its Gram matrix AᵀA (3072 × 3072) is built column by column, AᵀA e_i by one
  convolution and its transpose (``jax.linear_transpose``) in float64, and its eigenvalues
  (``numpy.linalg.eigvalsh``) are the squared singular values: all 3072 of them, exactly, not a
  power or Lanczos estimate.
* max |σ − s| (absolute), rms = sqrt(mean (σ/s − 1)²), and the share of the kernel's energy
  Σ K² held by its largest tap (1/9 for energy spread evenly; 1 for a single tap).

Time: one jitted call of ``project_conv`` on the float32 kernel, warm, median over ``--repeats``
calls that each wait for their result.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.projection import header
from resnorm import procrustes
from resnorm.models import resnet

SHAPE, SPATIAL = (3, 3, 3, 64), (32, 32)
TARGET = float(np.sqrt(SHAPE[3] / SHAPE[2]))
ROWS = (*(("correct", r) for r in (1, 2, 3, 5, 10)), *((c, r) for c in ("chainer", "pytorch") for r in (1, 2, 3)))


def initial_kernel(seed: int = 0) -> jax.Array:
  """The stem as resnorm initialises it (He-normal on fan-out), float32."""
  return resnet.he_normal(jax.random.key(seed), SHAPE, jnp.float32)


def circular_singular_values(kernel) -> np.ndarray:
  spectrum = np.fft.fft2(np.asarray(kernel, np.float64), s=SPATIAL, axes=(0, 1))
  return np.linalg.svd(spectrum, compute_uv=False).ravel()


def padded_singular_values(kernel, chunk: int = 256) -> np.ndarray:
  """Every singular value of the zero-padded convolution on 32×32×3 inputs, from AᵀA (float64)."""
  weights = jnp.asarray(kernel, jnp.float64)
  conv = lambda x: jax.lax.conv_general_dilated(
    x, weights, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  size = int(np.prod(SPATIAL)) * SHAPE[2]
  shape = (chunk, *SPATIAL, SHAPE[2])
  transpose = jax.linear_transpose(conv, jax.ShapeDtypeStruct(shape, jnp.float64))
  gram_columns = jax.jit(lambda basis: transpose(conv(basis))[0].reshape(chunk, size))
  eye = np.eye(size)
  gram = np.concatenate([np.asarray(gram_columns(eye[i : i + chunk].reshape(shape))) for i in range(0, size, chunk)])
  return np.sqrt(np.clip(np.linalg.eigvalsh((gram + gram.T) / 2), 0, None))


def errors(values: np.ndarray) -> tuple[float, float]:
  """(max |σ − s|, rms of σ/s − 1)."""
  return float(np.max(np.abs(values - TARGET))), float(np.sqrt(np.mean((values / TARGET - 1) ** 2)))


def largest_tap_share(kernel) -> float:
  energy = np.sum(np.asarray(kernel, np.float64) ** 2, axis=(2, 3))
  return float(energy.max() / energy.sum())


def median_ms(fn, arg, repeats: int) -> float:
  return 1e3 * statistics.median(common.call_seconds(fn, arg, repeats, warmup=2))


def measure(repeats: int, padded: bool) -> list[dict]:
  kernel = initial_kernel()
  rows = [dict(convention="(initial kernel)", rounds=0, kernel=kernel)]
  for convention, rounds in ROWS:
    project = jax.jit(lambda k, c=convention, r=rounds: procrustes.project_conv(k, SPATIAL, rounds=r, convention=c))
    rows.append(
      dict(convention=convention, rounds=rounds, kernel=project(kernel), ms=median_ms(project, kernel, repeats))
    )
  for row in rows:
    row["circular"] = errors(circular_singular_values(row["kernel"]))
    row["padded"] = errors(padded_singular_values(row["kernel"])) if padded else None
    row["tap"] = largest_tap_share(row["kernel"])
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--platform", help="cpu, gpu or tpu (default: jax's choice)")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--no-padded", dest="padded", action="store_false", help="skip the zero-padded operator")
  args = parser.parse_args()
  if args.platform:
    jax.config.update("jax_platforms", args.platform)
  jax.config.update("jax_enable_x64", True)  # for the float64 operators; the projection runs in float32
  print(header())
  print()
  print(f"stem 3×3, 3 → 64 on 32×32, target σ = sqrt(64/3) = {TARGET:.3f}, float32 kernel, Newton–Schulz")
  print()
  print(
    "| read-back | rounds | circular max abs | circular rms | zero-padded max abs | zero-padded rms "
    "| largest tap | ms per call |"
  )
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for row in measure(args.repeats, args.padded):
    padded = "{:.3f} | {:.4f}".format(*row["padded"]) if row["padded"] else "– | –"
    ms = f"{row['ms']:.2f}" if "ms" in row else "–"
    print(
      f"| {row['convention']} | {row['rounds']} | {row['circular'][0]:.3f} | {row['circular'][1]:.4f} "
      f"| {padded} | {row['tap']:.3f} | {ms} |"
    )


if __name__ == "__main__":
  main()
