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

  def __init__(self, path, enabled: bool):
    self.enabled = enabled
    self.path = layout.resolve(path) / layout.METRICS
    self._tb = self._tensorboard(layout.resolve(path) / layout.TENSORBOARD
                                 ) if enabled else None

  @staticmethod
  def _tensorboard(folder):
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
    return SummaryWriter(url)

  def write(self, split: str, step: int, epoch: float,
            metrics: dict[str, float]) -> None:
    """Appends one record ``{"split", "step", "epoch", **metrics}``."""
    if not self.enabled:
      return
    record = {"split": split, "step": step, "epoch": round(epoch, 4),
              **{k: float(v) for k, v in metrics.items()}}
    layout.append_lines(self.path, [json.dumps(record)])
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{split}/{k}", float(v), step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


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
