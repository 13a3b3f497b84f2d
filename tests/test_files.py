"""Result files are written whole, with the usual permissions; versions and latest.

The kill tests start a writer in a subprocess that rewrites one file over and
over with two alternating contents, kill it with SIGKILL after a random
delay, and check that the file is then one of the two contents, complete.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from lfr_jax import files
from lfr_jax.workdir import layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def test_atomic_write_replaces_whole_and_gets_the_usual_permissions(tmp_path):
  path = tmp_path / "robustness.md"
  files.write_atomic(path, "old")
  files.write_atomic(path, "new report")
  files.write_atomic(tmp_path / "per_example.npz", b"\x00\x01")
  assert path.read_text() == "new report"
  expected = 0o666 & ~_umask()
  for name in ("robustness.md", "per_example.npz"):
    # mkstemp's 0600 made evaluation outputs unreadable to the group.
    assert (os.stat(tmp_path / name).st_mode & 0o777) == expected, name
  assert sorted(os.listdir(tmp_path)) == ["per_example.npz", "robustness.md"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "summary.json"
  files.write_atomic(path, "{}")
  with pytest.raises(RuntimeError):
    with files.atomic_file(path) as f:
      f.write('{"half": ')
      raise RuntimeError("killed mid-write")
  assert path.read_text() == "{}"
  assert os.listdir(tmp_path) == ["summary.json"]


def test_temporary_files_of_a_killed_writer_are_ignored_by_workdir_checks(
    tmp_path):
  (tmp_path / "config.json").write_text("{}")
  # What a kill between the temporary write and the rename leaves behind.
  (tmp_path / ".summary.json.tmp-999999999-0a1b2c3d").write_text("{")
  (tmp_path / ".staging-999999999-20261203T101500Z-1a2b3c4d").mkdir()
  assert files.is_temporary(".summary.json.tmp-999999999-0a1b2c3d")
  assert not files.is_temporary("summary.json")
  layout.check(tmp_path)  # not "already holds other files"
  # The next write of the same file removes the dead process's leftover.
  files.write_atomic(tmp_path / "summary.json", "{}")
  assert not (tmp_path / ".summary.json.tmp-999999999-0a1b2c3d").exists()


# Runs in a subprocess that imports once, then forks one writer per trial (a
# fresh interpreter per kill would spend seconds importing matplotlib); each
# writer rewrites the file with two alternating contents until killed.
_HARNESS = textwrap.dedent("""
    import hashlib, os, random, signal, sys, time
    sys.path.insert(0, {repo!r})
    from lfr_jax import files

    path, trials, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    blobs = [b"A" * 3_000_000, b"B" * 2_000_000]
    digests = {{hashlib.sha256(b).hexdigest() for b in blobs}}
    files.write_atomic(path, blobs[0])
    start = time.time()
    files.write_atomic(path, blobs[1])
    cycle = time.time() - start  # kills land anywhere in about two writes
    rng = random.Random(seed)
    for trial in range(trials):
      ready_r, ready_w = os.pipe()
      pid = os.fork()
      if pid == 0:
        os.close(ready_r)
        os.write(ready_w, b"r")
        i = 0
        while True:
          files.write_atomic(path, blobs[i % 2])
          i += 1
      os.close(ready_w)
      os.read(ready_r, 1)
      time.sleep(rng.uniform(0.0, 2 * cycle))
      os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
      os.close(ready_r)
      whole = hashlib.sha256(open(path, "rb").read()).hexdigest() in digests
      print("whole" if whole else "TORN", oct(os.stat(path).st_mode & 0o777),
            flush=True)
