"""Trains and evaluates one method of lfr_jax from a config preset.

Usage::

    python train.py --config=configs/mnist_lfr.py --workdir=runs/mnist_lfr
    python train.py --config=configs/mnist_lfr.py:quick --workdir=runs/q \\
        --config.lfr.lam=0.05 --config.optim.lr=0.1

Running again with the same ``--workdir`` resumes from its latest checkpoint.
A mistake in the flags or the config (misspelled key, wrong type, invalid
value, unknown method/model/dataset, missing data, batch not divisible by the
device count) exits with status 2 and one line on stderr, before anything is
written to the workdir.
"""

from __future__ import annotations

import ast
import re
import sys

import lfr_jax  # noqa: F401  (fast XLA CPU flags before jax starts)
from absl import app
from absl import flags
from ml_collections import config_flags

from lfr_jax import config_check
from lfr_jax import data
from lfr_jax import training

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config preset, e.g. configs/mnist_lfr.py or "
    "configs/mnist_lfr.py:quick; override fields with --config.a.b=value.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder (checkpoints, metrics); resumed if it "
    "already holds checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors that are the user's to fix: reported in one line, no traceback.
USER_ERRORS = (config_check.ConfigError, data.DataError,
               training.TrainingDiverged)


def _unquote(text: str) -> str:
  # config_flags nests reprs of KeyError messages ("'\\'lrr\\'\\nDid you ...'").
  for _ in range(3):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
      try:
        text = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        break
  return text


def one_line(error: BaseException) -> str:
  """The informative line of an error message, without exception prefixes.

  ml_collections wraps a misspelled override in a long message whose last line
  is the useful one (``Did you mean "lr" instead of "lrr"?``).
  """
  lines = [l.strip() for l in _unquote(str(error).strip()).splitlines()
           if l.strip()]
  line = lines[-1] if lines else type(error).__name__
  return re.sub(r"^(\w+(Error|Exception): )+", "", line)


def _unknown_field(error: BaseException, argv: list[str]) -> str:
  """``--config.a.b: no such field ...`` for a misspelled override key."""
  lines = [l.strip() for l in _unquote(str(error).strip()).splitlines()
           if l.strip()]
  key = _unquote(lines[0]) if lines else ""
  hint = " ".join(lines[1:])
  flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
               and key in a.split("=")[0].split(".")), f"--config.*.{key}")
  return f"{flag}: no such config field." + (f" {hint}" if hint else "")


def fail(message: str) -> None:
  """Prints ``train.py: error: message`` on stderr and exits with status 2."""
  print(f"train.py: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parser, with every parse error turned into one line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # An override of a field the (locked) config does not have.
    fail(_unknown_field(e, argv))
  except Exception as e:  # pylint: disable=broad-except
    # Any other error while parsing comes from the user's flags or config file.
    fail(one_line(e))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; settings go in --config.<field>=value.")
  try:
    config = _CONFIG.value
    list(config.keys())  # a config file that failed to load raises here
  except Exception as e:  # pylint: disable=broad-except
    # config_flags defers a config file that failed to load to this access.
    fail(f"--config: {one_line(e)}")
  try:
    training.train_and_evaluate(config, _WORKDIR.value)
  except USER_ERRORS as e:
    fail(one_line(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
