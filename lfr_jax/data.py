"""Datasets: MNIST, CIFAR-10 and ImageNet as host-local batches for a sharded step.

Sources:

- tfds ``array_record`` through ``tfds.data_source`` (random access, no
  TensorFlow needed to read): MNIST, CIFAR-10, ImageNet (``imagenet2012``).
  Nothing is downloaded unless ``download=True``; prepare once with
  ``tfds build <name> --file_format=array_record``.
- MNIST from the four original IDX ``.gz`` files in ``data.dir``,
  ``$LFR_DATA_DIR`` or the repository's ``data/mnist/`` (offline;
  :func:`load_mnist_idx`, :mod:`lfr_jax.mnist`). ``python -m lfr_jax.data
  fetch mnist --dir DIR`` downloads them, checksums verified.

Splits: "validation" is held out from the *end* of the train split
(``validation_size`` examples), "train" is the rest (optionally only its first
``train_size``), "test" is the test split (ImageNet: its validation split).

Batches: the training order is a permutation drawn from (seed, epoch), so
:func:`train_stream` (global steps, across epochs) and :func:`train_batches`
(one epoch) can start at any step and reproduce the batches of an
uninterrupted run exactly. Each host reads only its slice of every global
batch (``process_index`` of ``process_count``). With ``workers`` > 0, tfds
images are read, decoded and augmented in Grain worker processes
(:mod:`lfr_jax.grain_batches`), whole batches at a time by the function the
in-process path calls, so the batches are the same bytes for any worker
count. :func:`device_batches` assembles each host slice into one array
sharded over the mesh (:func:`to_global`, i.e.
``jax.make_array_from_process_local_data``) in a background thread, ahead of
the step.

Example::

    from lfr_jax import data
    ds = data.load({"name": "mnist", "dir": "",   # "" = $LFR_DATA_DIR
                    "validation_size": 5000})
    for x, y in data.train_batches(ds.train, batch_size=128, seed=0, epoch=0):
      break                                  # x (128, 28, 28, 1) float32 in [0, 1]
    x, y = data.load_mnist_idx("test")       # whole split, uses $LFR_DATA_DIR
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
from typing import Any, Iterator

import numpy as np

from lfr_jax import mnist
from lfr_jax import preprocessing
from lfr_jax.preprocessing import preprocess

# The IDX files live in lfr_jax.mnist; these names stay importable from here.
MNIST_FILES = mnist.FILES
DataError = mnist.DataError
read_idx = mnist.read_idx


def resolve_data_dir(data_dir: str | None) -> str:
  """The MNIST folder: ``data_dir``, ``$LFR_DATA_DIR`` or the embedded copy."""
  return mnist.find_dir(data_dir)


def load_mnist_idx(split: str, data_dir: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Loads an MNIST split from the original IDX files.

  Args:
    split: "train" (60,000 examples) or "test" (10,000).
    data_dir: folder with the four files; ``$LFR_DATA_DIR`` or the
      repository's ``data/mnist/`` when empty.

  Returns:
    (images float32 (N, 28, 28, 1) in [0, 1], labels int32 (N,)).
  """
  images, labels = mnist.read_split(split, resolve_data_dir(data_dir))
  return images.astype(np.float32) / 255.0, labels


# ----------------------------------------------------------------------------
# Datasets and sources


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the training layer needs to know about a dataset.

  Attributes:
    name: dataset name in configs.
    num_classes: number of labels.
    image_shape: native (H, W, C), or None when images vary in size.
    tfds_name: tfds builder name.
    train_split: tfds split that provides "train" and "validation".
    test_split: tfds split used as "test".
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int] | None
  tfds_name: str
  train_split: str = "train"
  test_split: str = "test"


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 10, (28, 28, 1), "mnist"),
    "cifar10": DatasetInfo("cifar10", 10, (32, 32, 3), "cifar10"),
    # ImageNet's test labels are not public; its validation split is the test.
    "imagenet2012": DatasetInfo("imagenet2012", 1000, None, "imagenet2012",
                                test_split="validation"),
}
SOURCES = ("auto", "idx", "tfds")
AUGMENTATIONS = ("none", "crop_flip", "inception")


def names() -> list[str]:
  """Returns the dataset names."""
  return list(DATASETS)


class ArraySource:
  """A split held in host memory as uint8 images and int32 labels."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (uint8 images, int32 labels) at ``indices``."""
    return self.images[indices], self.labels[indices]


