"""The robustness table, masking checks, reports and geometry of evaluation.py.

The models are a softmax-linear MNIST classifier trained in about a second
and the same classifier behind 8-bit input quantization, whose input gradient
is exactly zero (a constructed case of gradient masking).
"""

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfr_jax import attacks
from lfr_jax import config_check
from lfr_jax import evaluation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import evaluate as eval_configs  # noqa: E402

def linear(params, x):
  return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def quantized(params, x):
  # round() has a zero derivative: every input gradient vanishes.
  return linear(params, jnp.round(x * 255.0) / 255.0)


@pytest.fixture(scope="module")
def mnist(mnist_train):
  x_train, y_train = mnist_train
  x, y, info = evaluation.load_test_data({"name": "mnist"}, 64)
  return x_train[:2000], y_train[:2000], x, y, info


@pytest.fixture(scope="module")
def params(mnist):
  x_train, y_train = jnp.asarray(mnist[0]), jnp.asarray(mnist[1])

  @jax.jit
  def train(p):
    def loss(p):
      logp = jax.nn.log_softmax(linear(p, x_train))
      return -jnp.mean(logp[jnp.arange(y_train.shape[0]), y_train])

    def step(p, _):
      g = jax.grad(loss)(p)
      return jax.tree.map(lambda a, b: a - 0.5 * b, p, g), None

    return jax.lax.scan(step, p, None, length=100)[0]

  return train({"w": jnp.zeros((784, 10)), "b": jnp.zeros((10,))})


def settings(**overrides):
  cfg = eval_configs.get_config("smoke").eval
  cfg.check_steps = 30          # DDN needs room to grow its norm budget
  cfg.random_search_steps = 100
  cfg.geometry = False
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


@pytest.fixture(scope="module")
def report(mnist, params):
  _, _, x, y, info = mnist
  models = [evaluation.ModelRow("linear", linear, params),
            evaluation.ModelRow("quantized", quantized, params)]
  return evaluation.evaluate(models, x, y, settings(), data_info=info)


def _statuses(row):
  return {c.name: c.status for c in row.checks}


def _cells(line):
  return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.mark.mnist
def test_every_column_present_with_independently_computed_cells(
    mnist, params, report):
  _, _, x, y, _ = mnist
  table = evaluation.main_table(report)
  header = table.splitlines()[0]
  for label in ("clean", "PGD-2", "FGSM (LFR)", "MI-FGSM (LFR)",
                "DDN-3 success", "DDN-3 median L2", "DDN-3 acc@L2<=2",
                "| FGSM |", "| MI-FGSM |", "APGD-CE", "APGD-T", "worst case"):
    assert label in header, label
  assert [a.name for a in report.columns] + ["worst"] == list(
      evaluation.ATTACK_NAMES)
  w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"])
  x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  y = np.asarray(y)
  z = x @ w + b
  clean = z.argmax(1) == y
  # Textbook FGSM on a linear softmax model, by hand: one step of eps along
  # sign(W (softmax(z) - e_y)), clipped to [0, 1].
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  grad = (p - np.eye(10)[y]) @ w.T
  x_fgsm = np.clip(x + 0.3 * np.sign(grad), 0.0, 1.0)
  fgsm_robust = clean & ((x_fgsm @ w + b).argmax(1) == y)
  row = report.rows[0]
  np.testing.assert_array_equal(row.clean, clean)
  np.testing.assert_array_equal(row.robust["fgsm"], fgsm_robust)
  assert clean.mean() > 0.8 and fgsm_robust.mean() < clean.mean() - 0.3
  # The table shows these numbers, in percent.
  cells = dict(zip(_cells(header), _cells(next(
      l for l in table.splitlines() if l.startswith("| linear")))))
  assert float(cells["clean"].rstrip("%")) == pytest.approx(
      100 * clean.mean(), abs=0.006)
  assert float(cells["FGSM"].rstrip("%")) == pytest.approx(
      100 * fgsm_robust.mean(), abs=0.006)
  # Worst case: robust only if robust to every l_inf column (DDN is l2 and
  # not part of it).
  for r in report.rows:
    linf = [a.name for a in report.columns if a.threat == "linf"]
    assert "ddn_lfr" not in linf and len(linf) == 7
    want = r.clean.copy()
    for name in linf:
      want &= r.robust[name]
    np.testing.assert_array_equal(r.robust["worst"], want)
  assert report.rows[0].acc("pgd") <= 0.05  # a linear model is not robust
  assert "not robust accuracies" in evaluation.to_markdown(report)


