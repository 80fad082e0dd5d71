"""Datasets that need no download, and deterministic, shardable batches.

* :func:`teacher` — the embedded default: x ~ N(0, I_d), y = h(x) with h = Q ∘ Φ_K ∘ … ∘ Φ_1,
  Φ_k the flow for time s of the ReLU vector field v_k(z) = V_k relu(U_k z + b_k), where
  ‖U_k‖₂ = ‖V_k‖₂ = 1, and Q a random rotation (:class:`resnorm.models.targets.FlowTarget`).
  Each Φ_k is invertible with e^{−s}‖u − w‖ ≤ ‖Φ_k(u) − Φ_k(w)‖ ≤ e^{s}‖u − w‖, so h is
  bi-Lipschitz: the kind of map Theorem 1 represents with L near-identity residual blocks, and
  one that the residual MLPs of the sweep represent by construction (Euler steps of the flow,
  :func:`resnorm.models.mlp.construct`).
* :func:`random_mlp` — regression onto a wide random one-hidden-layer tanh network: a smooth
  map not built from flows (neither invertible nor near the identity), the teacher task's
  counterpart for asking whether a finding depends on the teacher being a flow.
* :func:`digits` — scikit-learn's bundled 8×8 digits (1797 images, 10 classes).
* :func:`digits_images` — the same digits as CIFAR-shaped images (32×32×3 by default): the
  embedded real-image default of the image depth sweep.
* :func:`tfds_images` — CIFAR-10 and other TFDS image datasets already prepared on disk,
  with :func:`augment` (random crops and flips) for training.
* :func:`synthetic` — random CIFAR-shaped images and labels, seeded: the input pipeline and
  the step timed without a dataset on disk (nothing to learn).
* :func:`python_source` — next-character prediction on the Python standard library's own source
  files (on every machine with Python; their text, and so the task, follows the Python version):
  real text for the Transformers' residual streams.
* :func:`copy_sequences` — sequences whose second half repeats their first: predicting the second
  half needs attention to the token half a sequence back (an induction-style copy); the first half
  is noise (its loss floor is log V per token).

Batches are a pure function of (seed, step), so a run resumed from a checkpoint at step t sees
exactly the batches it would have seen, and every process takes its own rows of the global
batch (``jax.make_array_from_process_local_data`` reassembles it). :func:`prefetch` builds them
ahead on a background thread, in the same order.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Iterable, Iterator

import jax
import numpy as np

from resnorm import validation
from resnorm.models import targets


@dataclasses.dataclass(frozen=True)
class Dataset:
  """In-memory train/test splits; ``task`` is ``'regression'`` or ``'classification'``; ``flow``:
  the teacher, for the theorem's constructed networks (:func:`teacher` only)."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  task: str
  num_outputs: int
  flow: targets.FlowTarget | None = None  # the map the targets are drawn from, where it is known


