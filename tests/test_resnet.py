"""CIFAR ResNets, plain twins and ProcResNet: sizes, modes, the scan, signal, projection."""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import traverse_util

from resnorm import models, procrustes, signal
from resnorm.models import resnet

FAMILIES = ("resnet", "plain", "preact_resnet", "plain_preact", "procresnet")
SMALL = {"resnet": 14, "plain": 14, "preact_resnet": 20, "plain_preact": 20, "procresnet": 22}  # n = 2


def _cross_entropy(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _batch(size=8, image=8, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(size, image, image, 3)), jnp.float32), jnp.arange(size) % 10


def _shapes(model, x):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _random_variables(model, x, seed=0):
  """Parameters and running statistics drawn with NumPy (no XLA compilation), none trivial:
  He-normal kernels, BatchNorm scales in [0.5, 1.5], small biases and means, variances in
  [0.5, 1.5]."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1], leaf.shape
    if name == "kernel":
      fan_in = math.prod(shape[-4:-1]) if len(shape) >= 4 else shape[0]
      value = rng.normal(size=shape) * math.sqrt(2 / fan_in)
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, size=shape)
    else:  # bias, mean
      value = 0.1 * rng.normal(size=shape)
    return jnp.asarray(value, jnp.float32)

  shapes = _shapes(model, x)
  return {
    collection: traverse_util.unflatten_dict(
      {path: draw(path, leaf) for path, leaf in traverse_util.flatten_dict(shapes[collection]).items()}
    )
    for collection in ("params", "batch_stats")
  }


def _unstacked(tree):
  """Scanned layout -> unrolled layout: leaf[l] of '<site>/block/...' to '<site>/block<l>/...'."""
  flat = {}
  for path, leaf in traverse_util.flatten_dict(tree).items():
    if len(path) > 2 and path[1] == "block":
      flat.update({(path[0], f"block{l}", *path[2:]): leaf[l] for l in range(leaf.shape[0])})
    else:
      flat[path] = leaf
  return traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------- parameter counts


def _conv(k, c_in, c_out):
  return k * k * c_in * c_out


def _bottleneck(c_in, width, residual=True):
  c_out = 4 * width
  shortcut = _conv(1, c_in, c_out) if residual and c_in != c_out else 0
  norms = 2 * c_in + 2 * width + 2 * width  # BN scale and bias before each convolution
  return norms + _conv(1, c_in, width) + _conv(3, width, width) + _conv(1, width, c_out) + shortcut


def _expected_count(name, depth, classes=10):
  """Parameter count written out from the architectures in He et al. and Zaeemzadeh et al."""
  head = 2 * 256 + 256 * classes + classes  # final BN, dense
  if name in ("resnet", "plain"):  # conv-BN stem; option-A shortcuts have no parameters
    n, total, c_in = (depth - 2) // 6, _conv(3, 3, 16) + 2 * 16, 16
    for width in (16, 32, 64):
      for _ in range(n):
        total, c_in = total + _conv(3, c_in, width) + _conv(3, width, width) + 4 * width, width
    return total + 64 * classes + classes
  if name in ("preact_resnet", "plain_preact"):
    n, total, c_in = (depth - 2) // 9, _conv(3, 3, 16), 16
    for width in (16, 32, 64):
      for _ in range(n):
        total, c_in = total + _bottleneck(c_in, width, name == "preact_resnet"), 4 * width
    return total + head
  n = (depth - 4) // 9
  stages = sum(n * _bottleneck(4 * width, width) for width in (16, 32, 64))
  return _conv(3, 3, 64) + stages + _conv(1, 64, 128) + _conv(1, 128, 256) + head


@pytest.mark.parametrize(
  "name, depth, published, tolerance",
  [
    ("resnet", 20, "0.27", 0.01),  # He et al., CVPR 2016, Table 6
    ("resnet", 56, "0.85", 0.01),
    # He et al.'s option-A ResNet-110 has 1,727,962 parameters, printed with 2 significant
    # digits as "1.7M": 1.6% off the rounded figure, which it rounds to.
    ("resnet", 110, "1.7", 0.02),
    ("preact_resnet", 164, "1.71", 0.01),  # He et al., ECCV 2016, Table 2
    ("preact_resnet", 1001, "10.32", 0.01),
    ("procresnet", 166, "1.72", 0.01),  # Zaeemzadeh et al., TPAMI 2020
    ("procresnet", 1003, "10.33", 0.01),
    ("plain", 56, None, None),
    ("plain_preact", 164, None, None),
  ],
)
def test_parameter_counts_match_the_architecture_and_the_papers(name, depth, published, tolerance):
  shapes = _shapes(models.create_model(name, depth), jnp.zeros((1, 32, 32, 3)))
  count = sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))
  assert count == _expected_count(name, depth)
  if published is not None:
    assert abs(count / (float(published) * 1e6) - 1) < tolerance


def _reference_count(code, model, n, classes=10):
  """Trainable parameters of a reference code's CIFAR network, written out from reading it.

  ``code`` "chainer": zaeemzadeh/ProcResNet models/resnet.py and models/procresnet.py;
  "pytorch": zaeemzadeh/ProcResNet_PyTorch models/resnet.py and models/procresnet.py.
  ``model`` "resnet" (9n+2) or "procresnet" (9n+4). Convolutions have no bias (Chainer
  nobias=True, PyTorch bias=False); BN has a scale and a bias; the head is BN(256) and a dense
  layer with bias. Returns (parameters the forward pass uses, parameters the code registers).
  """
  bn = lambda c: 2 * c
  head = bn(256) + 256 * classes + classes
  if model == "procresnet":
    # Both: conv1 3→64 (3×3) with no BN after it; n identity units per stage (BN–ReLU–conv
    # ×3, no shortcut conv); trans_conv 1×1 64→128 and 128→256. Chainer also registers
    # bn_trans_1 = BN(64) and bn_trans_2 = BN(128), which __call__ never uses.
    unit = lambda m: bn(4 * m) + _conv(1, 4 * m, m) + bn(m) + _conv(3, m, m) + bn(m) + _conv(1, m, 4 * m)
    used = _conv(3, 3, 64) + n * sum(unit(m) for m in (16, 32, 64)) + _conv(1, 64, 128) + _conv(1, 128, 256) + head
    return used, used + (bn(64) + bn(128) if code == "chainer" else 0)
  used = registered = _conv(3, 3, 16) + bn(16)  # conv1 and its BN (bn2 in Chainer, bn1 in PyTorch)
  c_in = 16
  for m in (16, 32, 64):
    for unit in range(n):
      convs = _conv(1, c_in, m) + _conv(3, m, m) + _conv(1, m, 4 * m) + (_conv(1, c_in, 4 * m) if unit == 0 else 0)
      norms = bn(c_in) + bn(m) + bn(m) + (bn(c_in) if unit == 0 else 0)  # bn1, bn2, bn3, the shortcut's BN
      registered += convs + norms
      # Chainer's first unit of stage 1 (loc='first') calls neither bn1 nor its shortcut's BN.
      used += convs + norms - (2 * bn(c_in) if code == "chainer" and m == 16 and unit == 0 else 0)
      c_in = 4 * m
  return used + head, registered + head


@pytest.mark.parametrize(
  "model, depth, published",
  [
    ("resnet", 164, {"pytorch": (1_703_706, 1_703_706), "chainer": (1_703_642, 1_703_706)}),
    ("resnet", 1001, {"pytorch": (10_328_154, 10_328_154), "chainer": (10_328_090, 10_328_154)}),
    ("procresnet", 166, {"pytorch": (1_715_018, 1_715_018), "chainer": (1_715_018, 1_715_402)}),
  ],
)
def test_preact_layouts_have_the_reference_codes_parameter_counts(model, depth, published):
  """(used, registered) counts by the formula of each code, and resnorm's count for its layout."""
  name = "preact_resnet" if model == "resnet" else model
  n = (depth - (2 if model == "resnet" else 4)) // 9
  for code in ("chainer", "pytorch"):
    assert _reference_count(code, model, n) == published[code], code
    shapes = _shapes(models.create_model(name, depth, preact_layout=code), jnp.zeros((1, 32, 32, 3)))
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes["params"])) == published[code][0], code
  he2016 = _shapes(models.create_model(name, depth), jnp.zeros((1, 32, 32, 3)))
  assert sum(leaf.size for leaf in jax.tree.leaves(he2016["params"])) == _expected_count(name, depth)