""")


def test_a_writer_killed_at_random_moments_leaves_old_or_new_never_torn(
    tmp_path):
  """SIGKILL at random delays, repeated: the file is one content, whole."""
  script = tmp_path / "harness.py"
  script.write_text(_HARNESS.format(repo=REPO))
  done = subprocess.run(
      [sys.executable, str(script), str(tmp_path / "result.bin"), "20", "0"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert done.returncode == 0, done.stderr[-2000:]
  lines = [l.split() for l in done.stdout.splitlines()]
  assert [l[0] for l in lines] == ["whole"] * 20
  assert {l[1] for l in lines} == {oct(0o666 & ~_umask())}


def test_a_figure_interrupted_while_written_leaves_the_previous_one(
    tmp_path, monkeypatch):
  """plots wrote in place: a kill left eps_sweep.png as a 0-byte file."""
  from matplotlib import image
  from matplotlib.figure import Figure
  from lfr_jax import plots
  path = str(tmp_path / "eps_sweep.png")
  plots.plot_eps_sweep([0.0, 0.3], {"pgd": [99.0, 10.0]}, path=path, dpi=30)
  before = open(path, "rb").read()
  real_savefig = Figure.savefig

  def dies_mid_write(fig, fname, **kwargs):
    # Write part of the new figure where asked, then die (as on SIGKILL).
    if isinstance(fname, (str, os.PathLike)):
      with open(fname, "wb") as f:
        f.write(b"\x89PNG")
    else:
      fname.write(b"\x89PNG")
    raise KeyboardInterrupt

  monkeypatch.setattr(Figure, "savefig", dies_mid_write)
  with pytest.raises(KeyboardInterrupt):
    plots.plot_eps_sweep([0.0, 0.3], {"pgd": [98.0, 50.0]}, path=path, dpi=30)
  monkeypatch.setattr(Figure, "savefig", real_savefig)
  assert open(path, "rb").read() == before
  assert image.imread(path).ndim == 3
  assert sorted(os.listdir(tmp_path)) == ["eps_sweep.npz", "eps_sweep.png"]


def test_versions_are_published_whole_and_latest_points_to_the_newest(
    tmp_path):
  folder = tmp_path / "eval"
  assert files.latest(folder) is None
  first = files.start_version(folder, files.version_name({"n": 20}))
  files.write_atomic(os.path.join(first, "robustness.md"), "20 examples")
  # Unpublished: nothing to read yet, and the staging folder is hidden.
  assert files.latest(folder) is None
  first = files.publish_version(first)
  second = files.start_version(folder, files.version_name({"n": 8}))
  files.write_atomic(os.path.join(second, "robustness.md"), "8 examples")
  assert files.latest(folder) == first  # until the new one is complete
  second = files.publish_version(second)
  assert os.path.islink(folder / files.LATEST)
  assert files.latest(folder) == second
  assert open(files.latest_file(folder, "robustness.md")).read() == "8 examples"
  assert open(os.path.join(first, "robustness.md")).read() == "20 examples"
  assert files.versions(folder) == sorted(
      [os.path.basename(first), os.path.basename(second)])
  # A named version, and the flat layout of copies such as docs/results.
  assert files.latest(folder, os.path.basename(first)) == first
  flat = tmp_path / "flat"
  flat.mkdir()
  (flat / "robustness.json").write_text("{}")
  assert files.latest(flat) == str(flat)


def test_latest_is_a_pointer_file_where_symlinks_fail(tmp_path, monkeypatch):
  def no_symlinks(*args, **kwargs):
    raise PermissionError(1, "Operation not permitted")

  monkeypatch.setattr(os, "symlink", no_symlinks)
  stage = files.start_version(tmp_path, "20261203T101500Z-1a2b3c4d")
  done = files.publish_version(stage)
  assert (tmp_path / files.LATEST).read_text().strip() == os.path.basename(done)
  assert files.latest(tmp_path) == done


def test_version_names_order_by_time_and_name_their_settings():
  import datetime
  t0 = datetime.datetime(2026, 12, 3, 10, 15, tzinfo=datetime.timezone.utc)
  t1 = t0 + datetime.timedelta(seconds=1)
  a, b = files.version_name({"n": 1}, t0), files.version_name({"n": 1}, t1)
  c = files.version_name({"n": 2}, t0)
  assert a < b and a.startswith("20261203T101500Z-")
  assert a.split("-")[1] == b.split("-")[1] != c.split("-")[1]