class TfdsSource:
  """A tfds random-access data source (array_record) of encoded images.

  :meth:`read` fetches the records of a batch, parses them with tfds' image
  decoding skipped, and decodes the images itself
  (:func:`preprocessing.decode`) into PIL images, which :func:`preprocess`
  crops and resizes without a full-size numpy copy. Sources that hand out
  decoded arrays (tfds' mock data) are used as they come.
  """

  def __init__(self, source: Any, description: str, channels: int):
    self.source, self.description, self.channels = source, description, channels

  def __len__(self) -> int:
    return len(self.source)

  def read(self, indices: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Returns (list of decoded images, int32 labels) at ``indices``."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    records = [self.source.data_source[int(i)] for i in indices]
    skip = {"image": tfds.decode.SkipDecoding()}
    parse = self.source.dataset_info.features.deserialize_example_np
    examples = [parse(r, decoders=skip) for r in records]
    images = [preprocessing.decode(e["image"], self.channels)
              if isinstance(e["image"], bytes) else np.asarray(e["image"])
              for e in examples]
    return images, np.asarray([e["label"] for e in examples], np.int32)


@dataclasses.dataclass(frozen=True)
class Split:
  """A view of some examples of a source.

  Attributes:
    source: an :class:`ArraySource` or :class:`TfdsSource`.
    indices: positions in ``source``, in the split's canonical order.
  """
  source: Any
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def read(self, positions: np.ndarray):
    """Returns (images, labels) of the split's examples at ``positions``."""
    return self.source.read(self.indices[positions])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """The three splits of a dataset plus its :class:`DatasetInfo`."""
  info: DatasetInfo
  train: Split
  validation: Split
  test: Split
  source: str  # "idx" or "tfds", for logs
  # Where it was read: the IDX folder, or the tfds data_dir ("" = tfds's
  # default). Recorded in a run's config.json so evaluation reads the same.
  location: str = ""


def _get(cfg, key, default):
  try:
    value = cfg[key]
  except (KeyError, AttributeError):
    return default
  return default if value is None else value


def uses_idx(cfg) -> bool:
  """Whether ``cfg`` (a data config) reads MNIST from IDX files."""
  source = _get(cfg, "source", "auto")
  if source == "idx":
    return True
  if source == "tfds":
    return False
  return (_get(cfg, "name", "mnist") == "mnist"
          and bool(_get(cfg, "dir", "") or os.environ.get("LFR_DATA_DIR")
                   or mnist.has_files(mnist.EMBEDDED_DIR)))


class _HideTfdsWarnings:
  """Hides tfds' warnings while a dataset opens (a missing one is a DataError).

  tfds logs e.g. "Variant folder ... has no dataset_info.json" before failing;
  users should see one message, not two.
  """

  def filter(self, record) -> bool:
    return record.levelno >= 40 or "tensorflow_datasets" not in record.pathname

  def __enter__(self):
    logging.getLogger().addFilter(self)
    logging.getLogger("absl").addFilter(self)
    return self

  def __exit__(self, *exc):
    logging.getLogger().removeFilter(self)
    logging.getLogger("absl").removeFilter(self)


def _open_tfds(info: DatasetInfo, split: str, cfg) -> TfdsSource:
  with _HideTfdsWarnings():
    return _open_tfds_quietly(info, split, cfg)


def _open_tfds_quietly(info: DatasetInfo, split: str, cfg) -> TfdsSource:
  # Imported here: tfds is slow to import and only this path needs it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = _get(cfg, "tfds_data_dir", "") or None
  download = bool(_get(cfg, "download", False))
  try:
    source = tfds.data_source(info.tfds_name, split=split, data_dir=data_dir,
                              download=download)
  except Exception as e:  # pylint: disable=broad-except
    # tfds reports a missing dataset as an unsupported TFRECORD format, etc.
    where = tfds.builder(info.tfds_name, data_dir=data_dir).data_dir
    hint = (f"; or fetch the four MNIST files with `{mnist.FETCH_COMMAND}` "
            f"and set LFR_DATA_DIR=DIR" if info.name == "mnist" else "")
    if not os.path.isdir(where):
      raise DataError(
          f"tfds dataset {info.tfds_name} is not prepared in {where}: expected "
          f"array_record files from `tfds build {info.tfds_name} "
          f"--file_format=array_record`; or set config.data.download=True{hint}."
      ) from None
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"cannot read tfds dataset {info.tfds_name} split {split!r} "
                    f"from {where} as array_record: {first} (prepare it with "
                    f"`tfds build {info.tfds_name} --file_format=array_record`)."
                    ) from None
  # 1 (MNIST) or 3: what tfds would decode to (ImageNet's few greyscale
  # JPEGs become RGB).
  channels = source.dataset_info.features["image"].shape[-1] or 3
  return TfdsSource(source, f"tfds:{info.tfds_name}/{split}", channels)


