"""Datasets: the MNIST IDX files, splits, deterministic batches, tfds (mocked)."""

import gzip
import os

import numpy as np
import pytest

from lfr_jax import data

# Label counts of the original MNIST files.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist(mnist_dir):
  return data.load({"name": "mnist", "source": "idx", "dir": mnist_dir,
                    "validation_size": 5000})


def _toy_split(n=40):
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones(
      (1, 4, 4, 1), np.uint8)
  return data.Split(data.ArraySource(images, np.arange(n, dtype=np.int32)),
                    np.arange(n))


@pytest.mark.mnist
def test_mnist_splits_shapes_and_label_counts(mnist):
  assert (len(mnist.train), len(mnist.validation), len(mnist.test)) == (
      55000, 5000, 10000)
  _, train_labels = mnist.train.source.read(np.arange(60000))
  assert np.bincount(train_labels).tolist() == TRAIN_COUNTS
  _, test_labels = mnist.test.read(np.arange(10000))
  assert np.bincount(test_labels).tolist() == TEST_COUNTS
  x, y = next(data.train_batches(mnist.train, batch_size=8, seed=0, epoch=0))
  assert x.shape == (8, 28, 28, 1) and x.dtype == np.float32
  assert 0.0 <= x.min() and x.max() <= 1.0 and y.dtype == np.int32


@pytest.mark.mnist
def test_mnist_idx_reader_whole_split(mnist_dir):
  x, y = data.load_mnist_idx("test", mnist_dir)
  assert x.shape == (10000, 28, 28, 1) and x.dtype == np.float32
  assert np.bincount(y).tolist() == TEST_COUNTS


@pytest.mark.mnist
def test_validation_is_held_out_from_the_end_of_train(mnist, mnist_dir):
  train, val = set(mnist.train.indices), set(mnist.validation.indices)
  assert not train & val
  assert min(val) == 55000 and max(val) == 59999
  small = data.load({"name": "mnist", "dir": mnist_dir, "train_size": 1000,
                     "validation_size": 100})
  assert len(small.train) == 1000 and not (
      set(small.train.indices) & set(small.validation.indices))


def test_shuffling_depends_only_on_seed_and_epoch():
  a = data.epoch_order(100, seed=3, epoch=1)
  assert np.array_equal(a, data.epoch_order(100, seed=3, epoch=1))
  assert not np.array_equal(a, data.epoch_order(100, seed=3, epoch=2))
  assert not np.array_equal(a, data.epoch_order(100, seed=4, epoch=1))
  assert sorted(a) == list(range(100))


def test_iterator_resumes_at_any_step():
  split = _toy_split()
  full = list(data.train_batches(split, batch_size=8, seed=0, epoch=3))
  assert len(full) == data.steps_per_epoch(40, 8) == 5
  resumed = list(data.train_batches(split, batch_size=8, seed=0, epoch=3,
                                    start_step=2))
  for a, b in zip(full[2:], resumed):
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
  seen = np.concatenate([y for _, y in full])
  assert sorted(seen) == list(range(40))  # each example once per epoch


def test_hosts_read_disjoint_slices_of_the_global_batch():
  split = _toy_split()
  whole = next(data.train_batches(split, batch_size=8, seed=1, epoch=0,
                                  augment="crop_flip"))
  parts = [next(data.train_batches(split, batch_size=8, seed=1, epoch=0,
                                   process_index=i, process_count=2,
                                   augment="crop_flip")) for i in range(2)]
  assert np.array_equal(np.concatenate([p[1] for p in parts]), whole[1])
  assert np.array_equal(np.concatenate([p[0] for p in parts]), whole[0])


def test_eval_batches_pad_to_a_fixed_shape_with_a_mask():
  batches = list(data.eval_batches(_toy_split(), batch_size=16,
                                   num_examples=20))
  assert [b[0].shape[0] for b in batches] == [16, 16]
  assert batches[1][2].sum() == 4 and batches[0][2].sum() == 16
  assert batches[1][1][:4].tolist() == [16, 17, 18, 19]


def test_crop_flip_is_deterministic_and_keeps_shape():
  images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), np.uint8)
  a = data.preprocess(images, train=True, augment="crop_flip", rng_seed=(0, 1, 2))
  b = data.preprocess(images, train=True, augment="crop_flip", rng_seed=(0, 1, 2))
  c = data.preprocess(images, train=True, augment="crop_flip", rng_seed=(0, 1, 3))
  assert a.shape == (4, 32, 32, 3) and np.array_equal(a, b)
  assert not np.array_equal(a, c)
  assert np.array_equal(data.preprocess(images, train=False, augment="crop_flip"),
                        images / np.float32(255))


