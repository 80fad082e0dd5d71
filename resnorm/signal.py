"""Backward norms at every stream site from one backward pass, and forward statistics.

For a network whose stream sites are x_0, x_1, …, x_S (see :mod:`resnorm.probes`) the
backward signal of a loss E obeys ∂E/∂x_k = J_kᵀ ∂E/∂x_{k+1}, with J_k = I + DF_k(x_k) for a
residual block. For every example and every layer k this module measures

    r_k = ‖∂E/∂x_k‖ / ‖∂E/∂x_{k+1}‖,        δ_k = |r_k − 1|,

labelling each ratio by the kind of layer that produced x_{k+1} (stem, block, transition).
Theorem 1 of Zaeemzadeh et al. (TPAMI 2020) bounds δ_k by c·log(2L)/L for a network of L
blocks that represents a smooth invertible map.

All gradients come from one ``jax.grad`` with respect to the zero probes the model adds at its
sites; the model runs unchanged. Per-example gradients are exact when examples do not interact
in the forward pass (no batch statistics), so image models are measured in eval mode. In train
mode (``train=True``: BatchNorm normalises by the batch's own statistics) the per-example norms
still add up to the whole mini-batch's: ‖∂E/∂X_k‖_F² = Σ_b ‖∂E/∂x_k^(b)‖², the norm the
reference ProcResNet code records during training (:func:`batch_ratios`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnorm import probes, statistics, validation

QUANTILES = (50, 90, 99)
# Ratios within this of 1 are 1: norms are float32, and two equal gradients reduced in different
# vector lanes (a vmapped group, another site's alignment) differ by a few ulps.
RESOLUTION = 16 * float(np.finfo(np.float32).eps)


@flax.struct.dataclass
class SignalReport:
  """Measurements at S+1 sites (axis 0) and B examples (axis 1).

  Attributes:
    grad_norm: (S+1, B) ‖∂E/∂x_k‖.
    ratio: (S, B) r_k = ‖∂E/∂x_k‖ / ‖∂E/∂x_{k+1}‖; NaN where the denominator is 0, and exactly 1
      within :data:`RESOLUTION` of 1 (float32 rounding).
    stream_norm: (S+1, B) ‖x_k‖.
    branch_ratio: (S, B) ‖F_k(x_k)‖ / ‖x_k‖ for the layer producing x_{k+1}.
    q: (S+1,) mean square of x_k.
    c: (S+1,) mean cosine similarity of x_k between distinct examples.
    kinds: the kind of layer behind each ratio (S entries), static.
    token_c: (S+1,) on a stream of sequences, the mean cosine similarity between the tokens of
      a sequence (:func:`resnorm.probes.token_cosine`); NaN at sites that are not sequences.
    token_ratio: (S, B, T) where every site is a sequence of T tokens (else None): the per-token
      ratios ‖∂E/∂x_k,t‖ / ‖∂E/∂x_{k+1},t‖ (NaN where the denominator is 0). Attention mixes the
      tokens, so a token's ratio is not a property of its own Jacobian; it shows where along the
      sequence the gradient grows or shrinks.
  """

  grad_norm: jax.Array
  ratio: jax.Array
  stream_norm: jax.Array
  branch_ratio: jax.Array
  q: jax.Array
  c: jax.Array
  kinds: tuple[str, ...] = flax.struct.field(pytree_node=False)
  token_c: jax.Array | None = None
  token_ratio: jax.Array | None = None


def ratios(numerator, denominator):
  """numerator / denominator, NaN where the denominator is 0, exactly 1 within :data:`RESOLUTION`."""
  ratio = jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0), jnp.nan)
  return jnp.where(jnp.abs(ratio - 1) <= RESOLUTION, 1.0, ratio)


def _stack_sites(flat: dict[tuple[str, ...], Any]) -> list[tuple[str, tuple[str, ...], Any]]:
  """Flattened probe-shaped leaves -> [(site, kinds, leaf)] in stream order, each leaf stacked
  over the site's layers and ``kinds`` the kind of each of its rows: a top-level probe is one row;
  a scanned module's ``'stream'`` probe one per layer; its probes named by site (several
  sub-blocks per layer) one per sub-block, interleaved layer by layer (:mod:`resnorm.probes`)."""
  grouped: dict[str, list] = {}
  for path, leaf in sorted(flat.items(), key=lambda item: tuple(probes.site_order(name) for name in item[0])):
    if len(path) == 1:
      grouped[path[0]] = [(probes.site_kind(path[0]), jax.tree.map(lambda a: a[None], leaf))]
    elif len(path) == 2 and path[1] == probes.SCANNED_PROBE:
      grouped[path[0]] = [(probes.site_kind(path[0]), leaf)]
    elif len(path) == 2 and probes.is_site_name(path[1]):
      grouped.setdefault(path[0], []).append((probes.site_kind(path[1]), leaf))
    else:
      raise validation.invalid(
        "probe",
        "/".join(path),
        f"a top-level site, '<site>/{probes.SCANNED_PROBE}' or '<site>/<index>_<kind>' in a scanned module",
      )
  sites = []
  for site, parts in grouped.items():
    if len(parts) == 1:
      kind, leaf = parts[0]
      sites.append((site, (kind,) * len(jax.tree.leaves(leaf)[0]), leaf))
      continue
    kinds = [kind for kind, _ in parts]
    structures = {jax.tree.structure(leaf) for _, leaf in parts}
    if len(structures) > 1:
      raise validation.invalid(
        "probe",
        site,
        f"sub-block probes of one scanned module that record the same statistics (theirs differ: {', '.join(kinds)})",
      )
    layers = len(jax.tree.leaves(parts[0][1])[0])
    leaf = jax.tree.map(
      lambda *rows: jnp.stack(rows, axis=1).reshape((-1,) + rows[0].shape[1:]), *(leaf for _, leaf in parts)
    )
    sites.append((site, tuple(kinds) * layers, leaf))
  return sites


def report_kinds(report: SignalReport) -> list[str]:
  """The kinds of layer :func:`summarize` takes for ``report``: its own, and ``'block'`` where it
  has residual blocks of other kinds (a Transformer's attention and MLP sub-blocks)."""
  kinds = set(report.kinds)
  if kinds & set(probes.BLOCK_KINDS):
    kinds.add("block")
  return sorted(kinds)


def kind_rows(kinds, kind: str) -> np.ndarray:
  """Which of ``kinds`` (one per ratio) are of ``kind``; ``'block'`` takes every residual block of
  the stream (:data:`resnorm.probes.BLOCK_KINDS`: Transformer sub-blocks too)."""
  members = probes.BLOCK_KINDS if kind == "block" else (kind,)
  return np.array([k in members for k in kinds], dtype=bool)


def _updated(variables, apply_kwargs) -> list[str]:
  """The collections a forward pass updates besides the probes': BatchNorm's statistics in train mode."""
  return ["batch_stats"] if apply_kwargs.get("train") and "batch_stats" in variables else []


def zero_probes(model, variables, inputs, **apply_kwargs):
  """Zero perturbations shaped for ``inputs``; no computation beyond tracing. Raises a
  ``ValueError`` for a model whose stream sites break the protocol (:func:`check_site_order`)."""
  mutable = ["perturbations", *_updated(variables, apply_kwargs)]
  visited = []  # the sites in the order the forward pass creates them (pytrees sort dict keys)

  def created():
    perturbations = model.apply(variables, inputs, mutable=mutable, **apply_kwargs)[1].get("perturbations", {})
    visited.append({site: list(inner) if isinstance(inner, dict) else inner for site, inner in perturbations.items()})
    return perturbations

  shapes = jax.eval_shape(created)
  check_site_order(model, visited[0])
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def check_site_order(model, perturbations) -> None:
  """Raises a ``ValueError`` unless ``perturbations`` (site -> its probes, in the order a forward
  pass of ``model`` created them) visit the stream sites in the order of their names
  (:mod:`resnorm.probes`)."""
  name = type(model).__name__
  if not perturbations:
    raise ValueError(
      f"model {name} has no stream sites: call resnorm.probes.probe(self, site_name(index, kind), x) "
      "at its input, stem and after every block (README, 'Sweeping your own model')"
    )
  visited = list(perturbations)
  in_order = sorted(visited, key=probes.site_order)
  if visited != in_order:
    first = next(i for i, (a, b) in enumerate(zip(visited, in_order)) if a != b)
    raise ValueError(
      f"model {name}: its stream sites are visited in an order their names do not sort to: site "
      f"{first} of {len(visited)} is {visited[first]!r} where the names put {in_order[first]!r}; number the "
      "sites along the stream (resnorm.probes.site_name)"
    )
  for site in visited:
    inner = perturbations[site]
    if isinstance(inner, list) and inner != sorted(inner, key=probes.site_order):
      raise ValueError(
        f"model {name}: the probes of scanned site {site} are visited in the order {list(inner)}, "
        f"which their names do not sort to ({sorted(inner, key=probes.site_order)})"
      )


def stream_gradients(model, variables, inputs, targets, loss_fn, **apply_kwargs):
  """∂E/∂x at every stream site, from one forward and one backward pass.

  Returns:
    ``(sites, intermediates)``: ``sites`` lists ``(site_name, gradient)`` in stream order, each
    gradient stacked over the site's layers (shape ``(layers, B, ...)``; a scanned module with
    several sub-block probes, its sub-blocks interleaved layer by layer); ``intermediates`` holds
    what the probes sowed in the same forward pass.
  """
  sites, intermediates = _site_gradients(model, variables, inputs, targets, loss_fn, **apply_kwargs)
  return [(site, gradient) for site, _, gradient in sites], intermediates


def _site_gradients(model, variables, inputs, targets, loss_fn, **apply_kwargs):
  """:func:`stream_gradients` with each site's kinds: ``[(site, kinds, gradient)]``."""
  variables = {k: v for k, v in variables.items() if k not in ("perturbations", "intermediates")}
  zeros = zero_probes(model, variables, inputs, **apply_kwargs)
  mutable = ["intermediates", *_updated(variables, apply_kwargs)]  # updated statistics are dropped

  def loss(perturbations):
    outputs, state = model.apply({**variables, "perturbations": perturbations}, inputs, mutable=mutable, **apply_kwargs)
    return loss_fn(outputs, targets), state["intermediates"]

  grads, intermediates = jax.grad(loss, has_aux=True)(zeros)
  return _stack_sites(traverse_util.flatten_dict(grads)), intermediates


def measure(
  model,
  variables,
  inputs: jax.Array,
  targets: jax.Array,
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
  **apply_kwargs,
) -> SignalReport:
  """Backward ratios and forward statistics of ``model`` on one batch (jit-able).

  Args:
    model: a Flax module whose stream sites call :func:`resnorm.probes.probe`.
    variables: its variables (``'params'``, plus ``'batch_stats'`` for BatchNorm models).
    inputs, targets: a batch; examples along axis 0.
    loss_fn: ``loss_fn(outputs, targets) -> scalar``; E in the ratios above.
    **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``).
  """
  grad_sites, intermediates = _site_gradients(model, variables, inputs, targets, loss_fn, **apply_kwargs)
  # `sow` keeps a tuple of the values sown; every site sows once per call.
  sown = {path: values[0] for path, values in traverse_util.flatten_dict(intermediates).items()}
  stats = {site: leaf for site, _, leaf in _stack_sites(sown)}
  stats = [stats[site] for site, _, _ in grad_sites]
  kinds = tuple(kind for _, site_kinds, _ in grad_sites for kind in site_kinds)

  grad_norm = jnp.concatenate([jax.vmap(probes.per_example_norm)(g) for _, _, g in grad_sites])
  ratio = ratios(grad_norm[:-1], grad_norm[1:])
  token_ratio = None
  if all(g.ndim == 4 for _, _, g in grad_sites):  # (layers, B, T, D): every site a sequence
    per_token = jnp.concatenate(
      [probes.per_example_norm(g.reshape(-1, g.shape[-1])).reshape(g.shape[:-1]) for _, _, g in grad_sites]
    )
    token_ratio = ratios(per_token[:-1], per_token[1:])
  branch = [s.get("branch_ratio", jnp.full_like(s["norm"], jnp.nan)) for s in stats]
  return SignalReport(
    grad_norm=grad_norm,
    ratio=ratio,
    stream_norm=jnp.concatenate([s["norm"] for s in stats]),
    branch_ratio=jnp.concatenate(branch)[1:],
    q=jnp.concatenate([s["q"] for s in stats]),
    c=jnp.concatenate([s["c"] for s in stats]),
    kinds=kinds[1:],
    token_c=jnp.concatenate([s.get("token_c", jnp.full_like(s["q"], jnp.nan)) for s in stats]),
    token_ratio=token_ratio,
  )


def whole_batch_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """(S,) R = ‖G_num‖_F / ‖G_den‖_F per row, from (S, B) per-example gradient norms (the whole
  batch's norm is the root sum of squares of the examples'); NaN where the denominator is 0."""
  top, bottom = (np.sqrt(np.sum(np.square(np.asarray(g, dtype=np.float64)), axis=1)) for g in (numerator, denominator))
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(bottom > 0, top / bottom, np.nan)


def layer_ratios(report: SignalReport, kind: str = "block", direction_free=None) -> statistics.LayerRatios:
  """The ratios of the layers of ``kind`` in ``report`` (host arrays, float64), with their
  direction-free δ (:func:`direction_free`) where it was measured."""
  rows = kind_rows(report.kinds, kind)
  if not rows.any():
    raise validation.invalid("kind", kind, f"a kind of layer in this report: one of {sorted(set(report.kinds))}")
  return statistics.LayerRatios(
    ratio=np.asarray(report.ratio, dtype=np.float64)[rows],
    batch_ratio=whole_batch_ratio(report.grad_norm[:-1], report.grad_norm[1:])[rows],
    direction_free=direction_free,
  )


def delta_statistics(report: SignalReport, kind: str = "block", direction_free=None) -> dict[str, float | int | None]:
  """Every registered statistic (:mod:`resnorm.statistics`) of the layers of ``kind`` in
  ``report``, as host-side numbers by name; ``direction_free``: their direction-free δ, where
  measured.

  δ_max is a maximum over layers × examples, a sample that grows with depth; the per-layer
  statistics (``layer_*``) take each layer's sample of ``num_examples`` examples whatever the
  depth; the whole-batch ones (``batch_*``) the ratio of the batch's gradient norms.
  """
  return statistics.compute_all(layer_ratios(report, kind, direction_free))


def layer_profile(report: SignalReport, kind: str = "block") -> dict[str, list[float]]:
  """Per-layer means over examples of δ_k, r_k, ‖F_k‖/‖x_k‖, and q, c after each layer; on a
  stream of sequences also ``token_c`` after each layer (rank collapse as it approaches 1) and
  ``token_delta_mean``, the mean over examples and tokens of the per-token |r_k,t − 1|."""
  rows = kind_rows(report.kinds, kind)
  ratio = np.asarray(report.ratio, dtype=np.float64)[rows]
  with np.errstate(invalid="ignore"):
    profile = dict(
      delta_mean=np.nanmean(np.abs(ratio - 1.0), axis=1).tolist(),
      ratio_mean=np.nanmean(ratio, axis=1).tolist(),
      branch_ratio_mean=np.nanmean(np.asarray(report.branch_ratio)[rows], axis=1).tolist(),
      q=np.asarray(report.q)[1:][rows].tolist(),
      c=np.asarray(report.c)[1:][rows].tolist(),
    )
  if report.token_c is not None and np.isfinite(np.asarray(report.token_c)[1:][rows]).any():
    profile["token_c"] = np.asarray(report.token_c)[1:][rows].tolist()
  if report.token_ratio is not None:  # per layer, the mean over examples and tokens of |r_k,t − 1|
    with np.errstate(invalid="ignore"):
      token_delta = np.abs(np.asarray(report.token_ratio, np.float64)[rows] - 1.0)
      profile["token_delta_mean"] = np.nanmean(token_delta.reshape(len(token_delta), -1), axis=1).tolist()
  return profile


def stream_profile(report: SignalReport) -> dict[str, list]:
  """Every layer in stream order (stem, blocks, transitions): its kind, and the means over
  examples of r_k and δ_k; the profile along the whole network, transitions included."""
  ratio = np.asarray(report.ratio, dtype=np.float64)
  with np.errstate(invalid="ignore"):
    return dict(
      kind=list(report.kinds),
      ratio_mean=np.nanmean(ratio, axis=1).tolist(),
      delta_mean=np.nanmean(np.abs(ratio - 1.0), axis=1).tolist(),
    )


def batch_ratios(report: SignalReport) -> list[float]:
  """Every layer's ratio of whole mini-batch gradient norms, R_k = ‖∂E/∂X_k‖_F / ‖∂E/∂X_{k+1}‖_F
  with X_k the batch's stream at site k (NaN where the denominator is 0): the reference code's
  measure when ``report`` was taken in train mode on a training batch."""
  return whole_batch_ratio(report.grad_norm[:-1], report.grad_norm[1:]).tolist()


def direction_free(sigma_max, sigma_min) -> np.ndarray:
  """δ in every direction, max(σ_max(J_l) − 1, 1 − σ_min(J_l)), from (blocks, examples) arrays of
  the block Jacobians' extreme singular values (:func:`resnorm.spectra.block_extremes`): a ratio
  measures J_lᵀ along one gradient, so |r_l − 1| is at most this, which Theorem 1 bounds."""
  sigma_max, sigma_min = np.asarray(sigma_max, np.float64), np.asarray(sigma_min, np.float64)
  if sigma_max.shape != sigma_min.shape:
    raise validation.invalid("sigma_min", f"shape {sigma_min.shape}", f"the shape of sigma_max, {sigma_max.shape}")
  # Iterative estimates converge from inside (σ_max from below, σ_min from above): where J_l is
  # nearly an isometry the two may cross by rounding, so only a crossing beyond that is refused.
  if np.any(sigma_min < 0) or np.any(sigma_min > sigma_max * (1 + 1e-4)):
    raise validation.invalid("sigma_min", sigma_min.tolist(), "0 <= sigma_min <= sigma_max, element by element")
  return np.maximum(sigma_max - 1.0, 1.0 - sigma_min)
