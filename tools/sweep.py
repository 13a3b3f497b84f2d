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
robust accuracy against lambda) and the full report as a new version of
``<workdir>/eval/`` (``eval/latest`` points to it; see ``evaluate.py``).
Every file is written whole.

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
from lfr_jax import files
from lfr_jax import text

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
  for value in values:
    try:
      lam = float(value)
    except ValueError:
      raise config_check.ConfigError(
          f"--lams: {value!r} is not a number.") from None
    if not lam >= 0 or lam == float("inf"):
      raise config_check.ConfigError(f"--lams: {value!r} must be a finite "
                                     f"number >= 0.")
    if lam in out:
      raise config_check.ConfigError(f"--lams names {lam:g} twice.")
    out.append(lam)
  if not out:
    raise config_check.ConfigError("--lams names no value.")
  return out


def lam_workdir(root: str, lam: float) -> str:
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
  settings = ml_collections.ConfigDict(eval_config.eval.to_dict())
  settings.attacks = attacks
  settings.checks = False
  settings.geometry = False
  settings.eps_sweep = ()
  return evaluation.from_config(settings)


def sweep_markdown(result: dict) -> str:
  """The sweep as Markdown: one line per lambda.

  Args:
    result: what :func:`run` writes to sweep.json.

  Returns:
    The title, a line on the setting and the table, numbers right-aligned.
  """
  columns = result["columns"]
  header = ["lambda", "clean"] + [c["label"] for c in columns] + [
      "train: test clean", "train: test PGD", "status"]
  rows = []
  for entry in result["runs"]:
    accuracy = entry.get("accuracy", {})
    summary = entry.get("train_summary", {})
    rows.append([f"{entry['lam']:g}", text.percent(accuracy.get("clean"))]
                + [text.percent(accuracy.get(c["name"])) for c in columns]
                + [text.percent(summary.get("test_clean_acc")),
                   text.percent(summary.get("test_pgd_acc")),
                   entry["status"]])
  lines = ["# Lambda sweep", "",
           f"{result['config']} ({result['method']}), "
           f"{result['examples']} test examples; accuracy in %.", "",
           text.markdown_table(header, rows, left_columns=0)]
  if result.get("reduced_settings"):
    reduced = "; ".join(result["reduced_settings"])
    lines += ["", f"Reduced attack settings ({reduced}): a smoke test, not "
              f"robust accuracies."]
  return "\n".join(lines) + "\n"


def _train_every_lambda(lams, configs, root: str):
  """Trains (or resumes) each lambda's run; returns the runs and final rows."""
  from lfr_jax import training  # pylint: disable=g-import-not-at-top
  runs, final_checkpoints = [], []
  for lam, lam_training_config in zip(lams, configs):
    lam_dir = lam_workdir(root, lam)
    entry = {"lam": lam, "workdir": lam_dir}
    try:
      entry["train_summary"] = training.train_and_evaluate(
          lam_training_config, lam_dir)
      entry["status"] = ("done" if entry["train_summary"]["completed"]
                         else "stopped at max_steps")
    except training.TrainingDiverged as e:
      logging.warning("lambda %g diverged: %s", lam, e)
      entry["status"] = "diverged"
    runs.append(entry)
    if entry["status"] != "diverged":
      _, rows = evaluation.load_run(lam_dir, prefix=f"lambda={lam:g}: ")
      final_checkpoints.append(rows[0])
      entry["row"] = rows[0].label
  if not final_checkpoints:
    raise evaluation.EvalError("every run diverged; nothing to evaluate.")
  return runs, final_checkpoints


def _linf_columns(report) -> list[dict]:
  columns = [{"name": attack.name, "label": attack.label,
              "settings": attack.settings(), "source": attack.source}
             for attack in report.columns if attack.threat == "linf"]
  if report.has_worst:
    columns.append({"name": "worst", "label": "worst case"})
  return columns


def _write_outputs(result: dict, root: str, title: str) -> None:
  from lfr_jax import plots  # pylint: disable=g-import-not-at-top
  done = [e for e in result["runs"] if "accuracy" in e]
  plots.plot_lambda_sweep(
      [e["lam"] for e in done], [100 * e["accuracy"]["clean"] for e in done],
      {c["label"]: [100 * e["accuracy"][c["name"]] for e in done]
       for c in result["columns"]},
      path=os.path.join(root, "sweep.png"), title=title)
  files.write_json(os.path.join(root, "sweep.json"), result, default=str)
  markdown = sweep_markdown(result)
  files.write_atomic(os.path.join(root, "sweep.md"), markdown)
  print(markdown, flush=True)
  print(f"wrote {root}/sweep.json, sweep.md, sweep.png and eval/", flush=True)


def run(config, eval_config) -> dict:
  """Trains every lambda, evaluates the final checkpoints, writes the sweep.

  Args:
    config: the training preset (``--config``).
    eval_config: the evaluation settings (``--eval_config``).

  Returns:
    What sweep.json holds.

  Raises:
    config_check.ConfigError, data.DataError, evaluation.EvalError: a
      mistake in the flags, configs or data (one line from ``cli.main``).
  """
  from lfr_jax import workdir  # pylint: disable=g-import-not-at-top
  lams = parse_lams(_LAMS.value)
  settings = eval_settings(eval_config, _ATTACKS.value)
  configs = [lam_config(config, lam) for lam in lams]
  root = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  if os.path.exists(root) and not os.path.isdir(root):
    raise config_check.ConfigError(f"--workdir {root} is a file, not a folder.")
  for lam in lams:
    workdir.check(lam_workdir(root, lam))
  runs, final_checkpoints = _train_every_lambda(lams, configs, root)
  x, y, info = evaluation.load_test_data(configs[0].data,
                                         settings.num_examples)
  report = evaluation.evaluate(final_checkpoints, x, y, settings,
                               data_info=info)
  stage = files.start_version(os.path.join(root, "eval"), files.version_name(
      {"eval": settings.as_dict(), "lams": lams}))
  evaluation.write_report(report, stage)
  files.publish_version(stage)
  by_label = {row.label: evaluation.metrics(row, report) for row in report.rows}
  columns = _linf_columns(report)
  for entry in runs:
    if "row" in entry:
      metrics = by_label[entry["row"]]
      entry["accuracy"] = {k: metrics[k] for k in ["clean"] + [
          c["name"] for c in columns]}
  result = {
      "config": _config_argument(),
      "method": config.method, "lams": lams, "examples": int(x.shape[0]),
      "data": info, "columns": columns, "runs": runs,
      "eval_settings": report.settings,
      "reduced_settings": evaluation.reduced_settings(report.eval_settings),
      "environment": report.environment,
  }
  _write_outputs(result, root, f"{config.method} on {info['dataset']}: "
                 f"accuracy vs lambda (n={x.shape[0]})")
  return result


def _config_argument() -> str:
  """The ``--config`` value as given (file and variant), for the report."""
  for arg in sys.argv[1:]:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return "config"


if __name__ == "__main__":
  cli.main(PROG, run, [_CONFIG, _EVAL_CONFIG], USER_ERRORS)
