"""The ``train.py`` / ``lfr-train`` program: train one method from a config preset.

Usage (``lfr-train`` once installed takes the same flags, and a preset by
name: ``--config=mnist_lfr:quick``)::

    python train.py --config=configs/mnist_lfr.py --workdir=runs/mnist_lfr
    python train.py --config=configs/mnist_lfr.py:quick --workdir=runs/q \\
        --config.lfr.lam=0.05 --config.optim.lr=0.1

Running again with the same ``--workdir`` resumes from its latest checkpoint;
``--config`` may then be left out: the run's recorded ``config.json`` is the
default (``--config=DIR/config.json`` names it explicitly, and
``--config.a.b=value`` overrides apply to it as to a preset). A finished run
says so and is neither trained nor tested again.

A mistake in the flags or the config (misspelled key, wrong type, invalid
value, unknown method/model/dataset, missing data, batch not divisible by the
device count) exits with status 2 and one line on stderr, before anything is
written to the workdir; so does a full disk or a folder that may not be
written (one line naming the path).

Importing this module defines nothing: :func:`entry` defines the absl flags
when the program starts, so the programs can live in one process (tests).

Example::

    import subprocess, sys
    done = subprocess.run([sys.executable, "-m", "lfr_jax.commands.train",
                           "--helpshort"], capture_output=True, text=True)
    assert "--workdir" in done.stdout, done.stderr
"""

from __future__ import annotations

import os
import sys

import lfr_jax  # noqa: F401  (fast XLA CPU flags before jax starts)

from lfr_jax import cli
from lfr_jax import config_check
from lfr_jax import data
from lfr_jax import training

PROG = "train.py"
# Errors that are the user's to fix: reported in one line, no traceback.
USER_ERRORS = (config_check.ConfigError, data.DataError,
               training.TrainingDiverged)


def _define_flags():
  """The program's flags: (config holder, workdir holder)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config = config_flags.DEFINE_config_file(
      "config", None, "Config preset, e.g. configs/mnist_lfr.py or "
      "configs/mnist_lfr.py:quick (or a preset name, mnist_lfr:quick), or a "
      "run's config.json; override fields with --config.a.b=value. Default "
      "when resuming: the workdir's recorded config.json.", lock_config=True)
  workdir = flags.DEFINE_string(
      "workdir", None, "Output folder (checkpoints, metrics); resumed if it "
      "already holds checkpoints.")
  flags.mark_flags_as_required(["workdir"])
  return config, workdir


RECORDED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "recorded_config.py")


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of ``--name=value`` or ``--name value`` in ``argv``, if any."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def recorded_config_argv(argv: list[str]) -> list[str]:
  """``argv`` with the recorded config.json as ``--config`` where it applies.

  ``--config=<...>.json`` loads that JSON file; no ``--config`` at all loads
  ``<--workdir>/config.json`` when it exists (a resume). Anything else is
  left as it is.

  Raises:
    config_check.ConfigError: no ``--config`` and no recorded config to
      resume from.
  """
  value = _flag_value(argv, "config")
  if value is not None:
    if value.endswith(".json"):
      return [f"--config={RECORDED_CONFIG}:{value}"
              if a == f"--config={value}" else a for a in argv]
    return argv
  if any(a in cli.HELP_FLAGS for a in argv[1:]):
    return argv
  workdir = _flag_value(argv, "workdir")
  if not workdir:
    return argv  # absl reports the missing --workdir
  from lfr_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  recorded = workdir_lib.resolve(workdir) / workdir_lib.CONFIG
  if not recorded.exists():
    raise config_check.ConfigError(
        f"--config is needed: {workdir_lib.resolve(workdir)} holds no "
        f"recorded {workdir_lib.CONFIG} to resume from (a new run takes a "
        f"preset, e.g. --config=configs/mnist_lfr.py:quick).")
  # First, before any --config.a.b override that applies to it.
  return argv[:1] + [f"--config={RECORDED_CONFIG}:{recorded}"] + argv[1:]


def entry() -> None:
  """The program: ``train.py`` and the ``lfr-train`` console script."""
  sys.argv = cli.resolve_preset(sys.argv)
  try:
    sys.argv = recorded_config_argv(sys.argv)
  except config_check.ConfigError as e:
    cli.fail(PROG, str(e))
  config_flag, workdir_flag = _define_flags()

  def run(config) -> None:
    training.train_and_evaluate(config, workdir_flag.value)

  cli.main(PROG, run, [config_flag], USER_ERRORS)


if __name__ == "__main__":
  entry()
