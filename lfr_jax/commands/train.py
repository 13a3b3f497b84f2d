"""The ``train.py`` / ``lfr-train`` program: train one method from a config preset.

Usage (``lfr-train`` once installed takes the same flags, and a preset by
name: ``--config=mnist_lfr:quick``)::

    python train.py --config=configs/mnist_lfr.py --workdir=runs/mnist_lfr
    python train.py --config=configs/mnist_lfr.py:quick --workdir=runs/q \\
        --config.lfr.lam=0.05 --config.optim.lr=0.1

Running again with the same ``--workdir`` resumes from its latest checkpoint.
A mistake in the flags or the config (misspelled key, wrong type, invalid
value, unknown method/model/dataset, missing data, batch not divisible by the
device count) exits with status 2 and one line on stderr, before anything is
written to the workdir.

Importing this module defines nothing: :func:`entry` defines the absl flags
when the program starts, so the programs can live in one process (tests).

Example::

    import subprocess, sys
    done = subprocess.run([sys.executable, "-m", "lfr_jax.commands.train",
                           "--helpshort"], capture_output=True, text=True)
    assert "--workdir" in done.stdout, done.stderr
"""

from __future__ import annotations

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
      "configs/mnist_lfr.py:quick (or a preset name, mnist_lfr:quick); "
      "override fields with --config.a.b=value.", lock_config=True)
  workdir = flags.DEFINE_string(
      "workdir", None, "Output folder (checkpoints, metrics); resumed if it "
      "already holds checkpoints.")
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir


def entry() -> None:
  """The program: ``train.py`` and the ``lfr-train`` console script."""
  sys.argv = cli.resolve_preset(sys.argv)
  config_flag, workdir_flag = _define_flags()

  def run(config) -> None:
    training.train_and_evaluate(config, workdir_flag.value)

  cli.main(PROG, run, [config_flag], USER_ERRORS)


if __name__ == "__main__":
  entry()