@pytest.mark.mnist
def test_honest_model_passes_the_masking_checks(report):
  row = report.rows[0]
  assert len(row.checks) == len(evaluation.CHECK_NAMES)
  assert _statuses(row) == {name: "PASS" for name in evaluation.CHECK_NAMES}
  for line in evaluation.check_lines(report):
    assert line.split(" ", 1)[0] in ("PASS", "WARN")
    assert "%" in line or "->" in line  # each line names its numbers


@pytest.mark.mnist
def test_masked_model_triggers_warnings(report):
  status = _statuses(report.rows[1])
  assert status["gradient-free not stronger"] == "WARN"
  assert status["~0% at large eps"] == "WARN"
  assert status["attack loss rises"] == "WARN"
  lines = [l for l in evaluation.check_lines(report)
           if l.startswith("WARN [quantized] gradient-free")]
  assert len(lines) == 1 and "gradients are masked" in lines[0]


@pytest.mark.mnist
def test_report_files_record_settings_versions_hardware(report, tmp_path):
  paths = evaluation.write_report(report, tmp_path)
  for key in ("md", "csv", "json", "npz"):
    assert os.path.isfile(paths[key])
  with open(paths["json"]) as f:
    d = json.load(f)
  assert set(evaluation.SETTINGS) <= set(d["settings"])
  assert d["seed"] == 0 and d["data"]["examples"] == 64
  assert {"python", "jax", "flax", "numpy"} <= set(d["software"])
  assert {"platform", "device_kind", "device_count"} <= set(d["hardware"])
  pgd = next(c for c in d["columns"] if c["name"] == "pgd")
  assert pgd["settings"]["eps"] == 0.3 and pgd["settings"]["random_start"]
  assert [r["label"] for r in d["rows"]] == ["linear", "quantized"]
  assert {c["status"] for c in d["rows"][1]["checks"]} <= {"PASS", "WARN"}
  csv_lines = open(paths["csv"]).read().splitlines()
  assert csv_lines[0].startswith("checkpoint,clean,pgd,")
  assert len(csv_lines) == 3
  per_example = np.load(paths["npz"])
  assert per_example["row0_worst"].shape == (64,)


def test_paper_settings_of_the_columns():
  cols = {a.name: a.settings() for a in evaluation.table_attacks(
      evaluation.from_config(eval_configs.get_config().eval))}
  assert cols["pgd"] == {
      "attack": "pgd", "num_steps": 40, "loss": "ce", "random_start": True,
      "restarts": 1, "norm": "linf", "eps": 0.3, "step_size": 0.01}
  assert (cols["fgsm_lfr"]["random_start"], cols["fgsm_lfr"]["step"],
          cols["fgsm_lfr"]["start_eps"]) == (True, 0.3, 0.3)
  assert cols["fgsm"]["random_start"] is False
  assert (cols["mifgsm_lfr"]["decay"], cols["mifgsm_lfr"]["num_steps"],
          cols["mifgsm_lfr"]["step_size"],
          cols["mifgsm_lfr"]["random_start"]) == (0.1, 40, 0.01, False)
  assert cols["mifgsm"]["decay"] == 1.0
  assert cols["ddn_lfr"]["num_steps"] == 20
  assert cols["apgd_ce"]["num_steps"] == 100
  assert (cols["apgd_t"]["num_steps"], cols["apgd_t"]["num_targets"]) == (
      100, 9)
  assert evaluation.reduced_settings(
      evaluation.from_config(eval_configs.get_config().eval)) == []


@pytest.mark.parametrize("field,value,message", [
    ("attacks", "pgd,pgd_100", "unknown attack 'pgd_100'"),
    ("eps", 1.5, "config.eval.eps must be a number in [0, 1]"),
    ("eps_sweep", (0.1, -0.2), "eps_sweep values must lie in [0, 1]"),
    ("large_eps", 2.0, "config.eval.large_eps"),
    ("attacks", "worst", "worst needs at least one l_inf column"),
])
def test_invalid_settings_are_one_line_config_errors(field, value, message):
  cfg = eval_configs.get_config().eval
  cfg[field] = value
  with pytest.raises(config_check.ConfigError, match=None) as e:
    evaluation.from_config(cfg)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_noise_tolerance_and_ddn_summary():
  assert evaluation.noise_tolerance(0.5, 100) == pytest.approx(0.11)
  assert evaluation.noise_tolerance(0.0, 10) == pytest.approx(0.1)
  norms = np.array([0.5, 1.5, np.inf, 3.0, 0.0])
  clean = np.array([True, True, True, True, False])
  s = evaluation.ddn_summary(norms, clean, 2.0)
  assert s["success"] == 0.75 and s["median_l2"] == pytest.approx(2.25)
  assert s["acc_at_budget"] == pytest.approx(2 / 5)


# ------------------------------------------------ masking-check thresholds --

