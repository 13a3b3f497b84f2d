"""A real two-process run on one machine: the code path of a TPU pod slice.

Two CPU processes start ``jax.distributed`` on 127.0.0.1 (CPU collectives over
gloo), each reads its own half of every global batch, and together they train
a few LFR steps on a two-device mesh. The parameters must equal a
one-process run on the same global batches.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from lfr_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
STEPS = 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_args(workdir, *extra):
  return [sys.executable, "train.py", "--config=configs/mnist_lfr.py:smoke",
          f"--workdir={workdir}", f"--config.train.max_steps={STEPS}",
          "--config.log.every_steps=100", *extra]


def test_two_processes_train_like_one(tmp_path):
  port = _free_port()
  shared = tmp_path / "two"
  procs = [subprocess.Popen(
      _train_args(shared, "--config.distributed.enabled=True",
                  f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                  "--config.distributed.num_processes=2",
                  f"--config.distributed.process_id={i}"),
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert "2 devices" in outputs[0]  # one CPU device per process, one mesh
  single = tmp_path / "one"
  proc = subprocess.run(_train_args(single), cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]

  from configs import mnist_lfr
  config = mnist_lfr.get_config("smoke")
  a, meta_a = workdir_lib.load_checkpoint(config, str(shared))
  b, meta_b = workdir_lib.load_checkpoint(config, str(single))
  assert meta_a["step"] == meta_b["step"] == STEPS
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6,
                               rtol=0)
