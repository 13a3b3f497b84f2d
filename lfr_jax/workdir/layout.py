"""The workdir's layout: its file and folder names, paths (local or URI) and small file I/O.

Example::

    import tempfile
    from lfr_jax.workdir import layout
    folder = layout.check(tempfile.mkdtemp())
    layout.write_text(folder / layout.SUMMARY, "{}")
    layout.read_json(folder / layout.SUMMARY)   # {}
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from etils import epath

from lfr_jax import config_check
from lfr_jax import files

CONFIG = "config.json"
CONFIG_CHANGES = "config_changes.jsonl"
CHECKPOINTS = "checkpoints"
BEST = "best_checkpoint"
DAMAGED = "damaged_checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
SUMMARY = "summary.json"
LOCK = "lock.json"
EVAL = "eval"
# What a workdir of ours holds; anything else there means a wrong --workdir.
ENTRIES = (CONFIG, CONFIG_CHANGES, CHECKPOINTS, BEST, DAMAGED, METRICS,
           TENSORBOARD, SUMMARY, LOCK, EVAL)

class WorkdirError(config_check.ConfigError):
  """A ``--workdir`` problem the user must fix (one line, nothing written)."""


def is_uri(path: str) -> bool:
  """Whether ``path`` names a remote filesystem (``gs://``, ``s3://``, ...)."""
  return "://" in str(path)


def resolve(path) -> epath.Path:
  """``path`` as an ``epath.Path``: local paths absolute, URIs kept as they are.

  Raises:
    WorkdirError: empty path.
  """
  if not path or not str(path).strip():
    raise WorkdirError("--workdir must name a folder.")
  if is_uri(str(path)):
    return epath.Path(str(path))
  return epath.Path(os.path.abspath(os.path.expanduser(str(path))))


def check(path) -> epath.Path:
  """The workdir as a path; refuses files and folders holding other files.

  Raises:
    WorkdirError: empty path, a file, or a non-empty folder that is not a
      workdir of a previous run.
  """
  folder = resolve(path)
  if folder.exists():
    if not folder.is_dir():
      raise WorkdirError(f"--workdir {folder} is a file, not a folder.")
    # Unfinished writes of a killed run (hidden temporary files) are ours.
    foreign = sorted({p.name for p in folder.iterdir()
                      if not files.is_temporary(p.name)} - set(ENTRIES))
    if foreign:
      raise WorkdirError(
          f"--workdir {folder} already holds other files ({', '.join(foreign[:3])}"
          f"{', ...' if len(foreign) > 3 else ''}); choose a new folder or "
          f"a previous run's.")
  return folder


def write_text(path: epath.Path, content: str) -> None:
  """Writes a whole file: atomically on local disks (:mod:`lfr_jax.files`);
  an object store's write is whole by itself."""
  if is_uri(str(path)):
    path.write_text(content)
    return
  files.write_atomic(os.fspath(path), content)


def read_json(path: epath.Path) -> Any | None:
  """A JSON file's content, or None when it is missing or unreadable."""
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None




def now() -> str:
  """The current UTC time, ISO 8601 to the second (for records)."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")


def append_lines(path: epath.Path, lines: list[str]) -> None:
  """Appends lines to a text file (rewrites it where the filesystem cannot append)."""
  content = "".join(l + "\n" for l in lines)
  if is_uri(str(path)):
    old = path.read_text() if path.exists() else ""
    path.write_text(old + content)
    return
  with path.open("a") as f:
    f.write(content)