def check_settings(cfg) -> None:
  """Checks the dataset fields of a data config: its name, IDX for MNIST only,
  the number of data workers.

  Args:
    cfg: data config (ConfigDict or dict).

  Raises:
    DataError: one line naming the field (``data.name``, ``data.source``,
      ``data.workers``).
  """
  name = _get(cfg, "name", "mnist")
  if name not in DATASETS:
    raise DataError(f"data.name {name!r} is unknown; valid: "
                    f"{', '.join(names())}.")
  if _get(cfg, "source", "auto") == "idx" and name != "mnist":
    raise DataError(f"data.source 'idx' reads MNIST only, not {name!r}; use "
                    f"'tfds' or 'auto'.")
  workers = _get(cfg, "workers", 0)
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
    raise DataError(f"data.workers {workers!r} must be an integer >= 0 (Grain "
                    f"worker processes; 0 = read in the training process).")


def load(cfg) -> Dataset:
  """Opens a dataset and cuts its splits.

  Args:
    cfg: data config (ConfigDict or dict) with ``name`` and optionally
      ``source``, ``dir``, ``tfds_data_dir``, ``download``,
      ``validation_size`` (default 5000) and ``train_size`` (0 = all).

  Returns:
    The :class:`Dataset`.

  Raises:
    DataError: unknown dataset, missing or corrupt files, or split sizes that
      do not fit the data.
  """
  check_settings(cfg)
  name = _get(cfg, "name", "mnist")
  info = DATASETS[name]
  if uses_idx(cfg):
    folder = resolve_data_dir(_get(cfg, "dir", ""))
    train_src = ArraySource(*mnist.read_split("train", folder))
    test_src = ArraySource(*mnist.read_split("test", folder))
    kind, location = "idx", os.path.abspath(folder)
  else:
    train_src = _open_tfds(info, info.train_split, cfg)
    test_src = _open_tfds(info, info.test_split, cfg)
    kind, location = "tfds", str(_get(cfg, "tfds_data_dir", ""))
  n = len(train_src)
  val = int(_get(cfg, "validation_size", 5000))
  if not 0 <= val < n:
    raise DataError(f"data.validation_size {val} must lie in [0, {n}) for "
                    f"{name} ({n} training examples).")
  train_size = int(_get(cfg, "train_size", 0)) or n - val
  if train_size > n - val:
    raise DataError(f"data.train_size {train_size} exceeds the {n - val} "
                    f"{name} training examples left after validation_size {val}.")
  return Dataset(info=info,
                 train=Split(train_src, np.arange(train_size)),
                 validation=Split(train_src, np.arange(n - val, n)),
                 test=Split(test_src, np.arange(len(test_src))),
                 source=kind, location=location)


