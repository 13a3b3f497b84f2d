"""The maintainer tools' way of running a program: from the repository root, logged, timed.

``tools/reproduce.py`` and ``tools/curve.py`` run every training and evaluation
as the ``train.py`` / ``evaluate.py`` command that docs/RESULTS.md prints, so
every number can be rerun by hand.

Example::

    import sys
    from tools import subprocesses
    subprocesses.shown([sys.executable, "train.py", "--config=configs/x.py"])
    # 'python train.py --config=configs/x.py'
"""

from __future__ import annotations

import os
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shown(command: list[str]) -> str:
  """The command as a user types it from the repository root."""
  return " ".join(["python"] + command[1:]).replace(REPO + os.sep, "")


def run_logged(prog: str, command: list[str], log_path: str,
               dry_run: bool = False) -> float:
  """Runs ``command`` from the repository root, its output appended to ``log_path``.

  Args:
    prog: the calling tool, for the error message.
    command: argv, ``sys.executable`` first.
    log_path: the log file (its folder is created).
    dry_run: print the command, run nothing.

  Returns:
    The command's wall-clock seconds (0 for a dry run).

  Raises:
    SystemExit: it failed; the message ends with the log's last 2,000
      characters.
  """
  print(f"$ {shown(command)}", flush=True)
  if dry_run:
    return 0.0
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  start = time.time()
  with open(log_path, "a") as log:
    proc = subprocess.run(command, cwd=REPO, stdout=log,
                          stderr=subprocess.STDOUT)
  seconds = time.time() - start
  if proc.returncode != 0:
    with open(log_path) as log:
      tail = log.read()[-2000:]
    raise SystemExit(f"{prog}: {shown(command)} failed "
                     f"(exit {proc.returncode}); see {log_path}:\n{tail}")
  return seconds
