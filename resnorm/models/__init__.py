"""Model registry: ``create_model(name, depth, num_classes=10, **overrides)``.

A family is registered with the overrides it accepts and a depth check, so a wrong name, depth
or option fails with a message naming the allowed values before anything is built.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn

from resnorm import validation
from resnorm.models import mlp, resnet


@dataclasses.dataclass(frozen=True)
class Family:
  """How to build one model family.

  Attributes:
    build: ``build(depth, num_classes, **options) -> nn.Module``.
    defaults: the options it accepts, with their default values.
    check_depth: raises :class:`resnorm.validation.ConfigError` for depths outside the family.
    projection_targets: ``targets(input_shape)`` -> the kernels that
      :func:`resnorm.procrustes.procrustes` keeps norm-preserving, for families that have them.
  """

  build: Callable[..., nn.Module]
  defaults: dict
  check_depth: Callable[[int], None] = lambda depth: validation.positive_int("depth", depth)
  projection_targets: Callable[[tuple[int, ...]], dict] | None = None
  calibrate_batch_stats: Callable | None = None


BRANCH_SCALES = {"1": lambda L: 1.0, "1/sqrt(L)": lambda L: 1.0 / math.sqrt(L), "1/L": lambda L: 1.0 / L}


def resolve_branch_scale(branch_scale, depth: int) -> float:
  """``'1'``, ``'1/sqrt(L)'``, ``'1/L'`` or a positive number -> the multiplier s."""
  if isinstance(branch_scale, str):
    validation.one_of("branch_scale", branch_scale, BRANCH_SCALES)
    return BRANCH_SCALES[branch_scale](depth)
  return validation.positive_float("branch_scale", branch_scale)


_MLP_COMMON = dict(width=32, hidden=64, layer_norm=False, remat=False)
_RESIDUAL_MLP = dict(_MLP_COMMON, branch_scale="1/L", zero_init_last=False)


def _mlp_builder(residual: bool, linear: bool):
  def build(depth, num_classes, *, branch_scale="1", zero_init_last=False, **options):
    validation.positive_int("width", options["width"])
    validation.positive_int("hidden", options["hidden"])
    return mlp.MLPStack(
        depth=depth,
        num_outputs=num_classes,
        residual=residual,
        linear=linear,
        branch_scale=resolve_branch_scale(branch_scale, depth),
        zero_init_last=zero_init_last,
        **options,
    )

  return build


FAMILIES: dict[str, Family] = {
    "mlp_residual": Family(_mlp_builder(residual=True, linear=False), _RESIDUAL_MLP),
    "mlp_plain": Family(_mlp_builder(residual=False, linear=False), dict(_MLP_COMMON)),
    "linear_residual": Family(_mlp_builder(residual=True, linear=True), _RESIDUAL_MLP),
    # CIFAR image models (NHWC input, a `train` keyword): resnet, plain, preact_resnet,
    # plain_preact, procresnet.
    **{
        name: Family(resnet.builder(name), dict(resnet.DEFAULTS), resnet.depth_check(name),
                     calibrate_batch_stats=resnet.calibrate_batch_stats)
        for name in resnet.LAYOUTS if name != "procresnet"
    },
    "procresnet": Family(
        resnet.builder("procresnet"), dict(resnet.DEFAULTS), resnet.depth_check("procresnet"),
        projection_targets=lambda input_shape: resnet.procresnet_projection_targets(input_shape[1:3]),
        calibrate_batch_stats=resnet.calibrate_batch_stats,
    ),
}


def register(name: str, family: Family) -> None:
  if name in FAMILIES:
    raise ValueError(f"model family {name!r} is already registered")
  FAMILIES[name] = family


def family(name: str) -> Family:
  return FAMILIES[validation.one_of("model", name, FAMILIES)]


def accepted_options(name: str, options: dict, prefix: str = "model.") -> dict:
  """The entries of ``options`` that family ``name`` accepts.

  A config section shared between families (``mlp_plain`` has no branch scale) may hold
  options of the others, which are dropped; an option no family knows is an error.
  """
  known = set().union(*(f.defaults for f in FAMILIES.values()))
  for key, value in options.items():
    if key not in known:
      raise validation.ConfigError(f"{prefix}{key}", value, f"one of {sorted(known)}")
  accepted = family(name).defaults
  return {k: v for k, v in options.items() if k in accepted}


def create_model(name: str, depth: int, num_classes: int = 10, **overrides) -> nn.Module:
  """Builds the registered model ``name`` with ``depth`` blocks (or layers, per family)."""
  spec = family(name)
  spec.check_depth(depth)
  validation.positive_int("num_classes", num_classes)
  unknown = sorted(set(overrides) - set(spec.defaults))
  if unknown:
    raise validation.ConfigError(
        f"{name} option {unknown[0]!r}", overrides[unknown[0]], f"one of {sorted(spec.defaults)}"
    )
  return spec.build(depth, num_classes, **{**spec.defaults, **overrides})
