"""The embedded datasets and the batch order."""

import numpy as np
import pytest
import scipy.integrate

from resnorm import data


def test_teacher_map_is_bi_lipschitz_with_the_stated_constants():
  """Grönwall: each flow stretches by at most e^{s·Lip(v_k)} and shrinks by at most its inverse."""
  strength, num_maps = 0.5, 4
  h = data.teacher_flow(seed=3, dim=8, num_maps=num_maps, strength=strength, hidden=32)
  np.testing.assert_allclose(h.lipschitz(), 1.0, rtol=1e-12)  # ‖U_k‖ = ‖V_k‖ = 1
  rng = np.random.default_rng(0)
  u, v = rng.standard_normal((2, 2000, 8))
  v = u + rng.choice([1e-3, 1.0], size=(2000, 1)) * (v - u)  # near and far pairs
  stretch = np.linalg.norm(h(u) - h(v), axis=1) / np.linalg.norm(u - v, axis=1)
  bound = np.exp(strength * num_maps)
  assert 1 / bound <= stretch.min() and stretch.max() <= bound
  assert stretch.max() / stretch.min() > 1.5  # and it is not an isometry


def test_teacher_flow_is_integrated_to_float64_accuracy():
  """RK4 at the default 32 substeps per field against an adaptive 8th-order integrator (scipy's
  DOP853 at tolerance 1e-12), an independent oracle that steps around the ReLU switches: equal to
  1e-6, the resolution of the float32 targets (RK4 loses orders where a ReLU switches inside a
  step; measured 2e-7 here)."""
  flow = data.teacher_flow(seed=0, dim=8, num_maps=2, strength=0.5, hidden=16)
  x = np.random.default_rng(1).standard_normal((5, 8))
  for row, y in zip(x, flow(x)):
    z = row
    for k in range(flow.num_maps):
      z = scipy.integrate.solve_ivp(
        lambda t, z, k=k: flow.field(k, z), (0, flow.strength), z, method="DOP853", rtol=1e-12, atol=1e-12
      ).y[:, -1]
    np.testing.assert_allclose(y, flow.rotation @ z, rtol=0, atol=1e-6)


def test_teacher_is_deterministic_and_split():
  a, b = data.teacher(seed=1, train_size=100, test_size=20), data.teacher(seed=1, train_size=100, test_size=20)
  np.testing.assert_array_equal(a.y_test, b.y_test)
  assert a.x_train.shape == (100, 16) and a.y_test.shape == (20, 16) and a.task == "regression"
  assert not np.allclose(data.teacher(seed=2, train_size=100, test_size=20).y_test, a.y_test)
  np.testing.assert_allclose(a.flow(a.x_test), a.y_test, rtol=1e-5, atol=1e-6)  # the dataset carries its map
  with pytest.raises(ValueError, match=r"strength = -1.0: expected a positive number"):
    data.teacher(strength=-1.0)


def test_random_mlp_is_the_stated_tanh_network_deterministic_and_split():
  """y = V tanh(Ux + b) recomputed in float64 from the documented draws; the targets' variance is
  near E tanh²(N(0, 5/4)) ≈ 0.45 (a closed form by quadrature), and seeds give other maps."""
  task = data.random_mlp(seed=3, dim=4, hidden=4096, train_size=2000, test_size=500)
  rng = np.random.default_rng([3, 2])
  u, b, v = rng.standard_normal((4096, 4)) / 2, 0.5 * rng.standard_normal(4096), rng.standard_normal((4, 4096)) / 64
  x = rng.standard_normal((2500, 4))
  np.testing.assert_allclose(task.y_test, (np.tanh(x @ u.T + b) @ v.T)[2000:], rtol=1e-5, atol=1e-6)
  z, w = np.polynomial.hermite_e.hermegauss(80)
  expected = float(np.sum(w * np.tanh(np.sqrt(1.25) * z) ** 2) / np.sqrt(2 * np.pi))
  assert task.y_train.var(axis=0).mean() == pytest.approx(expected, rel=0.15)
  assert task.task == "regression" and task.num_outputs == 4 and task.flow is None
  again, other = data.random_mlp(seed=3, dim=4, hidden=4096, train_size=2000, test_size=500), data.random_mlp(seed=4)
  np.testing.assert_array_equal(again.y_train, task.y_train)
  assert other.y_train.shape == (4096, 16) and not np.allclose(other.y_train[:5, :4], task.y_train[:5])
  with pytest.raises(ValueError, match="hidden = 0: expected a positive integer"):
    data.random_mlp(hidden=0)


def test_digits_split():
  digits = data.digits(seed=0, test_size=297)
  assert digits.x_train.shape == (1500, 64) and digits.num_outputs == 10
  for x in (digits.x_train, digits.x_test):  # scikit-learn's pixels 0, 1, …, 16 over 16: [0, 1] exactly
    np.testing.assert_array_equal(x * 16, np.round(x * 16))
    assert x.min() == 0 and x.max() == 1
  assert set(np.unique(digits.y_test)) == set(range(10))


