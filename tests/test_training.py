"""The training loop: every method end to end, exact resume, NaN stop, sharding."""

import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfr_jax import config_check
from lfr_jax import data
from lfr_jax import models
from lfr_jax import objectives
from lfr_jax import sharding
from lfr_jax import steps
from lfr_jax import train_state
from lfr_jax import training
from lfr_jax import workdir as workdir_lib
from smoke_configs import smoke  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PRESET_OF = {"standard": "mnist_standard", "pgd_at": "mnist_at",
             "trades": "mnist_trades", "llr": "mnist_llr", "lfr": "mnist_lfr",
             "gradient_norm": "mnist_gradient_norm",
             "decision_jacobian": "mnist_decision_jacobian"}




def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_every_method_has_a_preset():
  assert set(PRESET_OF) == set(objectives.names())


@pytest.mark.parametrize("method", sorted(PRESET_OF))
@pytest.mark.mnist
def test_smoke_run_every_method(method, tmp_path, mnist_test):
  workdir = str(tmp_path / method)
  summary = training.train_and_evaluate(smoke(PRESET_OF[method]), workdir)
  assert summary["completed"] and summary["method"] == method
  assert summary["step"] == 8 and summary["test_examples"] == 16
  # The reported clean accuracy is the final checkpoint's on the first 16
  # test images, recomputed here from the saved parameters.
  config = smoke(PRESET_OF[method])
  state, _ = workdir_lib.load_checkpoint(config, workdir)
  net = models.create(config.model.name, jax.random.key(0),
                      **models.kwargs_from_config(config.model))
  net = net.replace(params=state.params, state=state.model_state)
  x, y = mnist_test
  logits = jax.jit(net.logits_fn())(jnp.asarray(x[:16]))
  assert summary["test_clean_acc"] == pytest.approx(
      float(np.mean(np.argmax(logits, 1) == y[:16])))
  assert 0.0 <= summary["test_pgd_acc"] <= 1.0
  records = _records(workdir)
  train = [r for r in records if r["split"] == "train"]
  assert {"loss", "ce", "reg", "acc", "grad_norm", "examples_per_sec", "lr",
          "eps"} <= set(train[-1])
  assert all(np.isfinite(r["loss"]) for r in train)
  val = [r for r in records if r["split"] == "val"]
  assert len(val) == 2 and {"clean_acc", "pgd_acc"} <= set(val[0])
  assert [r["split"] for r in records].count("test") == 1
  for entry in ("config.json", "summary.json", "checkpoints", "best_checkpoint",
                "tensorboard"):
    assert os.path.exists(os.path.join(workdir, entry)), entry
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["method"] == method


def _small_mnist_run(preset, eps):
  """Three epochs of 2,000 training images (batch 32, 186 steps), K = 5 at
  ``eps``; PGD-10 at the same eps on the first 300 test images."""
  config = smoke(preset)
  config.data.train_size, config.data.validation_size = 2000, 1000
  config.data.batch_size = 32
  config.train.num_epochs = 3.0
  config.optim.lr, config.optim.decay_epochs = 0.05, (3.0,)
  config.inner.eps, config.inner.num_steps = eps, 5
  config.inner.step_size = 2.5 * eps / 5
  config.eval.eps, config.eval.num_steps = eps, 10
  config.eval.step_size = 2.5 * eps / 10
  config.eval.val_examples, config.eval.test_examples = 100, 300
  config.eval.batch_size = 100
  config.log.every_steps = 1000
  config.checkpoint.keep_best = False
  return config


@pytest.mark.mnist
def test_adversarial_training_learns_robustness(tmp_path):
  """pgd_at beats standard training on PGD accuracy by a clear margin, and
  both learn to classify (about 2 minutes on 2 busy CPU cores; measured:
  standard 92% clean / 7% PGD, pgd_at 90% / 66% at eps 0.2)."""
  eps = 0.2
  standard = training.train_and_evaluate(
      _small_mnist_run("mnist_standard", eps), str(tmp_path / "standard"))
  robust = training.train_and_evaluate(
      _small_mnist_run("mnist_at", eps), str(tmp_path / "pgd_at"))
  assert standard["test_clean_acc"] > 0.85
  assert robust["test_clean_acc"] > 0.8
  assert robust["test_pgd_acc"] > standard["test_pgd_acc"] + 0.3, (
      standard, robust)


