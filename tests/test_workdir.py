"""The workdir contract: one config per workdir, damaged checkpoints, the lock, URIs."""

import gc
import json
import os
import subprocess
import sys
import time

import fsspec
from fsspec.implementations.local import LocalFileSystem
import jax
import numpy as np
import pytest

from lfr_jax import training
from lfr_jax import workdir as workdir_lib
from smoke_configs import smoke  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)




def _config_json(path):
  return (path / "config.json").read_text()


# --- one config per workdir ---------------------------------------------------


def test_config_differences_split_result_changing_from_safe_fields():
  base = smoke("mnist_lfr").to_dict()
  changed = json.loads(json.dumps(base))
  changed["lfr"]["lam"] = 0.5
  changed["train"]["max_epochs"] = 3.0
  changed["eval"]["val_examples"] = 100
  changed["data"]["dir"] = "/elsewhere"
  changed["train"]["num_epochs"] = 4.0  # moves the LR decay: not safe
  result, safe = workdir_lib.config_differences(base, changed)
  assert result == ["lfr.lam", "train.num_epochs"]
  assert safe == ["data.dir", "eval.val_examples", "train.max_epochs"]
  # Tuples and the lists config.json holds compare equal.
  assert workdir_lib.config_differences(base, json.loads(json.dumps(base))) == (
      [], [])


@pytest.mark.mnist
@pytest.mark.parametrize("preset,overrides,named", [
    ("mnist_trades", {}, "method"),
    ("mnist_lfr", {"lfr__lam": 0.5}, "lfr.lam"),
])
def test_a_changed_config_does_not_take_over_a_run(tmp_path, preset, overrides,
                                                   named):
  path = tmp_path / "run"
  training.train_and_evaluate(smoke("mnist_lfr"), str(path))
  before = _config_json(path)
  metrics_before = (path / "metrics.jsonl").read_text()
  with pytest.raises(workdir_lib.WorkdirError) as e:
    training.train_and_evaluate(smoke(preset, **overrides), str(path))
  message = str(e.value)
  assert "\n" not in message and "trained with other settings" in message
  assert named in message and "use a new workdir" in message
  # Nothing of the refused call reached the workdir.
  assert _config_json(path) == before
  assert (path / "metrics.jsonl").read_text() == metrics_before
  assert not (path / "lock.json").exists()


@pytest.mark.mnist
def test_safe_changes_resume_and_are_recorded(tmp_path):
  path = tmp_path / "run"
  stopped = training.train_and_evaluate(smoke(train__max_steps=4), str(path))
  before = _config_json(path)
  resumed = training.train_and_evaluate(smoke(log__every_steps=4), str(path))
  assert not stopped["completed"] and resumed["completed"]
  assert _config_json(path) == before  # the config that made the checkpoint
  changes = [json.loads(l) for l in
             (path / "config_changes.jsonl").read_text().splitlines()]
  assert [c["step"] for c in changes] == [4]
  assert changes[0]["changes"] == {"log.every_steps": [2, 4],
                                   "train.max_steps": [4, 0]}


@pytest.mark.mnist
def test_config_json_records_the_data_that_was_read(tmp_path, mnist_dir):
  path = tmp_path / "run"
  training.train_and_evaluate(smoke(), str(path))
  recorded = json.loads(_config_json(path))
  assert recorded["data"]["source"] == "idx"
  assert recorded["data"]["dir"] == os.path.abspath(mnist_dir)
  # The recorded source resolves the same way on resume: no refusal.
  assert training.train_and_evaluate(smoke(), str(path))["completed"]


@pytest.mark.mnist
def test_train_resumes_a_workdir_holding_evaluation_outputs(tmp_path):
  path = tmp_path / "run"
  training.train_and_evaluate(smoke(train__max_steps=4), str(path))
  (path / "eval").mkdir()
  (path / "eval" / "robustness.md").write_text("# an evaluation\n")
  assert training.train_and_evaluate(smoke(), str(path))["completed"]
  assert (path / "eval" / "robustness.md").read_text() == "# an evaluation\n"


# --- damaged checkpoints ----------------------------------------------------------


