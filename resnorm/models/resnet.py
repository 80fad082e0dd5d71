"""CIFAR residual networks, their plain twins, and the Procrustes ResNet, scanned over depth.

Five families (n blocks per stage, widths for ``width_multiplier`` 1; every family ends in
global average pooling and a dense layer, the pre-activation ones after a final BN–ReLU):

* ``resnet``, depth 6n+2 (He et al., CVPR 2016): stem conv3×3 → 16, BN, ReLU; basic blocks
  of widths 16, 32, 64 at strides 1, 2, 2. ``plain``: the same without skips.
* ``preact_resnet``, depth 9n+2 (He et al., ECCV 2016): stem conv3×3 → 16; pre-activation
  bottlenecks of inner widths 16, 32, 64 (outputs 64, 128, 256) at strides 1, 2, 2.
  ``plain_preact``: the same without skips (and without the projection shortcuts).
* ``procresnet``, depth 9n+4 (Zaeemzadeh, Rahnavard & Shah, TPAMI 2020): stem conv3×3 → 64;
  n identity bottlenecks at 64 channels, transition T₁ (1×1, stride 2, 64 → 128), n at 128,
  T₂ (1×1, stride 2, 128 → 256), n at 256.

Blocks (BN = batch normalisation, ρ = ReLU, s = stride; F is the residual branch, S the
shortcut):

* basic: F(x) = BN(conv3×3(ρ(BN(conv3×3_s(x))))) and x' = ρ(S(x) + F(x)). S is the identity,
  or for a block that changes dimensions the parameter-free "option A" shortcut of the CIFAR
  experiments: keep every s-th pixel and append zero channels.
* pre-activation bottleneck: h = ρ(BN(x)), F(x) = conv1×1(ρ(BN(conv3×3_s(ρ(BN(conv1×1(h))))))),
  4× wider than its inner width, and x' = S(x) + F(x). S is the identity, or for a block that
  changes dimensions a 1×1 stride-s convolution of h (the pre-activation is shared by both
  paths). The stride sits on the 3×3 convolution, as in the ProcResNet reference code and the
  Flax examples (He et al.'s Torch code strides the first 1×1; parameter counts are equal).
* plain twins: x' = ρ(F(x)) (basic) or x' = F(x) (bottleneck), the same layers without S.
* ProcResNet: every bottleneck is an identity block (stride 1, width kept); dimensions change
  only in the standalone linear transitions x' = T x, whose operator singular values the
  Procrustes transformation keeps at sqrt(c_out/c_in) (:func:`procresnet_projection_targets`).

Depth counts the stem, the convolutions on each block's branch and the dense head: 2 per
basic block (6n+2), 3 per bottleneck (9n+2), plus ProcResNet's 2 transitions (9n+4).
Convolutions have no bias; 3×3 convolutions pad by 1.

``preact_layout`` (``preact_resnet``, ``plain_preact``; the post-activation ``resnet`` and
``plain`` take only the default) follows one of three codes; each first block of a stage is
the stage's transition:

* ``'he2016'`` (default; He et al.'s layout above): no BN–ReLU after the stem; the block's
  pre-activation h is shared by the branch and the projection shortcut; the stride on the 3×3.
* ``'chainer'``, the Chainer original behind the published numbers (zaeemzadeh/ProcResNet,
  models/resnet.py): stem conv3×3, BN, ReLU; the first unit of stage 1 takes that output as is
  (no bn1; its shortcut convolves it directly); every other projection shortcut is
  conv1×1_s(ρ(BN'(x))) with its own BN'; the stride on the first 1×1 convolution.
* ``'pytorch'``, the PyTorch port (zaeemzadeh/ProcResNet_PyTorch, models/resnet.py): stem
  conv3×3, BN, ReLU, and every block still starts with its own BN–ReLU; every projection
  shortcut is conv1×1_s(ρ(BN'(x))); the stride on the 3×3.

The extra BatchNorms are parameters ``stem_bn`` and ``<block>/shortcut_bn``. ProcResNet is the
same network in all three codes (stem conv without BN, identity pre-activation units, bare
transitions), so ``procresnet`` accepts the option and builds one network for every value.
Parameter counts at n = 18 (ResNet-164): 1,703,258 (he2016), 1,703,642 (chainer: Chainer's own
count is 1,703,706, as it also registers the first unit's bn1 and shortcut BN, which it never
calls), 1,703,706 (pytorch).

``init`` (``preact_resnet``, ``plain_preact``, ``procresnet``; ``resnet`` and ``plain`` take
only the default) draws the kernels (:data:`INITS`):

* ``'he_fan_out'`` (default): He-normal on fan-out, Var = 2/(kh·kw·c_out), for every
  convolution; Flax's Dense defaults for the head.
* ``'chainer'``: normal, Var = 2/fan_in in the blocks, the pre-activation stem and the head;
  1/fan_in (He-normal × sqrt(1/2)) for ProcResNet's stem and transitions; 2·10⁻⁴/fan_in
  (× 0.01) for projection shortcuts; zero head bias.
* ``'pytorch'``: PyTorch's defaults, which the port trains with (its ``init_params`` is never
  called): U(±1/sqrt(fan_in)) for every kernel, head bias U(±1/sqrt(256·width)).

Stream sites (:mod:`resnorm.probes`), in order: ``00_input``, ``01_stem``, then per
stage a top-level ``transition`` site for the block (or ProcResNet convolution) that changes
dimensions, followed by one ``block`` site for the stage's identical blocks, which go through
``nn.scan`` with parameters, BatchNorm statistics, probes and their statistics stacked on a
leading axis: the program holds one block per stage whatever n is. A probe's branch is F for
blocks with a shortcut (transitions included) and the whole output for layers without one.
Parameter paths: ``stem`` (``stem_bn``), ``<site>_layer`` for a transition, ``<site>/block``
for a scanned stage, ``head_bn``, ``head``.

``scan=False`` builds the same network as a Python loop, one module per block
(``<site>/block<l>``) with the same probe layout: the reference the scanned build is tested
against. ``remat=True`` recomputes each block's activations in the backward pass, as
``remat_policy`` says (:data:`REMAT_POLICIES`, names in ``jax.checkpoint_policies`` as in
big_vision): ``'nothing_saveable'`` keeps only the blocks' inputs and recomputes the whole block,
convolutions included; ``'dots_saveable'`` keeps the convolutions' outputs and recomputes only the
BatchNorms and ReLUs. XLA's CPU backend runs convolution gradients inside loops on a slow path
(jax-ml/jax#12868), so on CPU the scanned train step is slower than the unrolled one; on GPU and
TPU the scanned build is the intended one.

BatchNorm normalises with the batch statistics and updates its running averages (momentum
``bn_momentum``) with ``train=True``, and uses the running averages with ``train=False``.
``dtype='bfloat16'`` computes in bfloat16; parameters, BatchNorm statistics and reductions
stay float32, and the logits are float32 in every mode.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnorm import probes, validation
from resnorm.models.targets import ConvTarget

ModuleDef = Callable[..., nn.Module]

he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
EXPANSION = 4  # a bottleneck's output is 4× its inner width
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# What a rematerialised block keeps for the backward pass (module docstring).
REMAT_POLICIES = ("nothing_saveable", "dots_saveable")
# nn.scan axes of a stage: the probe collections plus the BatchNorm statistics.
SCAN_AXES = {**probes.SCAN_AXES, "batch_stats": 0}


# ----------------------------------------------------------------------------- layers


def conv(features: int, kernel: int, strides: int = 1, *, kernel_init=he_normal, dtype=None, name=None) -> nn.Conv:
  """A bias-free ``kernel``×``kernel`` convolution, padded by ``kernel // 2``."""
  pad = kernel // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(strides, strides),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    kernel_init=kernel_init,
    dtype=dtype,
    name=name,
  )