@pytest.mark.mnist
def test_resume_mid_epoch_is_bitwise_identical(tmp_path):
  # LFR: dropout, random starts and double backprop all draw on the saved RNG.
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  training.train_and_evaluate(smoke("mnist_lfr"), straight)
  stopped = training.train_and_evaluate(smoke("mnist_lfr", train__max_steps=3),
                                        split)
  assert not stopped["completed"] and stopped["step"] == 3  # mid epoch 0 (4 steps)
  resumed = training.train_and_evaluate(smoke("mnist_lfr"), split)
  assert resumed["completed"] and resumed["step"] == 8
  assert resumed["seconds_total"] == pytest.approx(
      stopped["seconds"] + resumed["seconds"])
  a, meta_a = workdir_lib.load_checkpoint(smoke("mnist_lfr"), straight)
  b, meta_b = workdir_lib.load_checkpoint(smoke("mnist_lfr"), split)
  assert meta_a["step"] == meta_b["step"] == 8
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert resumed["test_pgd_acc"] == pytest.approx(
      _records(straight)[-1]["pgd_acc"])
  # Whole-epoch means live in the state: the interrupted epoch's record is
  # the uninterrupted one's.
  epochs = [[r for r in _records(w) if r["split"] == "train_epoch"]
            for w in (straight, split)]
  assert epochs[0] == epochs[1] and len(epochs[0]) == 2


@pytest.mark.mnist
def test_epoch_records_and_kept_epoch_checkpoints(tmp_path):
  """Per-epoch train means, per-epoch test clean accuracy, kept epoch ends."""
  workdir = str(tmp_path / "lfr")
  config = smoke("mnist_lfr", checkpoint__keep=1, checkpoint__keep_epochs=(1,),
                 eval__epoch_test_clean=True)
  training.train_and_evaluate(config, workdir)
  records = _records(workdir)
  train = [r for r in records if r["split"] == "train"]
  epochs = [r for r in records if r["split"] == "train_epoch"]
  assert [r["step"] for r in epochs] == [4, 8]
  # 4 steps per epoch logged in windows of 2: the epoch mean is the mean of
  # its two window means.
  for e in epochs:
    windows = [r for r in train if e["step"] - 4 < r["step"] <= e["step"]]
    assert len(windows) == 2 and e["steps"] == 4
    for key in ("loss", "ce", "reg", "acc", "grad_norm"):
      assert e[key] == pytest.approx(np.mean([w[key] for w in windows]),
                                     rel=1e-5), key
  clean = [r for r in records if r["split"] == "test_clean"]
  assert [r["step"] for r in clean] == [4, 8]
  assert all(r["examples"] == 10000 and 0 <= r["clean_acc"] <= 1 for r in clean)
  # keep=1 keeps only the latest step, plus the end of epoch 1 for good.
  kept = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                if d.isdigit())
  assert kept == [4, 8]


@pytest.mark.mnist
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  real_build = objectives.build

  def poisoned_build(method, **settings):
    objective = real_build(method, **settings)

    def fn(net, x, y, key, eps):
      loss, aux = objective(net, x, y, key, eps)
      # eps grows with the step (warm-up below): NaN from the 6th update on.
      return jnp.where(eps > 0.15, jnp.nan, loss), aux
    return fn

  monkeypatch.setattr(objectives, "build", poisoned_build)
  workdir = str(tmp_path / "nan")
  config = smoke("mnist_at", inner__warmup_epochs=2.0)
  with pytest.raises(training.TrainingDiverged,
                     match="NaN/Inf at step 6 .*last good checkpoint is step 4"):
    training.train_and_evaluate(config, workdir)
  state, meta = workdir_lib.load_checkpoint(config, workdir)
  assert meta["step"] == 4
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_schedules():
  config = smoke("mnist_lfr")
  config.optim.decay_epochs = (1.0, 1.5)
  _, lr = train_state.make_optimizer(config.optim, steps_per_epoch=10)
  assert [float(lr(s)) for s in (0, 9, 10, 14, 15)] == pytest.approx(
      [0.01, 0.01, 0.001, 0.001, 0.0001])
  config.inner.warmup_epochs = 2.0
  eps = train_state.eps_schedule(config.inner, steps_per_epoch=10)
  assert [float(eps(jnp.asarray(s))) for s in (0, 10, 20, 30)] == pytest.approx(
      [0.0, 0.15, 0.3, 0.3])