M = 100  # examples of the synthetic rows below


def tolerance(p, n=M):
  """The documented noise band: one example plus two binomial std errors."""
  return 1.0 / n + 2.0 * np.sqrt(p * (1.0 - p) / n)


def first(fraction, n=M):
  """n flags whose first round(fraction * n) are True."""
  return np.arange(n) < int(round(fraction * n))


HEALTHY = {"fgsm_lfr": 0.6, "fgsm": 0.7, "mifgsm_lfr": 0.6, "mifgsm": 0.6,
           "pgd": 0.5, "apgd_ce": 0.5, "apgd_t": 0.5, "pgd_more": 0.5,
           "pgd_large": 0.0, "random_search": 0.9,
           "sweep": (0.9, 0.5), "ddn_failures": 0,
           "trace": tuple(np.linspace(1.0, 2.0, 11))}
LABELS = {"clean": "clean", "pgd": "PGD-40", "fgsm_lfr": "FGSM (LFR)",
          "fgsm": "FGSM", "mifgsm_lfr": "MI-FGSM (LFR)", "mifgsm": "MI-FGSM",
          "apgd_ce": "APGD-CE", "apgd_t": "APGD-T", "worst": "worst case"}


def synthetic_checks(**changes):
  """Statuses of the masking checks of a row with the given accuracies."""
  v = {**HEALTHY, **changes}
  robust = {k: first(v[k]) for k in LABELS if k not in ("clean", "worst")}
  norms = np.full(M, 1.5)
  norms[:v["ddn_failures"]] = np.inf
  row = evaluation.RowResult(
      label="synthetic", info={}, y=np.zeros(M, np.int32),
      clean=np.ones(M, bool), robust=robust,
      sweep={"pgd": {0.1: first(v["sweep"][0]), 0.3: first(v["sweep"][1])}},
      check_data={
          "m": M, "pgd_more": first(v["pgd_more"]),
          "pgd_more_label": "PGD-100 x2", "pgd_large": first(v["pgd_large"]),
          "pgd_large_label": "PGD-100", "ddn_norms": norms,
          "ddn_label": "DDN-100", "random_search": first(v["random_search"]),
          "random_search_label": "random search",
          "trace": np.asarray(v["trace"])})
  cfg = eval_configs.get_config().eval
  cfg.large_eps, cfg.large_eps_max_acc = 0.5, 0.05
  checks = evaluation.masking_checks(row, evaluation.from_config(cfg), LABELS)
  assert [c.name for c in checks] == list(evaluation.CHECK_NAMES)
  return {c.name: c.status for c in checks}


def rising_trace(drops, steps=10):
  """A rising mean-CE trace with ``drops`` decreases of 5% of the rise."""
  trace = [1.0]
  for i in range(steps):
    trace.append(trace[-1] - 0.05 if i < drops else trace[-1] + 0.3)
  return tuple(trace)


ITERATIVE = HEALTHY["fgsm_lfr"]          # the lower single-step accuracy
WHITE_BOX = HEALTHY["pgd"]               # the white-box worst case
BASE = HEALTHY["pgd"]


THRESHOLD_CASES = [
    # 1. iterative <= single-step (+ noise), the band computed here.
    ("iterative <= single-step",
     dict(pgd=ITERATIVE + 0.5 * tolerance(ITERATIVE)), "PASS"),
    ("iterative <= single-step",
     dict(pgd=ITERATIVE + 1.5 * tolerance(ITERATIVE)), "WARN"),
    ("iterative <= single-step",
     dict(apgd_ce=ITERATIVE + 1.5 * tolerance(ITERATIVE)), "WARN"),
    # 2. accuracy falls with eps.
    ("accuracy falls with eps", dict(sweep=(0.5, 0.5 + 0.5 * tolerance(0.5))),
     "PASS"),
    ("accuracy falls with eps", dict(sweep=(0.5, 0.5 + 1.5 * tolerance(0.5))),
     "WARN"),
    # 3. at most large_eps_max_acc (5%) at eps 0.5.
    ("~0% at large eps", dict(pgd_large=0.05), "PASS"),
    ("~0% at large eps", dict(pgd_large=0.06), "WARN"),
    # 4. unbounded DDN breaks every correct point.
    ("unbounded DDN reaches 100%", dict(ddn_failures=1), "WARN"),
    # 5. more steps/restarts within the band of max(base, more), both ways.
    ("more steps/restarts", dict(pgd_more=BASE + 0.5 * tolerance(0.6)),
     "PASS"),
    ("more steps/restarts", dict(pgd_more=BASE + 1.5 * tolerance(0.7)),
     "WARN"),
    ("more steps/restarts", dict(pgd_more=BASE - 1.5 * tolerance(BASE)),
     "WARN"),
    # 6. gradient-free not below the white-box worst case - noise.
    ("gradient-free not stronger",
     dict(random_search=WHITE_BOX - 0.5 * tolerance(WHITE_BOX)), "PASS"),
    ("gradient-free not stronger",
     dict(random_search=WHITE_BOX - 1.5 * tolerance(WHITE_BOX)), "WARN"),
    # 7. the loss rises and drops in at most 20% of the steps.
    ("attack loss rises", dict(trace=rising_trace(2)), "PASS"),
    ("attack loss rises", dict(trace=rising_trace(3)), "WARN"),
    ("attack loss rises", dict(trace=tuple(np.linspace(2.0, 1.0, 11))),
     "WARN"),
]


