"""What a run records survives reruns, stops, kills and resumes.

summary.json keeps the whole run's facts (best, first collapse, NaN) and one
history record per call; a resumed run reports what a straight one does;
metrics.jsonl holds each step once; a finished run is reported, not trained or
tested again; a damaged best checkpoint is noticed by train.py.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lfr_jax import training
from lfr_jax import workdir as workdir_lib
from smoke_configs import smoke  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

pytestmark = pytest.mark.mnist




def constant(**overrides):
  """SmallCNN's last layer starts at zero; at lr 1e-12 it stays constant:
  windows of 2 steps end at 2, 4, 6, 8 and the first flagged is step 4."""
  return smoke(optim__lr=1e-12, **overrides)


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _rows(workdir, split):
  # examples_per_sec is a wall-clock rate, not a result.
  return [{k: v for k, v in r.items() if k != "examples_per_sec"}
          for r in _records(workdir) if r["split"] == split]


def _events_files(workdir):
  return glob.glob(os.path.join(workdir, "tensorboard", "events.out.*"))


def test_a_rerun_of_a_finished_run_keeps_its_facts_and_adds_to_its_history(
    tmp_path, capsys):
  """The README's train -> evaluate -> train: the second train.py reset
  collapse_step 4 to -1, dropped CONSTANT CLASSIFIER, tested again."""
  workdir = str(tmp_path / "run")
  config = constant()
  first = training.train_and_evaluate(config, workdir)
  assert first["collapse_step"] == 4 and first["collapsed_at_end"]
  assert [h["outcome"] for h in first["history"]] == ["completed"]
  assert {"step": 4, "event": "constant classifier"} in first["history"][0][
      "events"]
  capsys.readouterr()
  again = training.train_and_evaluate(constant(), workdir)
  out = capsys.readouterr().out
  assert "holds a finished run (step 8 of 8): nothing to train or test again" \
      in out
  assert out.strip().splitlines()[-1].endswith("CONSTANT CLASSIFIER")
  assert again["collapse_step"] == 4 and again["collapsed_at_end"]
  assert again["test_pgd_acc"] == first["test_pgd_acc"]
  assert again["best_val"] == first["best_val"]
  assert [h["outcome"] for h in again["history"]] == ["completed",
                                                       "already finished"]
  assert again["seconds_total"] == pytest.approx(first["seconds"] +
                                                 again["seconds"])
  assert workdir_lib.read_summary(workdir) == json.loads(json.dumps(again))
  # No second test row, no second TensorBoard events file.
  assert [r["split"] for r in _records(workdir)].count("test") == 1
  assert len(_events_files(workdir)) == 1


@pytest.mark.slow
def test_changed_test_settings_test_a_finished_run_again(tmp_path):
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(smoke(), workdir)
  again = training.train_and_evaluate(smoke(eval__test_examples=8), workdir)
  assert again["test_examples"] == 8
  assert again["history"][-1]["outcome"] == "completed"
  assert [r["examples"] for r in _records(workdir)
          if r["split"] == "test"] == [16, 8]


def test_a_resumed_run_reports_and_records_what_a_straight_one_does(tmp_path):
  """Two resumes of one run, each compared with a straight run.

  After a stop (max_steps) the resumed run ended with collapse_step -1 where
  the straight one had 4 (its first logging window after the stop was cut
  short). After a kill that lost the last checkpoint but not the rows logged
  before it, metrics.jsonl held the steps trained again twice.
  """
  import shutil
  straight, split = str(tmp_path / "straight"), tmp_path / "split"
  whole = training.train_and_evaluate(constant(), straight)
  # Not vacuous: the straight run has a collapse for the resumed one to lose.
  assert whole["collapse_step"] == 4
  stopped = training.train_and_evaluate(constant(train__max_steps=3),
                                        str(split))
  assert not stopped["completed"] and stopped["collapse_step"] == -1
  resumed = training.train_and_evaluate(constant(), str(split))
  for key in ("collapse_step", "collapsed_at_end", "best_val", "nan_step",
              "test_clean_acc", "test_pgd_acc"):
    assert resumed[key] == whole[key], key
  # The logging windows end at the same steps with the same means.
  assert _rows(str(split), "train") == _rows(straight, "train")
  assert [h["outcome"] for h in resumed["history"]] == ["stopped", "completed"]
  assert resumed["history"][1]["from_step"] == 3
  # As a run killed after logging steps 5-8 but before saving step 8 leaves it.
  assert (split / "checkpoints" / "8").is_dir()
  for folder in ("checkpoints/8", "best_checkpoint/8"):
    if (split / folder).is_dir():
      shutil.rmtree(split / folder)
  (split / "summary.json").unlink()
  # Not vacuous: the rows of steps 5-8 (and the test row) are still there,
  # so training those steps again without dropping them would repeat them.
  cut = [(r["split"], r["step"]) for r in _records(str(split))]
  assert {("train", 6), ("train", 8), ("test", 8)} <= set(cut)
  again = training.train_and_evaluate(constant(), str(split))
  assert again["history"][-1]["from_step"] == 4  # steps 5-8 trained again
  assert again["collapse_step"] == whole["collapse_step"]
  for name in ("train", "train_epoch", "val", "test"):
    assert _rows(str(split), name) == _rows(straight, name), name


@pytest.mark.slow  # a train.py killed mid-run, and two runs (about 1 min)
def test_a_killed_and_resumed_run_matches_a_straight_one(tmp_path):
  """SIGKILL mid-run, then a resume: the same facts and one row per step."""
  straight, killed = str(tmp_path / "straight"), tmp_path / "killed"
  settings = dict(train__num_epochs=6.0, checkpoint__every_steps=1,
                  checkpoint__keep=2)
  whole = training.train_and_evaluate(constant(**settings), straight)
  args = [sys.executable, "train.py", "--config=configs/mnist_standard.py:smoke",
          f"--workdir={killed}", "--config.optim.lr=1e-12",
          "--config.train.num_epochs=6.0", "--config.checkpoint.every_steps=1",
          "--config.checkpoint.keep=2", "--config.eval.test_examples=16",
          "--config.eval.val_examples=16", "--config.eval.batch_size=16"]
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [int(d) for d in os.listdir(killed / "checkpoints")
             if d.isdigit()] if (killed / "checkpoints").is_dir() else []
    if steps and max(steps) >= 7:
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  resumed = training.train_and_evaluate(constant(**settings), str(killed))
  assert resumed["completed"] and resumed["step"] == whole["step"] == 24
  for key in ("collapse_step", "collapsed_at_end", "best_val",
              "test_pgd_acc"):
    assert resumed[key] == whole[key], key
  for split in ("train", "train_epoch", "val", "test"):
    steps = [r["step"] for r in _rows(str(killed), split)]
    assert len(steps) == len(set(steps)), (split, steps)  # no duplicates
    assert _rows(str(killed), split) == _rows(straight, split), split


def test_a_damaged_best_checkpoint_is_noticed_by_train_py(tmp_path, caplog):
  workdir = tmp_path / "run"
  training.train_and_evaluate(smoke(), str(workdir))
  best = [d for d in os.listdir(workdir / "best_checkpoint") if d.isdigit()]
  assert len(best) == 1
  step = best[0]
  cut = 0
  for root, _, names in os.walk(workdir / "best_checkpoint" / step):
    for name in names:
      full = os.path.join(root, name)
      if ("state" in full and not name.endswith((".json", "_METADATA"))
          and os.path.getsize(full) > 64):
        with open(full, "r+b") as f:
          f.truncate(os.path.getsize(full) // 2)
        cut += 1
  assert cut
  with caplog.at_level("WARNING"):
    again = training.train_and_evaluate(smoke(), str(workdir))
  lines = [r.getMessage() for r in caplog.records
           if "best checkpoint" in r.getMessage()]
  assert len(lines) == 1 and f"(step {step})" in lines[0]
  assert "does not restore" in lines[0]
  assert (workdir / "damaged_checkpoints" / f"best-{step}").is_dir()
  assert {"step": int(step), "event": "damaged best checkpoint",
          "val_pgd_acc": again["best_val"]["val_pgd_acc"]} in again[
              "history"][-1]["events"]


@pytest.mark.slow
def test_a_divergence_is_recorded_in_the_summary(tmp_path, monkeypatch):
  import jax.numpy as jnp
  from lfr_jax import objectives
  real_build = objectives.build

  def poisoned_build(method, **settings):
    objective = real_build(method, **settings)

    def fn(net, x, y, key, eps):
      loss, aux = objective(net, x, y, key, eps)
      return jnp.where(eps > 0.15, jnp.nan, loss), aux  # from step 6 on
    return fn

  monkeypatch.setattr(objectives, "build", poisoned_build)
  workdir = str(tmp_path / "nan")
  with pytest.raises(training.TrainingDiverged):
    training.train_and_evaluate(smoke("mnist_at", inner__warmup_epochs=2.0),
                                workdir)
  summary = workdir_lib.read_summary(workdir)
  assert summary["nan_step"] == 6 and summary["step"] == 4
  assert not summary["completed"]
  assert summary["history"][-1]["outcome"] == "diverged"
  assert {"step": 6, "event": "nan"} in summary["history"][-1]["events"]


def test_collapse_verdicts_from_an_older_checkpoints_metrics():
  """Checkpoints written before the verdicts travelled with them: the
  verdicts come back from metrics.jsonl's train rows."""
  flat = {"acc": 0.1, "logit_spread": 1e-4, "majority": 0.11}
  live = {"acc": 0.5, "logit_spread": 1.0, "majority": 0.11}
  rows = [dict(split="train", step=s, **m) for s, m in
          ((2, flat), (4, flat), (6, live), (8, flat), (9, flat))]
  # Step 2 is the first window (skipped), 9 a partial one.
  assert training.collapse_from_metrics(rows, 8, 2) == (4, True)
  assert training.collapse_from_metrics(rows, 6, 2) == (4, False)
  assert training.collapse_from_metrics(rows, 3, 2) == (-1, False)
