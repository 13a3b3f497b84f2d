"""tools/reproduce.py: the commands it runs and the RESULTS.md it writes from results files."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import reproduce  # noqa: E402


def _fake_eval(metrics, checks=()):
  return {"rows": [{"label": "final (step 429)", "examples": 500,
                    "metrics": metrics, "checks": list(checks)}],
          "settings": {"eps": 0.3, "pgd_steps": 40, "step_size": 0.01,
                       "mifgsm_lfr_decay": 0.1, "ddn_steps": 20,
                       "ddn_l2_budget": 2.0, "apgd_steps": 100,
                       "apgd_targets": 9, "check_examples": 200},
          "hardware": {"cpu": "test cpu"}, "software": {"jax": "0"}}


def _write_row(results_dir, name, worst, pgd=0.5):
  folder = results_dir / name
  folder.mkdir(parents=True)
  metrics = {"clean": 0.9, "fgsm_lfr": 0.6, "pgd": pgd, "mifgsm_lfr": 0.4,
             "ddn_lfr_acc_at_l2_2": 0.3, "ddn_lfr_median_l2": "inf",
             "apgd_ce": 0.2, "apgd_t": worst, "worst": worst}
  checks = [{"status": "PASS", "name": "a", "evidence": "fine"},
            {"status": "WARN", "name": "more steps", "evidence": "PGD-100 lower"}]
  (folder / "robustness.json").write_text(json.dumps(_fake_eval(metrics, checks)))
  (folder / "train_summary.json").write_text(json.dumps({"seconds": 123.0}))
  (folder / "command.json").write_text(json.dumps({"command": "x",
                                                   "seconds": 45.0}))


def test_every_row_has_a_preset_that_accepts_repro():
  import importlib
  for row in reproduce.ROWS:
    module = importlib.import_module(f"configs.{row.preset}")
    config = module.get_config("repro")
    assert config.inner.num_steps <= 10
    assert config.data.train_size == 0          # the whole training split
    assert config.train.num_epochs == pytest.approx(1.0)
  assert {r.paper for r in reproduce.ROWS} >= set(reproduce.PAPER)


def test_seeds_two_for_lfr_and_trades():
  for paper_row in ("LFR", "TRADES"):
    seeds = {r.seed for r in reproduce.ROWS if r.paper == paper_row}
    assert len(seeds) >= 2


def test_commands_match_the_row():
  row = reproduce.ROWS[0]
  cmd = reproduce.shown(reproduce.train_command(row, "runs/repro"))
  assert cmd.startswith("python train.py --config=configs/mnist_standard.py:repro")
  assert f"--config.seed={row.seed}" in cmd
  ev = reproduce.shown(reproduce.eval_command(row, "runs/repro", 300, 200))
  assert "--checkpoint=final" in ev and "num_examples=300" in ev


def test_report_from_results_files(tmp_path):
  _write_row(tmp_path, "lfr_s0", worst=0.10)
  _write_row(tmp_path, "lfr_s1", worst=0.20)
  _write_row(tmp_path, "trades_s0", worst=0.30, pgd=0.7)
  text = reproduce.render(str(tmp_path))
  # Two LFR seeds: mean 15.00, half-range 5.00.
  assert "LFR 15.00 ± 5.00% (2 masking WARNs)" in text
  assert "TRADES 30.00% (1 masking WARN)." in text
  # Side by side: the worst-case column (ours only) ends the LFR row.
  lfr_line = next(l for l in text.splitlines() if l.startswith("| LFR | 2 |"))
  assert lfr_line.endswith("| 15.00 ± 5.00 |")
  assert "TRADES 30.00%" in text
  # PGD-40 cell: ours 70.00 against the paper's 95.71.
  assert "70.00 / 95.71 / -25.71" in text
  assert "WARN more steps: PGD-100 lower" in text
  assert "not run / 99.30" in text            # Standard was not run
  assert "| 123 | 45 |" in text                # wall times
  assert "not evaluated" in text
  assert "| inf |" in text                    # DDN median never reached
  # 500 images: 1.96 * sqrt(0.25 / 500) = 4.38 points at 50%; 45 s per 500
  # images is 0.25 h per 10,000.
  assert "500 test images, not the full 10,000" in text
  assert "±4.4 points at 50%" in text and "about 0.2 h per row" in text


def test_collapsed_row_is_never_a_robustness_number(tmp_path):
  _write_row(tmp_path, "lfr_s0", worst=0.10)
  _write_row(tmp_path, "llr_s0", worst=0.114)
  (tmp_path / "llr_s0" / "train_summary.json").write_text(json.dumps(
      {"seconds": 9.0, "collapsed_at_end": True}))
  text = reproduce.render(str(tmp_path))
  llr = next(l for l in text.splitlines() if l.startswith("| llr_s0 |"))
  assert "constant classifier" in llr and "11.40" not in llr
  assert "LLR 11.40" not in text                      # not in the headline
  assert "not run / 99.62" in text                    # nor side by side


def test_ddn_cell_is_the_authors_quantity(tmp_path):
  """Accuracy on DDN-20's output; older files: clean x (1 - success), marked."""
  _write_row(tmp_path, "lfr_s0", worst=0.10)
  m = reproduce.row_metrics({"eval": json.loads(
      (tmp_path / "lfr_s0" / "robustness.json").read_text())})
  assert "ddn" not in m                               # neither key present
  old = {"eval": {"rows": [{"metrics": {"clean": 0.9, "ddn_lfr_success": 0.5,
                                        "ddn_lfr_acc_at_l2_2": 0.7}}]}}
  assert reproduce.row_metrics(old)["ddn"] == pytest.approx(45.0)
  assert reproduce.row_metrics(old)["ddn_unquantized"] == 1.0
  new = {"eval": {"rows": [{"metrics": {"clean": 0.9, "ddn_lfr": 0.3,
                                        "ddn_lfr_success": 0.5}}]}}
  assert reproduce.row_metrics(new)["ddn"] == pytest.approx(30.0)
  assert "ddn_unquantized" not in reproduce.row_metrics(new)