SHORT = dict(zip(evaluation.CHECK_NAMES, (
    "iterative", "sweep", "large_eps", "ddn", "more_steps", "gradient_free",
    "loss_rises")))


@pytest.mark.parametrize("check, changes, status", THRESHOLD_CASES, ids=[
    f"{SHORT[c]}-{s.lower()}" for c, _, s in THRESHOLD_CASES])
def test_masking_check_thresholds(check, changes, status):
  """Each check's PASS/WARN on either side of its documented threshold."""
  statuses = synthetic_checks(**changes)
  assert statuses[check] == status, statuses
  # Every other check keeps its healthy status.
  healthy = synthetic_checks()
  assert healthy == {name: "PASS" for name in evaluation.CHECK_NAMES}


@pytest.mark.mnist
def test_geometry_figures_and_numbers(mnist, params, tmp_path):
  _, _, x, y, info = mnist
  models = [evaluation.ModelRow("linear", linear, params),
            evaluation.ModelRow("quantized", quantized, params)]
  cfg = settings(attacks="pgd", checks=False, geometry=True,
                 surface_resolution=5)
  report = evaluation.evaluate(models, x[:16], y[:16], cfg,
                               figures_dir=tmp_path, data_info=info)
  names = sorted(os.listdir(tmp_path))
  for stem in ("eps_sweep", "surface_random_decision_0",
               "surface_adversarial_loss_0", "jacobian_maps",
               "gamma_flatness", "gamma_linearity"):
    assert f"{stem}.png" in names and f"{stem}.npz" in names, stem
  grid = np.load(tmp_path / "surface_adversarial_decision_0.npz")
  assert grid["Z_0"].shape == (5, 5) and list(grid["labels"]) == [
      "linear", "quantized"]
  g = report.rows[0].geometry
  # A linear model: constant Jacobian, zero Hessian.
  assert g["jacobian_l1_mean"] > 0 and g["hessian_top_abs_mean"] == 0.0
  assert "## Geometry" in evaluation.to_markdown(report)


# --------------------------------------------------------------- test data --


def _linked_mnist(mnist_dir, folder):
  """A second MNIST folder: links to the four IDX files."""
  folder.mkdir()
  for name in os.listdir(mnist_dir):
    if name.endswith(".gz"):
      os.symlink(os.path.join(mnist_dir, name), folder / name)
  return str(folder)


@pytest.mark.mnist
def test_test_data_is_read_from_the_recorded_folder(mnist_dir, tmp_path,
                                                    monkeypatch):
  monkeypatch.delenv("LFR_DATA_DIR", raising=False)
  recorded = _linked_mnist(mnist_dir, tmp_path / "recorded")
  data_cfg = {"name": "mnist", "source": "idx", "dir": recorded}
  x, y, info = evaluation.load_test_data(data_cfg, 8)
  assert x.shape == (8, 28, 28, 1) and y.shape == (8,)
  assert (info["source"], info["dir"]) == ("idx", recorded)
  line = evaluation.data_line(info, 8)
  assert line == (f"test data: mnist test split, idx from {recorded}, 8 of "
                  f"10000 images")
  # A folder given explicitly wins over the recorded one.
  other = _linked_mnist(mnist_dir, tmp_path / "other")
  _, _, info = evaluation.load_test_data(data_cfg, 8, data_dir=other)
  assert info["dir"] == other


@pytest.mark.mnist
def test_a_recorded_folder_missing_here_falls_back_to_the_default(
    mnist_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("LFR_DATA_DIR", mnist_dir)
  data_cfg = {"name": "mnist", "source": "idx",
              "dir": str(tmp_path / "moved_away")}
  x_rec, _, info = evaluation.load_test_data(data_cfg, 8)
  assert info["dir"] == os.path.abspath(mnist_dir)
  x_default, _, _ = evaluation.load_test_data({"name": "mnist"}, 8)
  np.testing.assert_array_equal(x_rec, x_default)
