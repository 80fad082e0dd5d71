"""The model registry and the MLP families."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnorm import models
from resnorm.models import mlp, resnet


@pytest.mark.parametrize("name", ["mlp_residual", "mlp_plain", "linear_residual"])
def test_depth_is_a_scanned_axis(name):
  model = models.create_model(name, 7, num_classes=4, width=6)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((2, 5)))
  kernels = [leaf.shape for leaf in jax.tree.leaves(variables["params"]["02_block"])]
  assert all(shape[0] == 7 for shape in kernels)
  assert model.apply(model.init(jax.random.key(0), jnp.ones((2, 5))), jnp.ones((2, 5))).shape == (2, 4)


def test_branch_scales():
  assert models.resolve_branch_scale("1/L", 8) == 1 / 8
  assert models.resolve_branch_scale("1/sqrt(L)", 16) == 0.25
  assert models.resolve_branch_scale(0.3, 5) == 0.3
  assert models.resolve_branch_scale("0.5", 5) == 0.5  # a config override of a str field arrives as text
  for bad in ("L", "-0.5", "nan", 0, True):
    with pytest.raises(
      ValueError, match=r"^branch_scale = .*: expected one of \['1', '1/L', '1/sqrt\(L\)'\] or a positive"
    ):
      models.resolve_branch_scale(bad, 4)


def test_residual_and_plain_share_parameters_but_not_the_skip():
  """Same parameters; with them, a residual block's output minus the plain block's is its input
  (the skip, scaled branch and all: here s = 0.5 read from the constants), and nothing else."""
  inputs = jax.random.normal(jax.random.key(1), (3, 5))
  residual = models.create_model("mlp_residual", 2, num_classes=2, branch_scale="1")
  plain = models.create_model("mlp_plain", 2, num_classes=2)
  variables = jax.jit(residual.init)(jax.random.key(2), inputs)
  assert jax.tree.structure(variables["params"]) == jax.tree.structure(
    jax.jit(plain.init)(jax.random.key(2), inputs)["params"]
  )
  x = jax.random.normal(jax.random.key(3), (3, 6))
  block = mlp.MLPBlock(hidden=4, branch_scale=0.5)
  block_variables = jax.jit(block.init)(jax.random.key(4), x)
  assert float(block_variables["constants"]["branch_scale"]) == 0.5
  with_skip = block.apply(block_variables, x)[0]
  branch = mlp.MLPBlock(hidden=4, residual=False).apply({"params": block_variables["params"]}, x)[0]
  np.testing.assert_allclose(with_skip, x + 0.5 * branch, rtol=1e-6, atol=1e-6)


def test_residual_and_plain_stacks_differ_only_in_their_constants():
  """The same variables (the same key: the same parameters to the bit) but for the constants: the
  plain stack's blocks hold the skip's weight k = 0 and s = 1 (a branch scale it is given is
  ignored, as before k existed), the residual's k = 1 and their s. Either module with the plain
  constants computes the plain stack to the bit (so both run one program and the family declares
  it), and that is F applied block after block (0·x + 1·F(x) = F(x); by hand, to float rounding)."""
  inputs = jax.random.normal(jax.random.key(1), (3, 5))
  residual = models.create_model("mlp_residual", 3, num_classes=2, branch_scale="1/L")
  plain = mlp.MLPStack(depth=3, num_outputs=2, residual=False, branch_scale=0.25)
  with_skip, without = jax.jit(residual.init)(jax.random.key(2), inputs), jax.jit(plain.init)(jax.random.key(2), inputs)
  assert jax.tree.structure(with_skip) == jax.tree.structure(without)
  chex.assert_trees_all_equal(with_skip["params"], without["params"], strict=True)
  constants = {
    name: {key: [float(v) for v in values] for key, values in variables["constants"]["02_block"].items()}
    for name, variables in (("residual", with_skip), ("plain", without))
  }
  assert constants["plain"] == {"branch_scale": [1.0] * 3, "skip": [0.0] * 3}
  assert constants["residual"] == {"branch_scale": [np.float32(1 / 3)] * 3, "skip": [1.0] * 3}
  out = plain.apply(without, inputs)
  np.testing.assert_array_equal(residual.apply(without, inputs), out)
  p = without["params"]
  x = inputs @ p["stem"]["kernel"] + p["stem"]["bias"]
  for layer in range(3):
    block = jax.tree.map(lambda leaf, layer=layer: leaf[layer], p["02_block"])
    x = jax.nn.relu(x @ block["Dense_0"]["kernel"] + block["Dense_0"]["bias"])
    x = x @ block["Dense_1"]["kernel"] + block["Dense_1"]["bias"]
  np.testing.assert_allclose(out, x @ p["head"]["kernel"] + p["head"]["bias"], rtol=1e-5, atol=1e-6)
  assert models.family("mlp_plain").program == models.family("mlp_residual").program == "mlp"


def test_families_declare_their_measurement_hooks():
  """MLP families extract their scanned blocks; image families (BatchNorm) calibrate statistics;
  the Transformer (blocks of sequences) has neither."""
  for name, family in models.FAMILIES.items():
    if not family.build.__module__.startswith("resnorm."):
      continue  # a family another test registered (examples/own_model.py, broken ones)
    image = name in resnet.LAYOUTS
    assert family.block_stack is (None if image or name == "transformer" else mlp.block_stack), name
    assert family.calibrate_batch_stats is (resnet.calibrate_batch_stats if image else None), name
  targets = models.family("procresnet").projection_targets
  assert targets((1, 32, 32, 3))[resnet.PROCRESNET_STEM].convention == "correct"
  assert targets((1, 32, 32, 3), stem_convention="chainer")[resnet.PROCRESNET_STEM].convention == "chainer"


@pytest.mark.parametrize(
  "name, depth, options, match",
  [
    ("mlp_reisdual", 4, {}, "name = 'mlp_reisdual': expected one of"),
    ("mlp_residual", 0, {}, "depth = 0: expected a positive integer"),
    ("mlp_residual", 4, {"width": 0}, "width = 0"),
    ("mlp_residual", 4, {"hidden": 2.5}, "hidden = 2.5"),
    ("mlp_plain", 4, {"branch_scale": "1/L"}, "branch_scale = '1/L': expected an option of mlp_plain"),
    ("mlp_plain", 4, {"num_classes": 0}, "num_classes = 0: expected a positive integer"),
  ],
)
def test_bad_model_arguments_name_what_is_allowed(name, depth, options, match):
  with pytest.raises(ValueError, match="^" + re.escape(match)):
    models.create_model(name, depth, **options)


def test_a_registered_family_is_built_and_validated_like_the_others(monkeypatch):
  monkeypatch.setattr(models, "FAMILIES", dict(models.FAMILIES))  # leave the real registry untouched
  wide_mlp = models.Family(
    models.FAMILIES["mlp_residual"].build, dict(models.FAMILIES["mlp_residual"].defaults, width=48)
  )
  models.register("wide_mlp", wide_mlp)
  variables = jax.eval_shape(models.create_model("wide_mlp", 3).init, jax.random.key(0), jnp.ones((1, 5)))
  assert variables["params"]["stem"]["kernel"].shape == (5, 48)
  with pytest.raises(ValueError, match=r"depth_multiplier = 2: expected an option of wide_mlp"):
    models.create_model("wide_mlp", 3, depth_multiplier=2)
  with pytest.raises(ValueError, match="name = 'mlp_plain': expected a name not yet registered"):
    models.register("mlp_plain", wide_mlp)