def test_batches_cover_each_epoch_once_and_depend_only_on_step():
  steps = [data.batch_indices(100, 20, step, seed=7) for step in range(10)]
  for epoch in (steps[:5], steps[5:]):
    assert sorted(np.concatenate(epoch)) == list(range(100))
  assert not np.array_equal(steps[0], steps[5])
  np.testing.assert_array_equal(data.batch_indices(100, 20, 7, seed=7), steps[7])
  with pytest.raises(ValueError, match="batch_size = 20: expected at most the 10"):
    data.batch_indices(10, 20, 0, seed=0)


def test_tfds_images_read_through_data_source_with_mock_data():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    dataset = data.load({"name": "tfds", "dataset": "cifar10", "train_size": 10})
  assert dataset.x_train.shape == (10, 32, 32, 3) and dataset.x_test.shape == (12, 32, 32, 3)
  np.testing.assert_allclose(dataset.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(dataset.x_train.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
  assert dataset.y_train.dtype == np.int32 and dataset.task == "classification"


def test_augment_crops_and_flips_deterministically():
  images = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1) + 1
  out = data.augment(images, seed=0, step=3, padding=1)
  assert out.shape == images.shape
  np.testing.assert_array_equal(out, data.augment(images, seed=0, step=3, padding=1))
  for original, crop in zip(images, out):
    padded = np.pad(original, ((1, 1), (1, 1), (0, 0)))
    windows = [padded[i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
    assert any(np.array_equal(crop, w) or np.array_equal(crop, w[:, ::-1]) for w in windows)
  steps = [data.augment(images, seed=0, step=s, padding=1) for s in range(20)]
  assert len({a.tobytes() for a in steps}) > 1


def test_digits_images_are_cifar_shaped_standardised_and_deterministic():
  images = data.digits_images(seed=0, test_size=297)
  flat = data.digits(seed=0, test_size=297)
  assert images.x_train.shape == (1500, 32, 32, 3) and images.x_test.shape == (297, 32, 32, 3)
  assert images.x_train.dtype == np.float32 and images.task == "classification" and images.num_outputs == 10
  np.testing.assert_array_equal(images.y_test, flat.y_test)  # the same split and labels as the flat digits
  np.testing.assert_array_equal(images.x_train[..., 0], images.x_train[..., 2])  # three identical channels
  assert abs(images.x_train.mean()) < 1e-4 and images.x_train.std() == pytest.approx(1.0, abs=1e-4)
  # Nearest upsampling repeats each pixel in a 4×4 block: downsampling recovers the digit up to the standardisation.
  nearest = data.digits_images(seed=0, method="nearest", image_size=32)
  pixels = nearest.x_test[:, ::4, ::4, 0].reshape(297, 64)
  np.testing.assert_allclose(np.corrcoef(pixels.ravel(), flat.x_test.ravel())[0, 1], 1.0, atol=1e-6)
  again = data.digits_images(seed=0, test_size=297)
  np.testing.assert_array_equal(again.x_train, images.x_train)
  small = data.digits_images(seed=1, train_size=100, image_size=16)
  assert small.x_train.shape == (100, 16, 16, 3) and not np.array_equal(small.y_test, images.y_test)
  with pytest.raises(ValueError, match="train_size = 2000: expected at most the 1500"):
    data.digits_images(train_size=2000)


def test_python_source_windows_predict_the_next_character_of_the_standard_library():
  import sysconfig

  dataset = data.python_source(seed=3, modules=("functools",), tokens=16, train_size=64, test_size=8)
  assert dataset.x_train.shape == dataset.y_train.shape == (64, 16) and dataset.num_outputs == data.ASCII
  np.testing.assert_array_equal(dataset.x_train[:, 1:], dataset.y_train[:, :-1])  # targets: the next character
  text = open(f"{sysconfig.get_paths()['stdlib']}/functools.py", "rb").read()
  held_out = text[int(0.9 * len(text)) :].decode("ascii", "replace")
  for window in dataset.x_test:
    assert "".join(map(chr, window)) in held_out.replace("\ufffd", "?")  # the test windows: the last tenth
  again = data.python_source(seed=3, modules=("functools",), tokens=16, train_size=64, test_size=8)
  np.testing.assert_array_equal(again.x_train, dataset.x_train)
  with pytest.raises(ValueError, match="tokens"):
    data.python_source(modules=("functools",), tokens=10**7)


def test_copy_sequences_repeat_their_first_half():
  dataset = data.copy_sequences(seed=1, vocab_size=5, tokens=8, train_size=16, test_size=4)
  x = dataset.x_train
  np.testing.assert_array_equal(x[:, :4], x[:, 4:])
  np.testing.assert_array_equal(dataset.y_train, np.roll(x, -1, axis=1))
  assert x.max() < 5 and dataset.num_outputs == 5
  with pytest.raises(ValueError, match="tokens = 7: expected an even number"):
    data.copy_sequences(tokens=7)
