"""MNIST's four original files: where they are, how to read and how to fetch them.

The repository ships the four ``.gz`` files in ``data/mnist/`` (the embedded
default), so a clone trains with no download and no setting. Elsewhere point
``config.data.dir`` or ``$LFR_DATA_DIR`` at any folder holding them, or fetch
them into one, checksums verified::

    python -m lfr_jax.data fetch mnist --dir ~/data/mnist
    # then: export LFR_DATA_DIR=~/data/mnist

Where to read them, in order: ``config.data.dir``, ``$LFR_DATA_DIR``, the
embedded ``data/mnist/`` (:func:`find_dir`).

Example::

    from lfr_jax import mnist
    images, labels = mnist.read_split("test", mnist.find_dir(""))
    images.shape                                    # (10000, 28, 28, 1) uint8
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import struct
import sys
import urllib.error
import urllib.request

import numpy as np

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
COUNTS = {"train": 60000, "test": 10000}
# The published MD5 sums of the original files (LeCun, Cortes and Burges).
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# A public mirror of the original files (the one PyTorch's torchvision uses).
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# The repository's copy, present in a clone (and an editable install).
EMBEDDED_DIR = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "data", "mnist"))
FETCH_COMMAND = "python -m lfr_jax.data fetch mnist --dir DIR"


class DataError(ValueError):
  """A data file is missing or does not hold what was expected."""


def has_files(folder: str) -> bool:
  """Whether ``folder`` holds all four files (by name)."""
  return all(os.path.isfile(os.path.join(folder, f)) for f in MD5)


def find_dir(data_dir: str | None) -> str:
  """The MNIST folder to read: ``data_dir``, ``$LFR_DATA_DIR`` or the embedded one.

  Raises:
    DataError: none is set and the embedded copy is absent (the message says
      how to fetch the files).
  """
  path = data_dir or os.environ.get("LFR_DATA_DIR", "")
  if path:
    return os.path.expanduser(path)
  if has_files(EMBEDDED_DIR):
    return EMBEDDED_DIR
  raise DataError(
      "no MNIST files: this installation has no data/mnist/ folder. Fetch "
      f"them with `{FETCH_COMMAND}`, then set LFR_DATA_DIR=DIR (or "
      "config.data.dir).")


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
                    f"{os.path.basename(path)} ({FETCH_COMMAND} fetches the "
                    f"four files).")
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"corrupt MNIST file {path}: expected gzip-compressed IDX "
                    f"data ({e}).") from None
  if (len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08
      or raw[3] != expected_ndim):
    raise DataError(f"corrupt MNIST file {path}: expected an IDX uint8 header "
                    f"with {expected_ndim} dimension(s).")
  dims = struct.unpack(">" + "I" * expected_ndim, raw[4:4 + 4 * expected_ndim])
  payload = raw[4 + 4 * expected_ndim:]
  if len(payload) != int(np.prod(dims)):
    raise DataError(f"corrupt MNIST file {path}: header says {dims} "
                    f"({int(np.prod(dims))} bytes) but holds {len(payload)} "
                    f"bytes.")
  return np.frombuffer(payload, np.uint8).reshape(dims)


def read_split(split: str, folder: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images (N, 28, 28, 1), int32 labels (N,)) of a split in ``folder``.

  Raises:
    DataError: unknown split, missing folder or files, or wrong contents.
  """
  if split not in FILES:
    raise DataError(f"unknown MNIST split {split!r}; valid: {sorted(FILES)}")
  if not os.path.isdir(folder):
    raise DataError(f"MNIST directory {folder} does not exist: expected a "
                    f"folder with the four IDX .gz files ({', '.join(MD5)}); "
                    f"`{FETCH_COMMAND}` fetches them.")
  img_name, lbl_name = FILES[split]
  images = read_idx(os.path.join(folder, img_name), 3)
  labels = read_idx(os.path.join(folder, lbl_name), 1)
  n = COUNTS[split]
  if images.shape != (n, 28, 28) or labels.shape != (n,):
    raise DataError(f"MNIST {split} files in {folder} hold {images.shape} "
                    f"images and {labels.shape} labels; expected "
                    f"({n}, 28, 28).")
  if labels.max() > 9:
    raise DataError(f"corrupt MNIST labels in {os.path.join(folder, lbl_name)}"
                    f": expected digits 0-9, found {int(labels.max())}.")
  return images[..., None], labels.astype(np.int32)


