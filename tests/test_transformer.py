"""The Transformer family: its probes against an independent backward chain, its variants'
initial states against their definitions, and the rank-collapse statistic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnorm import models, probes, signal
from resnorm.models import transformer

VOCAB, TOKENS, WIDTH, HEADS, HIDDEN, DEPTH = 13, 6, 16, 2, 24, 3


def _model(layout="pre_ln", depth=DEPTH, **options):
  options = dict(dict(width=WIDTH, heads=HEADS, hidden=HIDDEN, vocab_size=VOCAB, max_length=8), **options)
  return models.create_model("transformer", depth, num_classes=VOCAB, layout=layout, **options)


def _batch(seed=0, size=4):
  tokens = jax.random.randint(jax.random.key(seed), (size, TOKENS), 0, VOCAB)
  return tokens, jax.nn.one_hot(jnp.roll(tokens, -1, axis=1), VOCAB)


def _cross_entropy(logits, targets):
  return jnp.mean(jnp.sum(-targets * jax.nn.log_softmax(logits), axis=-1))


def _measure(model, variables, tokens, targets) -> signal.SignalReport:
  """:func:`resnorm.signal.measure`, compiled (eagerly a Transformer runs op by op)."""
  return jax.jit(lambda v: signal.measure(model, v, tokens, targets, _cross_entropy))(variables)


# ----------------------------------------------------------------------------- an independent stack


def _layer_norm(p, x, eps=1e-6):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def _dense(p, x):
  return x @ p["kernel"] + p["bias"]


def _attention(p, x, causal=True):
  batch, tokens, width = x.shape
  head_dim = width // HEADS
  q, k, v = (_dense(p[name], x).reshape(batch, tokens, HEADS, head_dim) for name in ("query", "key", "value"))
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
  if causal:
    logits = jnp.where(jnp.tril(jnp.ones((tokens, tokens), bool)), logits, jnp.finfo(logits.dtype).min)
  h = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(x.shape)
  return _dense(p["output"], h)


def _mlp(p, x):
  return _dense(p["mlp_out"], jax.nn.gelu(_dense(p["mlp_in"], x)))


def _sub_block(layout, p, site, branch_fn, x, s, skip=1.0):
  """x ← the layout's update (the module docstring's table), from the parameters alone."""
  if layout == "pre_ln":
    return x + s * branch_fn(p, _layer_norm(p[f"{site}_norm"], x))
  if layout == "rezero":
    return x + p[f"{site}_alpha"] * s * branch_fn(p, x)
  return _layer_norm(p[f"{site}_norm"], skip * x + s * branch_fn(p, x))


def _sub_blocks(layout, params, s):
  """Every sub-block in stream order as a function of its input."""
  layers = params[probes.site_name(2, "block")]
  depth = jax.tree.leaves(layers)[0].shape[0]
  skip = transformer.deepnorm_constants(depth)[0] if layout == "deepnorm" else 1.0
  fns = []
  for layer in range(depth):
    p = jax.tree.map(lambda leaf, layer=layer: leaf[layer], layers)
    fns.append(lambda x, p=p: _sub_block(layout, p, "00_attention", _attention, x, s, skip))
    fns.append(lambda x, p=p: _sub_block(layout, p, "01_mlp", _mlp, x, s, skip))
  return fns


@pytest.mark.parametrize(
  "layout",
  [
    pytest.param(layout, marks=pytest.mark.slow) if layout in ("rezero", "deepnorm") else layout
    for layout in transformer.LAYOUTS
  ],
)
def test_per_example_ratios_equal_a_chain_of_vjps_through_the_sub_blocks(layout):
  """r_k = ‖∂E/∂x_k‖/‖∂E/∂x_{k+1}‖ for every example and both kinds of sub-block, against
  jax.vjp through an independent implementation of each sub-block, applied from the head back
  (branches scaled by s = 1/√L)."""
  model = _model(layout, branch_scale="1/sqrt(L)")
  tokens, targets = _batch()
  variables = jax.jit(model.init)(jax.random.key(1), tokens)
  if layout == "rezero":  # α = 0 makes every ratio 1; take α away from 0 to test the chain
    layers = variables["params"][probes.site_name(2, "block")]
    for site in transformer.SUB_BLOCKS:
      layers[f"{site}_alpha"] = jnp.linspace(0.3, 0.9, DEPTH)
  report = _measure(model, variables, tokens, targets)
  assert report.kinds == ("attention", "mlp") * DEPTH

  @jax.jit  # the independent chain, compiled as one program (eagerly it runs op by op)
  def chain(params):
    x = params["stem"]["embedding"][tokens] + params["positions"][:TOKENS]
    pullbacks = []
    for fn in _sub_blocks(layout, params, 1 / math.sqrt(DEPTH)):
      x, pullback = jax.vjp(fn, x)
      pullbacks.append(pullback)

    def loss_from_last(x):
      if layout in ("pre_ln", "rezero"):
        x = _layer_norm(params["final_norm"], x)
      return _cross_entropy(_dense(params["head"], x), targets)

    gradients = [jax.grad(loss_from_last)(x)]
    for pullback in reversed(pullbacks):
      gradients.append(pullback(gradients[-1])[0])
    return gradients[::-1]

  gradients = np.asarray(chain(variables["params"]), np.float64)  # stem, every sub-block's output: (S+1, B, T, D)
  norms = np.sqrt(np.sum(np.square(gradients), axis=(2, 3)))
  np.testing.assert_allclose(np.asarray(report.grad_norm), norms, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(report.ratio), norms[:-1] / norms[1:], rtol=1e-5)
  per_token = np.sqrt(np.sum(np.square(gradients), axis=3))  # (S+1, B, T)
  np.testing.assert_allclose(np.asarray(report.token_ratio), per_token[:-1] / per_token[1:], rtol=1e-4)
  assert np.isfinite(np.asarray(report.ratio)).all() and np.abs(np.asarray(report.ratio) - 1).max() > 1e-3


@pytest.mark.parametrize("layout, zero_init", [("rezero", False), ("pre_ln", True)])
def test_rezero_and_zero_init_branches_make_every_sub_block_the_identity(layout, zero_init):
  model = _model(layout, zero_init=zero_init)
  tokens, targets = _batch()
  report = _measure(model, jax.jit(model.init)(jax.random.key(1), tokens), tokens, targets)
  np.testing.assert_array_equal(np.asarray(report.ratio), 1.0)
  np.testing.assert_array_equal(np.asarray(report.branch_ratio), 0.0)
  norms = np.asarray(report.stream_norm)
  np.testing.assert_allclose(norms, np.broadcast_to(norms[:1], norms.shape), rtol=1e-6)


def test_zero_init_branches_under_post_ln_are_not_the_identity():
  """The case where zero-init does not decide the start: LN(x + 0) = LN(x) rescales the stream."""
  model = _model("post_ln", zero_init=True)
  tokens, targets = _batch()
  report = _measure(model, jax.jit(model.init)(jax.random.key(1), tokens), tokens, targets)
  np.testing.assert_array_equal(np.asarray(report.branch_ratio), 0.0)
  assert np.abs(np.asarray(report.ratio)[0] - 1).min() > 1e-2  # the first LayerNorm rescales the embedding


@pytest.mark.parametrize("depth", [3, 12])
def test_deepnorm_sets_its_constants_from_depth_as_published(depth):
  """a = (2N)^¼ on the skip; b = (8N)^-¼ on the initial value, output and MLP weights, the query
  and key weights untouched: each such kernel is b times post-LN's with the same key."""
  a, b = (2 * depth) ** 0.25, (8 * depth) ** -0.25
  deep, post = _model("deepnorm", depth=depth), _model("post_ln", depth=depth)
  assert deep.layer_options()["skip_scale"] == pytest.approx(a) and deep.layer_options()["init_gain"] == pytest.approx(
    b
  )
  tokens, _ = _batch()
  layers = [jax.jit(m.init)(jax.random.key(1), tokens)["params"][probes.site_name(2, "block")] for m in (deep, post)]
  for name, gain in dict(query=1.0, key=1.0, value=b, output=b, mlp_in=b, mlp_out=b).items():
    np.testing.assert_allclose(layers[0][name]["kernel"], gain * layers[1][name]["kernel"], rtol=1e-6, err_msg=name)