def test_workdir_guard(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(config_check.ConfigError, match="already holds other files"):
    training.train_and_evaluate(smoke("mnist_standard"), str(tmp_path))
  with pytest.raises(config_check.ConfigError, match="--workdir must name"):
    training.train_and_evaluate(smoke("mnist_standard"), "")


_SHARDED = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    import lfr_jax, jax, jax.numpy as jnp, numpy as np
    from configs import mnist_lfr, mnist_at
    from lfr_jax import config_check, data, models, objectives, sharding, steps
    from lfr_jax import train_state, training
    assert jax.device_count() == 8, jax.devices()

    def run_steps(config, model_kwargs, x, y, n, num_steps):
      # The parameters, state and metrics after each of a few steps, on the
      # mesh code of training over explicitly given devices (as lfr-plan
      # builds it for a TPU topology). One compile per mesh.
      mesh = sharding.make_mesh(devices=jax.devices()[:n])
      net = models.create(config.model.name, jax.random.key(0), **model_kwargs)
      tx, lr = train_state.make_optimizer(config.optim, 10)
      objective = objectives.build(config.method,
                                   **objectives.settings_from_config(config))
      step = steps.make_train_step(objective, net.graphdef, tx, lr,
                                      train_state.eps_schedule(config.inner, 10), mesh)
      state = train_state.create_train_state(net, tx, jax.random.key(1))
      batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
      after = []
      for i in range(num_steps):
        xs, ys = data.to_global(batch_sharding, np.roll(x, i, axis=0),
                                np.roll(y, i, axis=0))
        state, metrics = step(state, xs, ys)
        after.append(jax.device_get((state.params, state.model_state, metrics)))
      assert len(xs.sharding.device_set) == n
      return after

    rng = np.random.default_rng(0)
    cases = []
    lfr = mnist_lfr.get_config("smoke")
    # Three LFR steps agree too (measured 6e-7 of each leaf's scale).
    cases.append((lfr, {{}}, rng.random((16, 28, 28, 1), np.float32), 3))
    # BatchNorm: batch statistics must be those of the global batch. One
    # step only: over several, PGD-AT's BatchNorm WideResNet drifts apart (a
    # gradient entry near 0 whose sign differs in the last bit, another
    # reduction order for the batch statistics, moves the adversarial point).
    at = mnist_at.get_config("smoke")
    at.model.name = "wide_resnet"
    cases.append((at, dict(depth=10, width=1, in_channels=1),
                  rng.random((16, 28, 28, 1), np.float32), 1))
    y = (np.arange(16) % 10).astype(np.int32)
    for config, kwargs, x, num_steps in cases:
      one, eight = (run_steps(config, kwargs, x, y, n, num_steps)
                    for n in (1, 8))
      diffs = [float(np.max(np.abs(a - b))) for a, b in
               zip(jax.tree.leaves(one[0]), jax.tree.leaves(eight[0]))]
      print(config.method, config.model.name, "max diff", max(diffs))
      assert max(diffs) < 1e-6, diffs
      rel = [float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-3))
             for a, b in zip(jax.tree.leaves(one[-1]), jax.tree.leaves(eight[-1]))]
      print(config.method, config.model.name, num_steps, "steps, max rel diff",
            max(rel))
      assert max(rel) < 1e-5, rel

    # The whole loop on 8 devices, and the divisibility check.
    config = mnist_lfr.get_config("smoke")
    config.eval.val_examples = config.eval.test_examples = 16
    config.eval.batch_size = 16
    summary = training.train_and_evaluate(config, sys.argv[1])
    assert summary["completed"], summary
    config.data.batch_size = 12
    try:
      config_check.validate_runtime(config)
      raise SystemExit("batch 12 over 8 devices was accepted")
    except config_check.ConfigError as e:
      assert "not divisible by the 8 devices" in str(e), e
    print("OK")
