"""The on-disk contract of a training run: one folder, what it holds, and who may write it.

A workdir holds:

- ``config.json``: the config that produced its checkpoints, with the data
  source and folder resolved (``data.source``, ``data.dir``), so evaluation
  reads the same data. It is written once and never replaced.
- ``config_changes.jsonl``: settings that are safe to change (stopping
  points, logging, evaluation, checkpointing, devices, data location) which a
  resume changed, one record per resume.
- ``checkpoints/``: the last ``checkpoint.keep`` train states plus the kept
  epoch ends (orbax); ``best_checkpoint/``: the best by validation PGD
  accuracy; ``damaged_checkpoints/``: steps that failed to restore, moved
  aside (never deleted).
- ``metrics.jsonl`` (one JSON record per log interval, epoch and test),
  ``tensorboard/``, ``summary.json``.
- ``lock.json``: the live run that holds the workdir.
- ``eval/``: ``evaluate.py``'s default output.

Every path goes through ``etils.epath`` (as orbax does), so a workdir such as
``gs://bucket/run`` works wherever epath has a backend for it.

Example::

    import tempfile
    from configs import mnist_lfr
    from lfr_jax import workdir
    path = workdir.check(tempfile.mkdtemp())
    config = mnist_lfr.get_config("smoke")
    workdir.record_config(path, config.to_dict())   # the first run: config.json
    changed = dict(config.to_dict(), lfr={"lam": 0.5, "norm": "l1"})
    workdir.config_differences(workdir.read_config_dict(path), changed)
    # (['lfr.lam'], [])
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from typing import Any, Mapping

from absl import logging
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from lfr_jax import config_check
from lfr_jax import models
from lfr_jax import sharding
from lfr_jax import text
from lfr_jax import train_state

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

# Config fields a resume may change: where and how long a run goes, what it
# logs and how it is judged, none of what its checkpoints are. Prefixes end
# with "."; every other field (method and its settings, model, data, seed,
# optimizer and schedule, inner maximization) must match config.json.
SAFE_TO_CHANGE = ("train.max_steps", "train.max_epochs", "log.", "eval.",
                  "checkpoint.", "mesh.", "distributed.", "data.dir",
                  "data.tfds_data_dir", "data.download")


class WorkdirError(config_check.ConfigError):
  """A ``--workdir`` problem the user must fix (one line, nothing written)."""


# ----------------------------------------------------------------- paths --


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
    foreign = sorted({p.name for p in folder.iterdir()} - set(ENTRIES))
    if foreign:
      raise WorkdirError(
          f"--workdir {folder} already holds other files ({', '.join(foreign[:3])}"
          f"{', ...' if len(foreign) > 3 else ''}); choose a new folder or "
          f"a previous run's.")
  return folder


def write_text(path: epath.Path, content: str) -> None:
  """Writes a whole file; atomically (rename) on local disks."""
  if is_uri(str(path)):
    path.write_text(content)
    return
  tmp = epath.Path(f"{path}.tmp{os.getpid()}")
  tmp.write_text(content)
  os.replace(tmp, path)


def read_json(path: epath.Path) -> Any | None:
  """A JSON file's content, or None when it is missing or unreadable."""
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


# ---------------------------------------------------------------- config --


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _normalized(config: Mapping[str, Any]) -> dict[str, Any]:
  # Through JSON, as config.json holds it: tuples become lists.
  return _flatten(json.loads(json.dumps(config, sort_keys=True)))


def is_safe_to_change(key: str) -> bool:
  """Whether a resume may change ``key`` (see :data:`SAFE_TO_CHANGE`)."""
  return any(key == s or (s.endswith(".") and key.startswith(s))
             for s in SAFE_TO_CHANGE)


def config_differences(recorded: Mapping[str, Any], new: Mapping[str, Any]
                       ) -> tuple[list[str], list[str]]:
  """The fields where ``new`` differs from a run's recorded config.

  Args:
    recorded: the run's ``config.json`` as a dict.
    new: the config of this call as a dict.

  Returns:
    (fields that change the result, fields safe to change), each sorted; a
    field present on one side only counts as different.
  """
  old, cur = _normalized(recorded), _normalized(new)
  keys = sorted(k for k in set(old) | set(cur)
                if old.get(k, KeyError) != cur.get(k, KeyError))
  return ([k for k in keys if not is_safe_to_change(k)],
          [k for k in keys if is_safe_to_change(k)])