def test_token_cosine_equals_the_mean_over_distinct_token_pairs():
  x = np.asarray(jax.random.normal(jax.random.key(0), (3, 5, 4)), np.float64)
  x[1] = x[1, :1] * np.arange(1, 6)[:, None]  # one sequence collapsed: every token the same direction
  expected = np.mean(
    [
      np.mean(
        [
          x[b, s] @ x[b, t] / np.linalg.norm(x[b, s]) / np.linalg.norm(x[b, t])
          for s in range(5)
          for t in range(5)
          if s != t
        ]
      )
      for b in range(3)
    ]
  )
  assert float(probes.token_cosine(jnp.asarray(x, jnp.float32))) == pytest.approx(expected, rel=1e-5)
  assert float(probes.token_cosine(jnp.asarray(x[1:2], jnp.float32))) == pytest.approx(1.0, rel=1e-6)


def test_the_stream_of_sequences_records_token_cosine_and_the_profile_keeps_it():
  model = _model("post_ln", depth=4)
  tokens, targets = _batch()
  variables = jax.jit(model.init)(jax.random.key(1), tokens)
  report = _measure(model, variables, tokens, targets)
  profile = signal.layer_profile(report, "block")
  # After each of the 8 sub-blocks (not before): the independent stack's stream, pair by pair in float64.
  params = variables["params"]
  x = params["stem"]["embedding"][tokens] + params["positions"][:TOKENS]
  expected = []
  for fn in _sub_blocks("post_ln", params, 1.0):
    x = fn(x)
    unit = np.asarray(x, np.float64) / np.linalg.norm(np.asarray(x, np.float64), axis=-1, keepdims=True)
    expected.append(
      np.mean(
        [unit[b, s] @ unit[b, t] for b in range(len(unit)) for s in range(TOKENS) for t in range(TOKENS) if s != t]
      )
    )
  np.testing.assert_allclose(profile["token_c"], expected, rtol=1e-5, strict=True)
  token_delta = np.abs(np.asarray(report.token_ratio, np.float64) - 1).mean(axis=(1, 2))
  np.testing.assert_allclose(profile["token_delta_mean"], token_delta, rtol=1e-12)
  assert signal.report_kinds(report) == ["attention", "block", "mlp"]
  assert signal.delta_statistics(report, "block")["num_layers"] == 8