def md5(path: str) -> str:
  """The hex MD5 of a file, read in 1 MB chunks."""
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def fetch(folder: str, url: str = MIRROR, *, timeout: float = 60.0,
          log=print) -> list[str]:
  """Downloads the four files into ``folder`` and verifies their MD5 sums.

  Files already there with the right checksum are kept. Each download goes
  to a ``.part`` file renamed only once its checksum matches, so a failed or
  corrupt download leaves nothing behind.

  Args:
    folder: destination, created if needed.
    url: base URL of a mirror of the original files (ending in "/").
    timeout: seconds per connection attempt.
    log: where progress lines go.

  Returns:
    The names of the files downloaded (not those already present).

  Raises:
    DataError: a download failed or a file's checksum does not match; a
      folder this call created is removed again when it stays empty.
  """
  created = not os.path.isdir(folder)
  os.makedirs(folder, exist_ok=True)
  try:
    return _fetch_into(folder, url, timeout, log)
  except DataError:
    if created and not os.listdir(folder):
      os.rmdir(folder)  # no empty folder left behind
    raise


def _fetch_into(folder: str, url: str, timeout: float, log) -> list[str]:
  """The downloads of :func:`fetch` into an existing ``folder``."""
  fetched = []
  for name, expected in MD5.items():
    path = os.path.join(folder, name)
    if os.path.isfile(path) and md5(path) == expected:
      log(f"{name}: present, checksum ok")
      continue
    part = path + ".part"
    source = url.rstrip("/") + "/" + name
    try:
      with urllib.request.urlopen(source, timeout=timeout) as response, \
          open(part, "wb") as out:
        for chunk in iter(lambda: response.read(1 << 20), b""):
          out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as e:
      _remove(part)
      raise DataError(f"could not download {source}: {e}.") from None
    got = md5(part)
    if got != expected:
      _remove(part)
      raise DataError(f"{source} has MD5 {got}, not the published {expected}; "
                      f"removed the download.")
    os.replace(part, path)
    fetched.append(name)
    log(f"{name}: downloaded, checksum ok")
  return fetched


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def main(argv: list[str]) -> int:
  """``fetch mnist --dir DIR [--url URL]``; prints the LFR_DATA_DIR line."""
  parser = argparse.ArgumentParser(
      prog="python -m lfr_jax.data",
      description="Fetch a dataset's original files, checksums verified.")
  sub = parser.add_subparsers(dest="command", required=True)
  fetch_parser = sub.add_parser("fetch", help="download a dataset's files")
  fetch_parser.add_argument("dataset", choices=["mnist"])
  fetch_parser.add_argument("--dir", required=True,
                            help="destination folder (created if needed)")
  fetch_parser.add_argument("--url", default=MIRROR,
                            help=f"mirror of the original files (default "
                                 f"{MIRROR})")
  args = parser.parse_args(argv)
  folder = os.path.abspath(os.path.expanduser(args.dir))
  try:
    fetch(folder, args.url)
  except DataError as e:
    shipped = (f" A clone of the repository already holds the files in "
               f"{EMBEDDED_DIR}, the default: nothing to fetch there."
               if os.path.isdir(EMBEDDED_DIR) else "")
    print(f"{parser.prog}: error: {e}{shipped}", file=sys.stderr)
    return 2
  print(f"MNIST is in {folder}. Use it with:\nexport LFR_DATA_DIR={folder}")
  return 0
