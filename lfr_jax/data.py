"""Datasets: the offline MNIST IDX reader (more loaders are added by the training layer).

MNIST is read from the four original IDX ``.gz`` files in a directory given
explicitly or by the environment variable ``LFR_DATA_DIR``.

Example::

    from lfr_jax import data
    x, y = data.load_mnist_idx("test")        # uses $LFR_DATA_DIR
    x.shape, x.dtype                           # (10000, 28, 28, 1) float32 in [0, 1]
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_MNIST_COUNTS = {"train": 60000, "test": 10000}


class DataError(ValueError):
  """A data file is missing or does not hold what was expected."""


def resolve_data_dir(data_dir: str | None) -> str:
  """Returns ``data_dir`` or ``$LFR_DATA_DIR``, or raises DataError naming both."""
  path = data_dir or os.environ.get("LFR_DATA_DIR", "")
  if not path:
    raise DataError("no MNIST directory: set config.data.dir or the environment "
                    "variable LFR_DATA_DIR to a folder with the four IDX .gz files.")
  return os.path.expanduser(path)


def read_idx(path: str, expected_ndim: int) -> np.ndarray:
  """Reads one gzipped IDX file (uint8 payload).

  Args:
    path: the ``.gz`` file.
    expected_ndim: 3 for images, 1 for labels.

  Returns:
    The uint8 array.

  Raises:
    DataError: if the file is missing, not gzip, or not an IDX uint8 file of
      the expected rank and size.
  """
  if not os.path.isfile(path):
    raise DataError(f"missing MNIST file {path}: expected the original "
                    f"{os.path.basename(path)} from the MNIST distribution.")
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"corrupt MNIST file {path}: expected gzip-compressed IDX "
                    f"data ({e}).") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != expected_ndim:
    raise DataError(f"corrupt MNIST file {path}: expected an IDX uint8 header "
                    f"with {expected_ndim} dimension(s).")
  dims = struct.unpack(">" + "I" * expected_ndim, raw[4:4 + 4 * expected_ndim])
  payload = raw[4 + 4 * expected_ndim:]
  if len(payload) != int(np.prod(dims)):
    raise DataError(f"corrupt MNIST file {path}: header says {dims} "
                    f"({int(np.prod(dims))} bytes) but holds {len(payload)} bytes.")
  return np.frombuffer(payload, np.uint8).reshape(dims)


def load_mnist_idx(split: str, data_dir: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Loads an MNIST split from the original IDX files.

  Args:
    split: "train" (60,000 examples) or "test" (10,000).
    data_dir: folder with the four files; ``$LFR_DATA_DIR`` when empty.

  Returns:
    (images float32 (N, 28, 28, 1) in [0, 1], labels int32 (N,)).
  """
  if split not in MNIST_FILES:
    raise DataError(f"unknown MNIST split {split!r}; valid: {sorted(MNIST_FILES)}")
  root = resolve_data_dir(data_dir)
  img_name, lbl_name = MNIST_FILES[split]
  images = read_idx(os.path.join(root, img_name), 3)
  labels = read_idx(os.path.join(root, lbl_name), 1)
  if images.shape != (_MNIST_COUNTS[split], 28, 28) or labels.shape != (_MNIST_COUNTS[split],):
    raise DataError(f"MNIST {split} files in {root} hold {images.shape} images and "
                    f"{labels.shape} labels; expected ({_MNIST_COUNTS[split]}, 28, 28).")
  x = (images.astype(np.float32) / 255.0)[..., None]
  return x, labels.astype(np.int32)
