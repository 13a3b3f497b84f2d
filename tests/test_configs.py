"""Config presets, their checks, and train.py's one-line errors."""

import glob
import os
import subprocess
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from lfr_jax import config_check
from lfr_jax import objectives

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # configs/ import their shared defaults as a package

from configs import common  # noqa: E402

PRESETS = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(REPO, "configs", "*.py"))
    # evaluate.py configures evaluate.py, not a training run.
    if not os.path.basename(p).startswith(("_", "common", "evaluate")))
METHOD_OF = {"standard": "standard", "at": "pgd_at", "trades": "trades",
             "llr": "llr", "lfr": "lfr", "gradient_norm": "gradient_norm",
             "decision_jacobian": "decision_jacobian",
             "lfr_softplus": "lfr", "lfr_warmup": "lfr",
             "llr_softplus": "llr", "ds_natural": "standard"}


def load(name, arg=None):
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  return module.get_config(arg)


def _leaves(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def test_every_requested_preset_exists():
  expected = {f"mnist_{m}" for m in ("standard", "at", "trades", "llr", "lfr",
                                      "gradient_norm", "decision_jacobian")}
  expected |= {f"cifar10_{m}" for m in ("standard", "at", "trades", "llr", "lfr")}
  expected |= {"imagenet_llr", "imagenet_lfr"}
  assert expected <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("arg", [None, "quick", "repro", "curve", "smoke"])
def test_presets_are_valid_values_only(name, arg):
  config = load(name, arg)
  config_check.validate(config)
  assert config.method == METHOD_OF[name.split("_", 1)[1]]
  for path, value in _leaves(config):
    ok = isinstance(value, (str, int, float, bool)) or (
        isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value))
    assert ok, f"{path} holds {type(value).__name__}, not a plain value"


def test_repro_is_one_protocol_for_every_mnist_row():
  """docs/RESULTS.md compares methods: their :repro runs must match."""
  rows = [n for n in PRESETS if n.startswith("mnist_")]
  configs = {n: load(n, "repro") for n in rows}
  for name, c in configs.items():
    assert c.train.num_epochs == 1.0 and c.data.train_size == 0, name
    assert c.data.batch_size == 128 and c.seed == 0, name
    assert c.optim.decay_epochs == pytest.approx((0.9,)), name
    if c.method not in ("standard", "gradient_norm", "decision_jacobian"):
      assert (c.inner.num_steps, c.inner.step_size) == (10, 0.075), name
    if c.optim.name == "sgd":
      assert c.optim.lr == pytest.approx(0.05), name
  assert len({(c.eval.num_steps, c.eval.step_size) for c in configs.values()}) == 1


def test_curve_is_repro_run_longer_keeping_its_points():
  """The robustness-vs-compute curve compares methods at equal epochs."""
  for name in [n for n in PRESETS if n.startswith("mnist_")]:
    repro, curve = load(name, "repro"), load(name, "curve")
    assert curve.train.num_epochs == common.CURVE_EPOCHS, name
    assert curve.checkpoint.keep_epochs == common.CURVE_KEEP_EPOCHS, name
    assert curve.optim.decay_epochs == pytest.approx(
        tuple(e * common.CURVE_EPOCHS for e in repro.optim.decay_epochs)), name
    assert curve.inner.warmup_epochs == pytest.approx(
        repro.inner.warmup_epochs * common.CURVE_EPOCHS), name
    for section in ("inner", "model", "data", "eval"):
      a, b = repro[section].to_dict(), curve[section].to_dict()
      a.pop("warmup_epochs", None), b.pop("warmup_epochs", None)
      assert a == b, (name, section)


def test_lfr_presets_follow_the_authors_model():
  """The LFR authors trained SmallCNN without dropout (their recorded setup)."""
  for name in ("mnist_lfr", "mnist_lfr_softplus", "mnist_lfr_warmup"):
    for arg in (None, "repro", "curve"):
      assert load(name, arg).model.dropout == 0.0, (name, arg)
  assert load("mnist_lfr_softplus").model.activation == "softplus"
  assert load("mnist_lfr_warmup", "curve").inner.warmup_epochs == pytest.approx(
      0.75)
  # The TRADES SmallCNN keeps its own default.
  assert load("mnist_trades").model.dropout == 0.5


@pytest.mark.parametrize("name", PRESETS)
def test_docstring_has_its_run_command(name):
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  assert f"python train.py --config=configs/{name}.py" in module.__doc__


