"""Transformer residual streams: ``depth`` identical layers, each two residual sub-blocks.

The stream is a sequence, (batch, tokens, width). Each layer applies F = causal (or
bidirectional) multi-head self-attention, then F = Dense–GELU–Dense, each as one sub-block of
the chosen ``layout``::

    pre_ln    x ← x + s·F(LN(x))          Xiong et al. 2020, "On Layer Normalization in the
    post_ln   x ← LN(x + s·F(x))          Transformer Architecture" (post-LN: Vaswani et al. 2017)
    rezero    x ← x + α·s·F(x)            Bachlechner et al. 2020: α a trained scalar per
                                          sub-block, 0 at initialisation; no LayerNorm
    deepnorm  x ← LN(a·x + s·F(x))        Wang et al. 2022, "DeepNet": a = (2N)^¼ for N layers,
                                          and the value and output projections and the MLP
                                          initialised with gain b = (8N)^-¼ (query and key: 1)

with s the branch scale (``'1'``, ``'1/sqrt(L)'``, ``'1/L'``; L the number of layers), a number
the layers read from the ``'constants'`` collection (as the MLPs do), not a constant of the trace.
``zero_init`` starts the last projection of every branch (attention output, second Dense) at 0,
SkipInit style (De & Smith 2020): with ``pre_ln`` every sub-block is then the identity at
initialisation. Weights are Xavier-normal (with DeepNet's gain where it applies).

The stem embeds tokens (``vocab_size`` > 0: integer inputs) or projects real-valued features
(``vocab_size`` = 0: e.g. image patches), and adds learned position embeddings; the head maps
every token (``pool='none'``: a language model) or the mean over tokens (``pool='mean'``) to the
outputs, after a final LayerNorm where the stream is not normalised already (pre-LN, ReZero).

Probes (:mod:`resnorm.probes`): the input (real-valued inputs only: tokens have no gradient),
the stem, and inside the scanned layer one after the attention sub-block (``'00_attention'``)
and one after the MLP sub-block (``'01_mlp'``), so that both halves of every layer are measured,
and, the stream being a sequence, each site records the tokens' mean cosine similarity (rank
collapse). The layers go through ``nn.scan``: parameters are stacked on a leading axis of
length ``depth`` and the program compiles once whatever the depth.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resnorm import probes, validation
from resnorm.models import mlp

LAYOUTS = ("pre_ln", "post_ln", "rezero", "deepnorm")
POOLS = ("none", "mean")
DTYPES = ("float32", "bfloat16")
DEFAULTS = dict(
  width=64,
  heads=4,
  hidden=256,
  layout="pre_ln",
  branch_scale="1",
  zero_init=False,
  causal=True,
  vocab_size=0,
  max_length=256,
  pool="none",
  dtype="float32",
)
SUB_BLOCKS = (probes.site_name(0, "attention"), probes.site_name(1, "mlp"))


def deepnorm_constants(depth: int) -> tuple[float, float]:
  """DeepNet's (a, b) for a stack of ``depth`` layers: a = (2N)^¼ scales the skip, b = (8N)^-¼ the
  initial value and output projections and MLP weights (Wang et al. 2022, encoder-only / decoder-only)."""
  return (2.0 * depth) ** 0.25, (8.0 * depth) ** -0.25


def xavier_normal(gain: float = 1.0):
  """Xavier (Glorot) normal with ``gain``: variance gain² · 2 / (fan_in + fan_out)."""
  return nn.initializers.variance_scaling(gain * gain, "fan_avg", "normal")


class TransformerLayer(nn.Module):
  """One layer: attention sub-block, then MLP sub-block, each probed. See the module docstring."""

  heads: int
  hidden: int
  layout: str = "pre_ln"
  branch_scale: float = 1.0
  zero_init: bool = False
  causal: bool = True
  skip_scale: float = 1.0  # DeepNorm's a; 1 otherwise
  init_gain: float = 1.0  # DeepNorm's b; 1 otherwise
  dtype: Any = None

  def _last_init(self):
    return nn.initializers.zeros if self.zero_init else xavier_normal(self.init_gain)

  def attention(self, x):
    """F = multi-head self-attention of ``x`` (B, T, D)."""
    batch, tokens, width = x.shape
    head_dim = width // self.heads

    def project(name, gain):
      h = nn.Dense(width, kernel_init=xavier_normal(gain), dtype=self.dtype, name=name)(x)
      return h.reshape(batch, tokens, self.heads, head_dim)

    query, key, value = project("query", 1.0), project("key", 1.0), project("value", self.init_gain)
    mask = nn.make_causal_mask(jnp.ones((batch, tokens))) if self.causal else None
    h = nn.dot_product_attention(query, key, value, mask=mask, dtype=self.dtype)
    return nn.Dense(width, kernel_init=self._last_init(), dtype=self.dtype, name="output")(h.reshape(x.shape))

  def mlp(self, x):
    """F = Dense–GELU–Dense of ``x``."""
    h = nn.Dense(self.hidden, kernel_init=xavier_normal(self.init_gain), dtype=self.dtype, name="mlp_in")(x)
    h = nn.gelu(h)
    return nn.Dense(x.shape[-1], kernel_init=self._last_init(), dtype=self.dtype, name="mlp_out")(h)

  def sub_block(self, site: str, branch_fn, x, scale):
    """x ← the layout's update of ``x`` by ``branch_fn`` with branch scale ``scale``, probed at ``site``."""
    scale = jnp.asarray(scale, x.dtype)
    if self.layout == "pre_ln":
      branch = scale * branch_fn(nn.LayerNorm(dtype=self.dtype, name=f"{site}_norm")(x))
      out = x + branch
    elif self.layout == "rezero":
      alpha = self.param(f"{site}_alpha", nn.initializers.zeros, ())
      branch = jnp.asarray(alpha, x.dtype) * scale * branch_fn(x)
      out = x + branch
    else:  # post_ln, deepnorm: the normalised sum is the stream
      branch = scale * branch_fn(x)
      out = nn.LayerNorm(dtype=self.dtype, name=f"{site}_norm")(jnp.asarray(self.skip_scale, x.dtype) * x + branch)
    return probes.probe(self, site, out, x_in=x, branch=branch)

  @nn.compact
  def __call__(self, x, _=None):
    scale = mlp.branch_scale(self)  # from the constants: layers differing only in s share a program
    x = self.sub_block(SUB_BLOCKS[0], self.attention, x, scale)
    x = self.sub_block(SUB_BLOCKS[1], self.mlp, x, scale)
    return x, None


