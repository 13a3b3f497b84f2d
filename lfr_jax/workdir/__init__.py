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
- ``metrics.jsonl`` (one JSON record per log interval, epoch and test; a
  resume drops the rows of the steps it trains again), ``tensorboard/``
  (opened at the first record), ``summary.json`` (the run's facts and one
  history record per call; never reset by a rerun).
- ``lock.json``: the live run that holds the workdir.
- ``eval/``: ``evaluate.py``'s default output, one folder per evaluation
  and ``eval/latest`` (see :mod:`lfr_jax.files`).

Files are written whole (:mod:`lfr_jax.files`); the hidden temporary files
a killed writer may leave are not "other files" to :func:`check`.

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

from lfr_jax.workdir.checkpoints import Checkpoints
from lfr_jax.workdir.checkpoints import checkpoint_steps
from lfr_jax.workdir.checkpoints import load_checkpoint
from lfr_jax.workdir.layout import (BEST, CHECKPOINTS, CONFIG, CONFIG_CHANGES,
                                    DAMAGED, ENTRIES, EVAL, LOCK, METRICS,
                                    SUMMARY, TENSORBOARD, WorkdirError,
                                    append_lines, check, is_uri, now,
                                    read_json, resolve, write_text)
from lfr_jax.workdir.lock import Lock
from lfr_jax.workdir.records import (MetricWriter, previous_seconds,
                                     read_metrics, read_summary,
                                     truncate_metrics, write_summary)
from lfr_jax.workdir.run_config import (SAFE_TO_CHANGE, check_config,
                                        config_differences, is_safe_to_change,
                                        read_config, read_config_dict,
                                        record_config)

__all__ = [
    "BEST", "CHECKPOINTS", "CONFIG", "CONFIG_CHANGES", "DAMAGED", "ENTRIES",
    "EVAL", "LOCK", "METRICS", "SAFE_TO_CHANGE", "SUMMARY", "TENSORBOARD",
    "Checkpoints", "Lock", "MetricWriter", "WorkdirError", "append_lines",
    "check", "check_config", "checkpoint_steps", "config_differences",
    "is_safe_to_change", "is_uri", "load_checkpoint", "now",
    "previous_seconds", "read_config", "read_config_dict", "read_json",
    "read_metrics", "read_summary", "record_config", "resolve",
    "truncate_metrics", "write_summary", "write_text",
]
