"""tools/curve.py and tools/curve_report.py: commands, arithmetic, report."""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import curve  # noqa: E402
from tools import curve_report  # noqa: E402


def test_commands_use_the_curve_variant_and_kept_epochs():
  row = curve.ROWS[0]
  train = curve.shown(curve.train_command(row, "runs/curve"))
  assert train.startswith(f"python train.py --config=configs/{row.preset}.py:"
                          f"curve --workdir=runs/curve/{row.name}")
  first, last = (curve.shown(curve.eval_command(row, "runs/curve", e))
                 for e in (1, 5))
  assert "--checkpoint=epoch:1" in first and "--config.eval.checks=False" in first
  assert "--checkpoint=epoch:5" in last and "--config.eval.checks=True" in last
  assert f"--config.eval.num_examples={curve.EVAL_EXAMPLES}" in last
  k40 = curve.shown(curve.authors_settings_command("runs/curve", 3))
  assert "--config=configs/mnist_lfr.py " in k40 and "max_epochs=3" in k40


def test_scrub_keeps_no_absolute_paths():
  text = json.dumps({"a": os.path.join(REPO, "runs", "x"),
                     "b": "/data/models/lfr/model_best.pth.tar",
                     "c": "/scratch/elsewhere/runs/repro/lfr_s0/eval",
                     "d": os.path.join(REPO, "data", "mnist")})
  assert json.loads(curve.scrub(text)) == {"a": "runs/x",
                                           "b": "model_best.pth.tar",
                                           "c": "runs/repro/lfr_s0/eval",
                                           "d": "data/mnist"}


def test_halfwidth_closed_form():
  assert curve_report.halfwidth(50.0, 500) == pytest.approx(
      100 * 1.96 * 0.5 / math.sqrt(500))
  assert curve_report.halfwidth(0.0, 500) == 0.0


def test_training_hours_counts_each_step_once():
  # Windows of 50 steps at 100 ex/s, batch 100: 50 s each. A resumed run
  # logged step 100 twice (the second at a different speed wins).
  records = [{"split": "train", "step": s, "examples_per_sec": 100.0}
             for s in (50, 100)]
  records += [{"split": "train", "step": 100, "examples_per_sec": 50.0},
              {"split": "train", "step": 150, "examples_per_sec": 100.0},
              {"split": "val", "step": 150, "clean_acc": 0.9}]
  hours = curve_report.training_hours(records, batch=100, upto_step=150)
  assert hours == pytest.approx((50 + 100 + 50) / 3600)
  assert curve_report.training_hours(records, 100, 50) == pytest.approx(
      50 / 3600)


def test_gap_fit_recovers_a_line_in_log_epochs():
  # gap = 40 - 10 log2(E): closes at E = 16.
  points = {"lfr_s0": [{"epoch": e, "worst": 50 + 10 * math.log2(e)}
                       for e in (1, 2, 5)],
            "trades_s0": [{"epoch": e, "worst": 90.0} for e in (1, 2, 5)]}
  fit = curve_report.gap_fit(points)
  assert fit["slope"] == pytest.approx(-10.0)
  assert fit["intercept"] == pytest.approx(40.0)
  assert fit["cross"] == pytest.approx(16.0)
  widening = {"lfr_s0": points["trades_s0"], "trades_s0": points["lfr_s0"]}
  assert curve_report.gap_fit(widening)["cross"] is None
  assert curve_report.gap_fit({"lfr_s0": points["lfr_s0"][:2],
                               "trades_s0": points["trades_s0"]}) is None


def _report(worst, n=500, checks=()):
  return {"rows": [{"examples": n, "checks": list(checks), "metrics": {
      "clean": 0.99, "pgd": worst + 0.05, "worst": worst, "ddn_lfr": 0.5}}]}


