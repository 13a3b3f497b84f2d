"""Fetching MNIST: checksums, partial downloads, the CLI, the embedded copy."""

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading

import pytest

from lfr_jax import data, mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def server(tmp_path):
  """An HTTP server on 127.0.0.1 serving a folder; yields (url, folder)."""
  folder = tmp_path / "mirror"
  folder.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                              directory=str(folder))
  handler.log_message = lambda *a, **k: None
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}/", folder
  httpd.shutdown()


def _mirror(folder):
  for name in mnist.MD5:
    shutil.copy(os.path.join(mnist.EMBEDDED_DIR, name), folder / name)


def test_embedded_copy_is_the_published_files():
  for name, expected in mnist.MD5.items():
    assert mnist.md5(os.path.join(mnist.EMBEDDED_DIR, name)) == expected


def test_fetch_verifies_and_keeps_good_files(server, tmp_path):
  url, folder = server
  _mirror(folder)
  dest = tmp_path / "dest"
  assert sorted(mnist.fetch(str(dest), url, log=lambda _: None)) == sorted(
      mnist.MD5)
  for name, expected in mnist.MD5.items():
    assert mnist.md5(dest / name) == expected
  # A second fetch finds them and downloads nothing.
  assert mnist.fetch(str(dest), url, log=lambda _: None) == []
  images, labels = mnist.read_split("test", str(dest))
  assert images.shape == (10000, 28, 28, 1) and labels.shape == (10000,)


def test_corrupt_download_fails_and_leaves_nothing(server, tmp_path):
  url, folder = server
  _mirror(folder)
  corrupt = folder / "t10k-labels-idx1-ubyte.gz"
  corrupt.write_bytes(corrupt.read_bytes()[:-10] + b"0123456789")
  dest = tmp_path / "dest"
  with pytest.raises(mnist.DataError, match="t10k-labels-idx1-ubyte.gz has "
                     "MD5 .* not the published ec29112d"):
    mnist.fetch(str(dest), url, log=lambda _: None)
  left = sorted(os.listdir(dest))
  assert "t10k-labels-idx1-ubyte.gz" not in left
  assert not [f for f in left if f.endswith(".part")]


def test_missing_file_on_mirror_is_one_line(server, tmp_path):
  url, _ = server  # serves an empty folder
  with pytest.raises(mnist.DataError, match="could not download .*train-images"):
    mnist.fetch(str(tmp_path / "dest"), url, log=lambda _: None)
  # Nothing came: the folder the fetch created is gone again (it was left
  # empty, looking like a data folder).
  assert not (tmp_path / "dest").exists()


def test_fetch_command_prints_the_variable_to_set(server, tmp_path):
  url, folder = server
  _mirror(folder)
  dest = tmp_path / "dest"
  proc = subprocess.run(
      [sys.executable, "-m", "lfr_jax.data", "fetch", "mnist", f"--dir={dest}",
       f"--url={url}"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip().endswith(f"export LFR_DATA_DIR={dest}")
  bad = subprocess.run(
      [sys.executable, "-m", "lfr_jax.data", "fetch", "mnist",
       f"--dir={tmp_path / 'x'}", "--url=http://127.0.0.1:9/"], cwd=REPO,
      capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
  assert "could not download http://127.0.0.1:9/" in bad.stderr
  assert "already holds the files in" in bad.stderr  # the clone's data/mnist
  assert not (tmp_path / "x").exists()


def test_without_any_copy_the_error_names_the_fetch_command(monkeypatch,
                                                            tmp_path):
  monkeypatch.delenv("LFR_DATA_DIR", raising=False)
  monkeypatch.setattr(mnist, "EMBEDDED_DIR", str(tmp_path / "absent"))
  with pytest.raises(data.DataError, match="python -m lfr_jax.data fetch "
                     "mnist --dir DIR"):
    data.load_mnist_idx("test")
  assert not data.uses_idx({"name": "mnist"})  # falls to tfds, whose error
  # message names the same command (see test_data).


def test_embedded_copy_is_the_default(monkeypatch):
  monkeypatch.delenv("LFR_DATA_DIR", raising=False)
  assert data.uses_idx({"name": "mnist", "source": "auto", "dir": ""})
  assert data.resolve_data_dir("") == mnist.EMBEDDED_DIR
