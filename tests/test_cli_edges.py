"""First contact and failures at the edges, through the programs themselves.

--help lists each program's own flags; a recorded run resumes with
``train.py --workdir=DIR`` alone; a full disk, a read-only folder or a denied
permission is one line and exit status 2 (on a small tmpfs in a private mount
namespace where this machine allows it, else a simulated OSError); a damaged
checkpoint is one line per step, without orbax's asynchronous tracebacks.
"""

import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from lfr_jax import cli
from lfr_jax import config_check
from lfr_jax import training
from smoke_configs import smoke  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SMOKE_EVAL = ["--config.eval.test_examples=16", "--config.eval.val_examples=16",
              "--config.eval.batch_size=16"]
# absl's own log lines (I1203 10:00:00.000 ... file.py:12] message).
_ABSL = re.compile(r"^[IWE]\d{4} ")


def run(*args, timeout=300, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        **kwargs)


def not_logged(stderr: str) -> list[str]:
  """The stderr lines that are not absl INFO/WARNING log lines."""
  return [l for l in stderr.splitlines()
          if l.strip() and not re.match(r"^[IW]\d{4} ", l)]




# --- --help --------------------------------------------------------------------

HELP = {
    "train.py": ("--config", "--workdir"),
    "evaluate.py": ("--config", "--workdir", "--out", "--checkpoint",
                    "--torch_checkpoint"),
    "tools/sweep.py": ("--config", "--eval_config", "--lams", "--workdir"),
    "tools/reproduce.py": ("--workdir", "--stages", "--rows", "--dry_run"),
    "tools/curve.py": ("--workdir", "--stages", "--rows"),
    "tools/decision_surface_table.py": ("--workdir", "--labels", "--out"),
}