def _truncate_arrays(step_dir):
  """Cuts every array data file of a checkpoint to half its size."""
  cut = 0
  for root, _, files in os.walk(step_dir):
    for name in files:
      full = os.path.join(root, name)
      if "state" in full and not name.endswith((".json", "_METADATA")) and \
          os.path.getsize(full) > 64:
        with open(full, "r+b") as f:
          f.truncate(os.path.getsize(full) // 2)
        cut += 1
  assert cut, f"no array file under {step_dir}"


def _steps(path):
  return sorted(int(d) for d in os.listdir(path / "checkpoints") if d.isdigit())


@pytest.mark.mnist
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact(
    tmp_path, caplog):
  straight, damaged = tmp_path / "straight", tmp_path / "damaged"
  config = smoke(checkpoint__every_steps=2)
  training.train_and_evaluate(config, str(straight))
  training.train_and_evaluate(smoke(checkpoint__every_steps=2,
                                    train__max_steps=6), str(damaged))
  assert _steps(damaged)[-1] == 6
  _truncate_arrays(damaged / "checkpoints" / "6")
  unraisable = []
  previous_hook = sys.unraisablehook
  sys.unraisablehook = unraisable.append
  try:
    with caplog.at_level("WARNING"):
      summary = training.train_and_evaluate(config, str(damaged))
    gc.collect()
    time.sleep(0.5)  # TensorStore's late callbacks come from its threads
  finally:
    sys.unraisablehook = previous_hook
  # One line per damaged step, then the resume; no "Event loop is closed"
  # tracebacks from the reads orbax left in flight (up to 37 of them).
  warning = [r.getMessage() for r in caplog.records
             if r.levelname == "WARNING" and "constant" not in r.getMessage()]
  assert warning == [
      f"checkpoint step 6 in {damaged / 'checkpoints'} does not restore "
      f"(damaged files); moved to {damaged / 'damaged_checkpoints'}.",
      f"resumed from step 4 (epoch 1, step 0 of 4) in {damaged}; steps 5-6 "
      f"are trained again"]
  assert not [u for u in unraisable if "Event loop is closed" in
              str(u.exc_value)], [str(u.exc_value) for u in unraisable]
  assert summary["completed"] and summary["step"] == 8
  # The damaged files are kept aside, not deleted.
  assert (damaged / "damaged_checkpoints" / "6").is_dir()
  # Resuming from step 4 retrains steps 5-8 exactly.
  a, _ = workdir_lib.load_checkpoint(config, str(straight))
  b, _ = workdir_lib.load_checkpoint(config, str(damaged))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.mnist
def test_no_intact_checkpoint_stops_in_one_line(tmp_path):
  path = tmp_path / "run"
  training.train_and_evaluate(smoke(train__max_steps=4), str(path))
  for step in _steps(path):
    _truncate_arrays(path / "checkpoints" / str(step))
  with pytest.raises(workdir_lib.WorkdirError) as e:
    training.train_and_evaluate(smoke(), str(path))
  assert "\n" not in str(e.value) and "no checkpoint in" in str(e.value)
  assert "restores (step 4:" in str(e.value)


# --- the lock -----------------------------------------------------------------


def test_a_live_lock_refuses_a_second_writer_and_a_stale_one_is_taken(
    tmp_path, caplog):
  held = workdir_lib.Lock(tmp_path)
  held.acquire()
  with pytest.raises(workdir_lib.WorkdirError, match="is in use by process"):
    workdir_lib.Lock(tmp_path).acquire()
  held.release()
  assert not (tmp_path / "lock.json").exists()
  # A lock left by a process that has exited (a killed run) is stale.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / "lock.json").write_text(json.dumps(
      {"pid": dead.pid, "host": os.uname().nodename, "started": "then"}))
  with caplog.at_level("WARNING"):
    workdir_lib.Lock(tmp_path).acquire()
  assert any("stale lock" in r.getMessage() for r in caplog.records)
  # Another host's lock cannot be checked: refused, naming the file.
  (tmp_path / "lock.json").write_text(json.dumps(
      {"pid": 1, "host": "elsewhere", "started": "then"}))
  with pytest.raises(workdir_lib.WorkdirError, match="delete .*lock.json"):
    workdir_lib.Lock(tmp_path).acquire()


