"""The regularization-weight sweep of the LFR paper (Fig. 3): one run per lambda.

Usage::

    python tools/sweep.py --config=configs/mnist_lfr.py:quick \\
        --lams=0,0.01,0.02,0.05 --workdir=runs/lfr_sweep
    python tools/sweep.py --config=configs/mnist_lfr.py --lams=0,0.02 \\
        --workdir=runs/lfr_sweep --eval_config.eval.num_examples=1000

Trains ``config.<method>.lam = lambda`` for every lambda with
``training.train_and_evaluate`` into ``<workdir>/lam_<lambda>`` (rerunning
resumes each run where it stopped), then evaluates every final checkpoint on
the test set with ``--attacks`` (default PGD-40 and APGD-CE, settings from
``--eval_config``, default configs/evaluate.py) and writes
``<workdir>/sweep.{json,md}``, the plot ``<workdir>/sweep.png`` (clean and
robust accuracy against lambda) and the full report in ``<workdir>/eval/``.

A mistake in the flags or the configs exits with status 2 and one line on
stderr, before any training starts.
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run as ``python tools/sweep.py``, Python puts tools/ first on the path; the
# repository root must come first so that this checkout's ``lfr_jax`` (not
# another installed copy) and ``configs`` are the ones imported.
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import lfr_jax  # noqa: E402,F401  (fast XLA CPU flags before jax starts)
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from lfr_jax import cli
from lfr_jax import config_check
from lfr_jax import data
from lfr_jax import evaluation

DEFAULT_EVAL_CONFIG = os.path.join(REPO, "configs", "evaluate.py")
PROG = "tools/sweep.py"
USER_ERRORS = (config_check.ConfigError, data.DataError, evaluation.EvalError)


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training preset, e.g. configs/mnist_lfr.py:quick; "
    "override with --config.a.b=value.", lock_config=True)
_EVAL_CONFIG = cli.define_config_file(
    PROG, "eval_config", DEFAULT_EVAL_CONFIG, "Evaluation settings "
    "(configs/evaluate.py); override with --eval_config.eval.<field>=value.")

_LAMS = flags.DEFINE_list("lams", None, "Regularization weights, e.g. "
                          "0,0.01,0.02,0.05.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root folder of the sweep.")
_ATTACKS = flags.DEFINE_string(
    "attacks", "pgd,apgd_ce", "Columns evaluated per lambda "
    "(config.eval.attacks names).")
flags.mark_flags_as_required(["config", "lams", "workdir"])


def parse_lams(values: list[str]) -> list[float]:
  """The lambdas as floats >= 0, in the given order, without repeats.

  Raises:
    config_check.ConfigError: a value that is not a number >= 0, or a repeat.
  """
  out = []
  for v in values:
    try:
      lam = float(v)
    except ValueError:
      raise config_check.ConfigError(
          f"--lams: {v!r} is not a number.") from None
    if not lam >= 0 or lam == float("inf"):
      raise config_check.ConfigError(f"--lams: {v!r} must be a finite "
                                     f"number >= 0.")
    if lam in out:
      raise config_check.ConfigError(f"--lams names {lam:g} twice.")
    out.append(lam)
  if not out:
    raise config_check.ConfigError("--lams names no value.")
  return out


def run_dir(root: str, lam: float) -> str:
  """``<root>/lam_<lambda>`` (``%g``: lam_0, lam_0.02, lam_1e-05)."""
  return os.path.join(root, f"lam_{lam:g}")


def lam_config(config, lam: float):
  """A copy of the training config with ``config.<method>.lam = lam``.

  Raises:
    config_check.ConfigError: the method has no ``lam`` setting.
  """
  method = config.method
  if method not in config or "lam" not in config[method]:
    raise config_check.ConfigError(
        f"config.method {method!r} has no lam setting to sweep; use a "
        f"regularized preset such as configs/mnist_lfr.py.")
  out = ml_collections.ConfigDict(config.to_dict())
  out[method].lam = float(lam)
  config_check.validate(out)
  return out


def eval_settings(eval_config, attacks: str):
  """The evaluation settings of the sweep: ``attacks`` only, no extras."""
  cfg = ml_collections.ConfigDict(eval_config.eval.to_dict())
  cfg.attacks = attacks
  cfg.checks = False
  cfg.geometry = False
  cfg.eps_sweep = ()
  evaluation.validate_settings(cfg)
  return cfg


def sweep_markdown(result: dict) -> str:
  """The sweep as Markdown: one line per lambda."""
  names = result["columns"]
  header = ["lambda", "clean"] + [c["label"] for c in names] + [
      "train: test clean", "train: test PGD", "status"]
  lines = ["# Lambda sweep", "",
           f"{result['config']} ({result['method']}), "
           f"{result['examples']} test examples; accuracy in %.", "",
           "| " + " | ".join(header) + " |",
           "|" + "|".join(["---:"] * len(header)) + "|"]
  for r in result["runs"]:
    acc = r.get("accuracy", {})
    s = r.get("train_summary", {})
    cells = [f"{r['lam']:g}", _pct(acc.get("clean"))]
    cells += [_pct(acc.get(c["name"])) for c in names]
    cells += [_pct(s.get("test_clean_acc")), _pct(s.get("test_pgd_acc")),
              r["status"]]
    lines.append("| " + " | ".join(cells) + " |")
  if result.get("reduced_settings"):
    reduced = "; ".join(result["reduced_settings"])
    lines += ["", f"Reduced attack settings ({reduced}): a smoke test, not "
              f"robust accuracies."]
  return "\n".join(lines) + "\n"


def _pct(v) -> str:
  return "n/a" if v is None else f"{100 * float(v):.2f}"


def run(config, eval_config) -> dict:
  from lfr_jax import plots  # pylint: disable=g-import-not-at-top
  from lfr_jax import training  # pylint: disable=g-import-not-at-top
  lams = parse_lams(_LAMS.value)
  cfg = eval_settings(eval_config, _ATTACKS.value)
  configs = [lam_config(config, lam) for lam in lams]
  root = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  if os.path.exists(root) and not os.path.isdir(root):
    raise config_check.ConfigError(f"--workdir {root} is a file, not a folder.")
  for lam in lams:
    training.check_workdir(run_dir(root, lam))
  runs, model_list = [], []
  for lam, lam_cfg in zip(lams, configs):
    workdir = run_dir(root, lam)
    entry = {"lam": lam, "workdir": workdir}
    try:
      entry["train_summary"] = training.train_and_evaluate(lam_cfg, workdir)
      entry["status"] = ("done" if entry["train_summary"]["completed"]
                         else "stopped at max_steps")
    except training.TrainingDiverged as e:
      logging.warning("lambda %g diverged: %s", lam, e)
      entry["status"] = "diverged"
    runs.append(entry)
    if entry["status"] != "diverged":
      _, rows = evaluation.load_run(workdir, prefix=f"lambda={lam:g}: ")
      model_list.append(rows[0])  # the final checkpoint
      entry["row"] = rows[0].label
  if not model_list:
    raise evaluation.EvalError("every run diverged; nothing to evaluate.")
  x, y, info = evaluation.load_test_data(configs[0].data, int(cfg.num_examples))
  report = evaluation.evaluate(model_list, x, y, cfg, data_info=info)
  evaluation.write_report(report, os.path.join(root, "eval"))
  by_label = {row.label: evaluation.metrics(row, report) for row in report.rows}
  columns = [{"name": a.name, "label": a.label, "settings": a.settings(),
              "source": a.source} for a in report.columns
             if a.threat == "linf"]
  if report.has_worst:
    columns.append({"name": "worst", "label": "worst case"})
  for entry in runs:
    if "row" in entry:
      m = by_label[entry["row"]]
      entry["accuracy"] = {k: m[k] for k in ["clean"] + [
          c["name"] for c in columns]}
  result = {
      "config": _config_name(),
      "method": config.method, "lams": lams, "examples": int(x.shape[0]),
      "data": info, "columns": columns, "runs": runs,
      "eval_settings": report.settings,
      "reduced_settings": evaluation.reduced_settings(report.settings),
      "environment": report.environment,
  }
  done = [e for e in runs if "accuracy" in e]
  plots.plot_lambda_sweep(
      [e["lam"] for e in done], [100 * e["accuracy"]["clean"] for e in done],
      {c["label"]: [100 * e["accuracy"][c["name"]] for e in done]
       for c in columns},
      path=os.path.join(root, "sweep.png"),
      title=f"{config.method} on {info['dataset']}: accuracy vs lambda "
            f"(n={x.shape[0]})")
  with open(os.path.join(root, "sweep.json"), "w") as f:
    json.dump(result, f, indent=2, default=str)
    f.write("\n")
  markdown = sweep_markdown(result)
  with open(os.path.join(root, "sweep.md"), "w") as f:
    f.write(markdown)
  print(markdown, flush=True)
  print(f"wrote {root}/sweep.json, sweep.md, sweep.png and eval/", flush=True)
  return result


def _config_name() -> str:
  for arg in sys.argv[1:]:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return "config"


if __name__ == "__main__":
  cli.main(PROG, run, [_CONFIG, _EVAL_CONFIG], USER_ERRORS)
