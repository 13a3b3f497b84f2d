"""evaluate.py and tools/sweep.py end to end: outputs, and one-line user errors."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SMOKE = "--config=configs/evaluate.py:smoke"


def run_script(script, *args, timeout=300):
  return subprocess.run([sys.executable, os.path.join(REPO, script), *args],
                        cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, mnist_dir):
  from configs import mnist_standard
  from lfr_jax import training
  workdir = str(tmp_path_factory.mktemp("runs") / "standard")
  training.train_and_evaluate(mnist_standard.get_config("smoke"), workdir)
  return workdir


def test_evaluate_writes_the_report(smoke_run, tmp_path):
  versions = tmp_path / "eval"
  proc = run_script("evaluate.py", f"--workdir={smoke_run}", SMOKE,
                    "--config.eval.num_examples=20", f"--out={versions}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = versions / "latest"
  for name in ("robustness.md", "robustness.csv", "robustness.json",
               "per_example.npz"):
    assert (out / name).is_file(), name
  expected = 0o666 & ~_umask()  # mkstemp's 0600 no more
  for name in ("robustness.md", "robustness.csv", "robustness.json",
               "per_example.npz", "figures/eps_sweep.png"):
    assert os.stat(out / name).st_mode & 0o777 == expected, name
  figures = {os.path.basename(p) for p in glob.glob(str(out / "figures" / "*"))}
  for stem in ("eps_sweep", "surface_random_decision_0",
               "surface_adversarial_loss_0", "jacobian_maps",
               "gamma_flatness", "gamma_linearity"):
    assert {f"{stem}.png", f"{stem}.npz"} <= figures, stem
  lines = proc.stdout.splitlines()
  with open(os.path.join(smoke_run, "config.json")) as f:
    recorded = json.load(f)["data"]["dir"]  # the folder training read
  assert lines[0] == (f"test data: mnist test split, idx from {recorded}, "
                      f"20 of 10000 images")
  assert lines[1].startswith("smoke test (configs/evaluate.py:smoke), not "
                             "the full evaluation: num_examples 20 (full: "
                             "all);")
  assert lines[2].startswith("| checkpoint | clean | PGD-2 | FGSM (LFR) |")
  assert any(l.startswith("| final (step 8) |") for l in lines)
  assert "not robust accuracies" in proc.stdout
  checks = [l for l in lines if l.startswith(("PASS ", "WARN "))]
  assert len(checks) >= 7
  with open(out / "robustness.json") as f:
    report = json.load(f)
  assert report["data"]["examples"] == 20
  assert report["rows"][0]["info"]["checkpoint"] == "final"
  assert {"jax", "flax", "numpy", "python"} <= set(report["software"])


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def test_evaluations_are_versioned_and_latest_is_one_whole_evaluation(
    smoke_run, tmp_path):
  """A second evaluation replaced eval/'s report and left the first one's
  figures beside it: each is now its own folder, latest the newest."""
  versions = tmp_path / "eval"
  first = run_script("evaluate.py", f"--workdir={smoke_run}", SMOKE,
                     "--config.eval.num_examples=12", f"--out={versions}")
  assert first.returncode == 0, first.stderr[-3000:]
  first_dir = os.path.realpath(versions / "latest")
  second = run_script("evaluate.py", f"--workdir={smoke_run}", SMOKE,
                      "--config.eval.num_examples=8",
                      "--config.eval.attacks=pgd", "--config.eval.checks=False",
                      "--config.eval.geometry=False", f"--out={versions}")
  assert second.returncode == 0, second.stderr[-3000:]
  second_dir = os.path.realpath(versions / "latest")
  assert first_dir != second_dir
  assert sorted(os.listdir(versions)) == sorted(
      ["latest", os.path.basename(first_dir), os.path.basename(second_dir)])
  old = json.load(open(os.path.join(first_dir, "robustness.json")))
  new = json.load(open(os.path.join(second_dir, "robustness.json")))
  assert old["data"]["examples"] == 12 and len(old["columns"]) > 3
  assert new["data"]["examples"] == 8 and [c["name"] for c in new[
      "columns"]] == ["clean", "pgd"]
  # Each report lists exactly the figures of its own folder.
  for report, folder in ((old, first_dir), (new, second_dir)):
    listed = sorted(report["figures"])
    assert all(not os.path.isabs(p) for p in listed)
    on_disk = sorted(os.path.join("figures", f) for f in os.listdir(
        os.path.join(folder, "figures")) if f.endswith(".png"))
    assert listed == on_disk
  assert f"{versions / 'latest'} points to it" in second.stdout


def _garble(workdir):
  for path in glob.glob(os.path.join(workdir, "checkpoints", "*", "state",
                                     "**", "*"), recursive=True):
    if os.path.isfile(path) and "metadata" not in os.path.basename(path).lower():
      with open(path, "wb") as f:
        f.write(b"\x00garbage" * 8)


def _no_checkpoint(smoke_run, tmp_path):
  workdir = tmp_path / "empty_run"
  workdir.mkdir()
  shutil.copy(os.path.join(smoke_run, "config.json"), workdir)
  return [f"--workdir={workdir}"]


def _corrupt(smoke_run, tmp_path):
  workdir = str(tmp_path / "corrupt_run")
  shutil.copytree(smoke_run, workdir)
  shutil.rmtree(os.path.join(workdir, "best_checkpoint"))
  _garble(workdir)
  return [f"--workdir={workdir}"]


BAD_INPUTS = {
    "no_checkpoint": (_no_checkpoint, "no checkpoint in"),
    "corrupt_checkpoint": (_corrupt, "cannot read the final checkpoint"),
    "unknown_attack": (lambda run, tmp: [
        f"--workdir={run}", "--config.eval.attacks=pgd,cw"],
                       "unknown attack 'cw'"),
    "eps_out_of_range": (lambda run, tmp: [
        f"--workdir={run}", "--config.eval.eps=1.5"],
                         "config.eval.eps must be a number in [0, 1]"),
    "workdir_is_a_file": (lambda run, tmp: [
        f"--workdir={os.path.join(run, 'config.json')}"],
                          "config.json is a file, not a training workdir."),
    "missing_torch_file": (lambda run, tmp: [
        f"--torch_checkpoint={tmp}/nope.pt", "--model=small_cnn"],
                           "nope.pt does not exist"),
    "unknown_checkpoint_choice": (lambda run, tmp: [
        f"--workdir={run}", "--checkpoint=epok:2"],
                                  "--checkpoint 'epok:2' is unknown"),
    "missing_data_dir": (lambda run, tmp: [
        f"--workdir={run}", f"--data_dir={tmp}/no_data"],
                         "no_data is not a folder"),
    "epoch_not_kept": (lambda run, tmp: [
        f"--workdir={run}", "--checkpoint=epoch:7"],
                       "holds no checkpoint for epoch 7; it holds: step 4 "
                       "(epoch 1), step 8 (epoch 2)."),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line(case, smoke_run, tmp_path):
  make_args, message = BAD_INPUTS[case]
  out = tmp_path / "out"
  proc = run_script("evaluate.py", SMOKE, f"--out={out}",
                    *make_args(smoke_run, tmp_path), timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("evaluate.py: error: ") and message in lines[0]
  assert "Traceback" not in proc.stderr
  assert not out.exists()  # nothing written


def test_sweep_rejects_bad_lambdas(tmp_path):
  proc = run_script("tools/sweep.py", "--config=configs/mnist_lfr.py:smoke",
                    "--lams=0,-0.1", f"--workdir={tmp_path}/sweep",
                    timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "--lams: '-0.1' must be a finite number" in lines[0]
  assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_torch_checkpoint_row(smoke_run, tmp_path):
  torch = pytest.importorskip("torch")
  from lfr_jax import evaluation, interop
  _, models = evaluation.load_run(smoke_run)
  net = models[0].params
  path = tmp_path / "smallcnn.pt"
  # As the LFR authors published theirs: a training checkpoint with the
  # DataParallel "module." prefix and the optimizer state beside the weights.
  weights = {f"module.{k}": torch.from_numpy(v.copy()) for k, v in
             interop.export_torch_state_dict(net, "small_cnn").items()}
  sgd = torch.optim.SGD(list(weights.values()), lr=0.01, momentum=0.9)
  torch.save({"epoch": 100, "state_dict": weights, "acc": 99.5,
              "best_acc": 99.51, "optimizer": sgd.state_dict()}, str(path))
  proc = run_script("evaluate.py", f"--torch_checkpoint={path}",
                    "--model=small_cnn", f"--workdir={smoke_run}", SMOKE,
                    "--config.eval.attacks=pgd", "--config.eval.checks=False",
                    "--config.eval.geometry=False", f"--out={tmp_path}/out")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [l for l in proc.stdout.splitlines() if l.startswith("| ")]
  assert any(l.startswith("| smallcnn.pt |") for l in rows)
  # The exported copy of the final checkpoint scores exactly the same.
  final = next(l for l in rows if "final (step 8)" in l)
  torch_row = next(l for l in rows if l.startswith("| smallcnn.pt |"))
  assert final.split("|")[2:] == torch_row.split("|")[2:]


@pytest.mark.slow
@pytest.mark.mnist
def test_sweep_trains_evaluates_and_plots(tmp_path):
  root = tmp_path / "sweep"
  args = ["--config=configs/mnist_lfr.py:smoke", "--lams=0,0.02",
          f"--workdir={root}", "--eval_config=configs/evaluate.py:smoke"]
  proc = run_script("tools/sweep.py", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("sweep.json", "sweep.md", "sweep.png", "lam_0", "lam_0.02",
               "eval/latest/robustness.json"):
    assert (root / name).exists(), name
  with open(root / "sweep.json") as f:
    result = json.load(f)
  assert result["lams"] == [0.0, 0.02]
  assert [c["name"] for c in result["columns"]] == ["pgd", "apgd_ce"]
  for run in result["runs"]:
    assert run["status"] == "done"
    assert 0.0 <= run["accuracy"]["pgd"] <= run["accuracy"]["clean"] <= 1.0
  # Rerunning resumes: the runs are complete, nothing is retrained.
  again = run_script("tools/sweep.py", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "step 8" in again.stdout


def test_checkpoint_flag_selects_rows():
  import types
  from lfr_jax.commands import evaluate
  rows = [types.SimpleNamespace(info={"checkpoint": "final"}),
          types.SimpleNamespace(info={"checkpoint": "best"})]
  assert evaluate.select_checkpoints(rows, "both") == rows
  assert evaluate.select_checkpoints(rows, "final") == rows[:1]
  assert evaluate.select_checkpoints(rows, "best") == rows[1:]
  same = [types.SimpleNamespace(info={"checkpoint": "final = best"})]
  assert evaluate.select_checkpoints(same, "best") == same
  assert evaluate.select_checkpoints(same, "final") == same


def test_parse_checkpoint():
  from lfr_jax.commands import evaluate
  from lfr_jax import evaluation
  assert evaluate.parse_checkpoint("best") == "best"
  assert evaluate.parse_checkpoint("epoch:5") == ("epoch", 5)
  assert evaluate.parse_checkpoint("step:0") == ("step", 0)
  for bad in ("epoch:0", "epoch:", "epoch:x", "last", "step:-1"):
    with pytest.raises(evaluation.EvalError, match="is unknown"):
      evaluate.parse_checkpoint(bad)


@pytest.mark.mnist
def test_kept_epoch_checkpoints_load_by_epoch(tmp_path):
  """Rows of kept epoch ends: the right parameters, nothing deleted."""
  import jax
  import numpy as np
  from configs import mnist_standard
  from lfr_jax import evaluation, training
  from lfr_jax import workdir as workdir_lib
  config = mnist_standard.get_config("smoke")
  config.checkpoint.keep, config.checkpoint.keep_epochs = 1, (1,)
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(config, workdir)
  _, rows = evaluation.load_run(workdir, at=("epoch", 1))
  assert [r.label for r in rows] == ["epoch 1 (step 4)"]
  state, _ = workdir_lib.load_checkpoint(config, workdir, step=4)
  for a, b in zip(jax.tree.leaves(rows[0].params.params),
                  jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  _, rows = evaluation.load_run(workdir, at=("step", 8))
  assert [r.label for r in rows] == ["step 8"]
  assert workdir_lib.checkpoint_steps(workdir) == ([4, 8], 4)


def test_evaluate_final_checkpoint_only(smoke_run, tmp_path):
  out = tmp_path / "eval_final"
  proc = run_script("evaluate.py", f"--workdir={smoke_run}", SMOKE,
                    "--config.eval.num_examples=8", "--checkpoint=final",
                    "--config.eval.attacks=pgd", "--config.eval.checks=False",
                    "--config.eval.geometry=False", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(out / "latest" / "robustness.json"))
  assert len(report["rows"]) == 1
  assert report["rows"][0]["info"]["checkpoint"] in ("final", "final = best")


@pytest.mark.mnist
def test_data_dir_overrides_the_recorded_folder(smoke_run, mnist_dir,
                                                tmp_path):
  with open(os.path.join(smoke_run, "config.json")) as f:
    recorded = json.load(f)["data"]
  assert recorded["source"] == "idx" and os.path.isdir(recorded["dir"])
  folder = tmp_path / "mnist_here"
  folder.mkdir()
  for name in os.listdir(mnist_dir):
    if name.endswith(".gz"):
      os.symlink(os.path.join(mnist_dir, name), folder / name)
  out = tmp_path / "eval_data_dir"
  proc = run_script("evaluate.py", f"--workdir={smoke_run}", SMOKE,
                    "--config.eval.num_examples=8", "--checkpoint=final",
                    "--config.eval.attacks=pgd", "--config.eval.checks=False",
                    "--config.eval.geometry=False", f"--data_dir={folder}",
                    f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.splitlines()[0] == (
      f"test data: mnist test split, idx from {folder}, 8 of 10000 images")
  report = json.load(open(out / "latest" / "robustness.json"))
  assert (report["data"]["source"], report["data"]["dir"]) == (
      "idx", str(folder))