@pytest.mark.parametrize("program", sorted(HELP))
def test_help_lists_the_programs_own_flags(program):
  """train.py --help exited 1 without listing --config or --workdir."""
  proc = run(program, "--help", timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"{program} flags:" in proc.stdout
  for flag in HELP[program]:
    assert re.search(rf"^\s+{flag}: ", proc.stdout, re.M) or re.search(
        rf"^\s+--\[no\]{flag[2:]}: ", proc.stdout, re.M), flag
  assert "jax_" not in proc.stdout  # only the program's flags


# --- radii -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["inner", "eval"])
def test_train_refuses_an_linf_radius_above_one(field):
  """train.py accepted --config.inner.eps=1.5 and --config.eval.eps=1.5."""
  config = smoke("mnist_lfr")
  config[field].eps = 1.5
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(config)
  assert str(e.value) == (f"config.{field}.eps must be an l_inf radius in "
                          f"[0, 1] (pixels lie in [0, 1]), got 1.5.")


def test_an_l2_evaluation_radius_may_exceed_one():
  config = smoke("mnist_lfr")
  config.eval.norm, config.eval.eps = "l2", 1.5
  config_check.validate(config)


def test_train_py_refuses_eps_above_one_in_one_line(tmp_path):
  proc = run("train.py", "--config=configs/mnist_lfr.py:smoke",
             f"--workdir={tmp_path / 'run'}", "--config.inner.eps=1.5")
  assert proc.returncode == 2
  assert not_logged(proc.stderr) == [
      "train.py: error: config.inner.eps must be an l_inf radius in [0, 1] "
      "(pixels lie in [0, 1]), got 1.5."]
  assert not (tmp_path / "run").exists()


# --- resuming a recorded run -------------------------------------------------


@pytest.mark.slow  # three runs of train.py (about 1 min)
@pytest.mark.mnist
def test_a_recorded_run_resumes_with_its_workdir_alone(tmp_path):
  """A run trained with overrides could only be resumed by retyping them, and
  --config=<workdir>/config.json failed with "name 'true' is not defined"."""
  workdir = tmp_path / "run"
  training.train_and_evaluate(smoke(optim__lr=0.02, log__progress=False),
                              str(workdir))
  # Interrupted after its first epoch: its last checkpoint is step 4.
  for folder in ("checkpoints/8", "best_checkpoint/8", "summary.json"):
    path = workdir / folder
    if path.is_dir():
      shutil.rmtree(path)
    elif path.exists():
      path.unlink()
  resumed = run("train.py", f"--workdir={workdir}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert resumed.stdout.strip().splitlines()[-1].startswith(
      "standard small_cnn on mnist: step 8 (2.00 epochs), test clean ")
  again = run("train.py", f"--config={workdir / 'config.json'}",
              f"--workdir={workdir}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "holds a finished run (step 8 of 8): nothing to train or test " \
      "again" in again.stdout
  # An override of a result-changing field is refused, in one line.
  changed = run("train.py", f"--workdir={workdir}", "--config.optim.lr=0.5")
  assert changed.returncode == 2
  lines = not_logged(changed.stderr)
  assert len(lines) == 1 and "optim.lr (0.02 -> 0.5)" in lines[0]
  assert f"train.py --workdir={workdir}" in lines[0]


def test_no_config_and_nothing_recorded_is_one_line(tmp_path):
  proc = run("train.py", f"--workdir={tmp_path / 'new'}", timeout=120)
  assert proc.returncode == 2
  assert not_logged(proc.stderr) == [
      f"train.py: error: --config is needed: {tmp_path / 'new'} holds no "
      f"recorded config.json to resume from (a new run takes a preset, e.g. "
      f"--config=configs/mnist_lfr.py:quick)."]


# --- damaged checkpoints -----------------------------------------------------


def _truncate_arrays(step_dir):
  cut = 0
  for root, _, names in os.walk(step_dir):
    for name in names:
      full = os.path.join(root, name)
      if ("state" in full and not name.endswith((".json", "_METADATA"))
          and os.path.getsize(full) > 64):
        with open(full, "r+b") as f:
          f.truncate(os.path.getsize(full) // 2)
        cut += 1
  assert cut, step_dir


@pytest.mark.slow  # tests/test_workdir.py checks the same lines in-process
@pytest.mark.mnist
def test_damaged_checkpoints_are_one_line_each_then_the_resume(tmp_path):
  """Up to 37 "RuntimeError: Event loop is closed" tracebacks followed a
  damaged checkpoint, on a run that recovered and exited 0."""
  workdir = tmp_path / "run"
  training.train_and_evaluate(
      smoke(train__max_steps=6, checkpoint__every_steps=2,
            checkpoint__keep=3), str(workdir))
  for step in ("6", "4"):
    _truncate_arrays(workdir / "checkpoints" / step)
  proc = run("train.py", f"--workdir={workdir}",
             "--config.train.max_steps=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "Event loop is closed" not in proc.stderr
  warnings = [l.split("] ", 1)[1] for l in proc.stderr.splitlines()
              if l.startswith("W") and "] " in l and "constant" not in l]
  checkpoints = workdir / "checkpoints"
  assert warnings == [
      f"checkpoint step 6 in {checkpoints} does not restore (damaged files); "
      f"moved to {workdir / 'damaged_checkpoints'}.",
      f"checkpoint step 4 in {checkpoints} does not restore (damaged files); "
      f"moved to {workdir / 'damaged_checkpoints'}.",
      f"resumed from step 2 (epoch 0, step 2 of 4) in {workdir}; steps 3-6 "
      f"are trained again"]


# --- storage errors ----------------------------------------------------------


def _can_mount() -> bool:
  if shutil.which("unshare") is None:
    return False
  probe = subprocess.run(
      ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
      capture_output=True, timeout=30)
  return probe.returncode == 0


MOUNT = pytest.mark.skipif(
    not _can_mount(), reason="needs a private mount namespace (unshare -m, "
    "root); test_storage_errors_simulated covers the same lines")


def _on_tmpfs(tmp_path, options: str, command: str):
  """Runs ``command`` with a fresh tmpfs at ``tmp_path/mnt`` (its own mount
  namespace: the mount vanishes with the command)."""
  mnt = tmp_path / "mnt"
  mnt.mkdir()
  script = f"mount -t tmpfs -o {options} tmpfs {mnt} && cd {REPO} && {command}"
  return subprocess.run(["unshare", "-m", "sh", "-c", script],
                        capture_output=True, text=True, timeout=600), mnt


@MOUNT
@pytest.mark.mnist
def test_a_full_disk_during_training_is_one_line(tmp_path):
  """249-503 lines of orbax tracebacks, sometimes ending in "ImportError:
  sys.meta_path is None"."""
  proc, mnt = _on_tmpfs(
      tmp_path, "size=300k",
      f"{sys.executable} train.py --config=configs/mnist_standard.py:smoke "
      f"--workdir={tmp_path / 'mnt' / 'run'} " + " ".join(SMOKE_EVAL))
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = not_logged(proc.stderr)
  assert len(lines) == 1, proc.stderr[-3000:]
  assert re.fullmatch(
      rf"train\.py: error: {re.escape(str(mnt))}/run/\S+: no space left on "
      rf"the device \(ENOSPC\); free some space and run again\.", lines[0])


@MOUNT
def test_a_read_only_workdir_is_one_line(tmp_path):
  proc, mnt = _on_tmpfs(
      tmp_path, "size=64k,ro",
      f"{sys.executable} train.py --config=configs/mnist_standard.py:smoke "
      f"--workdir={tmp_path / 'mnt' / 'run'}")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert not_logged(proc.stderr) == [
      f"train.py: error: {mnt / 'run'}: read-only filesystem (EROFS); choose "
      f"a writable folder."]


@MOUNT
@pytest.mark.slow  # a training and an evaluation (about 40 s)
@pytest.mark.mnist
def test_evaluate_out_on_a_full_disk_is_one_line_and_publishes_nothing(
    tmp_path):
  workdir = tmp_path / "run"
  training.train_and_evaluate(smoke(log__progress=False), str(workdir))
  proc, mnt = _on_tmpfs(
      tmp_path, "size=40k",
      f"{sys.executable} evaluate.py --workdir={workdir} "
      f"--config=configs/evaluate.py:smoke --out={tmp_path / 'mnt' / 'eval'}; "
      f"echo rc=$?; ls -a {tmp_path / 'mnt' / 'eval'}")
  assert "rc=2" in proc.stdout, proc.stderr[-3000:]
  lines = not_logged(proc.stderr)
  assert len(lines) == 1 and lines[0].startswith(f"evaluate.py: error: {mnt}")
  assert lines[0].endswith("no space left on the device (ENOSPC); free some "
                           "space and run again.")
  # Neither a half-written version nor a latest pointer is left.
  assert proc.stdout.split("rc=2")[1].split() == [".", ".."]


_FAILING_PROGRAM = textwrap.dedent("""
    import errno, sys
    sys.path.insert(0, {repo!r})
    from lfr_jax import cli

    def run():
      raise OSError(errno.{name}, "simulated", {path!r})

    cli.main("prog.py", run, quiet_logs=False)
""")


@pytest.mark.parametrize("name, cause", [
    ("ENOSPC", "no space left on the device (ENOSPC); free some space and "
               "run again."),
    ("EACCES", "permission denied (EACCES); choose a folder you may write."),
    ("EROFS", "read-only filesystem (EROFS); choose a writable folder.")])
def test_storage_errors_simulated(tmp_path, name, cause):
  """A permission error on the workdir printed 26 lines."""
  script = tmp_path / "prog.py"
  script.write_text(_FAILING_PROGRAM.format(repo=REPO, name=name,
                                            path="/data/run/summary.json"))
  proc = run(str(script), timeout=60)
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
      f"prog.py: error: /data/run/summary.json: {cause}"]


def test_storage_errors_wrapped_by_tensorstore_are_recognized():
  wrapped = ValueError(
      'RESOURCE_EXHAUSTED: Error writing "x/0.0" in OCDBT database at local '
      'file "/runs/q/checkpoints/4.orbax-checkpoint-tmp/": Failed writing: '
      '"/runs/q/checkpoints/4.orbax-checkpoint-tmp/d/ab": No space left on '
      "device [os_error_code='28']")
  assert cli.storage_error(wrapped) == (
      "/runs/q/checkpoints/4.orbax-checkpoint-tmp/: no space left on the "
      "device (ENOSPC); free some space and run again.")
  try:
    try:
      raise PermissionError(errno.EACCES, "Permission denied", "/runs/q")
    except OSError as e:
      raise RuntimeError("save failed") from e
  except RuntimeError as e:
    assert cli.storage_error(e) == ("/runs/q: permission denied (EACCES); "
                                    "choose a folder you may write.")
  assert cli.storage_error(ValueError("eps must be >= 0")) is None
  assert cli.storage_error(FileNotFoundError(errno.ENOENT, "gone", "/x")) is \
      None


def test_the_torch_hint_names_the_cpu_wheel(tmp_path, monkeypatch):
  """The hint led to a multi-GB CUDA build."""
  from lfr_jax import interop
  path = tmp_path / "model.pt"
  path.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
  with pytest.raises(ImportError) as e:
    interop.load_torch_state_dict(str(path))
  assert "--index-url https://download.pytorch.org/whl/cpu" in str(e.value)