def test_layouts_place_the_stride_and_the_batchnorms_as_their_codes_do():
  x = jnp.zeros((1, 8, 8, 3))
  sizes = {}
  for layout in ("he2016", "chainer", "pytorch"):
    model = models.create_model("preact_resnet", 11, preact_layout=layout)  # n = 1: three transitions
    variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, capture_intermediates=True)[1], x)
    params = variables["params"]
    stage1, stage2 = params["02_transition_layer"], params["03_transition_layer"]
    has = lambda tree, key: key in tree
    sizes[layout] = variables["intermediates"]["03_transition_layer"]["conv1"]["__call__"][0].shape[1]
    assert has(params, "stem_bn") == (layout != "he2016")
    assert has(stage1, "bn1") == (layout != "chainer")  # Chainer's first unit takes the stem's BN–ReLU
    assert has(stage1, "shortcut_bn") == (layout == "pytorch")
    assert has(stage2, "bn1") and has(stage2, "shortcut_bn") == (layout != "he2016")
  assert sizes == {"he2016": 8, "chainer": 4, "pytorch": 8}  # conv1's output: the stride is on it in Chainer's


@pytest.mark.parametrize("init", ["he_fan_out", "chainer", "pytorch"])
@pytest.mark.parametrize("name", ["preact_resnet", "procresnet"])
def test_inits_draw_the_reference_variances(name, init):
  """Var·fan_in (Var·fan_out for he_fan_out) per role, from the drawn kernels; ±15%."""
  model_depth = {"preact_resnet": 11, "procresnet": 13}[name]
  x = jnp.zeros((1, 8, 8, 3))
  expected = {  # role -> (he_fan_out, chainer, pytorch)
    "conv": (2.0, 2.0, 1 / 3),
    "linear": (2.0, 1.0, 1 / 3),
    "shortcut": (2.0, 2e-4, 1 / 3),
    "head": (None, 2.0, 1 / 3),
  }
  column = ("he_fan_out", "chainer", "pytorch").index(init)
  params = jax.jit(models.create_model(name, model_depth, init=init).init)(jax.random.key(1), x)["params"]
  for path, kernel in traverse_util.flatten_dict(params).items():
    if path[-1] != "kernel":
      continue
    role = (
      "head"
      if path[0] == "head"
      else "shortcut"
      if path[-2] == "shortcut"
      else "linear"
      if name == "procresnet" and (path[0] == "stem" or "transition" in path[0])
      else "conv"
    )
    if kernel.ndim == 2:  # the head's (in, out)
      fan = kernel.shape[0]
    else:  # a conv kernel (kh, kw, c_in, c_out), stacked on a leading axis in a scanned stage
      fan = math.prod(kernel.shape[-4:-2]) * kernel.shape[-1 if init == "he_fan_out" else -2]
    target = expected[role][column]
    if target is None or kernel.size < 2000:
      continue
    np.testing.assert_allclose(float(jnp.var(kernel)) * fan, target, rtol=0.15, err_msg=f"{init} {path}")
    if init == "pytorch":
      assert float(jnp.max(jnp.abs(kernel))) <= 1 / math.sqrt(fan) + 1e-7
  if init == "pytorch":
    bias = params["head"]["bias"]
    assert float(jnp.max(jnp.abs(bias))) <= 1 / 16 and float(jnp.max(jnp.abs(bias))) > 0  # U(±1/sqrt(256))