""")


def test_constant_classifier_detection():
  healthy = {"acc": 0.9, "majority": 0.14, "logit_spread": 3.0}
  assert not training.is_constant_classifier(healthy)
  constant = {"acc": 0.11, "majority": 0.14, "logit_spread": 1e-4}
  assert training.is_constant_classifier(constant)
  # Chance accuracy with input-dependent logits is slow learning, not collapse;
  # near-constant logits that already classify are not a collapse either.
  assert not training.is_constant_classifier(dict(constant, logit_spread=0.5))
  assert not training.is_constant_classifier(dict(constant, acc=0.5))
  # Objectives that report neither metric are never flagged.
  assert not training.is_constant_classifier({"acc": 0.1})
  message = training.collapse_message(300, 50, constant)
  assert "\n" not in message and message.startswith("step 300: the model is a "
                                                    "constant classifier")


@pytest.mark.mnist
def test_collapse_warning_fires_once_on_a_constant_model(tmp_path, caplog):
  """SmallCNN's last layer starts at zero; at lr 1e-12 its logits stay ~0."""
  config = smoke("mnist_standard", optim__lr=1e-12)
  with caplog.at_level("WARNING"):
    summary = training.train_and_evaluate(config, str(tmp_path / "constant"))
  warnings = [r.getMessage() for r in caplog.records
              if "constant classifier" in r.getMessage()]
  # Windows of 2 steps end at steps 2, 4, 6, 8; the first is skipped (a
  # zero-initialized last layer is constant without having collapsed).
  assert len(warnings) == 1 and warnings[0].startswith("step 4: ")
  assert summary["collapse_step"] == 4 and summary["collapsed_at_end"]
  assert training.summary_line(summary, config).endswith("CONSTANT CLASSIFIER")
  train = [r for r in _records(str(tmp_path / "constant"))
           if r["split"] == "train"]
  assert all(r["logit_spread"] < 1e-6 for r in train)


# CI-sized runs of the presets whose regularizer is zero at a constant
# classifier: (preset, overrides of its :smoke config, log window). LLR: the
# 64 smoke images for 40 steps at the :repro learning rate. The decision
# Jacobian starts with a penalty ~10x the cross-entropy (Madry init) and needs
# a few more distinct images to shed it: 2,048 of them, 192 steps of 32.
SHORT_RUNS = {
    "mnist_llr": ({"train__num_epochs": 10.0, "optim__lr": 0.05}, 4),
    "mnist_decision_jacobian": ({"train__num_epochs": 3.0,
                                 "data__train_size": 2048,
                                 "data__batch_size": 32}, 16),
}


def _short_run(preset, tmp_path, **overrides):
  """Trains a short run of ``preset``; returns (config, summary, last window)."""
  settings, window = SHORT_RUNS[preset]
  config = smoke(preset, eval__every_epochs=0, log__every_steps=window,
                 **{**settings, **overrides})
  workdir = str(tmp_path / preset)
  summary = training.train_and_evaluate(config, workdir)
  last = [r for r in _records(workdir) if r["split"] == "train"][-1]
  return config, summary, last


def _constant_classifier_loss(config):
  """The objective at uniform logits: penalties 0, cross-entropy ln 10."""
  weight = config.llr.nominal_weight if config.method == "llr" else 1.0
  return weight * np.log(10)


@pytest.mark.parametrize("preset", sorted(SHORT_RUNS))
@pytest.mark.mnist
def test_preset_loss_falls_below_the_constant_classifier(preset, tmp_path):
  config, summary, last = _short_run(preset, tmp_path)
  assert last["loss"] < _constant_classifier_loss(config) - 0.3, last
  assert last["acc"] > last["majority"] + 0.1, last
  assert not summary["collapsed_at_end"]


@pytest.mark.slow
@pytest.mark.mnist
def test_cifar_llr_weights_collapse_at_mnist_eps(tmp_path):
  """LLR's CIFAR-10 weights (lam 4, mu 3) at eps 0.3: the collapse the preset avoids."""
  config, summary, last = _short_run(
      "mnist_llr", tmp_path, llr__lam=4.0, llr__mu=3.0,
      inner__warmup_epochs=0.0)
  assert last["loss"] >= _constant_classifier_loss(config) - 0.01, last
  assert summary["collapsed_at_end"] and summary["collapse_step"] > 0


@pytest.mark.mnist
def test_sharded_step_matches_single_device(tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8").strip()
  script = tmp_path / "sharded.py"
  script.write_text(_SHARDED.format(repo=REPO))
  proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run")],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and "OK" in proc.stdout, (
      proc.stdout[-2000:] + proc.stderr[-4000:])


