"""Real two-process runs on one machine: the code path of a TPU pod slice.

Two CPU processes start ``jax.distributed`` on 127.0.0.1 (CPU collectives over
gloo) and each reads its own half of every global batch:

- the data alone (``tests/two_process_reader.py``), for an in-memory split
  and for a synthetic ImageNet in tfds array_record files read by Grain
  workers: the halves are disjoint, together they are the global batch of a
  one-process reader, every epoch covers every example exactly once, and a
  reader started mid-run (a resume) reads exactly the batches it would have;
- training (``train.py``), MNIST from the IDX files and the synthetic
  ImageNet through tfds and Grain: both processes are killed after a
  checkpoint and started again; the parameters they finish with equal those
  of one uninterrupted process on the same global batches.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lfr_jax import data
from lfr_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
import two_process_reader as reader  # noqa: E402

TIMEOUT = 600


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_pair(args_for):
  """Starts two processes; ``args_for(process_id, port)`` is a command line."""
  port = _free_port()
  return [subprocess.Popen(args_for(i, port), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
          for i in range(2)]


def _finish(procs):
  outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


@pytest.fixture(scope="module")
def synthetic_imagenet(tmp_path_factory):
  """A tiny synthetic imagenet2012 (40 train, 12 validation JPEGs)."""
  pytest.importorskip("tensorflow_datasets")
  from tools import synthetic_imagenet as tool
  folder = str(tmp_path_factory.mktemp("tfds"))
  tool.write(folder, num_train=40, num_validation=12, short_side=(24, 40))
  return folder


# ----------------------------------------------------------------------------
# The data


def _read_pair(tmp_path, tfds_dir, start, stop, name):
  outs = [tmp_path / f"{name}{i}.json" for i in range(2)]
  _finish(_start_pair(lambda i, port: [
      sys.executable, os.path.join(REPO, "tests", "two_process_reader.py"),
      f"--port={port}", f"--process_id={i}", f"--out={outs[i]}",
      f"--tfds_dir={tfds_dir}", f"--start={start}", f"--stop={stop}",
      "--workers=1"]))
  return [json.loads(o.read_text()) for o in outs]


def test_two_processes_read_disjoint_halves_covering_each_epoch(
    tmp_path, synthetic_imagenet):
  splits = {"array": reader.array_split(),
            "tfds": reader.tfds_split(synthetic_imagenet)}
  per_epoch = data.steps_per_epoch(32, reader.BATCH)  # both splits: 32 examples
  assert all(len(s) == 32 for s in splits.values())
  full = _read_pair(tmp_path, synthetic_imagenet, 0, 2 * per_epoch, "full")
  resumed = _read_pair(tmp_path, synthetic_imagenet, per_epoch + 1,
                       2 * per_epoch, "resumed")
  assert [r["process_index"] for r in full] == [0, 1]
  assert full[0]["devices"] == 2
  # Every example's id, read without train_stream: its label, or a hash of
  # its centre crop (the synthetic images are all different).
  everyone = {
      "array": list(range(32)),
      "tfds": reader.fingerprints(np.concatenate(
          [x for x, _, _ in data.eval_batches(
              splits["tfds"], batch_size=8,
              image_size=reader.IMAGE_SIZE)]))}
  assert len(set(everyone["tfds"])) == 32
  for kind in ("array", "tfds"):
    steps = [r[kind] for r in full]
    assert len(steps[0]) == len(steps[1]) == 2 * per_epoch
    for s in range(2 * per_epoch):
      mine, theirs = steps[0][s]["local"], steps[1][s]["local"]
      assert len(mine) == len(theirs) == reader.BATCH // 2
      assert not set(mine) & set(theirs), (kind, s)
      # Both processes assembled the same global batch: the two halves.
      assert steps[0][s]["global"] == steps[1][s]["global"] == mine + theirs
    for epoch in range(2):
      seen = [i for s in range(epoch * per_epoch, (epoch + 1) * per_epoch)
              for r in steps for i in r[s]["local"]]
      assert sorted(seen) == sorted(everyone[kind]), (kind, epoch)
    # A reader started mid-run reads the batches of the uninterrupted one.
    for r_full, r_resumed in zip(full, resumed):
      assert r_resumed[kind] == r_full[kind][per_epoch + 1:], kind
  # The global batches are those of one process reading alone.
  alone = [y.tolist() for _, y in data.train_stream(
      splits["array"], batch_size=reader.BATCH, seed=0, start_step=0,
      stop_step=2 * per_epoch, augment="crop_flip")]
  assert [s["global"] for s in full[0]["array"]] == alone


# ----------------------------------------------------------------------------
# Training: killed, resumed, equal to one process


def _checkpointed(workdir) -> bool:
  folder = workdir / workdir_lib.CHECKPOINTS
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def _kill_after_first_checkpoint(procs, workdir):
  deadline = time.time() + TIMEOUT
  while not _checkpointed(workdir):
    assert all(p.poll() is None for p in procs), (
        "a process ended before its first checkpoint: " +
        "".join(p.communicate()[0][-2000:] for p in procs))
    assert time.time() < deadline, "no checkpoint"
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.communicate(timeout=60)


def _train_pair(args, workdir, port):
  return [*args, f"--workdir={workdir}", "--config.distributed.enabled=True",
          f"--config.distributed.coordinator_address=127.0.0.1:{port}",
          "--config.distributed.num_processes=2"]


def _kill_resume_and_compare(tmp_path, args, config, pair_extra=(),
                             alone_extra=()):
  """Two processes killed and resumed vs one process: equal parameters."""
  shared, single = tmp_path / "two", tmp_path / "one"
  start = lambda: _start_pair(lambda i, port: [  # noqa: E731
      *_train_pair(args, shared, port), *pair_extra,
      f"--config.distributed.process_id={i}"])
  _kill_after_first_checkpoint(start(), shared)
  assert not (shared / "summary.json").exists()  # killed mid-run
  outputs = _finish(start())
  assert "2 devices" in outputs[0]  # one CPU device per process, one mesh
  assert "resumed from step" in outputs[0], outputs[0][-3000:]
  proc = subprocess.run([*args, f"--workdir={single}", *alone_extra], cwd=REPO,
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  a, meta_a = workdir_lib.load_checkpoint(config, str(shared))
  b, meta_b = workdir_lib.load_checkpoint(config, str(single))
  assert meta_a["step"] == meta_b["step"] > 0
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6,
                               rtol=0)


def test_two_processes_killed_and_resumed_train_like_one(tmp_path):
  steps = 6
  args = [sys.executable, "train.py", "--config=configs/mnist_lfr.py:smoke",
          f"--config.train.max_steps={steps}", "--config.log.every_steps=100",
          "--config.checkpoint.every_steps=1"]
  from configs import mnist_lfr
  _kill_resume_and_compare(tmp_path, args, mnist_lfr.get_config("smoke"))


@pytest.mark.slow
def test_tfds_path_killed_and_resumed_trains_like_one(tmp_path,
                                                      synthetic_imagenet):
  # Five training processes plus their Grain workers: about 100 CPU-seconds,
  # so slow; the default set reads the tfds path with two processes above.
  # SmallCNN on 28 x 28 Inception crops of the synthetic ImageNet: the real
  # tfds reader and Grain workers at the cost of an MNIST smoke run.
  overrides = {"data.name": "imagenet2012",
               "data.tfds_data_dir": synthetic_imagenet,
               "data.image_size": 28, "data.augment": "inception",
               "data.train_size": 32, "data.validation_size": 8,
               "data.batch_size": 8, "model.in_channels": 3,
               "model.num_classes": 1000, "eval.val_examples": 8,
               "eval.test_examples": 8, "eval.batch_size": 8,
               "train.max_steps": 6, "log.every_steps": 100,
               "checkpoint.every_steps": 1}
  args = [sys.executable, "train.py", "--config=configs/mnist_standard.py:smoke",
          *[f"--config.{k}={v}" for k, v in overrides.items()]]
  from configs import mnist_standard
  config = mnist_standard.get_config("smoke")
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  # Two processes with a Grain worker each; one process reading in-process.
  _kill_resume_and_compare(tmp_path, args, config,
                           pair_extra=["--config.data.workers=1"],
                           alone_extra=["--config.data.workers=0"])
