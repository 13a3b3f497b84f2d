"""``lock.json``: one live process writes a workdir; a lock left by a killed run is stale.

Example::

    import tempfile
    from lfr_jax.workdir import lock
    held = lock.Lock(tempfile.mkdtemp())
    held.acquire()                   # a second acquire elsewhere is refused
    held.release()
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from absl import logging

from lfr_jax import files
from lfr_jax.workdir import layout


def _process_start(pid: int) -> str | None:
  """The kernel's start time of ``pid`` (Linux), which tells PID reuse apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: str | None) -> bool:
  # A reused pid is told apart by its start time.
  if not files.process_alive(pid):
    return False
  now = _process_start(pid)
  return start is None or now is None or now == start


class Lock:
  """``lock.json``: the one live process that may write a workdir.

  On a local disk the lock file is created atomically; a lock whose process
  no longer runs on this host is stale and taken over with a warning. A lock
  from another host cannot be checked and is refused, naming the file to
  delete if that run is dead. On remote filesystems creation is not atomic:
  two runs started within moments of each other may both pass.
  """

  def __init__(self, path):
    self.path = layout.resolve(path) / layout.LOCK
    self.held = False

  def _record(self) -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": layout.now(),
            "process_start": _process_start(pid)}

  def _create(self) -> bool:
    content = json.dumps(self._record())
    if layout.is_uri(str(self.path)):
      if self.path.exists():
        return False
      self.path.write_text(content)
      return True
    try:
      fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(content)
    return True

  def acquire(self) -> None:
    """Takes the lock.

    Raises:
      WorkdirError: another live process holds it, in one line.
    """
    for _ in range(2):  # the second try follows the removal of a stale lock
      if self._create():
        self.held = True
        return
      holder = layout.read_json(self.path) or {}
      pid, host = holder.get("pid"), holder.get("host")
      here = host == socket.gethostname()
      if here and isinstance(pid, int) and not _alive(
          pid, holder.get("process_start")):
        logging.warning("taking over the stale lock of process %d (no longer "
                        "running) in %s", pid, self.path.parent)
        self.path.unlink(missing_ok=True)
        continue
      where = "this host" if here else f"host {host}"
      hint = ("wait for it to finish or use another workdir" if here else
              f"if that run is dead, delete {self.path}")
      raise layout.WorkdirError(
          f"--workdir {self.path.parent} is in use by process {pid} on "
          f"{where} (since {holder.get('started', '?')}); {hint}.")
    raise layout.WorkdirError(f"could not take the lock {self.path}.")

  def release(self) -> None:
    """Removes the lock if this process holds it."""
    if self.held:
      self.path.unlink(missing_ok=True)
      self.held = False