@pytest.mark.mnist
def test_train_py_smoke_prints_one_summary_line(tmp_path):
  workdir = tmp_path / "cli"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "train.py"),
       "--config=configs/mnist_standard.py:smoke", f"--workdir={workdir}",
       "--config.eval.val_examples=16", "--config.eval.test_examples=16",
       "--config.eval.batch_size=16", "--config.eval.epoch_test_clean=True"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1 and "test clean" in lines[0] and "PGD-2" in lines[0]
  # Two "test clean" numbers, each saying which images it counts and why.
  assert "on the first 16 test images (final checkpoint)" in lines[0]
  monitor = [l for l in proc.stderr.splitlines() if "test clean" in l]
  assert len(monitor) == 2 and all(
      "on all 10000 test images (monitoring, never used to select)" in l
      for l in monitor), monitor
  assert (workdir / "summary.json").exists()


@pytest.mark.parametrize("preset", [
    "cifar10_llr", pytest.param("imagenet_lfr", marks=pytest.mark.slow)])
def test_smoke_run_on_mocked_tfds(preset, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = smoke(preset, data__validation_size=16, data__train_size=64)
  with tfds.testing.mock_data(num_examples=96):
    summary = training.train_and_evaluate(config, str(tmp_path / preset))
  assert summary["completed"] and summary["test_examples"] == 16


@pytest.mark.slow
@pytest.mark.mnist
def test_quick_lfr_learns(tmp_path):
  # About 3 minutes on 2 CPU cores.
  module = __import__("configs.mnist_lfr", fromlist=["get_config"])
  summary = training.train_and_evaluate(module.get_config("quick"),
                                        str(tmp_path / "quick"))
  assert summary["test_clean_acc"] > 0.8


@pytest.mark.mnist
def test_max_epochs_stops_at_an_epoch_end_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  stopped = training.train_and_evaluate(
      smoke("mnist_standard", train__max_epochs=1.0), workdir)
  assert not stopped["completed"] and stopped["step"] == 4  # 4 steps/epoch
  assert "test_clean_acc" not in stopped
  done = training.train_and_evaluate(
      smoke("mnist_standard", train__max_epochs=5.0), workdir)
  assert done["completed"] and done["step"] == 8  # capped by num_epochs


@pytest.mark.mnist
def test_runs_without_tensorboardx(tmp_path, monkeypatch):
  """Accelerator images may lack tensorboardX: metrics.jsonl still records."""
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
  workdir = str(tmp_path / "run")
  summary = training.train_and_evaluate(smoke("mnist_standard"), workdir)
  assert summary["completed"]
  assert not os.path.exists(os.path.join(workdir, "tensorboard"))
  assert [r["split"] for r in _records(workdir)].count("test") == 1


@pytest.mark.slow
@pytest.mark.mnist
def test_gpu_full_protocol_script_smoke(tmp_path):
  """tools/gpu_full_protocol.sh end to end with the :smoke presets (CPU)."""
  out = tmp_path / "out"
  proc = subprocess.run(["bash", "tools/gpu_full_protocol.sh", "--smoke",
                         str(out)], cwd=REPO, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for method in ("lfr", "trades"):
    assert (out / method / "summary.json").is_file(), method
    assert f"{method}: 2 epochs, median" in proc.stdout


def test_gpu_full_protocol_script_refuses_a_cpu(tmp_path):
  proc = subprocess.run(["bash", "tools/gpu_full_protocol.sh",
                         str(tmp_path / "out")], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2
  assert "no accelerator visible to JAX" in proc.stderr


def test_the_jitted_train_step_traces_once():
  """New batches, keys and a warming eps must not retrace the step (chex)."""
  config = smoke("mnist_lfr")
  config.inner.warmup_epochs = 1.0  # eps changes every step
  net = models.create("small_cnn", jax.random.key(0))
  tx, lr = train_state.make_optimizer(config.optim, steps_per_epoch=4)
  objective = chex.assert_max_traces(
      objectives.build("lfr", **objectives.settings_from_config(config)), n=1)
  step = steps.make_train_step(objective, net.graphdef, tx, lr,
                               train_state.eps_schedule(config.inner, 4),
                               sharding.make_mesh(1), steps_per_epoch=4)
  mesh = sharding.make_mesh(1)
  state = jax.device_put(
      train_state.create_train_state(net, tx, jax.random.key(1)),
      sharding.replicated(mesh))
  rng = np.random.default_rng(0)
  for _ in range(3):
    x, y = data.to_global(sharding.batch(mesh),
                          rng.random((8, 28, 28, 1), np.float32),
                          rng.integers(0, 10, 8).astype(np.int32))
    state, metrics = step(state, x, y)
  assert int(state.step) == 3 and float(metrics["eps"]) > 0