def test_bfloat16_runs_jitted_with_finite_ratios():
  model = _model("pre_ln", dtype="bfloat16")
  tokens, targets = _batch()
  variables = jax.jit(model.init)(jax.random.key(1), tokens)
  assert jax.eval_shape(model.apply, variables, tokens).dtype == jnp.bfloat16
  report = _measure(model, variables, tokens, targets)
  assert np.isfinite(np.asarray(report.ratio)).all()


@pytest.mark.parametrize(
  "option, value, message",
  [
    ("layout", "sandwich", "expected one of"),
    ("heads", 3, "a multiple of heads = 3"),
    ("pool", "max", "expected one of"),
    ("dtype", "float16", "expected one of"),
  ],
)
def test_bad_options_name_the_field(option, value, message):
  with pytest.raises(ValueError, match=f"{'width' if option == 'heads' else option}.*{message}"):
    _model(**{option: value})


# ----------------------------------------------------------------------------- the sweep


def _tiny_transformer_sweep(settings, depths=(1, 2)):
  from configs import transformer_depth_sweep  # ml_collections: only the tests that build configs need it

  config = transformer_depth_sweep.get_config()
  config.depths, config.settings, config.seeds = depths, settings, (0,)
  for override in config.overrides.values():
    if "seeds" in override:
      del override["seeds"]
  config.model.width, config.model.hidden, config.model.max_length = 8, 16, 8
  config.data.update(dict(modules=("functools",), tokens=8, train_size=128, test_size=32))
  config.batch_size, config.num_steps, config.log_every, config.signal.every = 16, 20, 10, 10
  config.signal.num_examples = 16
  return config


@pytest.mark.slow
def test_the_transformer_sweep_runs_end_to_end_and_a_group_of_branch_scales_equals_its_runs_alone(tmp_path):
  """Three settings at depths 1 and 2 on the standard library's text: pre-LN with branches scaled
  by 1 and by 1/L train as one program (they differ only in the scale the layers read from their
  constants), and each equals its run alone; the zero-init reference starts at δ = 0 with every
  sub-block measured, attention and MLP apart and pooled."""
  from experiments import sweep_runner
  from resnorm import loop, records, report, sweep_plan

  config = _tiny_transformer_sweep(("pre_ln_zero_init", "pre_ln", "pre_ln_inv_L"))
  runs = sweep_plan.plan(config)
  assert sorted(len(group) for group in sweep_plan.groups(runs)) == [1, 1, 2, 2]
  summary = sweep_runner.run_sweep(config, str(tmp_path / "sweep"), progress=False)
  assert list(summary.models) == ["pre_ln_zero_init", "pre_ln", "pre_ln_inv_L"]
  assert (tmp_path / "sweep" / "results.csv").exists() and (tmp_path / "sweep" / "delta_vs_depth.png").exists()
  trained = {
    (setting, depth): records.read_run(tmp_path / "sweep" / sweep_plan.RUNS / sweep_plan.run_name(setting, depth, 0))
    for setting, depth in ((run.setting, run.depth) for run in runs)
  }
  reference = trained["pre_ln_zero_init", 2]
  assert reference.init.block["delta_max"] == 0 and reference.init.block["num_layers"] == 4
  assert set(reference.trained.by_kind) == {"attention", "block", "mlp"}
  assert reference.trained.block["delta_max"] > 0  # training moved it: the depth dependence is learned
  assert len(reference.trained.profile["token_c"]) == 4
  for setting in ("pre_ln", "pre_ln_inv_L"):
    single = [run for run in runs if run.setting == setting and run.depth == 2][0].config
    alone = loop.train_and_evaluate(single, tmp_path / "alone" / setting)
    grouped = trained[setting, 2]
    assert grouped.group_size == 2 and alone.group_size == 1
    assert grouped.test_loss == pytest.approx(alone.test_loss, rel=1e-5), setting
    for stage in ("init", "trained"):
      assert grouped.measurement(stage).block["delta_max"] == pytest.approx(
        alone.measurement(stage).block["delta_max"], rel=1e-5
      ), (setting, stage)
  assert trained["pre_ln", 2].init.block["delta_max"] != trained["pre_ln_inv_L", 2].init.block["delta_max"]
  # Rank collapse in the tables: the tokens' cosine after the last block, the mean over the seeds.

  family = summary.models["pre_ln"]
  assert family.trained.means["token_c_last"][1] == pytest.approx(trained["pre_ln", 2].trained.profile["token_c"][-1])
  assert all(0 < c <= 1 for c in family.init.means["token_c_last"] + family.trained.means["token_c_last"])
  assert "token cos" in report.format_table(summary)
  assert "### Rank collapse" in "\n".join(report.glance(summary, heading="###"))
