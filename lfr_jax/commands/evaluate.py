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
    python evaluate.py --workdir=runs/mnist_lfr --data_dir=~/data/mnist

Rows are the final checkpoint of each workdir and its best one (by validation
PGD accuracy) when that is another step (``--checkpoint`` picks one of them,
or a kept epoch end or step instead), plus each PyTorch state_dict (row
label: its file name; ``--model_kwargs='{"depth": 34, "width": 10}'`` for a
WideResNet). ``--config`` defaults to configs/evaluate.py; override any field
with ``--config.eval.<field>=value``.

The test data is what each run read: the MNIST folder its ``config.json``
records (``data.dir``) when that folder exists here, else ``$LFR_DATA_DIR``
or the repository's ``data/mnist/``; ``--data_dir`` overrides it for every
row. The first line printed names the data used (dataset, source, folder,
number of images).

Each run is a new version: it writes ``<out>/<version>/robustness.{md,csv,
json}``, ``per_example.npz`` and ``figures/``, where ``<out>`` is ``--out``,
else ``<first workdir>/eval``, else ``eval/`` beside the first PyTorch
checkpoint, and ``<version>`` is the UTC time and a hash of the settings
(``20261203T101500Z-1a2b3c4d``). The version is written in a hidden folder
and renamed when complete, then ``<out>/latest`` points to it (a symlink, or
a one-line file naming it where the filesystem has no symlinks), so a report
and its figures always come from one evaluation and earlier ones are kept.
It prints the table, the eps sweep and the PASS/WARN lines of the
gradient-masking checks.

A mistake in the flags or the config (unknown attack, eps outside [0, 1], a
workdir without checkpoint, a corrupt checkpoint, a missing PyTorch file)
exits with status 2 and one line on stderr, before anything is written.

Importing this module defines nothing: :func:`entry` defines the absl flags
when the program starts.

Example::

    from lfr_jax.commands import evaluate
    evaluate.parse_checkpoint("epoch:5")     # ('epoch', 5)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys

import lfr_jax  # noqa: F401  (fast XLA CPU flags before jax starts)

from lfr_jax import cli
from lfr_jax import config_check
from lfr_jax import data
from lfr_jax import evaluation
from lfr_jax import files
from lfr_jax import workdir as workdir_lib

PROG = "evaluate.py"
# Dataset of a PyTorch checkpoint evaluated without a workdir, by model.
DATASET_OF_MODEL = {"small_cnn": "mnist", "wide_resnet": "cifar10"}
CHECKPOINT_CHOICES = ("both", "final", "best")
# Errors that are the user's to fix: reported in one line, no traceback.
USER_ERRORS = (config_check.ConfigError, data.DataError, evaluation.EvalError)


@dataclasses.dataclass(frozen=True)
class Request:
  """What the command line asks to evaluate (the flags' values)."""
  workdirs: tuple[str, ...] = ()
  torch_files: tuple[str, ...] = ()
  model: str = "small_cnn"
  model_kwargs: str = "{}"
  dataset: str = ""
  checkpoint: str = "both"
  out: str | None = None
  data_dir: str = ""