# ----------------------------------------------------------------------------- initialisation


Initializer = Callable[..., jax.Array]


def _uniform_bias(fan_in: int) -> Initializer:
  """U(−1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default ``nn.Linear`` bias."""
  bound = 1 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


@dataclasses.dataclass(frozen=True)
class Init:
  """Kernel initialisers by the role of a layer.

  Attributes:
    conv: the blocks' convolutions and the pre-activation ResNet's stem.
    linear: ProcResNet's stem and transitions (convolutions that no ReLU follows).
    shortcut: projection shortcuts.
    dense: the head's kernel.
    dense_bias: the head's fan-in -> its bias initialiser.
  """

  conv: Initializer
  linear: Initializer
  shortcut: Initializer
  dense: Initializer
  dense_bias: Callable[[int], Initializer]


def _variance(scale: float, distribution: str = "normal") -> Initializer:
  """Var = scale / fan_in, fan_in = kh·kw·c_in (kernels) or the input width (Dense)."""
  return nn.initializers.variance_scaling(scale, "fan_in", distribution)


INITS = {
  # He-normal on fan-out, Var = 2 / (kh·kw·c_out), for every convolution; Flax's Dense defaults
  # (LeCun normal, truncated; zero bias).
  "he_fan_out": Init(
    he_normal, he_normal, he_normal, nn.initializers.lecun_normal(), lambda fan_in: nn.initializers.zeros
  ),
  # The Chainer original (chainer.initializers.HeNormal, a normal of std scale·sqrt(2 / fan_in)):
  # scale 1 in the blocks, stems and head, sqrt(1/2) for ProcResNet's stem and transitions,
  # 0.01 for projection shortcuts; Chainer's zero Linear bias.
  "chainer": Init(
    _variance(2.0), _variance(1.0), _variance(2.0 * 0.01**2), _variance(2.0), lambda fan_in: nn.initializers.zeros
  ),
  # PyTorch's defaults, which the port trains with (its main.py never calls init_params):
  # kaiming_uniform(a=√5) for Conv2d and Linear weights, U(±sqrt(1/fan_in)), Var = 1/(3·fan_in);
  # Linear bias U(±1/sqrt(fan_in)).
  "pytorch": Init(*(_variance(1 / 3, "uniform"),) * 4, _uniform_bias),
}


