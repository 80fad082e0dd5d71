"""Spectra of registry models across depth: an experiment built on :mod:`resnorm.spectra`.

For every model family that declares a ``block_stack`` extractor and every depth L, the dense
singular values of each block Jacobian J_l = ∂x_{l+1}/∂x_l and of the end-to-end Jacobian
J_{L−1} ⋯ J_0 at initialisation, and the extremes of the latter from matrix-free Lanczos.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from resnorm import models, spectra, validation


def _measure(block_stack, model, init_key, inputs, lanczos_key, lanczos_iterations: int) -> dict:
  """One model's spectra at initialisation (jitted with all but the keys and inputs static)."""
  blocks = block_stack(model, model.init(init_key, inputs), inputs)
  sigma_max, sigma_min = spectra.extreme_singular_values(
    spectra.stack_map(blocks), blocks.inputs[0], lanczos_key, lanczos_iterations
  )
  return dict(
    block=spectra.block_singular_values(blocks),
    stack=spectra.stack_singular_values(blocks),
    stack_lanczos=jnp.stack([sigma_max, sigma_min], axis=-1),
  )


def depth_spectra(
  names, depths, options: dict, input_dim: int = 16, num_examples: int = 8, seed: int = 0, lanczos_iterations: int = 16
) -> dict:
  """Block and end-to-end singular values of registry models at initialisation, across depths.

  Every (name, depth) model is built with ``models.create_model(name, depth, **options)`` (options the
  family does not take are dropped), initialised from ``seed`` and evaluated on ``num_examples``
  Gaussian inputs of dimension ``input_dim`` (the same for every model). Its blocks come from the
  family's ``block_stack`` extractor, so only families that declare one can be measured.

  Returns:
    ``{name: {depth: {"block": (L, B, width), "stack": (B, width), "stack_lanczos": (B, 2)}}}``, NumPy
    arrays: dense σ(J_l), dense σ(J_{L−1} ⋯ J_0), and (σ_max, σ_min) of the latter from
    ``lanczos_iterations`` matrix-free Lanczos steps.
  """
  names = (names,) if isinstance(names, str) else tuple(names)
  if not names:
    raise validation.invalid("models", names, f"a non-empty list from {sorted(models.FAMILIES)}")
  measurable = sorted(name for name, family in models.FAMILIES.items() if family.block_stack)
  for name in names:
    validation.one_of("models", name, measurable)
  depths = validation.positive_ints("depths", depths)
  for field, value in (
    ("input_dim", input_dim),
    ("num_examples", num_examples),
    ("lanczos_iterations", lanczos_iterations),
  ):
    validation.positive_int(field, value)
  built = {}
  for name in names:
    family_options = models.accepted_options(name, dict(options))
    for depth in depths:
      built[name, depth] = models.create_model(name, depth, num_classes=input_dim, **family_options)
  init_key, data_key, lanczos_key = jax.random.split(jax.random.key(seed), 3)
  inputs = jax.random.normal(data_key, (num_examples, input_dim))
  results = {name: {} for name in names}
  measure = jax.jit(_measure, static_argnums=(0, 1, 5))
  for (name, depth), model in built.items():
    measured = measure(models.family(name).block_stack, model, init_key, inputs, lanczos_key, lanczos_iterations)
    results[name][depth] = jax.tree.map(np.asarray, measured)
  return results


def format_depth_spectra(results: dict) -> str:
  """:func:`depth_spectra`'s results as text: per model and depth, block σ quantiles and stack extremes.

  Block columns pool every block and example; stack columns are medians over examples of the end-to-end
  σ_max and σ_min (dense), their ratio's log10, and the matrix-free σ_max, σ_min beside them.
  """
  header = (
    f"{'model':<16}{'L':>6}  {'block σ: min':>12}{'p50':>8}{'max':>8}  {'|σ−1| max':>9}"
    f"  {'stack σ_max':>11}{'σ_min':>10}{'log10 κ':>9}  {'Lanczos σ_max':>13}{'σ_min':>10}"
  )
  lines = [header, "-" * len(header)]
  for name, by_depth in results.items():
    for depth, r in sorted(by_depth.items()):
      block = r["block"].ravel()
      stack_max, stack_min = np.median(r["stack"][:, 0]), np.median(r["stack"][:, -1])
      lanczos_max, lanczos_min = np.median(r["stack_lanczos"], axis=0)
      with np.errstate(divide="ignore"):
        log_kappa = math.log10(stack_max / stack_min) if stack_min > 0 else math.inf
      lines.append(
        f"{name:<16}{depth:>6}  {block.min():>12.4f}{np.median(block):>8.4f}{block.max():>8.4f}"
        f"  {np.abs(block - 1).max():>9.4f}  {stack_max:>11.4g}{stack_min:>10.3g}{log_kappa:>9.2f}"
        f"  {lanczos_max:>13.4g}{lanczos_min:>10.3g}"
      )
  lines.append("σ below about 1e-7·σ_max is float32 rounding: a plain ReLU block is singular whenever fewer hidden")
  lines.append("units are on than the stream is wide, and so is every product containing one.")
  return "\n".join(lines)