def test_procresnet_is_one_network_in_every_layout():
  x = jnp.zeros((1, 8, 8, 3))
  trees = [
    _shapes(models.create_model("procresnet", 13, preact_layout=layout), x)
    for layout in ("he2016", "chainer", "pytorch")
  ]
  chex.assert_trees_all_equal_shapes_and_dtypes(*trees)


# ----------------------------------------------------------------------------- shapes, sites


EXPECTED_KINDS = {  # n = 2
  "resnet": ("stem", "block", "block", "transition", "block", "transition", "block"),
  "preact_resnet": ("stem", "transition", "block", "transition", "block", "transition", "block"),
  "procresnet": ("stem", "block", "block", "transition", "block", "block", "transition", "block", "block"),
}
EXPECTED_KINDS["plain"] = EXPECTED_KINDS["resnet"]
EXPECTED_KINDS["plain_preact"] = EXPECTED_KINDS["preact_resnet"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shapes_dtypes_and_labelled_layers_in_train_and_eval(name, dtype):
  """bfloat16 computes in bfloat16 (the probes see it) with float32 parameters, statistics and
  logits; ``signal.measure`` reads every family unchanged and labels each layer's ratio."""
  model = models.create_model(name, SMALL[name], num_classes=7, width_multiplier=0.25, dtype=dtype)
  x, y = _batch(size=3, image=8)
  variables = _shapes(model, x)
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  logits, (logits_train, updates), report = jax.eval_shape(
    lambda v: (
      model.apply(v, x, train=False),
      model.apply(v, x, train=True, mutable=["batch_stats"]),
      signal.measure(model, v, x, y, _cross_entropy, train=False),
    ),
    state,
  )
  for out in (logits, logits_train):
    assert (out.shape, out.dtype) == ((3, 7), jnp.float32)
  dtypes = lambda tree: {leaf.dtype.name for leaf in jax.tree.leaves(tree)}
  assert dtypes(variables["params"]) == dtypes(variables["batch_stats"]) == {"float32"}
  chex.assert_trees_all_equal_shapes_and_dtypes(updates["batch_stats"], variables["batch_stats"])
  stream = dict(traverse_util.flatten_dict(variables["perturbations"]))
  assert stream.pop(("00_input",)).dtype.name == "float32"  # the images as given
  assert dtypes(stream) == {dtype}
  assert report.kinds == EXPECTED_KINDS[name]
  assert report.ratio.shape == (len(EXPECTED_KINDS[name]), 3)


def _train_step_program(model, x):
  """The lowered (StableHLO) program of a train-mode gradient step, from shapes alone."""
  variables = _shapes(model, x)

  def grads(params, batch_stats, x):
    def loss(params):
      logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(logits)

    return jax.grad(loss)(params)

  return jax.jit(grads).lower(variables["params"], variables["batch_stats"], x).as_text()


def test_depth_is_a_scan_length():
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  model = models.create_model("preact_resnet", 1001)
  params = _shapes(model, x)["params"]
  sites = ("03_block", "05_block", "07_block")
  stacked = {site: {leaf.shape[0] for leaf in jax.tree.leaves(params[site])} for site in sites}
  assert stacked == {site: {110} for site in stacked}
  assert all(leaf.ndim == 4 for leaf in jax.tree.leaves(params["02_transition_layer"]) if leaf.ndim > 1)
  # The program XLA compiles has the same size at depth 1001 as at 164: only loop bounds and
  # stacked shapes differ.
  deep = _train_step_program(model, x)
  shallow = _train_step_program(models.create_model("preact_resnet", 164), x)
  assert len(deep.splitlines()) == len(shallow.splitlines())


# ----------------------------------------------------------------------------- scan vs unrolled


@pytest.mark.slow
def test_scanned_and_unrolled_builds_agree():
  """Same parameters -> same logits, updated statistics, parameter gradients, and probe
  gradients and statistics (one train-mode forward and backward pass per build), with and
  without rematerialisation in the scan (under each policy)."""
  x, y = _batch(size=4, image=8)
  # Three scanned stages of 2 blocks each, between top-level stem and transition sites.
  builds = {scan: models.create_model("procresnet", 22, width_multiplier=0.25, scan=scan) for scan in (True, False)}
  variables = _random_variables(builds[True], x)
  per_block = {collection: _unstacked(tree) for collection, tree in variables.items()}
  unrolled_shapes = _shapes(builds[False], x)
  assert jax.tree.structure(per_block) == jax.tree.structure(
    {collection: unrolled_shapes[collection] for collection in per_block}
  )
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), unrolled_shapes["perturbations"])
  assert jax.tree.structure(zeros) == jax.tree.structure(_shapes(builds[True], x)["perturbations"])

  def step(model, variables, *collections):
    def loss(params, perturbations):
      logits, state = model.apply(
        {**variables, "params": params, "perturbations": perturbations},
        x,
        train=True,
        mutable=["batch_stats", *collections],
      )
      return _cross_entropy(logits, y), (logits, state)

    return jax.grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], zeros)

  close = functools.partial(chex.assert_trees_all_close, rtol=2e-5, atol=2e-6, strict=True)

  (grads, probe_grads), (logits, state) = jax.jit(lambda v: step(builds[False], v, "intermediates"))(per_block)
  (scan_grads, scan_probe_grads), (scan_logits, scan_state) = jax.jit(lambda v: step(builds[True], v, "intermediates"))(
    variables
  )
  close(scan_logits, logits)
  close(_unstacked(scan_grads), grads)
  close(_unstacked(scan_state["batch_stats"]), state["batch_stats"])
  close(scan_probe_grads, probe_grads)  # same layout: stacked over each stage's blocks
  close(scan_state["intermediates"], state["intermediates"])
  # Rematerialised blocks: the same logits, gradients and statistics (probe statistics left out).
  for policy in resnet.REMAT_POLICIES:
    model = builds[True].clone(remat=True, remat_policy=policy)
    (remat_grads, _), (remat_logits, remat_state) = jax.jit(functools.partial(step, model))(variables)
    close(remat_logits, logits)
    close(_unstacked(remat_grads), grads)
    close(_unstacked(remat_state["batch_stats"]), state["batch_stats"])


