"""Robustness table, gradient-masking checks and geometry figures of checkpoints.

Usage (``lfr-evaluate`` once installed takes the same flags)::

    python evaluate.py --workdir=runs/mnist_lfr
    python evaluate.py --workdir=runs/mnist_lfr --config.eval.num_examples=500
    python evaluate.py --workdir=runs/lfr,runs/trades --out=runs/compare \\
        --config=configs/evaluate.py:quick
    python evaluate.py --torch_checkpoint=trades_smallcnn.pt --model=small_cnn
    python evaluate.py --workdir=runs/mnist_lfr \\
        --config.eval.attacks=pgd,apgd_ce,worst --config.eval.geometry=False
    python evaluate.py --workdir=runs/curve/lfr_s0 --checkpoint=epoch:2

Rows are the final checkpoint of each workdir and its best one (by validation
PGD accuracy) when that is another step (``--checkpoint`` picks one of them,
or a kept epoch end or step instead), plus each PyTorch state_dict (row
label: its file name; ``--model_kwargs='{"depth": 34, "width": 10}'`` for a
WideResNet). ``--config`` defaults to configs/evaluate.py; override any field
with ``--config.eval.<field>=value``.

Writes ``<out>/robustness.{md,csv,json}``, ``<out>/per_example.npz`` and
``<out>/figures/`` where ``<out>`` is ``--out``, else ``<first workdir>/eval``,
else ``eval/`` beside the first PyTorch checkpoint; prints the table, the eps
sweep and the PASS/WARN lines of the gradient-masking checks.

A mistake in the flags or the config (unknown attack, eps outside [0, 1], a
workdir without checkpoint, a corrupt checkpoint, a missing PyTorch file)
exits with status 2 and one line on stderr, before anything is written.
"""

from __future__ import annotations

import json
import os
import sys

import lfr_jax  # noqa: F401  (fast XLA CPU flags before jax starts)
from absl import flags

from lfr_jax import cli
from lfr_jax import config_check
from lfr_jax import data
from lfr_jax import evaluation

sys.argv = cli.resolve_preset(sys.argv)
# configs/evaluate.py, from a clone or from the installed configs package.
DEFAULT_CONFIG = os.path.join(cli.configs_dir() or "configs", "evaluate.py")
# Dataset of a PyTorch checkpoint evaluated without a workdir, by model.
DATASET_OF_MODEL = {"small_cnn": "mnist", "wide_resnet": "cifar10"}

PROG = "evaluate.py"
# Errors that are the user's to fix: reported in one line, no traceback.
USER_ERRORS = (config_check.ConfigError, data.DataError, evaluation.EvalError)


_CONFIG = cli.define_config_file(
    PROG, "config", DEFAULT_CONFIG, "Evaluation settings (configs/evaluate.py, "
    "optionally :quick or :smoke); override with --config.eval.<field>=value.")

_WORKDIR = flags.DEFINE_list(
    "workdir", [], "Training workdir(s), comma-separated.")
_TORCH = flags.DEFINE_list(
    "torch_checkpoint", [], "PyTorch state_dict file(s) to evaluate too.")
_MODEL = flags.DEFINE_string(
    "model", "small_cnn", "Model of the PyTorch checkpoints (small_cnn, "
    "wide_resnet).")
_MODEL_KWARGS = flags.DEFINE_string(
    "model_kwargs", "{}", "JSON dict of model settings for the PyTorch "
    "checkpoints, e.g. '{\"depth\": 34, \"width\": 10}'.")
_DATASET = flags.DEFINE_string(
    "dataset", "", "Test data of PyTorch checkpoints given without a workdir "
    "(default: mnist for small_cnn, cifar10 for wide_resnet).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "both", "Which checkpoint of each workdir to evaluate: "
    "'final', 'best' (by validation PGD accuracy), 'both' when they differ, "
    "'epoch:N' (the end of epoch N, kept with config.checkpoint.keep_epochs) "
    "or 'step:N'.")
CHECKPOINT_CHOICES = ("both", "final", "best")
_OUT = flags.DEFINE_string(
    "out", None, "Output folder (default: <first workdir>/eval).")


def _model_kwargs() -> dict:
  try:
    kwargs = json.loads(_MODEL_KWARGS.value or "{}")
  except ValueError as e:
    raise evaluation.EvalError(f"--model_kwargs is not JSON: {e}.") from None
  if not isinstance(kwargs, dict):
    raise evaluation.EvalError("--model_kwargs must be a JSON object.")
  return kwargs


def _prefixes(workdirs: list[str]) -> list[str]:
  if len(workdirs) + len(_TORCH.value) <= 1:
    return [""] * len(workdirs)
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(set(names)) < len(names):
    names = [os.path.normpath(w) for w in workdirs]
  return [f"{n}: " for n in names]


