"""One-line user errors for the command-line programs (train, evaluate, tools, bench).

absl and ml_collections report a misspelled ``--config`` override as a long
traceback whose last line (``Did you mean "lr" instead of "lrr"?``) is the
useful one. These helpers turn such errors into ``prog: error: one line`` on
stderr and exit status 2, before anything is written. A full disk, a folder
that may not be written and a read-only filesystem (``ENOSPC``, ``EACCES``,
``EPERM``, ``EROFS``, ``EDQUOT``) are one line too, naming the path and the
cause (:func:`storage_error`), wherever they happen; nothing is lost (files
are written whole, checkpoints already saved stay). ``--help`` lists the
program's own flags and exits 0.

Example::

    from lfr_jax import cli
    hint = "'lrr'" + chr(10) + "Did you mean 'lr'?"
    cli.unknown_field(KeyError(hint), ["train.py", "--config.optim.lrr=0.1"])
    # "--config.optim.lrr: no such config field. Did you mean 'lr'?"
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import flags

from lfr_jax import text


def unknown_field(error: BaseException, argv: list[str]) -> str:
  """``--config.a.b: no such config field. <hint>`` for a misspelled override.

  Args:
    error: the KeyError/AttributeError ml_collections raised.
    argv: the command line, to name the offending flag.

  Returns:
    The message.
  """
  lines = text.lines(error)
  key = text.unquote(lines[0]) if lines else ""
  hint = " ".join(lines[1:])
  flag = next((a.split("=")[0] for a in argv if a.startswith("--")
               and "config." in a and key in a.split("=")[0].split(".")),
              f"--config.*.{key}")
  return f"{flag}: no such config field." + (f" {hint}" if hint else "")


HELP_FLAGS = ("--help", "-h", "--helpshort", "-?")
# Storage failures a user fixes (space, permissions, a read-only mount).
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device",
                  errno.EDQUOT: "disk quota exceeded",
                  errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted",
                  errno.EROFS: "read-only filesystem"}
_STORAGE_HINTS = {errno.ENOSPC: "free some space and run again",
                  errno.EDQUOT: "free some space and run again",
                  errno.EACCES: "choose a folder you may write",
                  errno.EPERM: "choose a folder you may write",
                  errno.EROFS: "choose a writable folder"}
# How TensorStore and orbax word the same errors inside other exceptions.
_STORAGE_WORDS = {"No space left on device": errno.ENOSPC,
                  "Disk quota exceeded": errno.EDQUOT,
                  "Permission denied": errno.EACCES,
                  "Operation not permitted": errno.EPERM,
                  "Read-only file system": errno.EROFS}


def _chain(error: BaseException) -> list[BaseException]:
  """``error`` and every exception it was raised from or during, in order."""
  seen, out, todo = set(), [], [error]
  while todo:
    e = todo.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    out.append(e)
    todo += [e.__cause__, e.__context__] + list(
        getattr(e, "exceptions", ()))  # ExceptionGroup
  return out


def storage_error(error: BaseException) -> str | None:
  """One line for a full disk, a permission or a read-only filesystem error.

  Looks through the exception, its causes and the messages libraries wrap
  such errors in (orbax, TensorStore).

  Args:
    error: any exception.

  Returns:
    ``<path>: <cause>; <what to do>.``, or None when ``error`` is not one.
  """
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
      path = e.filename or "a file"
      return (f"{os.fspath(path)}: {STORAGE_ERRNOS[e.errno]} "
              f"({errno.errorcode[e.errno]}); {_STORAGE_HINTS[e.errno]}.")
  for e in _chain(error):
    message = str(e)
    for words, code in _STORAGE_WORDS.items():
      if words in message:
        quoted = re.findall(r'"(/[^"]+)"|\'(/[^\']+)\'', message)
        path = next((a or b for a, b in quoted), "a file of the output folder")
        return (f"{path}: {STORAGE_ERRNOS[code]} ({errno.errorcode[code]}); "
                f"{_STORAGE_HINTS[code]}.")
  return None


def help_text(prog: str) -> str:
  """The program's usage (its main module's docstring) and its own flags."""
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  main = sys.modules.get("__main__")
  doc = (getattr(main, "__doc__", None) or "").strip()
  foreign = ("absl", "ml_collections", "jax", "flax", "orbax", "etils",
             "tensorflow", "tensorboard", "chex", "optax")
  sections, names = [], []
  for module, module_flags in absl_flags.FLAGS.flags_by_module_dict().items():
    if module_flags and not module.startswith(foreign):
      names += [f.name for f in module_flags]
      # Each module's section, without its "module:" header line.
      sections += [line for line in
                   absl_flags.FLAGS.module_help(module).splitlines()
                   if line.strip() and line.strip() != f"{module}:"]
  out = ([doc, ""] if doc else []) + [f"{prog} flags:"] + sections
  configs = [n for n in names if "config" in n]
  if configs:
    out.append(f"\nOverride any config field with --{configs[0]}.<section>."
               f"<field>=value.")
  out.append("--helpfull lists every flag of every library.")
  return "\n".join(out)


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
  fail(prog, text.one_line(error))


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


def configs_dir() -> str | None:
  """The folder of the preset files: the ``configs`` package beside lfr_jax.

  A clone has it at the repository root; a wheel installs it as a top-level
  package. None when neither is found.
  """
  spec = importlib.util.find_spec("configs")
  if spec is None or not spec.submodule_search_locations:
    return None
  for folder in spec.submodule_search_locations:
    if os.path.isfile(os.path.join(folder, "common.py")):
      return folder
  return None


def resolve_preset(argv: list[str], flag: str = "config") -> list[str]:
  """``--config=mnist_lfr:quick`` -> ``--config=<configs dir>/mnist_lfr.py:quick``.

  Lets installed console scripts take a preset by name. A value that names an
  existing file, or has a ``/`` or ``.py``, is left as it is.
  """
  prefix = f"--{flag}="
  folder = configs_dir()
  out = []
  for arg in argv:
    if arg.startswith(prefix) and folder:
      value = arg[len(prefix):]
      name, sep, variant = value.partition(":")
      if ("/" not in name and not name.endswith(".py")
          and not os.path.exists(name)
          and os.path.isfile(os.path.join(folder, f"{name}.py"))):
        arg = f"{prefix}{os.path.join(folder, name + '.py')}{sep}{variant}"
    out.append(arg)
  return out


def main(prog: str, run: Callable[..., Any], config_flags: Sequence[Any] = (),
         user_errors: tuple[type[BaseException], ...] = (),
         settings_hint: str = "--config.<field>=value",
         quiet_logs: bool = True) -> None:
  """Runs an entry point: flags parsed, configs loaded, user errors one line.

  Args:
    prog: program name for messages (e.g. "train.py", "tools/sweep.py").
    run: called with the loaded configs, in the order of ``config_flags``
      (with no arguments when there are none).
    config_flags: flag holders of ml_collections config files; empty for a
      program whose settings are plain flags.
    user_errors: exceptions that are the user's to fix: reported as
      ``prog: error: <one line>`` with exit status 2, no traceback.
    settings_hint: where settings go, for stray positional arguments.
    quiet_logs: hide orbax's INFO lines before ``run``. It imports
      ``lfr_jax.training`` (and so jax): False for a program that only
      starts others as subprocesses and should start in a fraction of a
      second.
  """
  from absl import app  # pylint: disable=g-import-not-at-top

  def body(argv: list[str]) -> None:
    if len(argv) > 1:
      fail(prog, f"unexpected arguments {argv[1:]}; settings go in "
           f"{settings_hint}.")
    try:
      configs = [holder.value for holder in config_flags]
      for config in configs:
        list(config.keys())  # a config file that failed to load raises here
    except Exception as e:  # pylint: disable=broad-except
      # config_flags defers a config file that failed to load to this access.
      fail(prog, f"--config: {text.one_line(e)}")
    if quiet_logs:
      from lfr_jax import training  # pylint: disable=g-import-not-at-top
      training.quiet_library_logs()
    try:
      run(*configs)
    except user_errors as e:
      fail(prog, text.one_line(e))
    except Exception as e:  # pylint: disable=broad-except
      line = storage_error(e)
      if line is None:
        raise
      fail(prog, line)

  sys.argv = resolve_preset(sys.argv)
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    print(help_text(prog), flush=True)
    sys.exit(0)
  app.run(body, flags_parser=flags_parser(prog))
