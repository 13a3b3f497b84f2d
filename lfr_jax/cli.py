"""One-line user errors for the command-line entry points (train, evaluate, sweep).

absl and ml_collections report a misspelled ``--config`` override as a long
traceback whose last line (``Did you mean "lr" instead of "lrr"?``) is the
useful one. These helpers turn such errors into ``prog: error: one line`` on
stderr and exit status 2, before anything is written.

Example::

    from lfr_jax import cli
    cli.one_line(ValueError("ValueError: eps must be >= 0, got -1."))
    # 'eps must be >= 0, got -1.'
"""

from __future__ import annotations

import ast
import os
import re
import sys
from typing import Callable, NoReturn

from absl import flags


def _unquote(text: str) -> str:
  # config_flags nests reprs of KeyError messages ("'\\'lrr\\'\\nDid you ...'").
  for _ in range(3):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
      try:
        text = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        break
  return text


def _lines(error: BaseException) -> list[str]:
  return [l.strip() for l in _unquote(str(error).strip()).splitlines()
          if l.strip()]


def one_line(error: BaseException) -> str:
  """The informative line of an error message, without exception prefixes.

  Args:
    error: any exception.

  Returns:
    Its last non-empty message line.
  """
  lines = _lines(error)
  line = lines[-1] if lines else type(error).__name__
  return re.sub(r"^(\w+(Error|Exception): )+", "", line)


def unknown_field(error: BaseException, argv: list[str]) -> str:
  """``--config.a.b: no such config field. <hint>`` for a misspelled override.

  Args:
    error: the KeyError/AttributeError ml_collections raised.
    argv: the command line, to name the offending flag.

  Returns:
    The message.
  """
  lines = _lines(error)
  key = _unquote(lines[0]) if lines else ""
  hint = " ".join(lines[1:])
  flag = next((a.split("=")[0] for a in argv if a.startswith("--")
               and "config." in a and key in a.split("=")[0].split(".")),
              f"--config.*.{key}")
  return f"{flag}: no such config field." + (f" {hint}" if hint else "")


def fail(prog: str, message: str) -> NoReturn:
  """Prints ``prog: error: message`` on stderr and exits with status 2.

  Exits with ``os._exit``: a failed orbax restore leaves asyncio threads
  whose interpreter-shutdown errors ("Event loop is closed", ~25 lines) would
  otherwise follow the one line, intermittently. Nothing is lost: every
  caller fails before writing anything, and both streams are flushed first.
  """
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(2)


def report(prog: str, error: BaseException, argv: list[str]) -> NoReturn:
  """Fails with the one line that describes a flag or config error."""
  if isinstance(error, (AttributeError, KeyError)):
    fail(prog, unknown_field(error, argv))
  fail(prog, one_line(error))


def define_config_file(prog: str, name: str, default: str, help_text: str):
  """``config_flags.DEFINE_config_file`` with a default file, errors as one line.

  With a default file, config_flags applies ``--name.*`` overrides while the
  flag is being defined, so a misspelled field or bad value raises here rather
  than during flag parsing.

  Args:
    prog: program name for the message.
    name: flag name.
    default: path of the default config file.
    help_text: flag help.

  Returns:
    The flag holder.
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    return config_flags.DEFINE_config_file(name, default, help_text,
                                           lock_config=True)
  except Exception as e:  # pylint: disable=broad-except
    report(prog, e, sys.argv)


def flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
  """An absl ``flags_parser`` that turns every parse error into one line.

  Args:
    prog: program name for the message.

  Returns:
    The parser, for ``app.run(main, flags_parser=...)``.
  """

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except Exception as e:  # pylint: disable=broad-except
      # Every parse error comes from the user's flags or config file.
      report(prog, e, argv)

  return parse