def test_sections_and_figure_from_collected_files(tmp_path):
  """A results folder as collect leaves it renders every section."""
  root = tmp_path / "curve"
  for row, base in (("lfr_s0", 0.3), ("trades_s0", 0.8)):
    folder = root / row
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(
        {"data": {"batch_size": 128}}))
    records = []
    for epoch in (1, 2, 5):
      records.append({"split": "train", "step": 429 * epoch,
                      "epoch": float(epoch), "examples_per_sec": 128.0})
      records.append({"split": "train_epoch", "step": 429 * epoch,
                      "epoch": float(epoch), "reg": 1.0, "ce": 0.1,
                      "acc": 0.9})
      (folder / f"epoch_{epoch}").mkdir()
      (folder / f"epoch_{epoch}" / "robustness.json").write_text(json.dumps(
          _report(base + 0.02 * epoch)))
    (folder / "metrics.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records) + "\n{cut")
  (root / curve.AUTHORS_MODEL).mkdir()
  (root / curve.AUTHORS_MODEL / "robustness.json").write_text(json.dumps(
      _report(0.7, n=1000, checks=[{"status": "PASS", "name": "a",
                                    "evidence": "e"}])))
  text = "\n".join(curve_report.sections(str(root), {"clean": 99.47}))
  assert "| LFR, authors' 100-epoch model (ours) | 99.00 ± 0.62 |" in text
  assert "| LFR (λ=0.02) | 5 | 99.00 |" in text
  assert "Masking checks: 1 PASS, 0 WARN." in text
  assert "TRADES − LFR, worst case, in points: 50.0 at epoch 1" in text
  assert curve_report.write_figure(str(root)).endswith(curve_report.FIGURE)
  assert (root / curve_report.FIGURE).stat().st_size > 10_000


def test_authors_settings_table_lays_our_epochs_beside_the_authors_log(
    tmp_path):
  """Each of our epochs sits beside the same epoch of the authors' log."""
  root = tmp_path / "curve"
  folder = root / curve.AUTHORS_SETTINGS
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps({"data": {"batch_size": 100}}))
  records = []
  for epoch, reg in ((1, 15.25), (2, 15.5)):
    step = 10 * epoch
    records += [
        {"split": "train", "step": step, "examples_per_sec": 100.0},
        {"split": "train_epoch", "step": step, "epoch": float(epoch),
         "reg": reg, "ce": 0.5 / epoch, "acc": 0.8 + 0.1 * epoch},
        {"split": "test_clean", "step": step, "clean_acc": 0.96},
        {"split": "val", "step": step, "clean_acc": 0.97, "pgd_acc": 0.3}]
  (folder / "metrics.jsonl").write_text(
      "\n".join(json.dumps(r) for r in records))
  (root / curve_report.AUTHORS_LOG).write_text(json.dumps({
      "source": "a log", "epochs": [
          {"epoch": e, "reg": 14.0 + e, "ce": 0.25, "train_acc": 82.5,
           "test_clean": 96.5} for e in range(1, 101)]}))
  text = "\n".join(curve_report.authors_settings_section(str(root)))
  # Ours: 10 steps of batch 100 at 100 ex/s = 10 s per epoch, cumulative.
  assert f"| 2 | 15.500 | 0.2500 | 100.00 | 96.00 | 97.00 | 30.00 | " \
         f"{20 / 3600:.2f} |" in text
  assert ("| 1 | 15.250 | 15.000 | 0.5000 | 0.2500 | 90.00 | 82.50 | 96.00 "
          "| 96.50 |") in text
  assert "| 3 |" not in text  # only the epochs we ran
  path = curve_report.write_log_figure(str(root))
  assert path.endswith(curve_report.LOG_FIGURE)
  assert os.path.getsize(path) > 10_000


def test_bad_stage_is_one_line():
  proc = subprocess.run([sys.executable, "tools/curve.py", "--stages=trian"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "tools/curve.py: error: unknown stages ['trian']; valid: train, eval, "
      "authors_model, authors_settings, flops, bench, collect."]



def test_damaged_result_file_is_one_clear_error(tmp_path):
  """A cut JSON file names itself instead of raising a bare decode error."""
  (tmp_path / curve_report.AUTHORS_LOG).write_text('{"epochs": [')
  with pytest.raises(ValueError, match=r"authors_log\.json is not valid JSON"):
    curve_report.authors_log(str(tmp_path))


def test_variant_rows_pass_their_overrides_to_train_and_config():
  from tools import curve
  row = curve.CurveRow("x", "mnist_lfr", "x", overrides=(
      ("lfr.lam", 0.1), ("lfr.start", "uniform"),
      ("optim.decay_epochs", (18.0,))), epochs=(1, 20))
  command = curve.train_command(row, "runs/curve")
  assert "--config.lfr.lam=0.1" in command
  assert "--config.optim.decay_epochs=(18.0,)" in command
  assert "--config.checkpoint.keep_epochs=(1,20)" in command
  config = row.config()
  assert config.lfr.lam == 0.1 and config.lfr.start == "uniform"
  assert tuple(config.optim.decay_epochs) == (18.0,)
  assert curve.eval_command(row, "runs/curve", 20)[-3:-1] == [
      "--config.eval.checks=True", "--config.eval.geometry=True"]


def test_catastrophic_overfitting_is_a_fall_below_the_best_so_far():
  from tools import curve_report
  val = lambda epoch, pgd: {"split": "val", "step": epoch * 10,
                            "epoch": float(epoch), "pgd_acc": pgd}
  steady = [val(1, 0.4), val(2, 0.5), val(3, 0.45), val(4, 0.6)]
  assert curve_report.catastrophic_overfitting(steady) is None
  collapsed = steady + [val(5, 0.35)]
  found = curve_report.catastrophic_overfitting(collapsed)
  assert found["epoch"] == 5 and found["best_before"] == pytest.approx(60.0)