def _spectrally_normalized(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
  matrix = rng.standard_normal((rows, cols))
  return matrix / np.linalg.norm(matrix, ord=2)


def random_rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
  """A Haar-distributed orthogonal matrix (QR of a Gaussian, signs fixed by R's diagonal)."""
  q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
  return q * np.sign(np.diag(r))


def teacher_flow(seed: int, dim: int, num_maps: int, strength: float, hidden: int) -> targets.FlowTarget:
  """The teacher h of :func:`teacher` (see the module docstring), a pure function of its arguments."""
  validation.positive_int("dim", dim)
  validation.positive_int("num_maps", num_maps)
  validation.positive_int("hidden", hidden)
  validation.positive_float("strength", strength)
  rng = np.random.default_rng(seed)
  fields = [
    (
      _spectrally_normalized(rng, hidden, dim),
      0.5 * rng.standard_normal(hidden),
      _spectrally_normalized(rng, dim, hidden),
    )
    for _ in range(num_maps)
  ]
  u, b, v = (np.stack(parts) for parts in zip(*fields))
  return targets.FlowTarget(u, b, v, random_rotation(rng, dim), float(strength))


def teacher(seed=0, dim=16, num_maps=4, strength=0.5, hidden=64, train_size=4096, test_size=1024) -> Dataset:
  """Regression onto the teacher map h; inputs from N(0, I_dim). The dataset carries h as its
  ``flow``."""
  flow = teacher_flow(seed, dim, num_maps, strength, hidden)
  validation.positive_int("train_size", train_size)
  validation.positive_int("test_size", test_size)
  x = np.random.default_rng([seed, 1]).standard_normal((train_size + test_size, dim))
  y = flow(x)
  x, y = x.astype(np.float32), y.astype(np.float32)
  return Dataset(x[:train_size], y[:train_size], x[train_size:], y[train_size:], "regression", dim, flow)


def random_mlp(seed=0, dim=16, hidden=1024, train_size=4096, test_size=1024) -> Dataset:
  """Regression onto y = V tanh(U x + b), x ~ N(0, I_dim), with U (hidden × dim) of entries
  N(0, 1/dim), b of N(0, 1/4) and V (dim × hidden) of N(0, 1/hidden), seeded: every output is a
  smooth function of every input with variance about E tanh²(N(0, 5/4)) ≈ 0.45."""
  for name, value in (("dim", dim), ("hidden", hidden), ("train_size", train_size), ("test_size", test_size)):
    validation.positive_int(name, value)
  rng = np.random.default_rng([seed, 2])
  u = rng.standard_normal((hidden, dim)) / np.sqrt(dim)
  b = 0.5 * rng.standard_normal(hidden)
  v = rng.standard_normal((dim, hidden)) / np.sqrt(hidden)
  x = rng.standard_normal((train_size + test_size, dim))
  y = np.tanh(x @ u.T + b) @ v.T
  x, y = x.astype(np.float32), y.astype(np.float32)
  return Dataset(x[:train_size], y[:train_size], x[train_size:], y[train_size:], "regression", dim)


def digits(seed=0, test_size=297) -> Dataset:
  """scikit-learn's 8×8 digits, pixels scaled to [0, 1], a seeded split."""
  from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

  bunch = load_digits()
  validation.positive_int("test_size", test_size)
  if test_size >= len(bunch.target):
    raise validation.invalid("test_size", test_size, f"fewer than {len(bunch.target)} examples")
  order = np.random.default_rng(seed).permutation(len(bunch.target))
  x = (bunch.data / 16.0).astype(np.float32)[order]
  y = bunch.target.astype(np.int32)[order]
  return Dataset(x[test_size:], y[test_size:], x[:test_size], y[:test_size], "classification", 10)


def digits_images(seed=0, test_size=297, train_size=None, image_size=32, method="bilinear") -> Dataset:
  """scikit-learn's 8×8 digits as ``image_size``×``image_size``×3 NHWC images (no download).

  Each 8×8 image (pixels in [0, 1]) is resized by ``jax.image.resize`` (``method``:
  ``'bilinear'`` or ``'nearest'``), copied into 3 identical channels, and standardised,
  x ↦ (x − m)/s, with the training split's mean m and standard deviation s. The split is
  :func:`digits`'s (same seed, same test examples); ``train_size`` keeps only the first
  training examples (a harder task). A pure function of its arguments.
  """
  validation.positive_int("image_size", image_size)
  validation.one_of("method", method, ("bilinear", "nearest"))
  flat = digits(seed, test_size)
  if train_size is not None:
    validation.positive_int("train_size", train_size)
    if train_size > len(flat.x_train):
      raise validation.invalid("train_size", train_size, f"at most the {len(flat.x_train)} training examples")

  def images(x):
    x = x.reshape(-1, 8, 8, 1)
    x = np.asarray(jax.image.resize(x, (len(x), image_size, image_size, 1), method), dtype=np.float32)
    return np.repeat(x, 3, axis=-1)

  x_train, y_train = flat.x_train[:train_size], flat.y_train[:train_size]
  x_train, x_test = images(x_train), images(flat.x_test)
  mean, std = x_train.mean(), x_train.std()
  return Dataset((x_train - mean) / std, y_train, (x_test - mean) / std, flat.y_test, "classification", 10)


ASCII = 128  # python_source's vocabulary: the byte values of ASCII; any other byte reads as '?'


def python_source(
  seed=0,
  modules=(
    "argparse",
    "collections/__init__",
    "dataclasses",
    "functools",
    "inspect",
    "json/decoder",
    "pathlib",
    "typing",
  ),
  tokens=64,
  train_size=4096,
  test_size=512,
) -> Dataset:
  """Windows of ``tokens`` + 1 characters of the standard library's ``modules`` (their ``.py``
  sources, concatenated): inputs the first ``tokens`` byte ids, targets the next character at
  every position. The last tenth of the text is held out for the test windows; window starts are
  drawn with ``seed``. A pure function of its arguments and the Python version."""
  import sysconfig  # the standard library's own directory: no download

  for name, value in dict(tokens=tokens, train_size=train_size, test_size=test_size).items():
    validation.positive_int(name, value)
  root = sysconfig.get_paths()["stdlib"]
  text = b"".join(open(f"{root}/{module}.py", "rb").read() for module in modules)
  ids = np.frombuffer(text, np.uint8).astype(np.int32)
  ids = np.where(ids < ASCII, ids, ord("?"))
  split = int(0.9 * len(ids))
  rng = np.random.default_rng(seed)

  def windows(part, count):
    if len(part) <= tokens + 1:
      raise validation.invalid("tokens", tokens, f"fewer than the {len(part)} characters of the split")
    starts = rng.integers(0, len(part) - tokens - 1, count)
    window = part[starts[:, None] + np.arange(tokens + 1)]
    return window[:, :-1], window[:, 1:]

  (x_train, y_train), (x_test, y_test) = windows(ids[:split], train_size), windows(ids[split:], test_size)
  return Dataset(x_train, y_train, x_test, y_test, "classification", ASCII)


def copy_sequences(seed=0, vocab_size=16, tokens=32, train_size=4096, test_size=512) -> Dataset:
  """Random sequences of ``tokens`` / 2 token ids from ``vocab_size``, each followed by itself;
  the targets are the next token at every position (the last position's: the first token)."""
  for name, value in dict(vocab_size=vocab_size, train_size=train_size, test_size=test_size).items():
    validation.positive_int(name, value)
  if tokens < 2 or tokens % 2:
    raise validation.invalid("tokens", tokens, "an even number of at least 2")
  rng = np.random.default_rng(seed)
  half = rng.integers(0, vocab_size, (train_size + test_size, tokens // 2), dtype=np.int32)
  x = np.concatenate([half, half], axis=1)
  y = np.roll(x, -1, axis=1)
  return Dataset(x[:train_size], y[:train_size], x[train_size:], y[train_size:], "classification", vocab_size)


# The PyTorch port's fixed per-channel constants (zaeemzadeh/ProcResNet_PyTorch, main.py).
PYTORCH_MEAN = np.array([125.3, 123.0, 113.9], np.float32) / 255
PYTORCH_STD = np.array([63.0, 62.1, 66.7], np.float32) / 255
NORMALIZATIONS = ("train_split", "pytorch")


def standardize(x_train, x_test, normalization: str = "train_split"):
  """Both splits standardised per channel: with the training split's mean and std (the Chainer
  original), or with the PyTorch port's fixed constants; pixels are in [0, 1]."""
  validation.one_of("normalization", normalization, NORMALIZATIONS)
  if normalization == "pytorch":
    mean, std = PYTORCH_MEAN, PYTORCH_STD
  else:
    mean, std = x_train.mean(axis=(0, 1, 2)), x_train.std(axis=(0, 1, 2))
  return (x_train - mean) / std, (x_test - mean) / std


def _tfds_source(tfds, dataset: str, split: str, data_dir):
  """``tfds.data_source`` without a download; a dataset not prepared in ``data_dir`` is a
  ``ValueError`` naming the directory looked in and the command that prepares it."""
  try:
    return tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    raise validation.invalid("dataset", dataset, "a TFDS dataset name") from None
  except Exception as error:  # pylint: disable=broad-except  (TFDS raises several kinds here)
    root = tfds.builder(dataset, data_dir=data_dir).data_dir
    raise validation.invalid(
      "dataset",
      dataset,
      f"a dataset prepared in {root} (not found or not in ArrayRecord format: "
      f"{type(error).__name__}); prepare it on a machine with network access with "
      f"`tfds build {dataset} --data_dir={data_dir or '~/tensorflow_datasets'} --file_format=array_record`",
    ) from None


def tfds_images(
  dataset="cifar10",
  train_split="train",
  test_split="test",
  data_dir=None,
  image_key="image",
  label_key="label",
  train_size=None,
  test_size=None,
  normalization="train_split",
) -> Dataset:
  """An image-classification dataset from TFDS, read through ``tfds.data_source`` (ArrayRecord
  random access: no TensorFlow) into memory, pixels scaled to [0, 1] then standardised per
  channel (:func:`standardize`). The dataset must already be prepared in ``data_dir`` (``tfds
  build``): nothing is downloaded. ``train_size``/``test_size`` keep only the first examples.
  """
  import tensorflow_datasets as tfds  # only this loader needs TFDS

  validation.one_of("normalization", normalization, NORMALIZATIONS)

  def read(split, size):
    source = _tfds_source(tfds, dataset, split, data_dir)
    count = len(source) if size is None else validation.positive_int(f"{split}_size", size)
    examples = [source[i] for i in range(min(count, len(source)))]
    images = np.stack([e[image_key] for e in examples]).astype(np.float32) / 255.0
    return images, np.array([e[label_key] for e in examples], dtype=np.int32)

  x_train, y_train = read(train_split, train_size)
  x_test, y_test = read(test_split, test_size)
  num_classes = int(max(y_train.max(), y_test.max())) + 1
  x_train, x_test = standardize(x_train, x_test, normalization)
  return Dataset(x_train, y_train, x_test, y_test, "classification", num_classes)


def synthetic(seed=0, height=32, width=32, channels=3, num_classes=10, train_size=50_000, test_size=10_000) -> Dataset:
  """Standard-normal NHWC images with uniform random labels (CIFAR-10's shapes by default)."""
  for name, value in (
    ("height", height),
    ("width", width),
    ("channels", channels),
    ("num_classes", num_classes),
    ("train_size", train_size),
    ("test_size", test_size),
  ):
    validation.positive_int(name, value)
  rng = np.random.default_rng([seed, 2])
  x = rng.standard_normal((train_size + test_size, height, width, channels), dtype=np.float32)
  y = rng.integers(0, num_classes, train_size + test_size).astype(np.int32)
  return Dataset(x[:train_size], y[:train_size], x[train_size:], y[train_size:], "classification", num_classes)


PADDINGS = {"zero": "constant", "reflect": "reflect"}  # np.pad's mode for each


def augment(images: np.ndarray, seed: int, step: int, padding: int = 4, mode: str = "zero") -> np.ndarray:
  """Random crops of the padded images and random horizontal flips (NHWC), as in He et al.
  (2016) for CIFAR: ``mode`` ``'zero'`` pads with zeros (the mean, after standardisation; the
  Chainer original), ``'reflect'`` mirrors the border (the PyTorch port). A pure function of
  (seed, step) like the batches; one gather for the whole batch, no loop over images."""
  validation.one_of("mode", mode, PADDINGS)
  rng = np.random.default_rng([seed, step, 1])
  batch, height, width, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=PADDINGS[mode])
  top, left = rng.integers(0, 2 * padding + 1, size=(2, batch))
  flip = rng.random(batch) < 0.5
  rows = top[:, None] + np.arange(height)[None, :]
  cols = left[:, None] + np.arange(width)[None, :]
  cols = np.where(flip[:, None], cols[:, ::-1], cols)  # a flipped crop reads its columns backwards
  return padded[np.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


LOADERS = {
  "teacher": teacher,
  "random_mlp": random_mlp,
  "digits": digits,
  "digits_images": digits_images,
  "tfds": tfds_images,
  "synthetic": synthetic,
  "python_source": python_source,
  "copy_sequences": copy_sequences,
}


def register(name: str, loader) -> None:
  """Adds ``loader(**options) -> Dataset`` as ``config.data.name = name`` (options: the other fields
  of ``config.data``)."""
  if name in LOADERS:
    raise validation.invalid("name", name, f"a name not yet registered (not one of {sorted(LOADERS)})")
  LOADERS[name] = loader


def load(config) -> Dataset:
  """``config`` is the ``data`` ConfigDict: ``name`` plus the loader's keyword arguments."""
  options = dict(config)
  name = validation.one_of("name", options.pop("name"), LOADERS)
  return LOADERS[name](**options)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Rows of the global batch at ``step``: epochs of seeded permutations, a pure function of step."""
  validation.positive_int("num_examples", num_examples)
  validation.positive_int("batch_size", batch_size)
  validation.non_negative_int("step", step)
  if batch_size > num_examples:
    raise validation.invalid("batch_size", batch_size, f"at most the {num_examples} training examples")
  per_epoch = num_examples // batch_size
  epoch, position = divmod(step, per_epoch)
  return _epoch_order(num_examples, seed, epoch)[position * batch_size : (position + 1) * batch_size]


@functools.lru_cache(maxsize=16)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The seeded permutation of one epoch, drawn once for all its steps (read-only)."""
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.flags.writeable = False
  return order


def process_rows(global_rows: np.ndarray) -> np.ndarray:
  """This process's contiguous share of a global batch's rows."""
  count = jax.process_count()
  if len(global_rows) % count:
    raise validation.invalid("batch_size", len(global_rows), f"a multiple of the {count} processes")
  share = len(global_rows) // count
  return global_rows[jax.process_index() * share : (jax.process_index() + 1) * share]


def global_batch(sharding, x, y, rows, transform=None) -> tuple[jax.Array, jax.Array]:
  """The global batch ``rows`` of (``x``, ``y``) as arrays split over ``sharding``'s mesh, ``x``
  through ``transform`` where given; this process supplies its share (all of it when the mesh
  holds only this process's devices)."""
  if not sharding.is_fully_addressable:
    rows = process_rows(rows)
  x, y = x[rows], y[rows]
  if transform is not None:
    x = transform(x)
  return tuple(jax.make_array_from_process_local_data(sharding, a) for a in (x, y))


def augment_padding(config) -> str | None:
  """How a run config's training images are padded for their random crops
  (``config.augment_padding``: a mode of :func:`augment`), None where the run does not augment."""
  return config.augment_padding if config.augment else None


def augmentation(padding: str | None, seed: int, step: int):
  """The crops and flips of ``step``'s batch (:func:`augment` with ``padding``, a function of the
  images); None without augmentation (``padding`` None)."""
  return None if padding is None else functools.partial(augment, seed=seed, step=step, mode=padding)


def training_batch(dataset: Dataset, batch_size: int, seed: int, step: int, augment_padding: str | None = None):
  """The whole training batch of (0-based) ``step`` as host arrays (:func:`batch_indices`),
  augmented where ``augment_padding`` says how, as a one-process run trains on it."""
  rows = batch_indices(len(dataset.x_train), batch_size, step, seed)
  transform = augmentation(augment_padding, seed, step)
  x = dataset.x_train[rows]
  return (x if transform is None else transform(x)), dataset.y_train[rows]


def training_batches(
  dataset: Dataset,
  batch_size: int,
  sharding,
  seed: int,
  steps: range,
  augment_padding: str | None = None,
  ahead: int = 0,
) -> Iterator[tuple[jax.Array, jax.Array]]:
  """The global training batches of ``steps`` on ``sharding``, ``ahead`` of their use on a
  background thread (:func:`prefetch`): rows and augmentation are pure functions of (``seed``,
  step), so a resumed run sees the batches an uninterrupted one would."""

  def batch_at(step):
    rows = batch_indices(len(dataset.x_train), batch_size, step, seed)
    return global_batch(sharding, dataset.x_train, dataset.y_train, rows, augmentation(augment_padding, seed, step))

  return prefetch(map(batch_at, steps), ahead)


def prefetch(items: Iterable, size: int = 2) -> Iterator:
  """The items of ``items``, in order, computed up to ``size`` ahead on a background thread.

  Building a batch (gather, augmentation, the transfer to the devices) then overlaps the
  previous steps, which run asynchronously on the devices. An exception raised while building
  is raised here, at the item it would have been; closing the generator (``break``, an error in
  the caller) stops the thread. ``size`` 0 builds each item when asked for, on this thread.
  """
  if size == 0:
    yield from items
    return
  ready, stop = queue.Queue(maxsize=size), threading.Event()
  end = object()

  def put(entry) -> bool:
    """Waits for room unless the consumer has stopped; whether ``entry`` was queued."""
    while not stop.is_set():
      try:
        ready.put(entry, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    try:
      for item in items:
        if not put((item, None)):
          return
      put((end, None))
    except Exception as error:  # pylint: disable=broad-except  (re-raised on the consumer's thread)
      put((end, error))

  thread = threading.Thread(target=produce, name="prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item, error = ready.get()
      if error is not None:
        raise error
      if item is end:
        return
      yield item
  finally:
    stop.set()
    thread.join()
