"""Model registry: ``create_model(name, depth, num_classes=10, **overrides)``.

A family is registered with the overrides it accepts and a depth check, so a wrong name, depth
or option fails with a ``ValueError`` naming the allowed values before anything is built. The
names in those messages are the config's: prefixed with ``config.model.`` they are its fields
(``name``, ``depth``, ``num_classes``, ``width``, ``branch_scale``, ...). A family also declares
what the measurements need from it: the kernels Procrustes projects, the extractor of its
identical blocks for Jacobian spectra, and the BatchNorm calibration for measuring at
initialisation.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

import flax.linen as nn
import jax

from resnorm import spectra, validation
from resnorm.models import mlp, resnet, transformer
from resnorm.models.targets import ConvTarget, FlowTarget


@dataclasses.dataclass(frozen=True)
class Family:
  """How to build one model family.

  Attributes:
    build: ``build(depth, num_classes, **options) -> nn.Module``.
    defaults: the options it accepts, with their default values.
    check_depth: raises a ``ValueError`` for depths outside the family.
    projection_targets: ``targets(input_shape, stem_convention="correct")`` -> {parameter path:
      :class:`ConvTarget`}, the kernels that :func:`resnorm.procrustes.procrustes` keeps
      norm-preserving, with the stem's k×k projection read back by ``stem_convention`` (see
      :func:`resnorm.models.resnet.procresnet_projection_targets`); None: none.
    block_stack: ``block_stack(model, variables, inputs)`` -> the model's identical blocks as a
      :class:`resnorm.spectra.BlockStack`, for block and end-to-end Jacobian spectra; None for
      families whose blocks are not one scan over identical blocks.
    calibrate_batch_stats: ``calibrate(model, variables, inputs)`` -> ``variables`` with every
      BatchNorm's running statistics set to its statistics on ``inputs`` (so that eval mode
      measures an initialised network as train mode computes it); None for families without
      BatchNorm.
    construct: ``construct(model, variables, target)`` -> the theorem's network for a
      :class:`FlowTarget`, built rather than trained (:class:`resnorm.models.mlp.Constructed`:
      the family's own variables and the per-block bound on ‖J_l − I‖₂ it promises); None for
      families without a construction.
    program: families with one ``program`` name build models that differ only in the numbers of
      their ``'constants'`` (the same variables' structure and the same program), so that a sweep
      trains their runs as one group (:func:`resnorm.loop.group_key`); None: the family's own name.
  """

  build: Callable[..., nn.Module]
  defaults: dict
  check_depth: Callable[[int], None] = lambda depth: validation.positive_int("depth", depth)
  projection_targets: Callable[..., dict[tuple[str, ...], ConvTarget]] | None = None
  block_stack: Callable[[nn.Module, dict, jax.Array], spectra.BlockStack] | None = None
  calibrate_batch_stats: Callable[[nn.Module, dict, jax.Array], dict] | None = None
  construct: Callable[[nn.Module, dict, FlowTarget], mlp.Constructed] | None = None
  program: str | None = None


BRANCH_SCALES = {"1": lambda L: 1.0, "1/sqrt(L)": lambda L: 1.0 / math.sqrt(L), "1/L": lambda L: 1.0 / L}


def resolve_branch_scale(branch_scale, depth: int, name: str = "branch_scale") -> float:
  """``'1'``, ``'1/sqrt(L)'``, ``'1/L'`` or a positive number -> the multiplier s at depth L;
  ``name`` is the argument an error names (the optimizer's ``block_lr_scale`` reads the same way).

  A number may come as text (``'0.5'``): a config field holding ``'1/L'`` is typed ``str``, so
  a command-line override of it arrives as a string.
  """
  validation.positive_int("depth", depth)
  allowed = f"one of {sorted(BRANCH_SCALES)} or a positive number"
  if isinstance(branch_scale, str):
    if branch_scale in BRANCH_SCALES:
      return BRANCH_SCALES[branch_scale](depth)
    try:
      number = float(branch_scale)
    except ValueError:
      raise validation.invalid(name, branch_scale, allowed) from None
  else:
    number = branch_scale
  if isinstance(number, bool) or not isinstance(number, numbers.Real) or not 0 < number < math.inf:
    raise validation.invalid(name, branch_scale, allowed)
  return float(number)


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


def _build_transformer(depth, num_classes, *, branch_scale="1", **options):
  return transformer.build(depth, num_classes, branch_scale=resolve_branch_scale(branch_scale, depth), **options)


def _resnet_family(name: str, **hooks) -> Family:
  return Family(
    resnet.builder(name),
    dict(resnet.DEFAULTS),
    resnet.depth_check(name),
    calibrate_batch_stats=resnet.calibrate_batch_stats,
    **hooks,
  )


FAMILIES: dict[str, Family] = {
  # The skip's weight is a constant (resnorm.models.mlp): residual and plain MLPs run one program.
  "mlp_residual": Family(
    _mlp_builder(residual=True, linear=False),
    _RESIDUAL_MLP,
    block_stack=mlp.block_stack,
    construct=mlp.construct,
    program="mlp",
  ),
  "mlp_plain": Family(
    _mlp_builder(residual=False, linear=False), dict(_MLP_COMMON), block_stack=mlp.block_stack, program="mlp"
  ),
  "linear_residual": Family(_mlp_builder(residual=True, linear=True), _RESIDUAL_MLP, block_stack=mlp.block_stack),
  # CIFAR image models (NHWC input, a `train` keyword): resnet, plain, preact_resnet,
  # plain_preact, procresnet.
  **{name: _resnet_family(name) for name in resnet.LAYOUTS if name != "procresnet"},
  # Sequence models (inputs (batch, tokens) of ids, or (batch, tokens, features)).
  "transformer": Family(_build_transformer, dict(transformer.DEFAULTS)),
  "procresnet": _resnet_family(
    "procresnet",
    projection_targets=lambda input_shape, stem_convention="correct": resnet.procresnet_projection_targets(
      input_shape[1:3], stem_convention
    ),
  ),
}


def register(name: str, family: Family) -> None:
  if name in FAMILIES:
    raise validation.invalid("name", name, f"a name not yet registered (not one of {sorted(FAMILIES)})")
  FAMILIES[name] = family


def family(name: str) -> Family:
  return FAMILIES[validation.one_of("name", name, FAMILIES)]


def accepted_options(name: str, options: dict, prefix: str = "model.") -> dict:
  """The entries of ``options`` that family ``name`` accepts.

  A config section shared between families (``mlp_plain`` has no branch scale) may hold
  options of the others, which are dropped; an option no family knows is an error.
  """
  known = set().union(*(f.defaults for f in FAMILIES.values()))
  for key, value in options.items():
    if key not in known:
      raise validation.invalid(f"{prefix}{key}", value, f"one of {sorted(known)}")
  accepted = family(name).defaults
  return {k: v for k, v in options.items() if k in accepted}


def create_model(name: str, depth: int, num_classes: int = 10, **overrides) -> nn.Module:
  """Builds the registered model ``name`` with ``depth`` blocks (or layers, per family)."""
  spec = family(name)
  spec.check_depth(depth)
  validation.positive_int("num_classes", num_classes)
  unknown = sorted(set(overrides) - set(spec.defaults))
  if unknown:
    raise validation.invalid(unknown[0], overrides[unknown[0]], f"an option of {name}: one of {sorted(spec.defaults)}")
  return spec.build(depth, num_classes, **{**spec.defaults, **overrides})


def from_config(model_config, num_outputs: int) -> nn.Module:
  """A run config's ``model`` section (``name``, ``depth`` and options) built through the
  registry; options that only other families take are dropped (:func:`accepted_options`)."""
  options = {k: v for k, v in model_config.items() if k not in ("name", "depth")}
  return create_model(
    model_config.name,
    model_config.depth,
    num_classes=num_outputs,
    **accepted_options(model_config.name, options, prefix=""),
  )