@pytest.mark.mnist
def test_a_second_train_py_on_a_live_workdir_is_refused(tmp_path):
  path = tmp_path / "run"
  command = [sys.executable, os.path.join(REPO, "train.py"),
             "--config=configs/mnist_standard.py:smoke", f"--workdir={path}"]
  first = subprocess.Popen(command + ["--config.train.num_epochs=40"],
                           cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while not (path / "lock.json").exists():
      assert first.poll() is None, first.communicate()
      assert time.time() < deadline, "the first run never took the lock"
      time.sleep(0.2)
    second = subprocess.run(command + ["--config.train.num_epochs=40"],
                            cwd=REPO, capture_output=True, text=True,
                            timeout=240)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is in use by process" in lines[0], lines
  finally:
    first.kill()
    first.wait()
  # The killed run left its lock; the next run takes it over as stale.
  assert (path / "lock.json").exists()
  proc = subprocess.run(command + ["--config.train.num_epochs=40",
                                   "--config.train.max_steps=1"],
                        cwd=REPO, capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr
  assert "stale lock" in proc.stderr


# --- URIs: gs:// stays gs:// ------------------------------------------------------


class _FakeBucket(LocalFileSystem):
  """``gs://`` served from a local folder: a remote filesystem that works offline."""

  root = ""
  protocol = ("gcs", "gs")

  def __init__(self, *args, **kwargs):
    kwargs.pop("finalize_on_close", None)
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = os.path.join(cls.root, path[len(prefix):])
    return super()._strip_protocol(path)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  _FakeBucket.root = str(tmp_path / "bucket_root")
  os.makedirs(_FakeBucket.root)
  fsspec.register_implementation("gcs", _FakeBucket, clobber=True)
  fsspec.register_implementation("gs", _FakeBucket, clobber=True)
  monkeypatch.setenv("EPATH_USE_TF", "false")
  monkeypatch.chdir(tmp_path)  # a localized "gs:" folder would appear here
  yield tmp_path / "bucket_root"
  fsspec.filesystem("gcs").clear_instance_cache()


def test_workdir_files_on_a_uri_stay_on_that_filesystem(fake_gcs, tmp_path):
  path = workdir_lib.check("gs://bucket/run")
  assert str(path) == "gs://bucket/run"
  path.mkdir(parents=True)
  config = smoke().to_dict()
  assert workdir_lib.check_config(path, config) == []
  workdir_lib.record_config(path, config)
  held = workdir_lib.Lock(path)
  held.acquire()
  writer = workdir_lib.MetricWriter(path, enabled=True)
  writer.write("train", 2, 0.5, {"loss": 1.5})
  writer.write("train", 4, 1.0, {"loss": 1.25})
  writer.close()
  workdir_lib.write_summary(path, {"completed": True, "seconds": 3.0})
  held.release()
  local = fake_gcs / "bucket" / "run"
  assert json.loads((local / "config.json").read_text()) == json.loads(
      json.dumps(config))
  assert [r["loss"] for r in workdir_lib.read_metrics(path)] == [1.5, 1.25]
  assert (local / "metrics.jsonl").read_text().count("\n") == 2
  assert workdir_lib.previous_seconds(path) == 3.0
  assert not (local / "lock.json").exists()
  changed = dict(config, seed=3)
  with pytest.raises(workdir_lib.WorkdirError, match="seed"):
    workdir_lib.check_config("gs://bucket/run", changed)
  assert not os.path.exists(tmp_path / "gs:"), "a URI became a local folder"


@pytest.mark.mnist
def test_training_hands_orbax_the_uri(fake_gcs, tmp_path, monkeypatch):
  """Orbax (TensorStore's own GCS driver, not mockable here) gets gs:// as is."""
  seen = []

  class Stop(Exception):
    pass

  def manager(directory, *args, **kwargs):
    seen.append(str(directory))
    raise Stop()

  monkeypatch.setattr(workdir_lib.checkpoints.ocp, "CheckpointManager",
                      manager)
  with pytest.raises(Stop):
    training.train_and_evaluate(smoke(), "gs://bucket/run")
  assert seen == ["gs://bucket/run/checkpoints"]
  assert (fake_gcs / "bucket" / "run" / "lock.json").exists() is False
  assert not os.path.exists(tmp_path / "gs:")
