"""Errors as data: library checks raise ArgumentError(name, value, allowed) and the door reads the
attributes, never the message."""

import pickle

import pytest

from configs import default
from resnorm import config_validation, validation


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
