"""A workdir belongs to one config: ``config.json`` written once, resumes checked against it.

Example::

    from configs import mnist_lfr
    from lfr_jax.workdir import run_config
    config = mnist_lfr.get_config("smoke").to_dict()
    changed = dict(config, seed=1, log={"every_steps": 5, "progress": False})
    run_config.config_differences(config, changed)
    # (['seed'], ['log.every_steps'])
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from absl import logging
import ml_collections

from lfr_jax.workdir import layout

# Config fields a resume may change: where and how long a run goes, what it
# logs and how it is judged, how many processes read its data, none of what
# its checkpoints are. Prefixes end with "."; every other field (method and
# its settings, model, data, seed, optimizer and schedule, inner
# maximization) must match config.json.
SAFE_TO_CHANGE = ("train.max_steps", "train.max_epochs", "log.", "eval.",
                  "checkpoint.", "mesh.", "distributed.", "data.dir",
                  "data.tfds_data_dir", "data.download", "data.workers")



# Fields added after runs were recorded, with the value that reproduces what
# those runs did: a config.json without them compares as if it held these.
ADDED_FIELDS = {"model.dtype": "float32", "model.conv": "auto",
                "train.remat": "none"}


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
    (fields that change the result, fields safe to change), each sorted
    shallowest first; a field present on one side only counts as different.
  """
  old, cur = _normalized(recorded), _normalized(new)
  for key, value in ADDED_FIELDS.items():
    if key in cur and key not in old:
      old[key] = value
  # Shallow keys first: a changed ``method`` explains the nested ones it drags
  # along, and the one-line error shows only the first few.
  keys = sorted((k for k in set(old) | set(cur)
                 if old.get(k, KeyError) != cur.get(k, KeyError)),
                key=lambda k: (k.count("."), k))
  return ([k for k in keys if not is_safe_to_change(k)],
          [k for k in keys if is_safe_to_change(k)])


def read_config_dict(path) -> dict[str, Any] | None:
  """A workdir's ``config.json`` as a dict; None when there is none."""
  recorded = layout.read_json(layout.resolve(path) / layout.CONFIG)
  return recorded if isinstance(recorded, dict) else None


def read_config(path) -> ml_collections.ConfigDict:
  """A workdir's config (``config.json``), as the run wrote it.

  Raises:
    WorkdirError: no such workdir, or no readable config.json in it.
  """
  folder = layout.resolve(path)
  recorded = read_config_dict(folder)
  if recorded is None:
    what = ("is not a workdir (no config.json)" if not
            (folder / layout.CONFIG).exists() else "has an unreadable config.json")
    raise layout.WorkdirError(f"{folder} {what}.")
  return ml_collections.ConfigDict(recorded)


def _describe(keys: list[str], old: dict, new: dict, limit: int = 6) -> str:
  def show(key, tree):
    return json.dumps(tree[key]) if key in tree else "absent"
  # ``keys`` come from config_differences, shallowest first: a changed
  # method leads and does not fall past the limit.
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
  folder = layout.resolve(path)
  recorded = read_config_dict(folder)
  if recorded is None:
    if (folder / layout.CONFIG).exists():
      raise layout.WorkdirError(f"--workdir {folder} has an unreadable {layout.CONFIG}; use "
                         f"a new workdir.")
    return []
  changing, safe = config_differences(recorded, config)
  if changing:
    raise layout.WorkdirError(
        f"--workdir {folder} holds a run trained with other settings: "
        f"{_describe(changing, _normalized(recorded), _normalized(config))}; "
        f"resume it with its recorded {layout.CONFIG} (train.py "
        f"--workdir={folder} alone), or use a new workdir.")
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
  folder = layout.resolve(path)
  if not (folder / layout.CONFIG).exists():
    layout.write_text(folder / layout.CONFIG, json.dumps(config, indent=2, sort_keys=True))
    return
  if changed:
    old = _normalized(read_config_dict(folder) or {})
    new = _normalized(config)
    record = {"step": step, "time": layout.now(),
              "changes": {k: [old.get(k), new.get(k)] for k in changed}}
    layout.append_lines(folder / layout.CONFIG_CHANGES, [json.dumps(record)])
    logging.info("resume changes %s", _describe(changed, old, new))
