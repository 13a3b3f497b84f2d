"""Result files written whole, and result folders kept as versions.

Every result file of this package (figures, ``.npz``, JSON, Markdown, CSV,
``summary.json``) is written through :func:`atomic_file`: the content goes
to a temporary file in the destination's folder, is flushed to disk, then
renamed over the destination with ``os.replace``. A reader, or a process
killed at any moment, sees the old file or the new one, never a torn one.
The temporary file gets the permissions every other output gets (``0666``
less the umask), not ``tempfile.mkstemp``'s ``0600``. A kill leaves at most
a hidden temporary file (``.<name>.tmp-<pid>-<random>``), which
:func:`is_temporary` recognizes (workdir checks ignore such files).

Evaluations are kept as versions (:func:`publish_version`): each one is
written into a hidden staging folder, renamed to ``<folder>/<version>``
once complete, and ``<folder>/latest`` then points to it: a relative
symlink, or, where the filesystem cannot hold one, a small text file
holding the version's name. :func:`latest` resolves either (and a folder
of the older flat layout, whose files lie directly in it).

Only the standard library is used, so tools that start other programs can
import this without starting JAX. Paths are local (``gs://`` workdirs go
through ``etils.epath``, whose object writes are whole by nature).

Example::

    import os, tempfile
    from lfr_jax import files
    folder = tempfile.mkdtemp()
    files.write_atomic(os.path.join(folder, "a.json"), '{"ok": true}')
    with files.atomic_file(os.path.join(folder, "b.bin"), "wb") as f:
      f.write(b"whole or not at all")
    stage = files.start_version(folder, "20261203T101500Z-1a2b3c4d")
    files.write_atomic(os.path.join(stage, "robustness.md"), "# report")
    done = files.publish_version(stage)
    files.latest(folder) == done                 # True
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from typing import IO, Any, Iterator

LATEST = "latest"
# Hidden names of unfinished writes: ".<name>.tmp-<pid>-<hex>" for files,
# ".staging-<pid>-<version>" for version folders.
_TEMPORARY = re.compile(r"^\.(.+\.tmp-\d+-[0-9a-f]+|staging-\d+-.+)$")
_STAGING = re.compile(r"^\.staging-(\d+)-(.+)$")


def is_temporary(name: str) -> bool:
  """Whether ``name`` is an unfinished write of this module (safe to ignore)."""
  return bool(_TEMPORARY.match(name))


def _umask() -> int:
  # os.umask can only be read by setting it; put it straight back.
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
  """A file object whose content replaces ``path`` whole when the block ends.

  Args:
    path: the destination (a local path; its folder must exist).
    mode: "w" (text, UTF-8) or "wb" (bytes).

  Yields:
    The open temporary file. If the block raises, the temporary file is
    removed and ``path`` is left as it was.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}.")
  path = os.fspath(path)
  folder, name = os.path.split(os.path.abspath(path))
  _remove_dead_temporaries(folder, name)
  tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-"
                             f"{secrets.token_hex(4)}")
  # O_EXCL with 0o666: the umask applies, as for every other output file.
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, mode, **({} if "b" in mode else
                                {"encoding": "utf-8"})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, OSError) and not e.filename and e.errno:
      # A failed write() names no file: name the one being written.
      raise OSError(e.errno, e.strerror or os.strerror(e.errno), path) from e
    raise


def _remove_dead_temporaries(folder: str, name: str) -> None:
  """Removes ``name``'s temporary files left by killed processes."""
  prefix = f".{name}.tmp-"
  try:
    entries = os.listdir(folder)
  except OSError:
    return  # the open below reports a missing or unreadable folder
  for entry in entries:
    if entry.startswith(prefix):
      pid = entry[len(prefix):].split("-", 1)[0]
      if (pid.isdigit() and int(pid) != os.getpid()
          and not process_alive(int(pid))):
        with contextlib.suppress(OSError):
          os.remove(os.path.join(folder, entry))


def write_atomic(path: str | os.PathLike, content: str | bytes) -> None:
  """Replaces ``path`` with ``content`` whole (see :func:`atomic_file`)."""
  with atomic_file(path, "wb" if isinstance(content, bytes) else "w") as f:
    f.write(content)


def write_json(path: str | os.PathLike, value: Any, **dump_kwargs) -> None:
  """Writes ``value`` as indented JSON with a final newline, whole."""
  dump_kwargs.setdefault("indent", 2)
  write_atomic(path, json.dumps(value, **dump_kwargs) + "\n")


# ------------------------------------------------------------- versions --


def version_name(settings: Any, when: datetime.datetime | None = None) -> str:
  """``<UTC time>-<hash of the settings>``, e.g. ``20261203T101500Z-1a2b3c4d``.

  The time orders versions; the hash tells at a glance which share settings.

  Args:
    settings: any JSON-able value (an evaluation's settings and inputs).
    when: the time (default: now).
  """
  when = when or datetime.datetime.now(datetime.timezone.utc)
  stamp = when.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True,
                                     default=str).encode()).hexdigest()[:8]
  return f"{stamp}-{digest}"