@pytest.mark.parametrize("name", PRESETS)
def test_quick_and_smoke_shrink_the_run(name):
  quick, smoke = load(name, "quick"), load(name, "smoke")
  for c in (quick, smoke):
    assert c.train.num_epochs <= 3
    # The inner and evaluation attacks can still reach the ball's surface.
    if c.method not in ("standard", "gradient_norm", "decision_jacobian"):
      assert c.inner.num_steps * c.inner.step_size >= c.inner.eps - 1e-9
    assert c.eval.num_steps * c.eval.step_size >= c.eval.eps - 1e-9
    assert not c.distributed.enabled
  assert quick.data.train_size == 10000 and quick.inner.num_steps <= 10
  assert smoke.data.train_size // smoke.data.batch_size <= 8
  assert smoke.eval.val_examples <= 64 and smoke.eval.test_examples <= 64


def test_paper_settings():
  lfr = load("mnist_lfr")
  assert (lfr.lfr.lam, lfr.inner.eps, lfr.inner.step_size, lfr.inner.num_steps,
          lfr.train.num_epochs, lfr.optim.lr, lfr.optim.momentum,
          lfr.data.batch_size, lfr.optim.decay_epochs, lfr.model.name) == (
              0.02, 0.3, 0.01, 40, 100, 0.01, 0.9, 128, (90.0,), "small_cnn")
  assert load("mnist_trades").trades.beta == 1.0
  # LLR's CIFAR-10 lam 4, mu 3 scaled from its eps 8/255 to MNIST's 0.3.
  llr = load("mnist_llr")
  assert (llr.llr.lam, llr.llr.mu, llr.llr.nominal_weight) == pytest.approx(
      (4.0 * (8 / 255) / 0.3, 3.0 * (8 / 255) / 0.3, 2.0))
  assert llr.inner.warmup_epochs == 15.0 and llr.model.activation == "relu"
  assert load("mnist_llr", "repro").inner.warmup_epochs == pytest.approx(0.15)
  soft = load("mnist_llr_softplus", "repro")
  assert soft.model.activation == "softplus"
  assert soft.llr.to_dict() == load("mnist_llr", "repro").llr.to_dict()
  gn = load("mnist_gradient_norm")
  assert gn.gradient_norm.norm == "l1" and gn.gradient_norm.lam == 0.02
  dj = load("mnist_decision_jacobian")
  assert dj.model.name == "ds_mnist_cnn" and dj.decision_jacobian.c == 500.0
  # c = 500 on the mean over pixels of the squared l2 norm (see its docstring).
  assert (dj.decision_jacobian.norm, dj.decision_jacobian.squared,
          dj.decision_jacobian.pixel_mean) == ("l2", True, True)
  cifar = load("cifar10_llr")
  assert (cifar.model.depth, cifar.model.width, cifar.model.activation) == (
      28, 8, "softplus")
  assert (cifar.optim.lr, cifar.optim.decay_epochs, cifar.train.num_epochs,
          cifar.data.batch_size, cifar.optim.weight_decay,
          cifar.inner.warmup_epochs) == (0.1, (100.0, 105.0), 110, 256, 2e-4, 15)
  assert (cifar.inner.num_steps, cifar.inner.step_size) == (10, 0.1)
  assert cifar.inner.eps == pytest.approx(8 / 255)
  imnet = load("imagenet_llr")
  assert (imnet.model.name, imnet.data.batch_size, imnet.optim.decay_epochs,
          imnet.train.num_epochs, imnet.inner.warmup_epochs) == (
              "resnet152", 512, (35.0, 70.0, 95.0), 100, 20)
  assert imnet.inner.eps == pytest.approx(4 / 255)
  assert (imnet.llr.lam, imnet.llr.mu, imnet.llr.nominal_weight) == (3, 6, 3)


def test_quick_scales_the_schedule():
  quick = load("cifar10_llr", "quick")
  assert quick.optim.decay_epochs == pytest.approx((100 * 2 / 110, 105 * 2 / 110))
  assert quick.inner.warmup_epochs == pytest.approx(15 * 2 / 110)


def test_unknown_variant():
  with pytest.raises(ValueError, match="quik"):
    common.finish(common.mnist("standard"), "quik")


def test_command_line_overrides(monkeypatch):
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                           lock_config=True)
  argv = ["prog", f"--config={REPO}/configs/mnist_lfr.py:smoke",
          "--config.lfr.lam=0.05", "--config.optim.lr=0.1"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides there
  values(argv)
  assert holder.value.lfr.lam == 0.05 and holder.value.optim.lr == 0.1
  assert holder.value.data.batch_size == 16  # smoke variant applied first


def test_model_settings_override_from_the_command_line(monkeypatch):
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                           lock_config=True)
  argv = ["prog", f"--config={REPO}/configs/cifar10_lfr.py:smoke",
          "--config.model.activation=relu", "--config.model.width=2",
          "--config.model.mean=(0.5,0.5,0.5)"]
  monkeypatch.setattr(sys, "argv", argv)
  values(argv)
  model = holder.value.model
  assert (model.activation, model.width, model.mean) == ("relu", 2,
                                                        (0.5, 0.5, 0.5))