def test_remat_policies_trade_memory_for_recomputation():
  """What one gradient keeps for its backward pass (the residuals of ``jax.vjp``, traced, not
  run): keeping the convolutions' outputs (``'dots_saveable'``) keeps less than no remat and more
  than keeping only the blocks' inputs (``'nothing_saveable'``), so the policy reaches the
  scanned blocks."""
  x, y = _batch(size=16, image=8)
  model = models.create_model("preact_resnet", 20, width_multiplier=0.25)
  variables = _shapes(model, x[:1])

  def saved_bytes(model):
    def residuals(variables):
      def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return _cross_entropy(logits, y)

      return jax.vjp(loss, variables["params"])[1]

    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(jax.eval_shape(residuals, variables)))

  kept = {policy: saved_bytes(model.clone(remat=True, remat_policy=policy)) for policy in resnet.REMAT_POLICIES}
  assert kept["nothing_saveable"] < kept["dots_saveable"] < saved_bytes(model)


@pytest.mark.slow  # the scan_unroll option only; the scan itself: test_depth_is_a_scan_length and the slow scan test
def test_partially_unrolled_scan_agrees_with_the_full_scan():
  """``scan_unroll=2`` (with a remainder: 3 blocks per stage) changes the loop, not the network:
  same parameter shapes, logits, updated statistics and gradients as ``scan_unroll=1``."""
  x, y = _batch(size=4, image=8)
  rolled, unrolled = (models.create_model("resnet", 20, width_multiplier=0.25, scan_unroll=k) for k in (1, 2))
  variables = _random_variables(rolled, x)
  assert jax.tree.structure(_shapes(unrolled, x)) == jax.tree.structure(_shapes(rolled, x))

  def step(model):
    def loss(params):
      logits, state = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return _cross_entropy(logits, y), (logits, state["batch_stats"])

    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

  chex.assert_trees_all_close(step(unrolled), step(rolled), rtol=2e-5, atol=2e-6, strict=True)
  with pytest.raises(ValueError, match="scan_unroll = 0"):
    models.create_model("resnet", 20, scan_unroll=0)