def start_version(folder: str | os.PathLike, version: str) -> str:
  """Creates the hidden staging folder of a new version of ``folder``.

  Args:
    folder: the versioned folder (e.g. a workdir's ``eval/``); created if
      missing.
    version: the version's name (:func:`version_name`); a name already
      taken gets a ``-2``, ``-3``, ... suffix when published.

  Returns:
    The staging folder: write the version's files there, then call
    :func:`publish_version`.
  """
  folder = os.path.abspath(os.fspath(folder))
  os.makedirs(folder, exist_ok=True)
  _remove_dead_stages(folder)
  stage = os.path.join(folder, f".staging-{os.getpid()}-{version}")
  if os.path.isdir(stage):  # this process's own unfinished try
    shutil.rmtree(stage)
  os.makedirs(stage)
  return stage


def process_alive(pid: int) -> bool:
  """Whether a process with this id exists (one we may not signal counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _remove_dead_stages(folder: str) -> None:
  """Removes the staging folders of killed processes (never published)."""
  for name in os.listdir(folder):
    match = _STAGING.match(name)
    if match and int(match.group(1)) != os.getpid() and not process_alive(
        int(match.group(1))):
      shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _point_latest(folder: str, version: str) -> None:
  """Points ``folder/latest`` at ``version``, replacing the old pointer whole."""
  link = os.path.join(folder, LATEST)
  tmp = os.path.join(folder, f".{LATEST}.tmp-{os.getpid()}-"
                             f"{secrets.token_hex(4)}")
  try:
    os.symlink(version, tmp)
  except OSError as e:
    if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS,
                       errno.EACCES) and not isinstance(e, NotImplementedError):
      raise
    if os.path.islink(link) or os.path.isdir(link):
      _remove(link)
    write_atomic(link, version + "\n")  # no symlinks here: a pointer file
    return
  if os.path.isdir(link) and not os.path.islink(link):
    _remove(link)  # a real folder named latest cannot be replaced by rename
  os.replace(tmp, link)


def _remove(path: str) -> None:
  if os.path.islink(path) or not os.path.isdir(path):
    os.remove(path)
  else:
    shutil.rmtree(path)


def publish_version(stage: str | os.PathLike) -> str:
  """Makes a complete staging folder a version and points ``latest`` at it.

  Args:
    stage: the folder returned by :func:`start_version`.

  Returns:
    The version's folder, ``<folder>/<version>``.
  """
  stage = os.path.abspath(os.fspath(stage))
  folder, hidden = os.path.split(stage)
  match = _STAGING.match(hidden)
  if match is None:
    raise ValueError(f"{stage} is not a staging folder of start_version.")
  version = base = match.group(2)
  suffix = 2
  while os.path.exists(os.path.join(folder, version)):
    version, suffix = f"{base}-{suffix}", suffix + 1
  final = os.path.join(folder, version)
  os.rename(stage, final)
  _point_latest(folder, version)
  return final


def latest(folder: str | os.PathLike, version: str = LATEST) -> str | None:
  """The folder holding the newest (or a named) version's files, or None.

  Args:
    folder: a versioned folder (with ``latest``), a version folder itself,
      or a folder of the older flat layout (files directly in it).
    version: "latest", or a version's name to read that one instead.

  Returns:
    ``folder/latest`` resolved (symlink or pointer file); else ``folder``
    itself when it holds files but no ``latest`` (flat layout, a copy such
    as docs/results); None when ``folder`` does not exist or is empty, or
    the named version does not exist.
  """
  folder = os.path.abspath(os.fspath(folder))
  if version != LATEST:
    named = os.path.join(folder, version)
    return named if version and os.path.isdir(named) else None
  pointer = os.path.join(folder, LATEST)
  if os.path.isdir(pointer):
    return os.path.realpath(pointer)
  if os.path.isfile(pointer):
    with open(pointer, encoding="utf-8") as f:
      name = f.read().strip()
    target = os.path.join(folder, name)
    if name and "/" not in name and os.path.isdir(target):
      return target
    return None
  if os.path.isdir(folder) and any(
      not is_temporary(n) for n in os.listdir(folder)):
    return folder
  return None


def latest_file(folder: str | os.PathLike, name: str,
                version: str = LATEST) -> str | None:
  """``name`` in :func:`latest` of ``folder``, or None when it is not there."""
  found = latest(folder, version)
  if found is None:
    return None
  path = os.path.join(found, name)
  return path if os.path.isfile(path) else None


def versions(folder: str | os.PathLike) -> list[str]:
  """The published version names of ``folder``, oldest first."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    return []
  return sorted(n for n in os.listdir(folder)
                if re.match(r"^\d{8}T\d{6}Z-", n)
                and os.path.isdir(os.path.join(folder, n)))
