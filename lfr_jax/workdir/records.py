"""What a run reports: ``metrics.jsonl`` (and TensorBoard) while it trains, ``summary.json`` at the end.

Example::

    import tempfile
    from lfr_jax.workdir import records
    folder = tempfile.mkdtemp()
    writer = records.MetricWriter(folder, enabled=True)
    writer.write("train", 10, 0.5, {"loss": 1.25})
    writer.close()
    records.read_metrics(folder)[0]["loss"]     # 1.25
"""

from __future__ import annotations

import json
from typing import Any

from absl import logging

from lfr_jax.workdir import layout


class MetricWriter:
  """Writes metrics to ``metrics.jsonl`` and TensorBoard (process 0 only).

  TensorBoard events need tensorboardX (and, for a ``gs://`` workdir,
  google-cloud-storage); without them (e.g. on an accelerator machine with no
  package registry) the writer says so once and keeps to ``metrics.jsonl``,
  the record every tool of this package reads.
  """

  def __init__(self, path, enabled: bool, resume_step: int = 0):
    self.enabled = enabled
    self.path = layout.resolve(path) / layout.METRICS
    self._tb_folder = layout.resolve(path) / layout.TENSORBOARD
    self._resume_step = resume_step
    self._tb = None
    self._tb_opened = False  # an events file is created on the first write

  def _tensorboard_writer(self):
    if not self._tb_opened:
      self._tb_opened = True
      self._tb = self._tensorboard(self._tb_folder, self._resume_step)
    return self._tb

  @staticmethod
  def _tensorboard(folder, resume_step: int = 0):
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
    except ImportError:
      logging.warning("tensorboardX is not installed: metrics go to "
                      "metrics.jsonl only (pip install tensorboardX).")
      return None
    url = str(folder)
    # tensorboardX writes gs:// and s3:// itself, through optional packages,
    # and fails only at the first event: check up front.
    remote_ok = {"gs": getattr(record_writer, "GCS_ENABLED", False),
                 "s3": getattr(record_writer, "S3_ENABLED", False)}
    scheme = url.split("://", 1)[0] if layout.is_uri(url) else ""
    if scheme and not remote_ok.get(scheme, False):
      logging.warning("TensorBoard events cannot be written to %s:// here "
                      "(tensorboardX needs %s): metrics go to metrics.jsonl "
                      "only.", scheme, "google-cloud-storage" if scheme == "gs"
                      else "boto3" if scheme == "s3" else "a backend")
      return None
    # A resumed run retrains the steps after its checkpoint: purge_step hides
    # the earlier events of those steps from TensorBoard.
    return SummaryWriter(url, purge_step=resume_step + 1 if resume_step
                         else None)

  def write(self, split: str, step: int, epoch: float,
            metrics: dict[str, float]) -> None:
    """Appends one record ``{"split", "step", "epoch", **metrics}``."""
    if not self.enabled:
      return
    record = {"split": split, "step": step, "epoch": round(epoch, 4),
              **{k: float(v) for k, v in metrics.items()}}
    layout.append_lines(self.path, [json.dumps(record)])
    tb = self._tensorboard_writer()
    if tb is not None:
      for k, v in metrics.items():
        tb.add_scalar(f"{split}/{k}", float(v), step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def truncate_metrics(path, step: int) -> int:
  """Drops the records of steps after ``step`` (and a torn last line).

  A resumed run trains the steps after its checkpoint again; their records
  from the interrupted call would otherwise appear twice.

  Returns:
    How many records were dropped.
  """
  file = layout.resolve(path) / layout.METRICS
  if not file.exists():
    return 0
  lines = file.read_text().splitlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if int(record.get("step", 0)) <= step:
      kept.append(line)
  if len(kept) != len(lines):
    layout.write_text(file, "".join(l + "\n" for l in kept))
  return len(lines) - len(kept)


def read_metrics(path) -> list[dict[str, Any]]:
  """The records of a workdir's ``metrics.jsonl``; a torn last line is skipped."""
  file = layout.resolve(path) / layout.METRICS
  if not file.exists():
    return []
  records = []
  for line in file.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except ValueError:
      continue  # a run killed mid-write leaves a partial last line
  return records


def read_summary(path) -> dict[str, Any] | None:
  """A workdir's ``summary.json``, or None (missing, unreadable, not a dict)."""
  summary = layout.read_json(layout.resolve(path) / layout.SUMMARY)
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
  layout.write_text(layout.resolve(path) / layout.SUMMARY, json.dumps(summary, indent=2))
