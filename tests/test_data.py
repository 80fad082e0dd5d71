"""The embedded datasets and the batch order."""

import numpy as np
import pytest

from resnorm import data
from resnorm.validation import ConfigError


def test_teacher_map_is_bi_lipschitz_with_the_stated_constants():
  strength, num_maps = 0.5, 4
  h = data.teacher_map(seed=3, dim=8, num_maps=num_maps, strength=strength, hidden=32)
  rng = np.random.default_rng(0)
  u, v = rng.standard_normal((2, 2000, 8))
  v = u + rng.choice([1e-3, 1.0], size=(2000, 1)) * (v - u)  # near and far pairs
  stretch = np.linalg.norm(h(u) - h(v), axis=1) / np.linalg.norm(u - v, axis=1)
  assert stretch.min() >= (1 - strength) ** num_maps and stretch.max() <= (1 + strength) ** num_maps
  assert stretch.max() / stretch.min() > 1.5  # and it is not an isometry


def test_teacher_is_deterministic_and_split():
  a, b = data.teacher(seed=1, train_size=100, test_size=20), data.teacher(seed=1, train_size=100, test_size=20)
  np.testing.assert_array_equal(a.y_test, b.y_test)
  assert a.x_train.shape == (100, 16) and a.y_test.shape == (20, 16) and a.task == "regression"
  assert not np.allclose(data.teacher(seed=2, train_size=100, test_size=20).y_test, a.y_test)
  with pytest.raises(ConfigError, match="data.strength"):
    data.teacher(strength=1.0)


def test_digits_split():
  digits = data.digits(seed=0, test_size=297)
  assert digits.x_train.shape == (1500, 64) and digits.num_outputs == 10
  assert 0 <= digits.x_train.min() and digits.x_train.max() <= 1
  assert set(np.unique(digits.y_test)) == set(range(10))


def test_batches_cover_each_epoch_once_and_depend_only_on_step():
  steps = [data.batch_indices(100, 20, step, seed=7) for step in range(10)]
  for epoch in (steps[:5], steps[5:]):
    assert sorted(np.concatenate(epoch)) == list(range(100))
  assert not np.array_equal(steps[0], steps[5])
  np.testing.assert_array_equal(data.batch_indices(100, 20, 7, seed=7), steps[7])
  with pytest.raises(ConfigError, match="batch_size"):
    data.batch_indices(10, 20, 0, seed=0)
