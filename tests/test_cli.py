"""The entry points: presets by name, console scripts, one-line errors."""

import os
import shutil
import subprocess
import sys

from lfr_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_presets_resolve_by_name():
  folder = cli.configs_dir()
  assert os.path.isfile(os.path.join(folder, "mnist_lfr.py"))
  argv = ["prog", "--config=mnist_lfr:quick", "--config.lfr.lam=0.1",
          "--config=configs/mnist_at.py", "--config=nope:quick",
          "--workdir=mnist_lfr"]
  assert cli.resolve_preset(argv) == [
      "prog", f"--config={os.path.join(folder, 'mnist_lfr.py')}:quick",
      "--config.lfr.lam=0.1", "--config=configs/mnist_at.py",
      "--config=nope:quick", "--workdir=mnist_lfr"]


def _script(name):
  return shutil.which(name, path=os.path.dirname(sys.executable))


def test_console_scripts_run_the_same_programs(tmp_path):
  """lfr-train / lfr-evaluate exist after `pip install -e .` and fail in one line."""
  train, evaluate = _script("lfr-train"), _script("lfr-evaluate")
  assert train and evaluate, "pip install -e . installs the console scripts"
  proc = subprocess.run(
      [train, "--config=mnist_lfr:smoke", "--config.lfr.lamm=0.1",
       f"--workdir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "train.py: error: --config.lfr.lamm: no such config field. Did you mean "
      "\"lam\" instead of \"lamm\"?"]
  assert not (tmp_path / "run").exists()
  proc = subprocess.run([evaluate], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2 and "nothing to evaluate" in proc.stderr