def read_config_dict(path) -> dict[str, Any] | None:
  """A workdir's ``config.json`` as a dict; None when there is none."""
  recorded = read_json(resolve(path) / CONFIG)
  return recorded if isinstance(recorded, dict) else None


def read_config(path) -> ml_collections.ConfigDict:
  """A workdir's config (``config.json``), as the run wrote it.

  Raises:
    WorkdirError: no such workdir, or no readable config.json in it.
  """
  folder = resolve(path)
  recorded = read_config_dict(folder)
  if recorded is None:
    what = ("is not a workdir (no config.json)" if not
            (folder / CONFIG).exists() else "has an unreadable config.json")
    raise WorkdirError(f"{folder} {what}.")
  return ml_collections.ConfigDict(recorded)


def _describe(keys: list[str], old: dict, new: dict, limit: int = 6) -> str:
  def show(key, tree):
    return json.dumps(tree[key]) if key in tree else "absent"
  parts = [f"{k} ({show(k, old)} -> {show(k, new)})" for k in keys[:limit]]
  more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(parts) + more


def check_config(path, config: Mapping[str, Any]) -> list[str]:
  """Refuses a config that would take over a run trained with other settings.

  Reads only. Call before writing anything to the workdir.

  Args:
    path: the workdir.
    config: this call's config as a dict (data source resolved).

  Returns:
    The safe-to-change fields that differ from the run's config.json (empty
    for a new workdir).

  Raises:
    WorkdirError: fields that change the result differ, listed in one line.
  """
  folder = resolve(path)
  recorded = read_config_dict(folder)
  if recorded is None:
    if (folder / CONFIG).exists():
      raise WorkdirError(f"--workdir {folder} has an unreadable {CONFIG}; use "
                         f"a new workdir.")
    return []
  changing, safe = config_differences(recorded, config)
  if changing:
    raise WorkdirError(
        f"--workdir {folder} holds a run trained with other settings: "
        f"{_describe(changing, _normalized(recorded), _normalized(config))}; "
        f"resume it with the config in its {CONFIG}, or use a new workdir.")
  return safe


def record_config(path, config: Mapping[str, Any], *, step: int = 0,
                  changed: list[str] = ()) -> None:
  """Writes ``config.json`` for a new run, or records a resume's safe changes.

  Args:
    path: the workdir (it must exist).
    config: this call's config as a dict.
    step: the step the run resumes at (for the change record).
    changed: the safe fields that differ (from :func:`check_config`).
  """
  folder = resolve(path)
  if not (folder / CONFIG).exists():
    write_text(folder / CONFIG, json.dumps(config, indent=2, sort_keys=True))
    return
  if changed:
    old = _normalized(read_config_dict(folder) or {})
    new = _normalized(config)
    record = {"step": step, "time": _now(),
              "changes": {k: [old.get(k), new.get(k)] for k in changed}}
    append_lines(folder / CONFIG_CHANGES, [json.dumps(record)])
    logging.info("resume changes %s", _describe(changed, old, new))


def _now() -> str:
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


# ------------------------------------------------------------------ lock --