def _constructor_keywords(name):
  """The keyword arguments (and defaults) models.create passes to ``name``."""
  import inspect
  from lfr_jax.models import resnet
  cls = {"resnet50": resnet.ResNet, "resnet152": resnet.ResNet}.get(name)
  if cls is None:
    from lfr_jax import models
    cls = models._REGISTRY[name]  # pylint: disable=protected-access
  params = inspect.signature(cls.__init__).parameters
  skip = {"self", "rngs"} | ({"stage_sizes"} if name != "resnet" else set())
  return {k: p.default for k, p in params.items() if k not in skip}


@pytest.mark.parametrize("name", PRESETS)
def test_model_section_lists_every_model_keyword(name):
  """Every model keyword is in the preset, so the command line can set it."""
  config = load(name)
  model = config.model.to_dict()
  expected = _constructor_keywords(model.pop("name"))
  if "remat" in expected:
    # Set from config.train.remat ("blocks" passes remat=True), since it is
    # a memory choice of the run, not part of the network.
    assert config.train.remat in ("none", "blocks", "inner"), name
    expected.pop("remat")
  assert set(model) == set(expected), name
  for key, default in expected.items():
    if key in common.MODELS.get(load(name).model.name, {}):
      # The shared table repeats the constructor's defaults (None as ()).
      table = common.MODELS[load(name).model.name][key]
      assert table == (() if default is None else default), (name, key)


@pytest.mark.parametrize("field,value,message", [
    ("inner.eps", -0.1, "config.inner.eps must be >= 0"),
    ("method", "foo", "holds settings for method 'lfr'"),
    ("model.name", "resnt", "config.model.name 'resnt' is unknown"),
    ("data.name", "svhn", "config.data.name 'svhn' is unknown"),
    ("optim.decay_epochs", (3.0, 1.0), "must increase"),
    ("eval.restarts", 0, "config.eval.restarts must be >= 1"),
    ("lfr.lam", -1.0, "config.lfr: lam must be >= 0"),
    ("lfr.norm", "l3", "config.lfr: unknown norm 'l3'"),
])
def test_validate_names_the_field(field, value, message):
  config = load("mnist_lfr", "smoke")
  section, _, key = field.rpartition(".")
  (config[section] if section else config)[key] = value
  with pytest.raises(config_check.ConfigError, match=message):
    config_check.validate(config)


def test_validate_runtime_checks_devices_and_model():
  config = load("mnist_lfr", "smoke")
  config_check.validate_runtime(config)
  config.mesh.num_devices = 1000
  with pytest.raises(config_check.ConfigError, match="exceeds the"):
    config_check.validate_runtime(config)
  config = load("mnist_lfr", "smoke")
  config.data.name = "cifar10"  # SmallCNN expects 28x28x1
  with pytest.raises(config_check.ConfigError, match="does not build for cifar10"):
    config_check.validate_runtime(config)


def test_objective_settings_take_the_shared_inner_settings():
  config = load("mnist_lfr", "smoke")
  settings = objectives.settings_from_config(config)
  assert settings["lam"] == 0.02 and settings["num_steps"] == 2
  assert "num_steps" not in objectives.settings_from_config(
      load("mnist_gradient_norm", "smoke"))


# --- train.py: one line on stderr, non-zero exit, nothing written -----------


@pytest.mark.parametrize("override,message", [
    ("--config.optim.lrr=0.1",
     '--config.optim.lrr: no such config field. Did you mean "lr" instead of "lrr"?'),
    ("--config.inner.eps=-0.1", "config.inner.eps must be >= 0, got -0.1."),
    ("--config.method=nope", "config.method is 'nope'"),
    ("--config.optim.lr=abc", "could not convert string to float: 'abc'"),
    ("--config.data.dir=/nonexistent/mnist", "/nonexistent/mnist does not exist"),
    ("--config.data.source=tfds --config.data.tfds_data_dir=/nonexistent/tfds",
     "tfds dataset mnist is not prepared in /nonexistent/tfds"),
    ("--config.data.batch_size=100000", "batch_size 100000 exceeds the 64"),
])
def test_train_py_user_errors_are_one_line(tmp_path, override, message):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "train.py"),
       "--config=configs/mnist_lfr.py:smoke", f"--workdir={workdir}",
       *override.split()],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("train.py: error: ") and message in lines[0]
  assert not workdir.exists()