def _define_flags():
  """The program's flags: (config holder, {name: holder})."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  # configs/evaluate.py, from a clone or from the installed configs package.
  default = os.path.join(cli.configs_dir() or "configs", "evaluate.py")
  config = cli.define_config_file(
      PROG, "config", default, "Evaluation settings (configs/evaluate.py, "
      "optionally :quick or :smoke); override with "
      "--config.eval.<field>=value.")
  holders = {
      "workdirs": flags.DEFINE_list(
          "workdir", [], "Training workdir(s), comma-separated."),
      "torch_files": flags.DEFINE_list(
          "torch_checkpoint", [], "PyTorch state_dict file(s) to evaluate too."),
      "model": flags.DEFINE_string(
          "model", "small_cnn", "Model of the PyTorch checkpoints (small_cnn, "
          "wide_resnet)."),
      "model_kwargs": flags.DEFINE_string(
          "model_kwargs", "{}", "JSON dict of model settings for the PyTorch "
          "checkpoints, e.g. '{\"depth\": 34, \"width\": 10}'."),
      "dataset": flags.DEFINE_string(
          "dataset", "", "Test data of PyTorch checkpoints given without a "
          "workdir (default: mnist for small_cnn, cifar10 for wide_resnet)."),
      "checkpoint": flags.DEFINE_string(
          "checkpoint", "both", "Which checkpoint of each workdir to "
          "evaluate: 'final', 'best' (by validation PGD accuracy), 'both' when "
          "they differ, 'epoch:N' (the end of epoch N, kept with "
          "config.checkpoint.keep_epochs) or 'step:N'."),
      "out": flags.DEFINE_string(
          "out", None, "Output folder (default: <first workdir>/eval)."),
      "data_dir": flags.DEFINE_string(
          "data_dir", "", "MNIST IDX folder of the test data, for every row "
          "(default: the folder each run's config.json records when it "
          "exists, else $LFR_DATA_DIR or the repository's data/mnist/)."),
  }
  return config, holders


def _request(holders) -> Request:
  values = {k: h.value for k, h in holders.items()}
  values["workdirs"] = tuple(values["workdirs"])
  values["torch_files"] = tuple(values["torch_files"])
  return Request(**values)


def model_kwargs(request: Request) -> dict:
  """``--model_kwargs`` as a dict.

  Raises:
    EvalError: not a JSON object.
  """
  try:
    kwargs = json.loads(request.model_kwargs or "{}")
  except ValueError as e:
    raise evaluation.EvalError(f"--model_kwargs is not JSON: {e}.") from None
  if not isinstance(kwargs, dict):
    raise evaluation.EvalError("--model_kwargs must be a JSON object.")
  return kwargs


def _prefixes(request: Request) -> list[str]:
  workdirs = list(request.workdirs)
  if len(workdirs) + len(request.torch_files) <= 1:
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


def check_inputs(request: Request) -> None:
  """The cheap checks of the flags, before anything is loaded."""
  parse_checkpoint(request.checkpoint)
  if not request.workdirs and not request.torch_files:
    raise evaluation.EvalError(
        "nothing to evaluate: give --workdir=DIR[,DIR2,...] and/or "
        "--torch_checkpoint=PATH.")
  for path in request.torch_files:
    if not os.path.isfile(os.path.expanduser(path)):
      raise evaluation.EvalError(
          f"--torch_checkpoint {os.path.abspath(path)} does not exist.")
  if request.data_dir and not os.path.isdir(
      os.path.expanduser(request.data_dir)):
    raise evaluation.EvalError(
        f"--data_dir {os.path.abspath(os.path.expanduser(request.data_dir))} "
        f"is not a folder.")
  model_kwargs(request)


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


def load_models(request: Request):
  """Loads the rows and the test-data config."""
  workdirs, torch_files = list(request.workdirs), list(request.torch_files)
  kwargs = model_kwargs(request) if torch_files else {}
  models, data_cfg = [], None
  which = parse_checkpoint(request.checkpoint)
  for workdir, prefix in zip(workdirs, _prefixes(request)):
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
    models.append(evaluation.load_torch(path, request.model, **kwargs))
  if data_cfg is None:
    name = request.dataset or DATASET_OF_MODEL.get(request.model, "mnist")
    data_cfg = {"name": name}
  return models, data_cfg


def out_dir(request: Request) -> str:
  """``--out``, else ``<first workdir>/eval``, else ``eval/`` beside a file."""
  if request.out:
    path = os.path.abspath(os.path.expanduser(request.out))
  elif request.workdirs:
    path = os.path.join(os.path.abspath(request.workdirs[0]), workdir_lib.EVAL)
  else:
    path = os.path.join(
        os.path.dirname(os.path.abspath(request.torch_files[0])),
        workdir_lib.EVAL)
  if os.path.exists(path) and not os.path.isdir(path):
    raise evaluation.EvalError(f"--out {path} is a file, not a folder.")
  return path


def full_settings():
  """The full protocol's settings: configs/evaluate.py without a variant."""
  from configs import evaluate as eval_configs  # pylint: disable=g-import-not-at-top
  return evaluation.from_config(eval_configs.get_config("").eval)


def version_settings(settings, request: Request) -> dict:
  """What names an evaluation's version: its settings and what it reads."""
  return {"eval": settings.as_dict(), "workdirs": list(request.workdirs),
          "torch_checkpoints": list(request.torch_files),
          "checkpoint": request.checkpoint, "data_dir": request.data_dir}


def run(config, request: Request) -> None:
  """Evaluates the request's checkpoints with ``config.eval``; writes the report.

  The report is published as a new version of the output folder (see the
  module docstring); nothing is written before the models and data load.
  """
  settings = evaluation.from_config(config.eval)
  check_inputs(request)
  folder = out_dir(request)
  models, data_cfg = load_models(request)
  x, y, info = evaluation.load_test_data(data_cfg, settings.num_examples,
                                         data_dir=request.data_dir or None)
  print(evaluation.data_line(info, x.shape[0]), flush=True)
  notice = evaluation.estimate_notice(settings, full_settings())
  if notice:
    print(notice, flush=True)
  stage = files.start_version(
      folder, files.version_name(version_settings(settings, request)))
  try:
    report = evaluation.evaluate(models, x, y, settings,
                                 figures_dir=os.path.join(stage, "figures"),
                                 data_info=info)
    if notice:
      report.notes.append(notice)
    evaluation.write_report(report, stage)
    version = files.publish_version(stage)
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)  # nothing half-written is kept
    raise
  print(evaluation.summary_text(report), flush=True)
  if notice:
    print(f"\n{notice}", flush=True)
  print(f"\nwrote {os.path.join(version, 'robustness.md')}, robustness.csv, "
        f"robustness.json, per_example.npz and {len(report.figures)} "
        f"figure(s) in {os.path.join(version, 'figures')}; "
        f"{os.path.join(folder, files.LATEST)} points to it.", flush=True)


def entry() -> None:
  """The program: ``evaluate.py`` and the ``lfr-evaluate`` console script."""
  sys.argv = cli.resolve_preset(sys.argv)
  config_flag, holders = _define_flags()
  cli.main(PROG, lambda config: run(config, _request(holders)), [config_flag],
           USER_ERRORS, settings_hint="--config.eval.<field>=value")


if __name__ == "__main__":
  entry()