# ----------------------------------------------------------------------------
# Batches


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder is dropped, a new one each epoch)."""
  return num_examples // batch_size


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The training order of an epoch: a permutation drawn from (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def _host_slice(global_batch: int, process_index: int, process_count: int
                ) -> slice:
  if global_batch % process_count:
    raise ValueError(f"batch size {global_batch} is not divisible by the "
                     f"{process_count} processes.")
  local = global_batch // process_count
  return slice(process_index * local, (process_index + 1) * local)


class _TrainBatch:
  """This host's part of the training batch of a global step (picklable).

  A pure function of (seed, epoch, step) and the host's slice: what Grain's
  worker processes call, and what the in-process path calls, so both yield
  the same bytes whatever the number of workers. It returns uint8 images
  (a quarter of float32's bytes to move between processes);
  :func:`_as_floats` converts them where they are used.
  """

  def __init__(self, split: Split, *, batch_size: int, seed: int,
               process_index: int, process_count: int, augment: str,
               image_size: int):
    self.split, self.batch_size, self.seed = split, batch_size, seed
    self.augment, self.image_size = augment, image_size
    self.steps_per_epoch = steps_per_epoch(len(split), batch_size)
    if self.steps_per_epoch < 1:
      raise ValueError(f"batch size {batch_size} exceeds the {len(split)} "
                       f"examples of the split.")
    mine = _host_slice(batch_size, process_index, process_count)
    self.positions = np.arange(batch_size)[mine]
    self._order: tuple[int, np.ndarray] | None = None

  def __getstate__(self) -> dict[str, Any]:
    # The permutation is recomputed where it is used, not pickled.
    return dict(self.__dict__, _order=None)

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if self._order is None or self._order[0] != epoch:
      self._order = (epoch, epoch_order(len(self.split), self.seed, epoch))
    return self._order[1]

  def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    epoch, in_epoch = divmod(int(step), self.steps_per_epoch)
    order = self._epoch_order(epoch)
    images, labels = self.split.read(
        order[in_epoch * self.batch_size + self.positions])
    x = preprocessing.preprocess_uint8(
        images, train=True, augment=self.augment, image_size=self.image_size,
        rng_seed=(self.seed, epoch, in_epoch), positions=self.positions)
    return x, labels


class _EvalBatch:
  """This host's part of the evaluation batch starting at an example (picklable)."""

  def __init__(self, split: Split, *, batch_size: int, num_examples: int,
               process_index: int, process_count: int, image_size: int):
    self.split, self.batch_size, self.n = split, batch_size, num_examples
    self.image_size = image_size
    self.mine = _host_slice(batch_size, process_index, process_count)

  def __call__(self, start: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.arange(start, min(start + self.batch_size, self.n))
    mask = np.zeros(self.batch_size, np.float32)
    mask[:len(idx)] = 1.0
    idx = np.concatenate([idx, np.full(self.batch_size - len(idx), idx[0])])
    images, labels = self.split.read(idx[self.mine])
    return (preprocessing.preprocess_uint8(images, train=False,
                                           image_size=self.image_size),
            labels, mask[self.mine])


def _in_order(make_batch, items: range, split: Split, workers: int
              ) -> Iterator[Any]:
  """``make_batch(i)`` for ``i`` in ``items``, images as float32.

  Made in Grain workers when ``workers`` > 0 and the split is read from
  tfds; in-memory arrays (MNIST) stay in this process: there is nothing to
  decode.
  """
  if workers > 0 and isinstance(split.source, TfdsSource) and len(items):
    # Imported here: Grain (and the jax it imports) only for this path.
    from lfr_jax import grain_batches  # pylint: disable=g-import-not-at-top
    return _as_floats(grain_batches.ordered_map(make_batch, items, workers))
  return _as_floats(make_batch(i) for i in items)


def _as_floats(batches: Iterator[tuple[np.ndarray, ...]]
               ) -> Iterator[tuple[np.ndarray, ...]]:
  try:
    for images, *rest in batches:
      yield (preprocessing.to_float(images), *rest)
  finally:
    _closing(batches)


def train_stream(split: Split, *, batch_size: int, seed: int, start_step: int,
                 stop_step: int, process_index: int = 0,
                 process_count: int = 1, augment: str = "none",
                 image_size: int = 0, workers: int = 0
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields this host's part of the training batches of global steps
  ``start_step`` to ``stop_step - 1``, across epochs.

  Step ``s`` is step ``s % steps_per_epoch`` of epoch
  ``s // steps_per_epoch``: its batch depends only on (seed, epoch, step)
  and the host's slice, so a resumed run continues with exactly the batches
  of an uninterrupted one, whatever ``workers`` is.

  Args:
    split: the training split.
    batch_size: global batch size (all hosts).
    seed: data seed.
    start_step: first global step to yield.
    stop_step: the step after the last one.
    process_index: this host's index.
    process_count: number of hosts.
    augment: see :func:`preprocess`.
    image_size: see :func:`preprocess`.
    workers: Grain worker processes that read, decode and augment (tfds
      sources; 0 = in this process). One pool serves every epoch.

  Yields:
    (x float32 (B / process_count, H, W, C) in [0, 1], y int32).
  """
  make = _TrainBatch(split, batch_size=batch_size, seed=seed,
                     process_index=process_index, process_count=process_count,
                     augment=augment, image_size=image_size)
  return _in_order(make, range(start_step, stop_step), split, workers)


def train_batches(split: Split, *, batch_size: int, seed: int, epoch: int,
                  start_step: int = 0, process_index: int = 0,
                  process_count: int = 1, augment: str = "none",
                  image_size: int = 0, workers: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields this host's part of each training batch of one epoch.

  Args:
    split: the training split.
    batch_size: global batch size (all hosts).
    seed: data seed.
    epoch: epoch number (selects the permutation).
    start_step: first step to yield (for resuming mid-epoch).
    process_index: this host's index.
    process_count: number of hosts.
    augment: see :func:`preprocess`.
    image_size: see :func:`preprocess`.
    workers: see :func:`train_stream`.

  Yields:
    (x float32 (B / process_count, H, W, C) in [0, 1], y int32).
  """
  per_epoch = steps_per_epoch(len(split), batch_size)
  return train_stream(split, batch_size=batch_size, seed=seed,
                      start_step=epoch * per_epoch + start_step,
                      stop_step=(epoch + 1) * per_epoch,
                      process_index=process_index,
                      process_count=process_count, augment=augment,
                      image_size=image_size, workers=workers)


def eval_batches(split: Split, *, batch_size: int, num_examples: int = 0,
                 process_index: int = 0, process_count: int = 1,
                 image_size: int = 0, workers: int = 0
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields this host's part of fixed-size evaluation batches, in order.

  The last batch is padded (with copies of its first example) to keep one
  compiled shape; ``mask`` is 0 on the padding.

  Args:
    split: the split to evaluate.
    batch_size: global batch size.
    num_examples: how many of the split's first examples; 0 = all.
    process_index: this host's index.
    process_count: number of hosts.
    image_size: see :func:`preprocess`.
    workers: see :func:`train_stream`.

  Yields:
    (x float32, y int32, mask float32), host-local.
  """
  n = len(split) if num_examples <= 0 else min(num_examples, len(split))
  make = _EvalBatch(split, batch_size=batch_size, num_examples=n,
                    process_index=process_index, process_count=process_count,
                    image_size=image_size)
  return _in_order(make, range(0, n, batch_size), split, workers)


def to_global(sharding, *arrays: np.ndarray):
  """Assembles host-local batches into global arrays sharded by ``sharding``.

  Args:
    sharding: e.g. ``NamedSharding(mesh, P("data"))``.
    *arrays: this host's numpy slices (leading axis = local batch).

  Returns:
    A tuple of ``jax.Array`` with global leading axis local * process_count.
  """
  import jax  # pylint: disable=g-import-not-at-top
  return tuple(jax.make_array_from_process_local_data(sharding, a)
               for a in arrays)


def _closing(iterator: Iterator[Any]) -> None:
  close = getattr(iterator, "close", None)
  if close is not None:
    close()


def prefetch(iterator: Iterator[Any], size: int = 2) -> Iterator[Any]:
  """Runs ``iterator`` in a background thread, ``size`` items ahead.

  Reading and augmenting the next batches overlaps the device step. Items come
  out in order; an exception in the producer is re-raised in the consumer.
  When the consumer stops early, the producer closes ``iterator`` (stopping
  its worker processes, if any).

  Args:
    iterator: any iterator.
    size: queue depth.

  Yields:
    The items of ``iterator``.
  """
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for item in iterator:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(done)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)
    finally:
      _closing(iterator)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    # Let the producer close its iterator (and any workers) before we go on.
    thread.join(timeout=10)


def _placed(batches: Iterator[tuple[np.ndarray, ...]], sharding
            ) -> Iterator[tuple[Any, ...]]:
  try:
    for arrays in batches:
      yield to_global(sharding, *arrays)
  finally:
    _closing(batches)


def device_batches(batches: Iterator[tuple[np.ndarray, ...]], sharding,
                   size: int = 2) -> Iterator[tuple[Any, ...]]:
  """Host batches as global device arrays, transferred ahead of the step.

  A background thread pulls each host-local batch (from this process or
  Grain's workers), assembles it with :func:`to_global`
  (``jax.make_array_from_process_local_data``) and keeps ``size`` placed
  batches queued, so reading, augmenting and the host-to-device copy all
  overlap the running step.

  Args:
    batches: host-local tuples of numpy arrays, e.g. :func:`train_stream`.
    sharding: e.g. ``NamedSharding(mesh, P("data"))``.
    size: placed batches kept ahead.

  Yields:
    Tuples of global ``jax.Array``.
  """
  return prefetch(_placed(batches, sharding), size)


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  sys.exit(mnist.main(sys.argv[1:]))