def test_binomial_halfwidth_closed_form():
  assert reproduce.binomial_halfwidth(50, 100) == pytest.approx(9.8)
  assert reproduce.binomial_halfwidth(100, 300) == 0.0


def test_training_curves_from_metrics_files(tmp_path):
  folder = tmp_path / "llr_s0"
  folder.mkdir()
  records = [{"split": "train", "step": 50, "acc": 0.2, "ce": 2.2},
             {"split": "train", "step": 100, "acc": 0.5, "ce": 1.5},
             {"split": "val", "step": 100, "clean_acc": 0.4}]
  (folder / "metrics.jsonl").write_text(
      "\n".join(json.dumps(r) for r in records) + "\n")
  panels = reproduce.training_curves(str(tmp_path))
  acc_title = reproduce.CURVE_METRICS[0][1]
  assert panels[acc_title] == {"llr_s0": ((50, 100), (0.2, 0.5))}
  path = reproduce.write_training_curves(str(tmp_path))
  assert os.path.isfile(path)
  assert reproduce.TRAINING_CURVES in reproduce.render(str(tmp_path))
  assert reproduce.write_training_curves(str(tmp_path / "empty")) is None


def test_training_curves_skip_a_killed_runs_partial_line(tmp_path, capsys):
  folder = tmp_path / "lfr_s0"
  folder.mkdir()
  (folder / "metrics.jsonl").write_text(
      '{"split": "train", "step": 50, "acc": 0.2, "ce": 2.0}\n'
      '{"split": "tra{"split": "train", "step": 100, "acc": 0.4, "ce": 1.0}\n')
  panels = reproduce.training_curves(str(tmp_path))
  assert panels[reproduce.CURVE_METRICS[0][1]] == {"lfr_s0": ((50,), (0.2,))}
  assert "skipped 1 unreadable line(s)" in capsys.readouterr().out


def test_dry_run_prints_every_command(tmp_path):
  proc = subprocess.run(
      [sys.executable, "tools/reproduce.py", f"--workdir={tmp_path}", "--dry_run",
       "--stages=train,eval,sweep"], cwd=REPO, capture_output=True, text=True,
      env=dict(os.environ, LFR_DATA_DIR=str(tmp_path)), timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("$ ")]
  assert len(lines) == 2 * len(reproduce.ROWS) + 2   # train, eval, figures, sweep
  assert not os.listdir(tmp_path)                   # nothing written


def test_train_eval_and_sweep_stages_need_no_data_dir(tmp_path):
  """Without $LFR_DATA_DIR the runs read the repository's data/mnist/."""
  env = {k: v for k, v in os.environ.items() if k != "LFR_DATA_DIR"}
  proc = subprocess.run(
      [sys.executable, "tools/reproduce.py", f"--workdir={tmp_path}",
       "--dry_run", "--stages=train,eval,sweep", "--rows=lfr_s0"], cwd=REPO,
      capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  commands = [l for l in proc.stdout.splitlines() if l.startswith("$ ")]
  assert commands[0].startswith("$ python train.py --config=configs/mnist_lfr")
  assert commands[-1].startswith("$ python tools/sweep.py ")
  assert "LFR_DATA_DIR" not in proc.stderr


def test_unknown_row_is_one_line_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, "tools/reproduce.py", "--rows=lfr_s9", "--stages=report"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "unknown rows ['lfr_s9']" in proc.stderr


def test_small_png_shrinks_a_figure(tmp_path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  from PIL import Image
  fig = plt.figure(figsize=(16, 12), dpi=150)
  plt.imshow(np.random.default_rng(0).random((64, 64)))
  src, dest = tmp_path / "big.png", tmp_path / "small.png"
  fig.savefig(src)
  reproduce.small_png(str(src), str(dest), max_side=800)
  with Image.open(dest) as img:
    assert max(img.size) <= 800
  assert dest.stat().st_size < src.stat().st_size