class TransformerStack(nn.Module):
  """Stem, ``depth`` scanned :class:`TransformerLayer`s, head. See the module docstring."""

  depth: int
  num_outputs: int
  width: int = 64
  heads: int = 4
  hidden: int = 256
  layout: str = "pre_ln"
  branch_scale: float = 1.0
  zero_init: bool = False
  causal: bool = True
  vocab_size: int = 0
  max_length: int = 256
  pool: str = "none"
  dtype: Any = None

  def layer_options(self) -> dict:
    """The fields of every :class:`TransformerLayer` of this stack."""
    skip_scale, init_gain = deepnorm_constants(self.depth) if self.layout == "deepnorm" else (1.0, 1.0)
    return dict(
      heads=self.heads,
      hidden=self.hidden,
      layout=self.layout,
      branch_scale=self.branch_scale,
      zero_init=self.zero_init,
      causal=self.causal,
      skip_scale=skip_scale,
      init_gain=init_gain,
      dtype=self.dtype,
    )

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    del train  # no dropout or batch statistics
    tokens = inputs.shape[1]
    if tokens > self.max_length:
      raise validation.invalid("inputs.shape[1]", tokens, f"at most max_length = {self.max_length} tokens")
    if self.vocab_size:
      x = nn.Embed(
        self.vocab_size, self.width, embedding_init=nn.initializers.normal(1.0), dtype=self.dtype, name="stem"
      )(inputs)
    else:
      inputs = probes.probe(self, probes.site_name(0, "input"), inputs)
      x = nn.Dense(self.width, kernel_init=xavier_normal(), dtype=self.dtype, name="stem")(inputs)
    positions = self.param("positions", nn.initializers.normal(0.02), (self.max_length, self.width))
    x = x + jnp.asarray(positions[:tokens], x.dtype)
    x = probes.probe(self, probes.site_name(1, "stem"), x, x_in=None if self.vocab_size else inputs, branch=x)
    layers = nn.scan(TransformerLayer, variable_axes=mlp.SCAN_AXES, split_rngs={"params": True}, length=self.depth)(
      **self.layer_options(), name=probes.site_name(2, "block")
    )
    x, _ = layers(x, None)
    if self.layout in ("pre_ln", "rezero"):
      x = nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)
    if self.pool == "mean":
      x = jnp.mean(x, axis=1)
    return nn.Dense(self.num_outputs, kernel_init=xavier_normal(), dtype=self.dtype, name="head")(x)


def build(
  depth: int,
  num_classes: int,
  *,
  layout: str,
  pool: str,
  heads: int,
  width: int,
  hidden: int,
  vocab_size: int,
  max_length: int,
  dtype: str,
  **options,
) -> TransformerStack:
  """A :class:`TransformerStack`, its options checked (the names are the config's ``model.*``)."""
  validation.one_of("layout", layout, LAYOUTS)
  validation.one_of("pool", pool, POOLS)
  validation.one_of("dtype", dtype, DTYPES)
  for name, value in dict(heads=heads, width=width, hidden=hidden, max_length=max_length).items():
    validation.positive_int(name, value)
  if width % heads:
    raise validation.invalid("width", width, f"a multiple of heads = {heads}")
  if vocab_size < 0:
    raise validation.invalid("vocab_size", vocab_size, "0 (real-valued inputs) or the number of token ids")
  return TransformerStack(
    depth=depth,
    num_outputs=num_classes,
    layout=layout,
    pool=pool,
    heads=heads,
    width=width,
    hidden=hidden,
    vocab_size=vocab_size,
    max_length=max_length,
    dtype=jnp.dtype(dtype),
    **options,
  )
