"""Runs left for hours: the reference CIFAR recipe, what a person watches, a fed device, nothing lost."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

import helpers
from configs import cifar
from resnorm import config_validation, loop, records, train, writers
from resnorm import data as data_lib
from test_train import tiny_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALLEST = {"procresnet": 13, "preact_resnet": 20, "resnet": 14}  # the fewest blocks with identity blocks


# ----------------------------------------------------------------------------- the recipe


def test_reference_schedule_divides_by_ten_at_epochs_150_and_225():
  config = cifar.get_config()
  steps_per_epoch = 50_000 // config.batch_size
  schedule = train.learning_rate_schedule(config, steps_per_epoch)
  rates = [float(schedule(epoch * steps_per_epoch)) for epoch in (0, 149, 150, 224, 225)]
  np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)
  assert float(schedule(150 * steps_per_epoch - 1)) == pytest.approx(0.1)  # the last step of epoch 149
  assert train.total_steps(config, steps_per_epoch) == 300 * 390


def test_warmup_rises_linearly_then_follows_the_schedule():
  config = cifar.get_config("resnet110")
  schedule = train.learning_rate_schedule(config, steps_per_epoch=10)  # one epoch of warm-up: 10 steps
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 4, 9, 10, 1500)], [0.01, 0.05, 0.1, 0.1, 0.01], rtol=1e-6)


def _hand_padded(image, pad, mode):
  """``image`` padded by ``pad`` pixels, index by index (zeros, or the mirror without the edge)."""
  height, width, channels = image.shape

  def source(i, size):
    if 0 <= i < size:
      return i
    return None if mode == "zero" else (-i if i < 0 else 2 * size - 2 - i)

  out = np.zeros((height + 2 * pad, width + 2 * pad, channels), image.dtype)
  for i in range(-pad, height + pad):
    for j in range(-pad, width + pad):
      si, sj = source(i, height), source(j, width)
      if si is not None and sj is not None:
        out[i + pad, j + pad] = image[si, sj]
  return out


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_augment_is_a_crop_of_the_hand_padded_image_or_its_mirror(mode):
  images = np.random.default_rng(0).standard_normal((16, 5, 5, 2)).astype(np.float32)
  offsets = set()
  for step in range(4):
    out = data_lib.augment(images, seed=1, step=step, padding=2, mode=mode)
    for image, crop in zip(images, out):
      padded = _hand_padded(image, 2, mode)
      matches = [
        (i, j, flip)
        for i in range(5)
        for j in range(5)
        for flip in (False, True)
        if np.array_equal(crop, padded[i : i + 5, j : j + 5][:, ::-1] if flip else padded[i : i + 5, j : j + 5])
      ]
      assert matches, f"step {step}: a crop that is no window of the {mode}-padded image"
      offsets.update((i, j, flip) for i, j, flip in matches)
  assert len(offsets) > 20 and any(i != 2 or j != 2 for i, j, _ in offsets)  # shifted crops, both flips
  np.testing.assert_array_equal(out, data_lib.augment(images, seed=1, step=3, padding=2, mode=mode))


def test_zero_and_reflect_padding_differ_only_at_the_border():
  """Both modes crop each image at the same offset with the same flip: each crop is the window of
  its padded image (zeros or np.pad's reflection) found by search, equal inside the image and
  different only where the window reaches into the padding."""
  images = np.random.default_rng(0).uniform(1, 2, (64, 4, 4, 1)).astype(np.float32)
  zero, reflect = (data_lib.augment(images, seed=0, step=0, padding=2, mode=m) for m in ("zero", "reflect"))
  interior = zero != 0  # the images' values are ≥ 1: a zero is padding
  np.testing.assert_array_equal(reflect[interior], zero[interior])
  assert (~interior).any() and (reflect[~interior] >= 1).all()  # the padding reflects the image's values
  for image, zero_crop, reflect_crop in zip(images, zero, reflect):
    padded = {mode: np.pad(image, ((2, 2), (2, 2), (0, 0)), mode=mode) for mode in ("constant", "reflect")}
    windows = [
      (top, left, flip)
      for top in range(5)
      for left in range(5)
      for flip in (False, True)
      if np.array_equal(_window(padded["constant"], top, left, flip), zero_crop)
    ]
    assert windows and any(np.array_equal(_window(padded["reflect"], *window), reflect_crop) for window in windows)


def _window(padded, top, left, flip):
  window = padded[top : top + 4, left : left + 4]
  return window[:, ::-1] if flip else window


def test_both_normalisations():
  rng = np.random.default_rng(0)
  x_train, x_test = rng.random((50, 4, 4, 3), np.float32), rng.random((10, 4, 4, 3), np.float32)
  train_split, _ = data_lib.standardize(x_train, x_test, "train_split")
  np.testing.assert_allclose(train_split.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(train_split.std(axis=(0, 1, 2)), 1, atol=1e-4)
  fixed, fixed_test = data_lib.standardize(x_train, x_test, "pytorch")
  mean, std = np.array([125.3, 123.0, 113.9]) / 255, np.array([63.0, 62.1, 66.7]) / 255
  np.testing.assert_allclose(fixed, (x_train - mean) / std, atol=1e-5)
  np.testing.assert_allclose(fixed_test, (x_test - mean) / std, atol=1e-5)
  with pytest.raises(ValueError, match="normalization = 'imagenet': expected one of"):
    data_lib.standardize(x_train, x_test, "imagenet")


@pytest.mark.parametrize("variant", sorted(cifar.VARIANTS))
def test_every_cifar_variant_validates_at_its_published_depth(variant, monkeypatch):
  """Every variant passes the door on a device with 80 GiB free (an H100); the 1,000-layer
  networks' activations at batch 128 (about 30 GiB, estimated from shapes) are refused with 16."""
  import tensorflow_datasets as tfds

  monkeypatch.setattr(config_validation, "free_memory", lambda: 80 * 2**30)

  config = cifar.get_config(variant)
  family, depth, project, _ = cifar.VARIANTS[variant]
  assert (config.model.name, config.model.depth, config.procrustes.enabled) == (family, depth, project)
  assert (config.num_epochs, config.batch_size, config.optimizer.weight_decay) == (300, 128, 1e-4)
  config.data.dataset = "cifar100"  # CIFAR-100 is one override
  with tfds.testing.mock_data(num_examples=256):
    dataset = config_validation.load_data(config)
  config_validation.check_run(config, dataset)
  assert dataset.num_outputs > 10
  if depth > 1000:
    monkeypatch.setattr(config_validation, "free_memory", lambda: 16 * 2**30)
    with pytest.raises(config_validation.ConfigError, match="a network that fits in memory"):
      config_validation.check_run(config, dataset)


def _mock_cifar_config(variant: str, workdir_note=None):
  config = cifar.get_config(variant)
  config.model.depth = SMALLEST[config.model.name]
  config.model.width_multiplier, config.model.scan = 0.25, False  # XLA:CPU is slow on scanned conv gradients
  config.num_epochs, config.batch_size, config.log_every, config.checkpoint_every = 2, 8, 1, 2
  config.eval_batch_size, config.signal.num_examples, config.signal.every = 8, 8, 2
  config.progress_bar = False
  return config


def _scalars(workdir):
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(str(workdir / writers.EVENTS_DIR))
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow  # the CIFAR recipe end to end (augmentation, epochs, evaluation); only here
@pytest.mark.parametrize("variant", ["procresnet166", "preact164", "resnet110"])
def test_two_epochs_of_a_cifar_variant_on_mock_data(tmp_path, caplog, variant):
  """The CIFAR recipe end to end on mock TFDS data (augmentation, epochs, evaluation every epoch, best accuracy,
  TensorBoard); only here."""
  import tensorflow_datasets as tfds

  config = _mock_cifar_config(variant)
  with tfds.testing.mock_data(num_examples=16), caplog.at_level("INFO", logger="absl"):
    dataset = config_validation.load_data(config)
    config_validation.check_run(config, dataset)
    record = loop.train_and_evaluate(config, str(tmp_path), dataset)  # 16 images of batch 8: 2 steps an epoch
  assert record.steps == 4 and not record.diverged
  assert "step 4/4 (epoch 2.00): loss" in caplog.text and "images/s, ETA" in caplog.text
  rows = records.json_lines((tmp_path / "metrics.jsonl").read_text())
  evaluations = [r for r in rows if "test_accuracy" in r]
  assert [r["step"] for r in evaluations] == [2, 4]  # once an epoch
  best = max(evaluations, key=lambda r: (r["test_accuracy"], -r["step"]))
  assert (record.best_test_accuracy, record.best_step) == (best["test_accuracy"], best["step"])
  assert record.test_accuracy == evaluations[-1]["test_accuracy"]
  assert [r["learning_rate"] for r in rows if "train_loss" in r] == pytest.approx(
    [0.1 * min(1, (s + 1) / 2) if variant == "resnet110" else 0.1 for s in range(4)]
  )  # the step's rate
  scalars = _scalars(tmp_path)
  assert [step for step, _ in scalars["test/accuracy"]] == [2, 4]
  assert scalars["test/accuracy"][-1][1] == pytest.approx(record.test_accuracy)
  assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
  for tag in ("train/learning_rate", "train/images_per_second", "test/loss", "delta/block/delta_max"):
    assert tag in scalars, sorted(scalars)
  summary = records.read_json(tmp_path / "summary.json")
  assert summary["best_test_accuracy"] == record.best_test_accuracy and summary["best_step"] == record.best_step


def test_synthetic_images_are_seeded_and_cifar_shaped():
  a, b = (
    data_lib.synthetic(seed=3, train_size=20, test_size=10),
    data_lib.synthetic(seed=3, train_size=20, test_size=10),
  )
  assert a.x_train.shape == (20, 32, 32, 3) and a.y_test.shape == (10,) and a.num_outputs == 10
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert not np.array_equal(a.x_train, data_lib.synthetic(seed=4, train_size=20, test_size=10).x_train)


# ----------------------------------------------------------------------------- a fed device


def test_prefetching_yields_exactly_the_synchronous_batches():
  """The loop's input pipeline (rows, augmentation, placement) gives the same batches built
  ahead on a thread as built one at a time."""
  dataset = data_lib.synthetic(train_size=200, test_size=8)
  _, sharding = loop.shardings(jax.devices())
  synchronous, prefetched = (
    list(data_lib.training_batches(dataset, 32, sharding, 5, range(3, 23), augment_padding="reflect", ahead=ahead))
    for ahead in (0, 3)
  )
  assert len(synchronous) == 20
  chex.assert_trees_all_equal(prefetched, synchronous, strict=True)
  assert not np.array_equal(synchronous[0][0], synchronous[1][0])  # the steps differ


def test_prefetching_raises_the_builders_error_and_stops_when_closed():
  def failing():
    yield 1
    raise ValueError("no batch 2")

  items = data_lib.prefetch(failing(), size=2)
  assert next(items) == 1
  with pytest.raises(ValueError, match="no batch 2"):
    next(items)
  built = []
  endless = data_lib.prefetch((built.append(i) or i for i in range(10**9)), size=2)
  assert next(endless) == 0
  endless.close()  # joins the thread: it stops within the queue's size of what was taken
  assert len(built) <= 4


# ----------------------------------------------------------------------------- nothing lost


def _entry_point(workdir, *overrides):
  return [
    sys.executable,
    "-m",
    "experiments.train",
    "--config=configs/default.py",
    f"--workdir={workdir}",
    *(f"--config.{k}={v}" for k, v in overrides),
  ]


LONG_DIGITS = (
  ("model.depth", 3),
  ("model.width", 16),
  ("model.hidden", 16),
  ("batch_size", 32),
  ("num_steps", 3000),
  ("log_every", 10),
  ("checkpoint_every", 0),
  ("signal.num_examples", 32),
  ("signal.every", 500),
  ("optimizer.schedule", "constant"),
)


@pytest.mark.slow
def test_sigterm_saves_the_step_and_the_same_command_ends_like_an_uninterrupted_run(tmp_path):
  """SIGTERM to the train entry point: a checkpoint of the current step, the resume message, and the same command
  ending as an uninterrupted run; only here for a single run."""
  env = helpers.cpu_env()
  run = lambda workdir: subprocess.Popen(
    _entry_point(workdir, *LONG_DIGITS), cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
  )
  straight, stopped = run(tmp_path / "straight"), run(tmp_path / "stopped")
  metrics = tmp_path / "stopped" / "metrics.jsonl"
  deadline = time.time() + 120
  while not (metrics.exists() and any(r["step"] >= 20 for r in records.json_lines(metrics.read_text()))):
    assert time.time() < deadline and stopped.poll() is None, "the run ended before it logged step 20"
    time.sleep(0.02)
  stopped.send_signal(signal.SIGTERM)
  _, err = stopped.communicate(timeout=120)
  assert stopped.returncode == 1, err[-3000:]
  assert "stopped by a signal at step" in err and "run the same command to resume" in err
  assert "step 10/3000 (epoch 0.22): loss" in err  # progress, one line per log without a terminal
  saved = [int(p) for p in os.listdir(tmp_path / "stopped" / "checkpoints") if p.isdigit()]
  assert len(saved) == 1 and 20 <= saved[0] < 3000
  resumed = subprocess.run(
    _entry_point(tmp_path / "stopped", *LONG_DIGITS), cwd=REPO, env=env, text=True, capture_output=True, check=False
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed {tmp_path / 'stopped'} from step {saved[0]}" in resumed.stderr
  straight.communicate(timeout=120)
  assert straight.returncode == 0
  a, b = (records.read_run(tmp_path / name) for name in ("straight", "stopped"))
  assert (b.test_loss, b.test_accuracy, b.best_test_accuracy, b.best_step) == (
    a.test_loss,
    a.test_accuracy,
    a.best_test_accuracy,
    a.best_step,
  )
  assert b.trained == a.trained and b.history == a.history
  assert (tmp_path / "stopped" / "signal.jsonl").read_text() == (tmp_path / "straight" / "signal.jsonl").read_text()
  assert (tmp_path / "straight" / "ratio_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the paper's figure
  # Every logged row, the first after the resume included (checkpoints.json keeps the losses since the last log).
  assert (tmp_path / "stopped" / "metrics.jsonl").read_text() == (tmp_path / "straight" / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_a_diverging_run_says_so_through_the_entry_point(tmp_path):
  """A diverging run through the train entry point: exit 1, the message, null (not NaN) losses; only here."""
  result = subprocess.run(
    _entry_point(
      tmp_path,
      ("model.depth", 64),
      ("model.branch_scale", "1"),
      ("optimizer.name", "sgd"),
      ("optimizer.learning_rate", 10.0),
      ("num_steps", 50),
      ("log_every", 5),
      ("checkpoint_every", 0),
    ),
    cwd=REPO,
    env=helpers.cpu_env(),
    text=True,
    capture_output=True,
    check=False,
  )
  assert result.returncode == 1
  assert "error: training diverged by step" in result.stderr
  printed = json.loads(result.stdout.splitlines()[0])
  assert printed["diverged"] is True and printed["train_loss"] is None  # null, not NaN
  assert records.read_json(tmp_path / "summary.json")["train_loss"] is None


def _snapshot(directory):
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_workdir_of_another_config_is_refused_and_left_as_it_is(tmp_path):
  """A run workdir of another config refused, its files byte for byte unchanged; only here for a single run."""
  loop.train_and_evaluate(tiny_run(), str(tmp_path))
  before = _snapshot(tmp_path)
  with pytest.raises(records.WorkdirError) as error:
    loop.train_and_evaluate(tiny_run(**{"model.depth": 8, "optimizer.learning_rate": 0.01}), str(tmp_path))
  message = str(error.value)
  assert "model.depth: 3 there, 8 now" in message and "optimizer.learning_rate: 0.001 there, 0.01 now" in message
  assert "Nothing was changed" in message and "num_steps" not in message
  assert _snapshot(tmp_path) == before
  result = subprocess.run(
    _entry_point(tmp_path, ("model.depth", 8)),
    cwd=REPO,
    text=True,
    capture_output=True,
    env=helpers.cpu_env(),
    check=False,
  )
  assert result.returncode == 1 and "model.depth: 3 there, 8 now" in result.stderr
  assert "error: " in result.stderr and "fields that differ" in result.stderr and "Traceback" not in result.stderr
  assert _snapshot(tmp_path) == before


def _corrupt(step_dir):
  """Cuts every data file of a checkpoint to half its length, as a write cut short would."""
  for path in step_dir.rglob("*"):
    if path.is_file() and path.stat().st_size > 1 and "_CHECKPOINT_METADATA" not in path.name:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.slow
def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  """A latest checkpoint whose files are corrupted: set aside, the one before used, the run ending as an
  uninterrupted one; only here."""
  straight = loop.train_and_evaluate(tiny_run(), str(tmp_path / "straight"))
  loop.train_and_evaluate(tiny_run(num_steps=20, checkpoint_every=5), str(tmp_path / "run"))
  _corrupt(tmp_path / "run" / "checkpoints" / "20")
  with caplog.at_level("WARNING", logger="absl"):
    resumed = loop.train_and_evaluate(tiny_run(), str(tmp_path / "run"))
  assert "do not restore" in caplog.text and "resumed from step 15" in caplog.text
  assert (tmp_path / "run" / "unreadable_checkpoints" / "20").is_dir()  # moved aside, not deleted
  assert resumed.test_loss == pytest.approx(straight.test_loss, rel=1e-6)


def test_no_readable_checkpoint_stops_with_a_message_and_leaves_the_files(tmp_path):
  loop.train_and_evaluate(tiny_run(), str(tmp_path))
  for step in ("10", "20"):
    _corrupt(tmp_path / "checkpoints" / step)
  before = _snapshot(tmp_path)
  with pytest.raises(
    records.WorkdirError, match="no checkpoint restores .*step 20.*step 10.*move the checkpoints away"
  ):
    loop.train_and_evaluate(tiny_run(), str(tmp_path))
  assert _snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_save_cut_short_is_ignored_and_the_run_resumes_from_the_last_complete_one(tmp_path):
  """A save cut short (Orbax's temporary directory left behind) is ignored; only here."""
  loop.train_and_evaluate(tiny_run(num_steps=10), str(tmp_path / "run"))
  # What kill -9 during Orbax's save of step 20 leaves: a temporary directory, half written.
  partial = tmp_path / "run" / "checkpoints" / "20.orbax-checkpoint-tmp-1234"
  partial.mkdir()
  (partial / "default").mkdir()
  (partial / "default" / "half").write_bytes(b"\0" * 10)
  resumed = loop.train_and_evaluate(tiny_run(), str(tmp_path / "run"))
  straight = loop.train_and_evaluate(tiny_run(), str(tmp_path / "straight"))
  assert resumed.test_loss == straight.test_loss and resumed.trained == straight.trained


def test_an_unprepared_tfds_dataset_names_the_directory_and_the_command(tmp_path):
  config = cifar.get_config()
  config.data.data_dir = str(tmp_path / "tfds")
  with pytest.raises(config_validation.ConfigError) as error:
    config_validation.load_data(config)
  message = str(error.value)
  assert error.value.field == "config.data.dataset" and "'cifar10'" in message
  assert str(tmp_path / "tfds" / "cifar10") in message
  assert f"tfds build cifar10 --data_dir={tmp_path / 'tfds'} --file_format=array_record" in message
