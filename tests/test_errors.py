"""Errors as data: library checks raise ArgumentError(name, value, allowed) and the door reads the
attributes, never the message."""

import pickle

import numpy as np
import pytest

from configs import default
from resnorm import config_validation, data, intervals, models, signal, theory, validation


def test_the_door_reads_the_fields_of_a_library_error_not_its_message():
  # A name with spaces and commas and a value whose repr reads like a message: a pattern over the
  # text ("name = value: expected allowed") would split this one at the wrong place.
  value = "x = 1: expected 2"
  with pytest.raises(config_validation.ConfigError) as error:
    with config_validation.fields("config.model."):
      raise validation.invalid("width, hidden", value, "widths >= 3: expected more")
  assert error.value.field == "config.model.width, hidden"
  assert error.value.value is value and error.value.allowed == "widths >= 3: expected more"
  assert str(error.value) == "config.model.width, hidden = 'x = 1: expected 2': expected widths >= 3: expected more"


def test_a_renamed_argument_names_the_field_that_holds_it():
  with pytest.raises(config_validation.ConfigError) as error:
    with config_validation.fields("config.model.", rename={"depth": "depths"}):
      validation.positive_int("depth", 0)
  assert (error.value.field, error.value.value) == ("config.depths", 0)


def test_an_error_without_an_argument_names_the_prefix_and_keeps_the_message():
  with pytest.raises(config_validation.ConfigError) as error:
    with config_validation.fields("config.data."):
      raise ValueError("the teacher's flow diverged")
  assert error.value.field == "config.data"
  assert str(error.value).endswith("the teacher's flow diverged")


def test_a_config_error_keeps_the_value_itself():
  config = default.get_config()
  config.optimizer.momentum = 1.5
  dataset = config_validation.load_data(config)
  with pytest.raises(config_validation.ConfigError) as error:
    config_validation.check_run(config, dataset)
  assert (error.value.field, error.value.value, error.value.allowed) == (
    "config.optimizer.momentum",
    1.5,
    "a number in [0, 1)",
  )


@pytest.mark.parametrize("cls", [validation.ArgumentError, config_validation.ConfigError])
def test_errors_cross_process_boundaries_with_their_fields(cls):
  error = pickle.loads(pickle.dumps(cls("config.seeds", (1, 1), "distinct seeds")))
  assert type(error) is cls and (error.name, error.value, error.allowed) == ("config.seeds", (1, 1), "distinct seeds")
  assert str(error) == "config.seeds = (1, 1): expected distinct seeds"


BAD_LIBRARY_CALLS = [
  # (call, the argument its ValueError names)
  (lambda: theory.read_bound([2, 8], [[0.1, 0.2], [0.1, 0.2]], level=1.5), "level"),
  (lambda: theory.read_bound([2, 8], [[0.1, 0.2], [0.1, 0.2]], level=float("nan")), "level"),
  (lambda: theory.read_bound([0, 8], [[0.1], [0.2]]), "depths"),
  (lambda: theory.read_bound([0.5, 8], [[0.1], [0.2]]), "depths"),
  (lambda: theory.read_bound([2, 8], [[0.1], [-0.2]]), "per_seed"),
  (lambda: theory.read_bound([2, 8, 32], [[0.1], [0.2]]), "per_seed"),
  (lambda: theory.fit_delta([0, 8, 32], [0.3, 0.2, 0.1]), "depths"),
  (lambda: theory.fit_delta([2, 8], [0.3, 0.2, 0.1]), "deltas"),
  (lambda: theory.c_min([2, 8], [0.3]), "deltas"),
  (lambda: theory.c_min([2, 8], [0.3, -0.1]), "deltas"),
  (lambda: intervals.mean([0.1, 0.2], [0, 1], level=0.0), "level"),
  (lambda: signal.direction_free([[1.1]], [[1.2]]), "sigma_min"),
  (lambda: signal.direction_free(np.ones((4, 1)), np.ones((1, 5))), "sigma_min"),
  (lambda: models.resolve_branch_scale("1/L", -4), "depth"),
  (lambda: data.batch_indices(100, 0, 0, seed=0), "batch_size"),
  (lambda: data.batch_indices(100, 10, -1, seed=0), "step"),
]


@pytest.mark.parametrize("call, argument", BAD_LIBRARY_CALLS)
def test_a_bad_library_call_is_a_value_error_naming_its_argument(call, argument):
  """Issue 36's cases: each returned nan, a wrong note, a negative δ or a bare IndexError/LinAlgError before."""
  with pytest.raises(validation.ArgumentError) as error:
    call()
  assert error.value.name == argument and isinstance(error.value, ValueError)


def test_missing_deltas_are_still_read_as_missing():
  """None and NaN (a diverged seed) stay allowed: they are left out, not refused."""
  reading = theory.read_bound([2, 8, 32], [[0.3, None], [0.2, float("nan")], [0.1, 0.12]])
  assert reading.num_points == 3 and reading.seeds == [1, 1, 2]


def test_a_sweep_whose_group_would_not_fit_in_memory_is_refused_at_the_door(monkeypatch):
  """The estimate's state is the bytes of the state a run creates (parameters and Adam's two
  moments, counted on the real arrays), its gradients those of the parameters; a group of two
  seeds that needs one byte more than is free is refused naming ``config.depths``, and passes
  with exactly what it needs."""
  import jax

  from helpers import tiny_sweep
  from resnorm import loop, sweep_plan, train

  config = tiny_sweep(depths=(4,), settings=("mlp_residual",), seeds=(0, 1))
  run = sweep_plan.plan(config)[0]
  dataset = config_validation.load_data(run.config)
  model = models.from_config(run.config.model, dataset.num_outputs)
  tx = loop.optimizer(run.config, dataset, len(dataset.x_train) // config.batch_size)
  state = train.create_train_state(model, jax.random.key(0), dataset.x_train[:1], tx)
  size = lambda tree: sum(leaf.nbytes for leaf in jax.tree.leaves(tree))  # noqa: E731
  batch = (dataset.x_train[: config.batch_size], dataset.y_train[: config.batch_size])
  estimate = train.memory_estimate(model, tx, batch, train.loss_function(dataset.task))
  assert estimate["state"] == size(state) and estimate["gradients"] == size(state.params)
  assert size(state.opt_state) >= 2 * size(state.params)  # Adam's two moments
  assert estimate["activations"] > batch[0].nbytes * run.config.model.depth  # each block keeps at least its input
  needed = 2 * sum(estimate.values()) + dataset.x_train.nbytes + dataset.y_train.nbytes
  monkeypatch.setattr(config_validation, "free_memory", lambda: needed - 1)
  with pytest.raises(config_validation.ConfigError) as refused:
    config_validation.check_sweep(config)
  assert refused.value.field == "config.depths" and "a network that fits in memory" in str(refused.value)
  assert "(1 program(s) × (2 run(s) × (state" in str(refused.value)
  monkeypatch.setattr(config_validation, "free_memory", lambda: needed)
  config_validation.check_sweep(config)
