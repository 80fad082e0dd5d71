"""Probes on the residual stream: the one convention that models and :mod:`resnorm.signal` share.

A Flax helper of the numeric core (no registry, no model): the models call :func:`probe` at
their stream sites, and :mod:`resnorm.signal` reads the sites back by the same names.

A *site* is a point of the residual stream: the network input, the stem output, the output of
every block and of every transition. At each site a model calls :func:`probe`, which

* adds a zero perturbation (``Module.perturb``) so that the gradient of the loss with respect
  to the ``'perturbations'`` collection is ∂E/∂x at every site, for every example, from one
  backward pass;
* sows forward statistics into ``'intermediates'``: the per-example stream norm ‖x‖, the
  per-example branch ratio ‖F(x_in)‖/‖x_in‖ (F is what the layer adds to its input; for a
  layer without skip, its whole output), the q-value (mean square of x) and the c-value (mean
  cosine similarity between distinct examples).

Site names are ``f"{index:02d}_{kind}"`` with ``kind`` in :data:`KINDS`, so sorting the names by
:func:`site_order` (the index as a number) gives the order along the stream. A probe lives
either at the model's top level (one site) or inside a module that ``nn.scan`` repeats over
identical layers, stacked on a leading axis. That module carries the site name and calls its
probe either ``'stream'`` (one site per scan step, of the module's kind) or, where one scan step
holds several residual sub-blocks (a Transformer layer: attention, then MLP), by site names of
their own (``'00_attention'``, ``'01_mlp'``): their index orders them within the step, and the
stream reads them interleaved (the attention of layer 0, its MLP, the attention of layer 1, …).
The kinds of :data:`BLOCK_KINDS` are residual blocks of the stream: the statistics of ``'block'``
pool them.

On a stream of sequences (``(batch, tokens, width)``) a probe also records the mean cosine
similarity between the tokens of each sequence (``token_c``), whose approach to 1 is rank collapse.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from resnorm import validation

KINDS = ("input", "stem", "block", "transition", "attention", "mlp")
# Residual blocks of the stream (x + F(x), one per site); the statistics of 'block' pool them.
BLOCK_KINDS = ("block", "attention", "mlp")
SCANNED_PROBE = "stream"
# Variable axes that nn.scan needs so that probes and their statistics stack over blocks.
SCAN_AXES = {"params": 0, "perturbations": 0, "intermediates": 0}


def site_name(index: int, kind: str) -> str:
  return f"{index:02d}_{validation.one_of('kind', kind, KINDS)}"


def site_order(name: str) -> tuple:
  """The sort key of a site name along the stream: its index as a number (``'100_block'`` after
  ``'99_block'``, at any count of sites), then its kind; a name that is not a site's
  (``'stream'``) after every site."""
  index, _, rest = name.partition("_")
  return (0, int(index), rest) if index.isdigit() else (1, 0, name)


def site_kind(name: str) -> str:
  return name.split("_", 1)[1]


def is_kind(name: str, kind: str) -> bool:
  """Whether ``name`` is the site name of a layer of ``kind`` (``'02_block'``), as the modules that
  carry a site's parameters are named; ``'stem'``, ``'head'`` and ``'03_transition_layer'`` are not
  blocks."""
  index, _, rest = name.partition("_")
  return index.isdigit() and rest == kind


def is_site_name(name: str) -> bool:
  """Whether ``name`` is a site name (``'01_mlp'``)."""
  index, _, kind = name.partition("_")
  return index.isdigit() and kind in KINDS


def per_example_norm(x: jnp.ndarray) -> jnp.ndarray:
  """(B, ...) -> (B,): ‖x_b‖ = sqrt(Σ_i x_{b,i}²) per example, in float32 or wider."""
  x = x.reshape(x.shape[0], -1)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return jnp.sqrt(jnp.sum(x * x, axis=-1))


def stream_statistics(x, x_in=None, branch=None) -> dict[str, jnp.ndarray]:
  """Forward statistics of a batch ``x`` (batch axis first) at one site."""
  flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
  norm = per_example_norm(flat)
  unit = flat / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny)[:, None]
  gram = unit @ unit.T
  batch = x.shape[0]
  off_diagonal = (jnp.sum(gram) - jnp.trace(gram)) / max(batch * (batch - 1), 1)
  stats = {"norm": norm, "q": jnp.mean(flat * flat), "c": off_diagonal}
  if x.ndim == 3:
    stats["token_c"] = token_cosine(x)
  if branch is not None and x_in is not None:
    stats["branch_ratio"] = per_example_norm(branch) / per_example_norm(x_in)
  return stats


def token_cosine(x) -> jnp.ndarray:
  """(B, T, D) -> the mean over examples of the mean cosine similarity between distinct tokens:
  1 when every token of a sequence points the same way (rank collapse), ~0 for random tokens."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  norms = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  unit = x / jnp.maximum(norms, jnp.finfo(jnp.float32).tiny)
  tokens = x.shape[1]
  gram_sum = jnp.sum(jnp.square(jnp.sum(unit, axis=1)), axis=-1)  # Σ_{s,t} cos(x_s, x_t) = ‖Σ_t u_t‖²
  diagonal = jnp.sum(unit * unit, axis=(1, 2))
  return jnp.mean((gram_sum - diagonal) / max(tokens * (tokens - 1), 1))


def probe(module: nn.Module, name: str, x, x_in=None, branch=None):
  """Records ``x`` at a stream site of ``module`` and returns it with the zero probe added."""
  module.sow("intermediates", name, stream_statistics(x, x_in, branch))
  return module.perturb(name, x)