def test_missing_and_corrupt_files_name_the_path(tmp_path):
  with pytest.raises(data.DataError, match=str(tmp_path / "nope")):
    data.load({"name": "mnist", "source": "idx", "dir": str(tmp_path / "nope")})
  with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz"):
    data.load({"name": "mnist", "source": "idx", "dir": str(tmp_path)})
  bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
  with gzip.open(bad, "wb") as f:
    f.write(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
  with pytest.raises(data.DataError, match="corrupt MNIST file .*header says"):
    data.read_idx(str(bad), 1)
  with pytest.raises(data.DataError, match="data.name 'svhn' is unknown"):
    data.load({"name": "svhn"})


@pytest.mark.mnist
def test_split_sizes_must_fit(mnist_dir):
  with pytest.raises(data.DataError, match="validation_size"):
    data.load({"name": "mnist", "dir": mnist_dir, "validation_size": 60000})


def test_prefetch_keeps_order_and_reraises():
  assert list(data.prefetch(iter(range(10)), size=2)) == list(range(10))

  def broken():
    yield 1
    raise RuntimeError("boom")

  it = data.prefetch(broken())
  assert next(it) == 1
  with pytest.raises(RuntimeError, match="boom"):
    next(it)


def test_to_global_builds_a_sharded_array():
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  (x,) = data.to_global(NamedSharding(mesh, P("data")), np.ones((4, 2), np.float32))
  assert x.shape == (4, 2) and x.sharding.spec == P("data")


def test_tfds_path_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=24):
    ds = data.load({"name": "cifar10", "source": "tfds", "validation_size": 8})
    assert ds.source == "tfds"
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (16, 8, 24)
    x, y = next(data.train_batches(ds.train, batch_size=4, seed=0, epoch=0,
                                   augment="crop_flip"))
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
    assert y.dtype == np.int32 and y.max() < 10
    again = next(data.train_batches(ds.train, batch_size=4, seed=0, epoch=0,
                                    augment="crop_flip"))
    assert np.array_equal(x, again[0])
    # ImageNet images vary in size: random-resized crops to a fixed side.
    imnet = data.load({"name": "imagenet2012", "validation_size": 4})
    x, _ = next(data.train_batches(imnet.train, batch_size=2, seed=0, epoch=0,
                                   augment="inception", image_size=24))
    assert x.shape == (2, 24, 24, 3)
    x, _, mask = next(data.eval_batches(imnet.test, batch_size=4,
                                        num_examples=3, image_size=24))
    assert x.shape == (4, 24, 24, 3) and mask.tolist() == [1, 1, 1, 0]


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(data.DataError, match="not prepared in .*tfds build cifar10"):
    data.load({"name": "cifar10", "tfds_data_dir": str(tmp_path)})


# ----------------------------------------------------------------------------
# The tfds path on a synthetic ImageNet, Grain workers, device prefetch


@pytest.fixture(scope="module")
def synthetic_imagenet(tmp_path_factory):
  """A tiny synthetic imagenet2012 in tfds array_record files (real reader)."""
  pytest.importorskip("tensorflow_datasets")
  from tools import synthetic_imagenet as tool
  folder = str(tmp_path_factory.mktemp("tfds"))
  tool.write(folder, num_train=40, num_validation=12, short_side=(24, 40))
  return folder


def test_synthetic_imagenet_reads_through_the_loader(synthetic_imagenet):
  from tools import synthetic_imagenet as tool
  ds = data.load({"name": "imagenet2012", "tfds_data_dir": synthetic_imagenet,
                  "validation_size": 8})
  assert ds.source == "tfds" and (len(ds.train), len(ds.test)) == (32, 12)
  images, labels = ds.test.read(np.arange(12))
  for image in images:
    h, w, c = np.asarray(image).shape
    assert c == 3 and 24 <= min(h, w) <= 40 and max(h, w) <= 80
  assert labels.dtype == np.int32 and labels.max() < 1000
  # The same settings reuse the set; others are refused, nothing overwritten.
  assert tool.write(synthetic_imagenet, num_train=40, num_validation=12,
                    short_side=(24, 40)).endswith("5.1.0")
  with pytest.raises(tool.SyntheticError, match="other settings"):
    tool.write(synthetic_imagenet, num_train=41, num_validation=12,
               short_side=(24, 40))