def parse_checkpoint(value: str) -> tuple[str, int] | str:
  """``--checkpoint``: "both"/"final"/"best", or ("epoch"|"step", N).

  Raises:
    EvalError: anything else, in one line.
  """
  if value in CHECKPOINT_CHOICES:
    return value
  kind, _, number = value.partition(":")
  if kind in ("epoch", "step") and number.isdigit() and (
      int(number) > 0 or kind == "step"):
    return kind, int(number)
  raise evaluation.EvalError(
      f"--checkpoint {value!r} is unknown; valid: both, final, best, "
      f"epoch:N (N >= 1), step:N.")


def check_inputs() -> None:
  """The cheap checks of the flags, before anything is loaded."""
  parse_checkpoint(_CHECKPOINT.value)
  if not _WORKDIR.value and not _TORCH.value:
    raise evaluation.EvalError(
        "nothing to evaluate: give --workdir=DIR[,DIR2,...] and/or "
        "--torch_checkpoint=PATH.")
  for path in _TORCH.value:
    if not os.path.isfile(os.path.expanduser(path)):
      raise evaluation.EvalError(
          f"--torch_checkpoint {os.path.abspath(path)} does not exist.")
  _model_kwargs()


def select_checkpoints(rows: list, which: str) -> list:
  """The rows of one workdir that ``--checkpoint`` asks for.

  Args:
    rows: ``evaluation.load_run`` models, each with ``info["checkpoint"]`` in
      "final", "best" or "final = best".
    which: "both", "final" or "best". "best" falls back to the final
      checkpoint of a run that kept no best one.

  Returns:
    The selected rows, in order.
  """
  if which == "both":
    return rows
  picked = [r for r in rows if which in r.info.get("checkpoint", "")]
  return picked or rows[:1]


def load_models():
  """Loads the rows and the test-data config."""
  workdirs, torch_files = list(_WORKDIR.value), list(_TORCH.value)
  kwargs = _model_kwargs() if torch_files else {}
  models, data_cfg = [], None
  which = parse_checkpoint(_CHECKPOINT.value)
  for workdir, prefix in zip(workdirs, _prefixes(workdirs)):
    if isinstance(which, tuple):
      config, rows = evaluation.load_run(workdir, prefix=prefix, at=which)
    else:
      config, rows = evaluation.load_run(workdir, prefix=prefix)
      rows = select_checkpoints(rows, which)
    key = (config.data.name, int(config.data.get("image_size", 0) or 0))
    if data_cfg is not None and key != (data_cfg.name,
                                        int(data_cfg.get("image_size", 0) or 0)):
      raise evaluation.EvalError(
          f"{workdir} was trained on {key[0]} but {workdirs[0]} on "
          f"{data_cfg.name}; evaluate them separately.")
    data_cfg = data_cfg or config.data
    models += rows
  for path in torch_files:
    models.append(evaluation.load_torch(path, _MODEL.value, **kwargs))
  if data_cfg is None:
    name = _DATASET.value or DATASET_OF_MODEL.get(_MODEL.value, "mnist")
    data_cfg = {"name": name}
  return models, data_cfg


def out_dir() -> str:
  if _OUT.value:
    path = os.path.abspath(os.path.expanduser(_OUT.value))
  elif _WORKDIR.value:
    path = os.path.join(os.path.abspath(_WORKDIR.value[0]), "eval")
  else:
    path = os.path.join(os.path.dirname(os.path.abspath(_TORCH.value[0])),
                        "eval")
  if os.path.exists(path) and not os.path.isdir(path):
    raise evaluation.EvalError(f"--out {path} is a file, not a folder.")
  return path


def run(config) -> None:
  """Evaluates the flags' checkpoints with ``config.eval``; writes the report."""
  cfg = config.eval
  evaluation.validate_settings(cfg)
  check_inputs()
  folder = out_dir()
  models, data_cfg = load_models()
  x, y, info = evaluation.load_test_data(data_cfg, int(cfg.num_examples))
  report = evaluation.evaluate(models, x, y, cfg,
                               figures_dir=os.path.join(folder, "figures"),
                               data_info=info)
  paths = evaluation.write_report(report, folder)
  print(evaluation.summary_text(report), flush=True)
  print(f"\nwrote {paths['md']}, robustness.csv, robustness.json, "
        f"per_example.npz and {len(report.figures)} figure(s) in "
        f"{os.path.join(folder, 'figures')}", flush=True)


def entry() -> None:
  """The program: ``evaluate.py`` and the ``lfr-evaluate`` console script."""
  cli.main(PROG, run, [_CONFIG], USER_ERRORS,
           settings_hint="--config.eval.<field>=value")