# ----------------------------------------------------------------------------- batch norm modes


def test_eval_uses_running_statistics_and_train_updates_them():
  x, _ = _batch(size=6, image=8, seed=1)
  model = models.create_model("resnet", 14, width_multiplier=0.25)  # BN in stem, stages, transitions
  variables = _random_variables(model, x)

  @jax.jit
  def run(variables):
    eval_logits, eval_state = model.apply(variables, x, train=False, mutable=["batch_stats"])
    train_logits, train_state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    calibrated = resnet.calibrate_batch_stats(model, variables, x)
    return dict(
      eval_logits=eval_logits,
      eval_stats=eval_state["batch_stats"],
      eval_head=model.apply(variables, x[:2], train=False),
      train_logits=train_logits,
      train_stats=train_state["batch_stats"],
      calibrated_stats=calibrated["batch_stats"],
      calibrated_eval=model.apply(calibrated, x, train=False),
    )

  out = run(variables)
  old = variables["batch_stats"]
  # Eval: running statistics, untouched, examples independent of the rest of the batch.
  chex.assert_trees_all_equal(out["eval_stats"], old, strict=True)
  np.testing.assert_allclose(out["eval_head"], out["eval_logits"][:2], rtol=1e-5, atol=1e-5)
  # Train: every running average moves by momentum 0.9 towards this batch's statistics (those
  # the momentum-0 pass stores).
  moved = jax.tree.map(lambda old, batch: 0.9 * old + 0.1 * batch, old, out["calibrated_stats"])
  chex.assert_trees_all_close(out["train_stats"], moved, rtol=1e-5, atol=1e-6, strict=True)
  chex.assert_trees_all_equal_comparator(
    lambda new, old: bool(np.all(np.abs(new - old) > 0)),
    lambda new, old: f"{np.sum(new == old)} entries did not move",
    out["train_stats"],
    old,
  )
  # Train mode normalises with the batch statistics: eval mode computes the same only with
  # this batch's statistics as its running averages.
  np.testing.assert_allclose(out["calibrated_eval"], out["train_logits"], rtol=1e-4, atol=1e-4)
  assert not np.allclose(out["eval_logits"], out["train_logits"], rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- signal at init


def _block_log_ratios(model, variables, x, y):
  """log r_l of every 'block' layer (mean over examples) and the δ median, with BatchNorm
  statistics calibrated on the batch (eval mode then computes train mode's map)."""

  @jax.jit
  def report(variables):
    variables = resnet.calibrate_batch_stats(model, variables, x)
    return signal.measure(model, variables, x, y, _cross_entropy, train=False)

  report = report(variables)
  blocks = np.array([kind == "block" for kind in report.kinds])
  log_ratios = np.mean(np.log(np.asarray(report.ratio, np.float64)[blocks]), axis=1)
  return log_ratios, signal.delta_statistics(report)["delta_p50"]


@pytest.mark.slow  # the seed's contrast on image networks; test_signal.py checks the ratios themselves
def test_plain_backward_gain_compounds_with_depth_while_residual_ratios_stay_near_one():
  """Σ_{l<k} log r_l, the log of the backward gain across the first k blocks, against k, for
  ResNet-74 and its plain twin at the same initial parameters (skips hold none)."""
  x, y = _batch(size=16, image=8, seed=2)
  residual_model = models.create_model("resnet", 74, width_multiplier=0.5)
  plain_model = models.create_model("plain", 74, width_multiplier=0.5)
  variables = jax.jit(lambda key: residual_model.init(key, x, train=False))(jax.random.key(0, impl="unsafe_rbg"))
  variables = {collection: variables[collection] for collection in ("params", "batch_stats")}
  assert jax.tree.structure(variables) == jax.tree.structure(
    {collection: _shapes(plain_model, x)[collection] for collection in variables}
  )
  plain, plain_delta = _block_log_ratios(plain_model, variables, x, y)
  residual, residual_delta = _block_log_ratios(residual_model, variables, x, y)
  assert len(plain) == len(residual) == 34  # 12 + 11 + 11 identical blocks, 2 transitions apart
  # Plain: every block multiplies the gradient norm by a factor far from 1, so the gain across
  # k blocks is exponential in k: its log grows by at least 0.2 per block, at every k ≥ 6.
  gain = np.cumsum(plain)
  assert np.all(gain[5:] > 0.2 * np.arange(6, 35)) and plain_delta > 0.25
  # Residual: r_l ≈ sqrt(1 + 1/l) with BatchNorm'd branches, so ratios concentrate at 1 as l
  # grows; the whole network's gain is a fraction of its plain twin's.
  assert residual_delta < 0.15
  assert abs(np.sum(residual)) < 0.5 * abs(np.sum(plain))


def _first_identity_block(model, variables, x):
  """The first identity block's input x_k (eval mode) and the block as a function of its own
  input, (x', F(x)) = block(x), by intercepting the family's block calls."""
  found = []

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    outputs = next_fun(*args, **kwargs)
    if (
      context.method_name == "__call__"
      and isinstance(module, (resnet.BasicBlock, resnet.Bottleneck))
      and not found
      and outputs[0].shape == args[0].shape
    ):  # stride 1, same width: an identity block
      found.append((module.clone(parent=None), module.variables, args[0]))
    return outputs

  with nn.intercept_methods(intercept):
    model.apply(variables, x, train=False)
  block, block_variables, block_input = found[0]
  return block_input, lambda v: block.apply(block_variables, v)


@pytest.mark.parametrize(
  "name, is_theorems_block",
  [pytest.param("preact_resnet", True, marks=pytest.mark.slow), ("resnet", False)],  # the MLPs' oracle: test_signal.py
)
def test_a_measured_block_ratio_is_the_dense_jacobian_i_plus_df_for_the_preact_block_only(name, is_theorems_block):
  """The first identity block's measured ratio r = ‖∂E/∂x_k‖ / ‖∂E/∂x_{k+1}‖ against
  ‖(I + DF)ᵀ g‖ / ‖g‖, with g = ∂E/∂x_{k+1} (measured) and I + DF the block's dense Jacobian
  formed from its residual branch F alone, per example, in float64. The pre-activation block
  returns x + F(x): equal to 1e-5. ResNet v1's returns ρ(x + F(x)), whose Jacobian D·(I + DF)
  includes the ReLU: not equal, but equal once D is put back."""
  model = models.create_model(name, SMALL[name], width_multiplier=0.25, scan=False)
  x, y = _batch(size=4, image=8, seed=3)
  variables = _random_variables(model, x, seed=3)
  stacked, report = jax.jit(
    lambda v: (
      [g for _, g in signal.stream_gradients(model, v, x, y, _cross_entropy, train=False)[0]],
      signal.measure(model, v, x, y, _cross_entropy, train=False),
    )
  )(variables)
  gradients = [g for site in stacked for g in site]  # ∂E/∂x_k at every site k, in stream order
  block_input, block = _first_identity_block(model, variables, x)
  k = report.kinds.index("block")  # r_k: the layer from site k (its input) to site k + 1
  g_out = np.asarray(gradients[k + 1], np.float64).reshape(len(x), -1)
  branch_jacobian = jax.jit(jax.jacfwd(lambda v: block(v.reshape((1,) + block_input.shape[1:]))[1].reshape(-1)))
  for b in range(len(x)):
    df = np.asarray(branch_jacobian(block_input[b].reshape(-1)), np.float64)  # DF, (d, d)
    jacobian = np.eye(len(df)) + df
    theorem = np.linalg.norm(jacobian.T @ g_out[b]) / np.linalg.norm(g_out[b])
    measured = float(report.ratio[k, b])
    if is_theorems_block:
      np.testing.assert_allclose(measured, theorem, rtol=1e-5)
    else:
      assert abs(measured / theorem - 1) > 1e-3
      relu = (np.asarray(block(block_input[b][None])[0], np.float64).reshape(-1) > 0).astype(np.float64)
      with_relu = np.linalg.norm(jacobian.T @ (relu * g_out[b])) / np.linalg.norm(g_out[b])
      np.testing.assert_allclose(measured, with_relu, rtol=1e-5)


# ----------------------------------------------------------------------------- ProcResNet projection


def _strided_pointwise_operator(kernel, spatial_shape, stride):
  """The 1×1 stride-s convolution y[i, j] = x[s·i, s·j] K as a dense float64 matrix (NumPy)."""
  kernel = np.asarray(kernel, np.float64)[0, 0]  # (c_in, c_out)
  (h, w), (c_in, c_out) = spatial_shape, kernel.shape
  rows, cols = -(-h // stride), -(-w // stride)
  operator = np.zeros((rows, cols, c_out, h, w, c_in))
  for i in range(rows):
    for j in range(cols):
      operator[i, j, :, stride * i, stride * j, :] = kernel.T
  return operator.reshape(rows * cols * c_out, h * w * c_in)


def test_procresnet_projection_targets_label_stem_and_transitions():
  targets = resnet.procresnet_projection_targets((32, 32))
  assert targets == {
    ("stem", "kernel"): models.ConvTarget((32, 32), stride=1),
    ("03_transition_layer", "conv", "kernel"): models.ConvTarget((32, 32), stride=2),
    ("05_transition_layer", "conv", "kernel"): models.ConvTarget((16, 16), stride=2),
  }
  params = _shapes(models.create_model("procresnet", 1003), jnp.zeros((1, 32, 32, 3)))["params"]
  flat = traverse_util.flatten_dict(params)
  assert {path: flat[path].shape for path in targets} == {
    ("stem", "kernel"): (3, 3, 3, 64),
    ("03_transition_layer", "conv", "kernel"): (1, 1, 64, 128),
    ("05_transition_layer", "conv", "kernel"): (1, 1, 128, 256),
  }
  with pytest.raises(ValueError, match=r"image_shape = \(32,\): expected a pair \(H, W\)"):
    resnet.procresnet_projection_targets((32,))
  chainer = resnet.procresnet_projection_targets((32, 32), stem_convention="chainer")
  assert chainer[resnet.PROCRESNET_STEM] == models.ConvTarget((32, 32), convention="chainer")
  assert {path: target for path, target in chainer.items() if path != resnet.PROCRESNET_STEM} == {
    path: target for path, target in targets.items() if path != resnet.PROCRESNET_STEM
  }
  with pytest.raises(ValueError, match=r"^convention = 'torch': expected one of"):
    resnet.procresnet_projection_targets((32, 32), stem_convention="torch")


def test_projected_procresnet_transitions_have_the_target_operator_singular_values():
  x, _ = _batch(size=2, image=8)
  model = models.create_model("procresnet", 13, width_multiplier=0.5)  # transitions 32→64→128
  params = _random_variables(model, x)["params"]
  targets = resnet.procresnet_projection_targets((8, 8))
  tx = optax.chain(optax.sgd(0.1), procrustes.procrustes(targets, every=1))

  @jax.jit
  def step(params):  # one SGD step with unit gradients, then the projection
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    return optax.apply_updates(params, updates)

  before = traverse_util.flatten_dict(params)
  after = traverse_util.flatten_dict(step(params))
  for path in resnet.PROCRESNET_TRANSITIONS:
    c_in, c_out = before[path].shape[2:]
    rank = 4 * min(c_in, c_out)  # 2×2 output positions on a 4×4 input, each a c_out×c_in map
    original, projected = (
      np.linalg.svd(_strided_pointwise_operator(k[path], (4, 4), 2), compute_uv=False) for k in (before, after)
    )
    assert np.ptp(original[:rank]) > 0.5  # the projection had work to do
    np.testing.assert_allclose(projected[:rank], math.sqrt(c_out / c_in), rtol=1e-4)
    np.testing.assert_allclose(projected[rank:], 0, atol=1e-6)
  # The oracle is the operator the network applies: its transitions' convolution on a 4×4 input.
  layer = resnet.conv(128, 1, 2)
  kernel = after[resnet.PROCRESNET_TRANSITIONS[1]]
  inputs = np.random.default_rng(3).normal(size=(1, 4, 4, 64))
  outputs = layer.apply({"params": {"kernel": kernel}}, jnp.asarray(inputs, jnp.float32))
  np.testing.assert_allclose(
    np.ravel(outputs), _strided_pointwise_operator(kernel, (4, 4), 2) @ np.ravel(inputs), rtol=1e-4, atol=1e-5
  )
  for path in set(before) - set(targets):  # the rest took the plain SGD step
    np.testing.assert_allclose(after[path], before[path] - 0.1, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
  "name, depth, options, match",
  [
    (
      "preact_resnet",
      100,
      {},
      "depth = 100: expected a depth 9n+2 with n >= 1 for preact_resnet, e.g. 164, 272, 632, 1001",
    ),
    ("resnet", 21, {}, "depth = 21: expected a depth 6n+2 with n >= 1 for resnet, e.g. 20, 32, 44, 56, 110, 1202"),
    ("plain", 2, {}, "depth = 2: expected a depth 6n+2"),
    (
      "procresnet",
      164,
      {},
      "depth = 164: expected a depth 9n+4 with n >= 1 for procresnet, e.g. 166, 274, 634, 1003",
    ),
    ("plain_preact", 164.0, {}, "depth = 164.0: expected a depth 9n+2"),
    ("resnet50", 50, {}, "name = 'resnet50': expected one of"),
    ("resnet", 20, {"width_multiplier": 0}, "width_multiplier = 0: expected a positive number"),
    ("procresnet", 166, {"width_multiplier": -2}, "width_multiplier = -2"),
    ("resnet", 20, {"num_classes": 0}, "num_classes = 0: expected a positive integer"),
    ("resnet", 20, {"dtype": "float16"}, "dtype = 'float16': expected one of"),
    ("resnet", 20, {"scan": "yes"}, "scan = 'yes': expected True or False"),
    ("resnet", 20, {"bn_momentum": 1.0}, "bn_momentum = 1.0: expected a number in [0, 1)"),
    ("resnet", 20, {"width": 16}, "width = 16: expected an option of resnet: one of"),
    ("preact_resnet", 164, {"preact_layout": "he2015"}, "preact_layout = 'he2015': expected one of"),
    ("procresnet", 166, {"init": "kaiming"}, "init = 'kaiming': expected one of"),
    (
      "resnet",
      20,
      {"preact_layout": "chainer"},
      "preact_layout = 'chainer': expected 'he2016' for resnet: a post-activation family",
    ),
    ("plain", 20, {"init": "pytorch"}, "init = 'pytorch': expected 'he_fan_out' for plain: a post-activation family"),
  ],
)
def test_bad_arguments_name_what_is_allowed(name, depth, options, match):
  with pytest.raises(ValueError, match="^" + re.escape(match)):
    models.create_model(name, depth, **options)
