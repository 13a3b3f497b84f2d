"""Shared test setup: fast CPU flags, the MNIST gate and the MNIST fixtures.

Tests that read the MNIST IDX files carry ``@pytest.mark.mnist`` (or use the
``mnist_dir``, ``mnist_train`` or ``mnist_test`` fixtures). The files come
from ``$LFR_DATA_DIR`` or, when it is unset, the repository's ``data/mnist/``.
These tests skip, and say why, only when neither exists (an installation
without the embedded copy). A folder that lacks a file, or a file that does
not read, fails them: a data error is a failure, never a skip. Tests that
need no data carry no mark.
"""

import os

import pytest

import lfr_jax  # noqa: F401  (sets the fast XLA CPU flags before jax starts)
from lfr_jax import data
from lfr_jax import mnist


def mnist_dir_or_skip() -> str:
  """The MNIST folder; skips when there is none, fails when it is broken."""
  folder = os.environ.get("LFR_DATA_DIR", "")
  if not folder:
    if not os.path.isdir(mnist.EMBEDDED_DIR):
      pytest.skip("needs the MNIST IDX files: LFR_DATA_DIR is not set and "
                  "this installation has no data/mnist/")
    folder = mnist.EMBEDDED_DIR
  names = sorted(sum(mnist.FILES.values(), ()))
  missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
  if missing:
    pytest.fail(f"the MNIST folder {folder} lacks {', '.join(missing)}",
                pytrace=False)
  return folder


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "mnist: reads the MNIST IDX files (skips only when no data "
      "folder is configured; a broken one fails)")


def pytest_runtest_setup(item):
  if item.get_closest_marker("mnist") is not None:
    mnist_dir_or_skip()


@pytest.fixture(scope="session")
def mnist_dir() -> str:
  """The MNIST IDX folder (see the module docstring)."""
  return mnist_dir_or_skip()


@pytest.fixture(scope="session")
def mnist_train(mnist_dir):
  """The 60,000 training images (float32 in [0, 1]) and labels, read once."""
  return data.load_mnist_idx("train", mnist_dir)


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
  """The 10,000 test images and labels, read once."""
  return data.load_mnist_idx("test", mnist_dir)