def _process_start(pid: int) -> str | None:
  """The kernel's start time of ``pid`` (Linux), which tells PID reuse apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
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
    self.path = resolve(path) / LOCK
    self.held = False

  def _record(self) -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": _now(),
            "process_start": _process_start(pid)}

  def _create(self) -> bool:
    content = json.dumps(self._record())
    if is_uri(str(self.path)):
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
      holder = read_json(self.path) or {}
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
      raise WorkdirError(
          f"--workdir {self.path.parent} is in use by process {pid} on "
          f"{where} (since {holder.get('started', '?')}); {hint}.")
    raise WorkdirError(f"could not take the lock {self.path}.")

  def release(self) -> None:
    """Removes the lock if this process holds it."""
    if self.held:
      self.path.unlink(missing_ok=True)
      self.held = False


# ----------------------------------------------------------- checkpoints --


class Checkpoints:
  """The last ``keep`` checkpoints plus the best one by validation PGD accuracy.

  Each checkpoint holds the train state (params, optimizer and model state,
  step, RNG key) and a JSON record of the data position and the best
  validation result so far.
  """

  def __init__(self, path, keep: int = 1, keep_best: bool = True,
               keep_steps: tuple[int, ...] = ()):
    self.folder = resolve(path)
    self._settings = (keep, keep_best, tuple(keep_steps))
    self._open()

  def _open(self) -> None:
    keep, keep_best, keep_steps = self._settings
    # Synchronous saves: the train state is donated to the next step, so its
    # buffers must be on disk (or copied) before save() returns.
    options = dict(create=True, enable_async_checkpointing=False)
    if keep_steps:
      # The last `keep`, plus these steps for good (e.g. chosen epoch ends,
      # evaluated later as points of a robustness-vs-compute curve).
      policies = ocp.checkpoint_managers
      latest = dict(preservation_policy=policies.AnyPreservationPolicy([
          policies.LatestN(keep), policies.CustomSteps(list(keep_steps))]))
    else:
      latest = dict(max_to_keep=keep)
    self.latest = ocp.CheckpointManager(
        self.folder / CHECKPOINTS,
        options=ocp.CheckpointManagerOptions(**latest, **options))
    self.best = ocp.CheckpointManager(
        self.folder / BEST,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, **options)
    ) if keep_best else None

  @staticmethod
  def _args(state, meta):
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))

  def save(self, state, meta: dict[str, Any], *, best: bool = False) -> None:
    """Saves ``state`` under its step (in the best slot too if ``best``)."""
    step = int(meta["step"])
    if self.latest.latest_step() != step:
      self.latest.save(step, args=self._args(state, meta))
    if best and self.best is not None:
      self.best.save(step, args=self._args(state, meta))

  def _manager(self, best: bool):
    return self.best if best else self.latest

  def restore(self, abstract_state, *, best: bool = False,
              step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
    """The latest (or best, or the given step's) checkpoint, or None."""
    manager = self._manager(best)
    if manager is None or manager.latest_step() is None:
      return None
    if step is None:
      step = manager.latest_step()
    elif step not in manager.all_steps():
      return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_intact(self, abstract_state
                     ) -> tuple[Any, dict[str, Any], list[int]] | None:
    """The newest checkpoint that restores; damaged newer ones moved aside.

    A checkpoint whose files are truncated or missing (a full disk, a partial
    copy) fails to restore. It is moved to ``damaged_checkpoints/`` (kept for
    inspection) and the next older one is tried.

    Returns:
      (state, meta, damaged steps newest first), or None without checkpoints.

    Raises:
      WorkdirError: checkpoints exist but none restores.
    """
    damaged: list[tuple[int, str]] = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        state, meta = self.restore(abstract_state, step=step)
      except Exception as e:  # pylint: disable=broad-except
        # Any failure of the restore is the checkpoint's: orbax and
        # TensorStore raise many types for damaged files.
        damaged.append((step, text.one_line(e, pick="first", limit=160)))
        continue
      for bad, _ in damaged:
        self._move_aside(bad)
      return state, meta, [bad for bad, _ in damaged]
    if damaged:
      step, reason = damaged[0]
      raise WorkdirError(
          f"no checkpoint in {self.folder / CHECKPOINTS} restores (step "
          f"{step}: {reason}); if the files are damaged, restore them or use a "
          f"new workdir.")
    return None

  def _move_aside(self, step: int) -> None:
    source = self.folder / CHECKPOINTS / str(step)
    target_dir = self.folder / DAMAGED
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / str(step)
    suffix = 1
    while target.exists():
      target, suffix = target_dir / f"{step}.{suffix}", suffix + 1
    source.rename(target)
    # The managers cache the step list: reopen them on the folder as it is.
    self.close()
    self._open()

  def steps(self, *, best: bool = False) -> list[int]:
    """The saved steps, oldest first."""
    manager = self._manager(best)
    return sorted(manager.all_steps()) if manager is not None else []

  def meta(self, step: int, *, best: bool = False) -> dict[str, Any]:
    """The JSON record saved with a step (data position, best so far)."""
    return self._manager(best).restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def close(self) -> None:
    for manager in (self.latest, self.best):
      if manager is not None:
        manager.wait_until_finished()
        manager.close()


def load_checkpoint(config, path, *, best: bool = False,
                    step: int | None = None) -> tuple[Any, dict[str, Any]]:
  """Restores the latest (or best, or one step's) train state of a run.

  Args:
    config: the run's config (its model and optimizer give the structure).
    path: the run's workdir.
    best: restore the best checkpoint by validation PGD accuracy instead.
    step: restore this saved step of ``checkpoints/`` instead of the latest.

  Returns:
    (state, meta); ``models.Network(graphdef, state.params, state.model_state)``
    with the graphdef of ``models.create(config.model.name, ...)`` rebuilds the
    network.

  Raises:
    FileNotFoundError: no such checkpoint.
  """
  net = models.create(config.model.name, jax.random.key(0),
                      **models.kwargs_from_config(config.model))
  tx, _ = train_state.make_optimizer(config.optim, 1)
  mesh = sharding.make_mesh(config.mesh.num_devices)
  state = jax.device_put(
      train_state.create_train_state(net, tx, jax.random.key(0)),
      sharding.replicated(mesh))
  ckpt = Checkpoints(path, 1, True)
  try:
    restored = ckpt.restore(train_state.abstract_state(state), best=best,
                            step=step)
  finally:
    ckpt.close()
  if restored is None:
    what = f"step {step}" if step is not None else "best" if best else "any"
    raise FileNotFoundError(f"no checkpoint ({what}) in {path}")
  return restored


def checkpoint_steps(path) -> tuple[list[int], int | None]:
  """The saved steps of ``checkpoints/`` and the run's steps per epoch.

  Returns:
    (steps oldest first, steps per epoch from the latest one's record, or
    None when there is no checkpoint).
  """
  ckpt = Checkpoints(path, 1, False)
  try:
    steps = ckpt.steps()
    per_epoch = int(ckpt.meta(steps[-1])["steps_per_epoch"]) if steps else None
  finally:
    ckpt.close()
  return steps, per_epoch


# --------------------------------------------------------------- metrics --


class MetricWriter:
  """Writes metrics to ``metrics.jsonl`` and TensorBoard (process 0 only).

  TensorBoard events need tensorboardX; without it (e.g. on an accelerator
  machine with no package registry) the writer says so once and keeps to
  ``metrics.jsonl``, the record every tool of this package reads.
  """

  def __init__(self, path, enabled: bool):
    self.enabled = enabled
    self.path = resolve(path) / METRICS
    self._tb = None
    if enabled:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:
        logging.warning("tensorboardX is not installed: metrics go to "
                        "metrics.jsonl only (pip install tensorboardX).")
      else:
        self._tb = SummaryWriter(os.fspath(resolve(path) / TENSORBOARD))

  def write(self, split: str, step: int, epoch: float,
            metrics: dict[str, float]) -> None:
    """Appends one record ``{"split", "step", "epoch", **metrics}``."""
    if not self.enabled:
      return
    record = {"split": split, "step": step, "epoch": round(epoch, 4),
              **{k: float(v) for k, v in metrics.items()}}
    append_lines(self.path, [json.dumps(record)])
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{split}/{k}", float(v), step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path) -> list[dict[str, Any]]:
  """The records of a workdir's ``metrics.jsonl``; a torn last line is skipped."""
  file = resolve(path) / METRICS
  if not file.exists():
    return []
  records = []
  for line in file.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except ValueError:
      continue  # a run killed mid-write leaves a partial last line
  return records


# --------------------------------------------------------------- summary --


def read_summary(path) -> dict[str, Any] | None:
  """A workdir's ``summary.json``, or None (missing, unreadable, not a dict)."""
  summary = read_json(resolve(path) / SUMMARY)
  return summary if isinstance(summary, dict) else None


def previous_seconds(path) -> float:
  """Wall time recorded by earlier summaries of the workdir (0 if none)."""
  old = read_summary(path) or {}
  try:
    return float(old.get("seconds_total", old.get("seconds", 0.0)))
  except (TypeError, ValueError):
    return 0.0


def write_summary(path, summary: dict[str, Any]) -> None:
  """Writes ``summary.json`` (atomically on local disks)."""
  write_text(resolve(path) / SUMMARY, json.dumps(summary, indent=2))