def test_grain_workers_give_the_in_process_batches(synthetic_imagenet):
  ds = data.load({"name": "imagenet2012", "tfds_data_dir": synthetic_imagenet,
                  "validation_size": 8})
  per_epoch = data.steps_per_epoch(len(ds.train), 8)  # 4
  # Across an epoch boundary, on one host of two.
  kw = dict(batch_size=8, seed=5, start_step=per_epoch - 2,
            stop_step=per_epoch + 2, process_index=1, process_count=2,
            augment="inception", image_size=16)
  alone = list(data.train_stream(ds.train, **kw))
  pooled = list(data.train_stream(ds.train, workers=2, **kw))
  assert len(alone) == len(pooled) == 4
  for (x0, y0), (x1, y1) in zip(alone, pooled):
    assert x0.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(y0, y1)
  evals = [list(data.eval_batches(ds.test, batch_size=8, image_size=16,
                                  workers=w)) for w in (0, 1)]
  assert len(evals[0]) == len(evals[1]) == 2
  for a, b in zip(*evals):
    for u, v in zip(a, b):
      np.testing.assert_array_equal(u, v)


def test_train_stream_runs_the_epochs_of_train_batches():
  split = _toy_split()
  epochs = [list(data.train_batches(split, batch_size=8, seed=2, epoch=e,
                                    augment="crop_flip")) for e in (0, 1)]
  stream = list(data.train_stream(split, batch_size=8, seed=2, start_step=3,
                                  stop_step=7, augment="crop_flip"))
  for (x0, y0), (x1, y1) in zip(epochs[0][3:] + epochs[1][:2], stream):
    assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
  assert len(stream) == 4


def _ramp(height, width):
  """Value = column index: bilinear resampling maps it to the source column."""
  return np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :, None],
                         (height, width, 3)).copy()


def test_inception_crop_resamples_the_drawn_rectangle():
  from lfr_jax import preprocessing
  h, w, size = 180, 240, 32
  image = _ramp(h, w)
  for position in range(6):
    x = preprocessing.preprocess([image], train=True, augment="inception",
                                 image_size=size, rng_seed=(7, 1),
                                 positions=[position])[0] * 255
    # The draws, replayed: area, aspect ratio, corner, flip.
    rng = np.random.default_rng([7, 1, position])
    while True:
      area = h * w * rng.uniform(0.08, 1.0)
      ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      ch, cw = round(np.sqrt(area / ratio)), round(np.sqrt(area * ratio))
      if 0 < ch <= h and 0 < cw <= w:
        break
    rng.integers(0, h - ch + 1)
    left = rng.integers(0, w - cw + 1)
    flip = rng.random() < 0.5
    source_x = left + (np.arange(size) + 0.5) * cw / size - 0.5
    expected = source_x[::-1] if flip else source_x
    inner = slice(2, size - 2)  # the filter is clipped at the image's edges
    np.testing.assert_allclose(x[:, inner, 0],
                               np.broadcast_to(expected[inner], (size, size - 4)),
                               atol=1.0)
    assert np.ptp(x, axis=0).max() == 0  # rows equal: a horizontal ramp


def test_center_crop_resamples_the_centre():
  h, w, size = 100, 200, 28
  x = data.preprocess([_ramp(h, w)], train=False, image_size=size)[0] * 255
  # Shorter side to size / 0.875 = 32: 32 x 64, then the centre 28 x 28.
  scale_x = 64 / w
  source_x = ((64 - size) // 2 + np.arange(size) + 0.5) / scale_x - 0.5
  np.testing.assert_allclose(x[0, :, 0], source_x, atol=1.0)


def test_decode_gives_the_channels_asked_for():
  import io
  from PIL import Image
  from lfr_jax import preprocessing
  grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
  buffer = io.BytesIO()
  Image.fromarray(grey).save(buffer, "PNG")
  rgb = np.asarray(preprocessing.decode(buffer.getvalue(), 3))
  assert rgb.shape == (6, 8, 3) and np.array_equal(rgb[..., 1], grey)
  assert np.array_equal(np.asarray(preprocessing.decode(buffer.getvalue(), 1)),
                        grey)


def test_workers_setting_is_checked_in_one_line():
  for bad in (-1, 1.5, "2", True):
    with pytest.raises(data.DataError, match=r"^data.workers .* integer >= 0"):
      data.check_settings({"name": "mnist", "workers": bad})
  data.check_settings({"name": "mnist", "workers": 3})


def test_device_batches_place_in_order_and_close_the_source():
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  closed = []

  def source():
    try:
      for i in range(100):
        yield np.full((2, 3), i, np.float32), np.array([i, i], np.int32)
    finally:
      closed.append(True)

  placed = data.device_batches(source(), NamedSharding(mesh, P("data")))
  for i in range(3):
    x, y = next(placed)
    assert isinstance(x, jax.Array) and x.sharding.spec == P("data")
    assert float(x[0, 0]) == i and y.tolist() == [i, i]
  placed.close()  # the consumer stops early: the producer closes its source
  assert closed == [True]