def batch_norm(train: bool, momentum: float, dtype) -> ModuleDef:
  """BatchNorm on the channel axis: batch statistics in training, running averages in eval."""
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=momentum, epsilon=1e-5, dtype=dtype)


def pad_shortcut(x: jax.Array, features: int, strides: int) -> jax.Array:
  """The parameter-free shortcut: keep every ``strides``-th pixel, append zero channels."""
  x = x[:, ::strides, ::strides, :]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - x.shape[-1])))


class BasicBlock(nn.Module):
  """Post-activation basic block; returns ``(x', branch)`` (see the module docstring)."""

  features: int
  strides: int
  residual: bool
  norm: ModuleDef
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    y = conv(self.features, 3, self.strides, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    if not self.residual:
      out = nn.relu(y)
      return out, out
    return nn.relu(pad_shortcut(x, self.features, self.strides) + y), y


class Bottleneck(nn.Module):
  """Pre-activation bottleneck of inner width ``features``; returns ``(x', branch)``.

  ``layout`` (module docstring) places the stride and the shortcut's pre-activation;
  ``first`` marks the Chainer layout's first unit, which takes the stem's BN–ReLU output as is.
  """

  features: int
  strides: int
  residual: bool
  norm: ModuleDef
  layout: str = "he2016"
  first: bool = False
  inits: Init = INITS["he_fan_out"]
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    out_features = EXPANSION * self.features
    layer = functools.partial(conv, kernel_init=self.inits.conv, dtype=self.dtype)
    strides = (self.strides, 1) if self.layout == "chainer" else (1, self.strides)
    h = x if self.first else nn.relu(self.norm(name="bn1")(x))
    y = layer(self.features, 1, strides[0], name="conv1")(h)
    y = nn.relu(self.norm(name="bn2")(y))
    y = layer(self.features, 3, strides[1], name="conv2")(y)
    y = nn.relu(self.norm(name="bn3")(y))
    y = layer(out_features, 1, name="conv3")(y)
    if not self.residual:
      return y, y
    if self.strides == 1 and x.shape[-1] == out_features:
      return x + y, y
    if self.layout != "he2016" and not self.first:
      h = nn.relu(self.norm(name="shortcut_bn")(x))
    shortcut = conv(out_features, 1, self.strides, kernel_init=self.inits.shortcut, dtype=self.dtype, name="shortcut")(
      h
    )
    return shortcut + y, y


# ----------------------------------------------------------------------------- stages


class _ScanStep(nn.Module):
  """One step of a scanned stage: a block, then its probe ``'stream'``."""

  block: ModuleDef

  @nn.compact
  def __call__(self, x, _):
    out, branch = self.block(name="block")(x)
    return probes.probe(self, probes.SCANNED_PROBE, out, x_in=x, branch=branch), None


class _UnrolledStage(nn.Module):
  """``length`` blocks as a Python loop (children ``block0``, ``block1``, …).

  The probe layout is the scanned one: one perturbation ``'stream'`` of shape
  (length, batch, …) whose slice l is added after block l, and the blocks' statistics
  sown once, stacked on a leading axis.
  """

  block: ModuleDef
  length: int

  @nn.compact
  def __call__(self, x, _):
    zeros = jnp.zeros((self.length,) + x.shape, x.dtype)
    perturbations = self.perturb(probes.SCANNED_PROBE, zeros)
    stats = []
    for index in range(self.length):
      out, branch = self.block(name=f"block{index}")(x)
      stats.append(probes.stream_statistics(out, x_in=x, branch=branch))
      x = out + perturbations[index]
    self.sow("intermediates", probes.SCANNED_PROBE, jax.tree.map(lambda *s: jnp.stack(s), *stats))
    return x, None


def stage(
  block: ModuleDef,
  length: int,
  name: str,
  *,
  scan: bool = True,
  remat: bool = False,
  remat_policy: str = "nothing_saveable",
  scan_unroll: int = 1,
):
  """``length`` identical blocks as one stream site ``name``: ``x, _ = stage(...)(x, None)``.

  ``scan_unroll`` blocks run per iteration of the scanned loop (the same network, fewer trips);
  with ``remat``, each block keeps for the backward pass what ``remat_policy`` (a name in
  ``jax.checkpoint_policies``) saves and recomputes the rest."""
  if remat:
    block = nn.remat(block, prevent_cse=not scan, policy=getattr(jax.checkpoint_policies, remat_policy))
  if not scan:
    return _UnrolledStage(block=block, length=length, name=name)
  scanned = nn.scan(_ScanStep, variable_axes=SCAN_AXES, split_rngs={"params": True}, length=length, unroll=scan_unroll)
  return scanned(block=block, name=name)


# ----------------------------------------------------------------------------- networks


class _CifarNet(nn.Module):
  """Fields shared by the three layouts; ``blocks`` is n, the number of blocks per stage."""

  blocks: int
  num_classes: int = 10
  width_multiplier: float = 1.0
  residual: bool = True
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  scan: bool = True
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan_unroll: int = 1
  layout: str = "he2016"
  inits: Init = INITS["he_fan_out"]

  def width(self, base: int) -> int:
    return max(1, round(base * self.width_multiplier))

  def head(self, x, norm: ModuleDef | None = None):
    """[BN, ReLU,] global average pool, dense; float32 logits."""
    if norm is not None:
      x = nn.relu(norm(name="head_bn")(x))
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(
      self.num_classes,
      dtype=jnp.float32,
      kernel_init=self.inits.dense,
      bias_init=self.inits.dense_bias(x.shape[-1]),
      name="head",
    )(x)

  def input_and_stem(self, x, sites, stem: Callable[[jax.Array], jax.Array]):
    """Probes the input and the stem's output ``stem(x)`` at sites ``00_input``, ``01_stem``."""
    x = probes.probe(self, probes.site_name(next(sites), "input"), x)
    out = stem(x)
    return probes.probe(self, probes.site_name(next(sites), "stem"), out, x_in=x, branch=out)

  def transition(self, x, sites, block: ModuleDef):
    """One block that changes dimensions, at the next top-level ``transition`` site."""
    site = probes.site_name(next(sites), "transition")
    out, branch = block(name=f"{site}_layer")(x)
    return probes.probe(self, site, out, x_in=x, branch=branch)

  def repeat(self, x, sites, block: ModuleDef, count: int):
    """``count`` identical blocks at the next ``block`` site (none when ``count`` is 0)."""
    if not count:
      return x
    site = probes.site_name(next(sites), "block")
    return stage(
      block, count, site, scan=self.scan, remat=self.remat, remat_policy=self.remat_policy, scan_unroll=self.scan_unroll
    )(x, None)[0]


class ResNet(_CifarNet):
  """CIFAR ResNet v1, depth 6n+2 (``residual=False``: its plain twin)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = batch_norm(train, self.bn_momentum, self.dtype)
    sites = itertools.count()
    stem = conv(self.width(16), 3, dtype=self.dtype, name="stem")
    x = self.input_and_stem(x, sites, lambda x: nn.relu(norm(name="stem_bn")(stem(x))))
    block = functools.partial(BasicBlock, residual=self.residual, norm=norm, dtype=self.dtype)
    x = self.repeat(x, sites, functools.partial(block, features=self.width(16), strides=1), self.blocks)
    for base in (32, 64):
      x = self.transition(x, sites, functools.partial(block, features=self.width(base), strides=2))
      x = self.repeat(x, sites, functools.partial(block, features=self.width(base), strides=1), self.blocks - 1)
    return self.head(x)


class PreActResNet(_CifarNet):
  """Pre-activation bottleneck ResNet v2, depth 9n+2 (``residual=False``: its plain twin)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = batch_norm(train, self.bn_momentum, self.dtype)
    sites = itertools.count()
    stem = conv(self.width(16), 3, kernel_init=self.inits.conv, dtype=self.dtype, name="stem")
    if self.layout == "he2016":
      x = self.input_and_stem(x, sites, stem)
    else:
      x = self.input_and_stem(x, sites, lambda x: nn.relu(norm(name="stem_bn")(stem(x))))
    block = functools.partial(
      Bottleneck, residual=self.residual, norm=norm, layout=self.layout, inits=self.inits, dtype=self.dtype
    )
    for base, strides in ((16, 1), (32, 2), (64, 2)):
      first = self.layout == "chainer" and base == 16
      x = self.transition(x, sites, functools.partial(block, features=self.width(base), strides=strides, first=first))
      x = self.repeat(x, sites, functools.partial(block, features=self.width(base), strides=1), self.blocks - 1)
    return self.head(x, norm)


class _Transition(nn.Module):
  """ProcResNet's standalone transition: x' = T x, a 1×1 stride-2 convolution, no skip."""

  features: int
  kernel_init: Initializer = he_normal
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    out = conv(self.features, 1, 2, kernel_init=self.kernel_init, dtype=self.dtype, name="conv")(x)
    return out, out


class ProcResNet(_CifarNet):
  """Procrustes ResNet, depth 9n+4: identity bottlenecks and two standalone transitions."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = batch_norm(train, self.bn_momentum, self.dtype)
    sites = itertools.count()
    stem = conv(EXPANSION * self.width(16), 3, kernel_init=self.inits.linear, dtype=self.dtype, name="stem")
    x = self.input_and_stem(x, sites, stem)
    block = functools.partial(Bottleneck, strides=1, residual=True, norm=norm, inits=self.inits, dtype=self.dtype)
    x = self.repeat(x, sites, functools.partial(block, features=self.width(16)), self.blocks)
    for base in (32, 64):
      transition = functools.partial(
        _Transition, features=EXPANSION * self.width(base), kernel_init=self.inits.linear, dtype=self.dtype
      )
      x = self.transition(x, sites, transition)
      x = self.repeat(x, sites, functools.partial(block, features=self.width(base)), self.blocks)
    return self.head(x, norm)


# ----------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Layout:
  """A family: its network, whether its blocks have skips, and depth = per_block·n + extra."""

  network: type[_CifarNet]
  residual: bool
  per_block: int
  extra: int
  examples: tuple[int, ...]

  def blocks(self, depth: int) -> int:
    return (depth - self.extra) // self.per_block

  def allowed(self, name: str) -> str:
    examples = ", ".join(map(str, self.examples))
    return f"a depth {self.per_block}n+{self.extra} with n >= 1 for {name}, e.g. {examples}"


LAYOUTS = {
  "resnet": Layout(ResNet, True, 6, 2, (20, 32, 44, 56, 110, 1202)),
  "plain": Layout(ResNet, False, 6, 2, (20, 32, 44, 56, 110, 1202)),
  "preact_resnet": Layout(PreActResNet, True, 9, 2, (164, 272, 632, 1001)),
  "plain_preact": Layout(PreActResNet, False, 9, 2, (164, 272, 632, 1001)),
  "procresnet": Layout(ProcResNet, True, 9, 4, (166, 274, 634, 1003)),
}
# The options every family accepts (``create_model`` overrides), with their defaults.
DEFAULTS = dict(
  width_multiplier=1.0,
  dtype="float32",
  bn_momentum=0.9,
  scan=True,
  remat=False,
  remat_policy="nothing_saveable",
  scan_unroll=1,
  preact_layout="he2016",
  init="he_fan_out",
)
# Pre-activation layouts (module docstring). ProcResNet is the same network in all three.
PREACT_LAYOUTS = ("he2016", "chainer", "pytorch")
# The post-activation families take only the defaults of these two options.
_POST_ACTIVATION = {"preact_layout": "he2016", "init": "he_fan_out"}


def depth_check(name: str) -> Callable[[int], None]:
  """``check(depth)`` raising a ``ValueError`` outside ``name``'s depths."""
  layout = LAYOUTS[name]

  def check(depth: int) -> None:
    if (
      isinstance(depth, bool)
      or not isinstance(depth, int)
      or depth < layout.per_block + layout.extra
      or (depth - layout.extra) % layout.per_block
    ):
      raise validation.invalid("depth", depth, layout.allowed(name))

  return check


def _flag(field: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise validation.invalid(field, value, "True or False")
  return value


def builder(name: str) -> Callable[..., nn.Module]:
  """``build(depth, num_classes, **DEFAULTS)`` for family ``name``; validates every option."""
  layout = LAYOUTS[name]

  def build(
    depth,
    num_classes,
    *,
    width_multiplier,
    dtype,
    bn_momentum,
    scan,
    remat,
    remat_policy,
    scan_unroll,
    preact_layout,
    init,
  ):
    validation.positive_float("width_multiplier", width_multiplier)
    validation.one_of("dtype", dtype, DTYPES)
    if isinstance(bn_momentum, bool) or not isinstance(bn_momentum, (int, float)) or not 0 <= bn_momentum < 1:
      raise validation.invalid("bn_momentum", bn_momentum, "a number in [0, 1)")
    validation.one_of("preact_layout", preact_layout, PREACT_LAYOUTS)
    validation.one_of("init", init, INITS)
    if layout.network is ResNet:
      for field, value in (("preact_layout", preact_layout), ("init", init)):
        if value != _POST_ACTIVATION[field]:
          raise validation.invalid(
            field,
            value,
            f"{_POST_ACTIVATION[field]!r} for {name}: a post-activation family, which the reference codes do not have",
          )
    return layout.network(
      blocks=layout.blocks(depth),
      num_classes=num_classes,
      width_multiplier=float(width_multiplier),
      residual=layout.residual,
      bn_momentum=float(bn_momentum),
      dtype=DTYPES[dtype],
      scan=_flag("scan", scan),
      remat=_flag("remat", remat),
      remat_policy=validation.one_of("remat_policy", remat_policy, REMAT_POLICIES),
      scan_unroll=validation.positive_int("scan_unroll", scan_unroll),
      layout=preact_layout,
      inits=INITS[init],
    )

  return build


def calibrate_batch_stats(model: nn.Module, variables: Mapping[str, Any], inputs: jax.Array) -> dict:
  """``variables`` with every BatchNorm's running statistics set to its statistics on ``inputs``.

  The image families' ``calibrate_batch_stats`` hook. One train-mode pass with momentum 0: each
  running mean and variance becomes the batch mean and (biased) variance of that layer's input,
  so eval mode then computes on ``inputs`` what train mode computes. Measuring an initialised
  network in eval mode needs this first: the initial running statistics (mean 0, variance 1) make
  every BatchNorm an identity map.
  """
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  _, state = model.clone(bn_momentum=0.0).apply(variables, inputs, train=True, mutable=["batch_stats"])
  return {**variables, "batch_stats": state["batch_stats"]}


# Parameter paths of ProcResNet's projected kernels: its stem and two transitions, whose
# stream sites are 01, 03 and 05 whatever n is.
PROCRESNET_STEM = ("stem", "kernel")
PROCRESNET_TRANSITIONS = tuple((f"{probes.site_name(index, 'transition')}_layer", "conv", "kernel") for index in (3, 5))


def procresnet_projection_targets(
  image_shape=(32, 32), stem_convention: str = "correct"
) -> dict[tuple[str, ...], ConvTarget]:
  """ProcResNet's kernels for :func:`resnorm.procrustes.procrustes`, keyed by parameter path.

  The stem (3×3, stride 1) acts on the image, the first transition (1×1, stride 2) on the
  first stage's H×W maps, the second on the second stage's ⌈H/2⌉×⌈W/2⌉ maps. Each keeps the
  default scale s = sqrt(c_out/c_in) of the reference, under which a layer T preserves the
  backward signal's norm in expectation: Tᵀ has rank c_in/c_out of its input's dimension and
  nonzero singular values s, so E‖Tᵀg‖² = ‖g‖² for an isotropic g.

  ``stem_convention`` reads the stem's projected spectrum back as resnorm does ("correct") or
  as a reference code does ("chainer", behind the published numbers, or "pytorch"), whose
  conjugate read-back collapses the stem toward one tap
  (:func:`resnorm.procrustes.project_conv`); the 1×1 transitions are the same in all three.

  Args:
    image_shape: the input images' (height, width).
    stem_convention: "correct", "chainer" or "pytorch".
  """
  height, width = validation.spatial_shape("image_shape", image_shape)
  half = (-(-height // 2), -(-width // 2))
  return {
    PROCRESNET_STEM: ConvTarget((height, width), stride=1, convention=stem_convention),
    PROCRESNET_TRANSITIONS[0]: ConvTarget((height, width), stride=2),
    PROCRESNET_TRANSITIONS[1]: ConvTarget(half, stride=2),
  }
