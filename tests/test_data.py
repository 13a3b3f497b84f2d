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
