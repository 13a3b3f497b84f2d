"""One training loop for every method: a jitted, sharded step, checkpoints, metrics.

``train_and_evaluate(config, workdir)`` checks the config, loads the data,
builds the model and ``objectives.build(config.method, ...)``, and trains with
one ``jax.jit`` step whose batch is sharded over a 1-D ``("data",)`` mesh and
whose parameters are replicated. Each epoch it measures clean and PGD accuracy
on the validation split (never the test split) and checkpoints; at the end it
measures the test split and prints a one-line summary.

The workdir (see :mod:`lfr_jax.workdir`) belongs to one config: running again
with the same settings resumes from the newest intact checkpoint, at the exact
batch where it stopped; settings that would change the result are refused,
and a second live process on the same workdir too.

Example::

    from configs import mnist_lfr
    from lfr_jax import training
    summary = training.train_and_evaluate(mnist_lfr.get_config("quick"),
                                          "runs/mnist_lfr_quick")
    summary["test_pgd_acc"]
"""

from __future__ import annotations

import collections
import itertools
import json
import logging as std_logging
import math
import time
from typing import Any, Iterator

from absl import logging
import jax
import numpy as np

from lfr_jax import config_check
from lfr_jax import data
from lfr_jax import models
from lfr_jax import objectives
from lfr_jax import sharding
from lfr_jax import steps
from lfr_jax import text
from lfr_jax import train_state
from lfr_jax import workdir as workdir_lib

# Steps in flight before the host waits for the oldest one: keeps the device
# busy while bounding how far the host runs ahead (queued batches hold memory).
_MAX_IN_FLIGHT = 2


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; the run stopped without saving that state."""


# ----------------------------------------------------------------------------
# Metrics


# Schedules are reported at the window's last step, the rest as window means.
_LAST_VALUE = ("lr", "eps")


class MetricWindow:
  """The steps of one logging window so far: summed metrics, on the host.

  The sums run left to right in float64, so a window interrupted by a
  checkpoint and continued after a resume (its sums travel in the
  checkpoint's record, see :meth:`to_record`) ends with the very means of
  an uninterrupted run: the logged rows and the collapse verdicts of a
  resumed run are those of a straight one.
  """

  def __init__(self, record: dict[str, Any] | None = None):
    record = record or {}
    self.steps = int(record.get("steps", 0))
    self.sums = {k: float(v) for k, v in record.get("sums", {}).items()}
    self.last = {k: float(v) for k, v in record.get("last", {}).items()}

  def add(self, device_metrics: list[dict[str, jax.Array]]) -> None:
    """Adds the steps' metrics (fetched from the device here)."""
    for metrics in jax.device_get(device_metrics):
      self.steps += 1
      for k, v in metrics.items():
        if k in _LAST_VALUE:
          self.last[k] = float(v)
        else:
          self.sums[k] = self.sums.get(k, 0.0) + float(v)

  def mean(self) -> dict[str, float]:
    """The window's means (schedules at its last step)."""
    return {**{k: v / max(self.steps, 1) for k, v in self.sums.items()},
            **self.last}

  def to_record(self) -> dict[str, Any]:
    """A JSON-able record of the window so far (for the checkpoint)."""
    return {"steps": self.steps, "sums": dict(self.sums),
            "last": dict(self.last)}


def _mean_metrics(window: list[dict[str, jax.Array]]) -> dict[str, float]:
  """The means of a list of per-step device metrics (see MetricWindow)."""
  summed = MetricWindow()
  summed.add(window)
  return summed.mean()


# A constant classifier (the optimum of some over-weighted regularizers, e.g.
# LLR at CIFAR-10's weights on MNIST at eps 0.3) is flagged when, over a whole
# logging window, its clean logits vary over the batch by less than
# COLLAPSE_SPREAD (mean per-class std, in nats: predicted probabilities then
# change by a few percent at most between inputs) and its train accuracy does
# not beat the majority-class rate by more than COLLAPSE_ACC_SLACK.
COLLAPSE_SPREAD = 0.05
COLLAPSE_ACC_SLACK = 0.01


def is_constant_classifier(mean: dict[str, float]) -> bool:
  """Whether a logging window's mean metrics describe a constant classifier.

  Args:
    mean: window means with "acc", "logit_spread" and "majority" (see
      ``objectives.collapse_metrics``); objectives without the last two are
      never flagged.

  Returns:
    True when the logit spread is below COLLAPSE_SPREAD and the accuracy at
    most COLLAPSE_ACC_SLACK above the majority-class rate.
  """
  if "logit_spread" not in mean or "majority" not in mean:
    return False
  return (mean["logit_spread"] < COLLAPSE_SPREAD and
          mean["acc"] <= mean["majority"] + COLLAPSE_ACC_SLACK)


def collapse_from_metrics(records: list[dict[str, Any]], step: int,
                          every_steps: int) -> tuple[int, bool]:
  """The collapse verdicts of a run, recomputed from its metrics.jsonl.

  For checkpoints written before their record held the verdicts: each
  "train" row up to ``step`` is one logging window ending at its step (the
  last row of a step wins), judged as :meth:`_Run.check_collapse` does.

  Args:
    records: the workdir's metrics.jsonl records.
    step: the restored step; later rows are ignored.
    every_steps: ``config.log.every_steps`` (a full window's length).

  Returns:
    (first flagged step or -1, whether the last full window was flagged).
  """
  rows = {int(r["step"]): r for r in records
          if r.get("split") == "train" and 0 < int(r.get("step", 0)) <= step}
  first, at_end, previous = -1, False, 0
  for end in sorted(rows):
    window_steps, previous = end - previous, end
    full = window_steps == every_steps
    flagged = full and end > window_steps and is_constant_classifier(rows[end])
    if flagged and first < 0:
      first = end
    if full:
      at_end = flagged
  return first, at_end


def collapse_message(step: int, window_steps: int, mean: dict[str, float]
                     ) -> str:
  """The one-line warning for a window flagged by :func:`is_constant_classifier`."""
  return (f"step {step}: the model is a constant classifier (train accuracy "
          f"{100 * mean['acc']:.1f}% vs majority-class rate "
          f"{100 * mean['majority']:.1f}%, logit spread "
          f"{mean['logit_spread']:.2g} over the last {window_steps} steps); "
          f"if it stays one, its robust accuracy is the majority-class rate, "
          f"not robustness: lower the regularizer weight or warm eps up.")


# ----------------------------------------------------------------------------
# The loop


class _DropLibraryInfo:
  """A logging filter for orbax's records: drops its INFO lines (dozens per
  save) and the tracebacks its worker threads log for an error that they
  also hand on to the caller (a full disk: the program reports it in one
  line)."""

  def filter(self, record) -> bool:
    if "/orbax/" not in record.pathname:
      return True
    if record.levelno < 30:
      return False
    return not (record.pathname.endswith("future.py") and
                "raised an exception" in record.getMessage())


def quiet_library_logs() -> None:
  """Hides orbax's per-save INFO lines; warnings and errors still show."""
  logger = logging.get_absl_logger()
  if not any(isinstance(f, _DropLibraryInfo) for f in logger.filters):
    logger.addFilter(_DropLibraryInfo())
  # "Unable to initialize backend 'tpu'" and the like, on every CPU start.
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)


def init_distributed(config) -> None:
  """Starts ``jax.distributed`` when ``config.distributed.enabled``."""
  dist = config.distributed
  if not dist.enabled:
    return
  try:
    jax.distributed.initialize(
        coordinator_address=dist.coordinator_address or None,
        num_processes=dist.num_processes or None,
        process_id=None if dist.process_id < 0 else dist.process_id)
  except (ValueError, RuntimeError) as e:
    # Typically a single machine with no cluster to detect.
    raise config_check.ConfigError(
        f"jax.distributed.initialize failed ({text.one_line(e)}); set "
        f"config.distributed.coordinator_address/num_processes/process_id, or "
        f"--config.distributed.enabled=False on one host.") from e


def _pgd_label(eval_cfg) -> str:
  return f"PGD-{eval_cfg.num_steps} {eval_cfg.norm} eps {eval_cfg.eps:.4g}"


class _Run:
  """State of one call of :func:`train_and_evaluate` (host side)."""

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = workdir
    self.lock = None
    self.is_chief = jax.process_index() == 0
    self.t0 = time.time()
    # First step flagged by check_collapse (-1: never), and whether the last
    # full logging window was flagged; both over the whole run (restored
    # with a checkpoint).
    self.collapse_step = -1
    self.collapsed_at_end = False
    self.nan_step = -1
    self.window = MetricWindow()   # the open logging window (host sums)
    self.events: list[dict[str, Any]] = []  # what this call saw
    self.start_step = 0
    self.started = workdir_lib.now()
    # The epoch after which eval.patience stopped the run (-1: it did not).
    self.early_stop_epoch = -1

  # Everything that can fail on a user mistake happens here, before any write.
  def prepare(self) -> None:
    config = self.config
    self.dataset = data.load(config.data)
    self.steps_per_epoch = data.steps_per_epoch(len(self.dataset.train),
                                                config.data.batch_size)
    if self.steps_per_epoch < 1:
      raise data.DataError(
          f"config.data.batch_size {config.data.batch_size} exceeds the "
          f"{len(self.dataset.train)} training examples.")
    self.total_steps = max(1, math.ceil(config.train.num_epochs *
                                        self.steps_per_epoch))
    # What config.json records: the data source and folder this run read.
    self.recorded = config.to_dict()
    self.recorded["data"].update(source=self.dataset.source,
                                 dir=self.dataset.location
                                 if self.dataset.source == "idx" else
                                 config.data.dir)
    self.config_changes = workdir_lib.check_config(self.workdir, self.recorded)
    self.mesh = sharding.make_mesh(config.mesh.num_devices)
    self.batch_sharding = sharding.batch(self.mesh)
    platform = sharding.platform(self.mesh)
    try:
      self.objective = objectives.build(
          config.method, **objectives.settings_from_config(config, platform))
    except ValueError as e:  # config_check.validate has checked the settings
      raise config_check.ConfigError(text.one_line(e)) from None
    root = jax.random.key(config.seed)
    net = models.create(config.model.name, jax.random.fold_in(root, 0),
                        **models.kwargs_from_config(
                            config.model, platform=platform,
                            remat=config.train.remat))
    self.graphdef = net.graphdef
    self.tx, self.lr_fn = train_state.make_optimizer(
        config.optim, self.steps_per_epoch, self.total_steps)
    state = train_state.create_train_state(net, self.tx,
                                           jax.random.fold_in(root, 1))
    self.state = jax.device_put(state, sharding.replicated(self.mesh))
    self.eval_key = jax.random.fold_in(root, 2)
    self.train_step = steps.make_train_step(
        self.objective, self.graphdef, self.tx, self.lr_fn,
        train_state.eps_schedule(config.inner, self.steps_per_epoch),
        self.mesh, steps_per_epoch=self.steps_per_epoch)
    self.eval_step = steps.make_robust_eval_step(self.graphdef, config.eval,
                                                 self.mesh)
    self.clean_step = steps.make_clean_step(self.graphdef, self.mesh)

  def open_workdir(self) -> None:
    """Locks the workdir, records the config and restores the newest intact state."""
    if self.is_chief:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self.lock = workdir_lib.Lock(self.workdir)
      self.lock.acquire()
    ckpt_cfg = self.config.checkpoint
    self.ckpt = workdir_lib.Checkpoints(
        self.workdir, ckpt_cfg.keep, ckpt_cfg.keep_best,
        keep_steps=tuple(min(int(e) * self.steps_per_epoch, self.total_steps)
                         for e in ckpt_cfg.keep_epochs))
    self.best = {"val_pgd_acc": -1.0, "step": -1, "epoch": -1}
    abstract = train_state.abstract_state(self.state)
    restored = self.ckpt.restore_intact(abstract)
    step = 0
    if restored is not None:
      self.state, meta, damaged = restored
      self.best, step = meta["best"], meta["step"]
      self.restore_record(meta, step)
      for bad in damaged:  # one line per damaged step, newest first
        self.event(bad, "damaged checkpoint")
        self.log("checkpoint step %d in %s does not restore (damaged files); "
                 "moved to %s.", bad, self.workdir / workdir_lib.CHECKPOINTS,
                 self.workdir / workdir_lib.DAMAGED, level=logging.WARNING)
      self.check_best(abstract)
      self.log("resumed from step %d (epoch %d, step %d of %d) in %s%s", step,
               meta["epoch"], meta["step_in_epoch"], self.steps_per_epoch,
               self.workdir, f"; steps {step + 1}-{max(damaged)} are trained "
               f"again" if damaged else "",
               level=logging.WARNING if damaged else logging.INFO)
    self.start_step = step
    if self.is_chief:
      workdir_lib.record_config(self.workdir, self.recorded, step=step,
                                changed=self.config_changes)
      # Rows past the restored step belong to steps that are trained again.
      workdir_lib.truncate_metrics(self.workdir, step)
    self.writer = workdir_lib.MetricWriter(self.workdir, self.is_chief,
                                           resume_step=step)

  def check_best(self, abstract) -> None:
    """Moves a best checkpoint that no longer restores aside, in one line.

    The next validation result then becomes the best (its record is lost
    with the files).
    """
    bad = self.ckpt.damaged_best(abstract)
    if bad is None:
      return
    self.event(bad, "damaged best checkpoint",
               val_pgd_acc=self.best.get("val_pgd_acc"))
    self.log("the best checkpoint (step %d) in %s does not restore (damaged "
             "files); moved to %s; the next validation picks a new best.", bad,
             self.workdir / workdir_lib.BEST,
             self.workdir / workdir_lib.DAMAGED, level=logging.WARNING)
    self.best = {"val_pgd_acc": -1.0, "step": -1, "epoch": -1}

  def meta(self, step: int) -> dict[str, Any]:
    """The JSON record saved with a checkpoint: data position, best so far,
    the collapse verdicts and the open logging window."""
    return {"step": step, "epoch": step // self.steps_per_epoch,
            "step_in_epoch": step % self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.config.data.batch_size, "seed": self.config.seed,
            "best": self.best,
            "collapse": {"step": self.collapse_step,
                         "at_end": self.collapsed_at_end},
            "window": self.window.to_record()}

  def event(self, step: int, what: str, **details) -> None:
    """Records something this call saw, for summary.json's history."""
    self.events.append({"step": int(step), "event": what, **details})

  def restore_record(self, meta: dict[str, Any], step: int) -> None:
    """The collapse verdicts and open window of a restored checkpoint.

    Checkpoints written before these were recorded have none: the verdicts
    are then recomputed from metrics.jsonl's train rows up to ``step``.
    """
    record = meta.get("collapse")
    if record is not None:
      self.collapse_step = int(record.get("step", -1))
      self.collapsed_at_end = bool(record.get("at_end", False))
      self.window = MetricWindow(meta.get("window"))
      return
    self.collapse_step, self.collapsed_at_end = collapse_from_metrics(
        workdir_lib.read_metrics(self.workdir), step,
        self.config.log.every_steps)

  def check_finite(self) -> None:
    """Stops the run if a step since the last check produced NaN/Inf."""
    bad = int(jax.device_get(self.state.bad_step))
    if bad >= 0:
      self.nan_step = bad
      self.event(bad, "nan")
      last = self.ckpt.latest.latest_step()
      kept = (f"the last good checkpoint is step {last} in "
              f"{self.workdir / workdir_lib.CHECKPOINTS}" if last is not None
              else "no checkpoint had been saved yet")
      raise TrainingDiverged(
          f"loss or gradient became NaN/Inf at step {bad} (epoch "
          f"{(bad - 1) // self.steps_per_epoch + 1}); stopped without saving it; {kept}. Lower "
          f"config.optim.lr or the regularizer weight.")

  def last_good_step(self) -> int:
    """The newest saved step (the one a rerun resumes from), 0 if none."""
    last = self.ckpt.latest.latest_step()
    return int(last) if last is not None else 0

  def log(self, message: str, *args, level: int = logging.INFO) -> None:
    """logging.log without tearing the progress bar."""
    bar = getattr(self, "bar", None)
    if bar is None or bar.disable:
      logging.log(level, message, *args)
      return
    with bar.external_write_mode():
      logging.log(level, message, *args)

  def check_collapse(self, step: int, window_steps: int,
                     mean: dict[str, float]) -> None:
    """Warns once per run when a full logging window shows a constant classifier.

    The first window is skipped: a network whose last layer starts at zero
    (SmallCNN, TRADES' init) is constant at step 0 without having collapsed.
    The verdicts so far travel in every checkpoint (:meth:`meta`), so a
    resumed run reports what a straight one does.
    """
    full = window_steps == self.config.log.every_steps
    flagged = full and step > window_steps and is_constant_classifier(mean)
    if flagged and self.collapse_step < 0:
      self.collapse_step = step
      self.event(step, "constant classifier")
      self.log("%s", collapse_message(step, window_steps, mean),
               level=logging.WARNING)
    if full:
      self.collapsed_at_end = flagged

  def validate_epoch(self, epoch: int, step: int) -> dict[str, float]:
    cfg = self.config
    result = steps.robust_accuracy(self.eval_step, self.state.params, self.state.model_state,
                      self.dataset.validation, eval_cfg=cfg.eval,
                      num_examples=cfg.eval.val_examples,
                      image_size=cfg.data.image_size, key=self.eval_key,
                      mesh=self.mesh)
    self.writer.write("val", step, step / self.steps_per_epoch, result)
    self.log("epoch %d: validation clean %.2f%%, %s %.2f%% (%d examples)",
             epoch + 1, 100 * result["clean_acc"], _pgd_label(cfg.eval),
             100 * result["pgd_acc"], result["examples"])
    return result

  def batches(self, start: int, stop: int) -> Iterator[tuple[jax.Array, ...]]:
    """Global steps ``start`` to ``stop - 1`` as placed batches, across epochs.

    One stream (and one pool of data workers) serves the whole call; each
    batch is a pure function of (seed, epoch, step), so a resumed run gets
    the batches of an uninterrupted one.
    """
    cfg = self.config.data
    local = data.train_stream(
        self.dataset.train, batch_size=cfg.batch_size, seed=self.config.seed,
        start_step=start, stop_step=stop, process_index=jax.process_index(),
        process_count=jax.process_count(), augment=cfg.augment,
        image_size=cfg.image_size, workers=cfg.get("workers", 0))
    return data.device_batches(local, self.batch_sharding)

  def train(self) -> bool:
    """Runs the remaining steps.

    Returns:
      True when the run is complete: the schedule is done, or validation
      stopped it (``eval.patience``); False when ``train.max_steps`` or
      ``train.max_epochs`` paused it.
    """
    cfg = self.config
    step = int(jax.device_get(self.state.step))
    stop_at = min(self.total_steps, cfg.train.max_steps or self.total_steps,
                  math.ceil(cfg.train.max_epochs * self.steps_per_epoch) or self.total_steps)
    if step < self.total_steps and self.stops_early(step):
      self.early_stop_epoch = step // self.steps_per_epoch  # a rerun
      return True
    if step >= stop_at:
      return step >= self.total_steps
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    batch = cfg.data.batch_size
    self.bar = bar = tqdm(
        total=self.total_steps * batch, initial=step * batch, unit="ex",
        unit_scale=True, dynamic_ncols=True, smoothing=0.1,
        disable=not (cfg.log.progress and self.is_chief))
    # Device metrics of the steps not yet added to self.window (fetching them
    # waits for the device, so it happens at log points and saves only).
    window, in_flight = [], collections.deque()
    window_start, window_steps = time.time(), 0
    stream = self.batches(step, stop_at)
    try:
      while step < stop_at:
        epoch, first = divmod(step, self.steps_per_epoch)
        bar.set_description(f"{cfg.method} epoch {epoch + 1}/"
                            f"{math.ceil(self.total_steps / self.steps_per_epoch)}")
        last = min(self.steps_per_epoch, stop_at - epoch * self.steps_per_epoch)
        for x, y in itertools.islice(stream, last - first):
          self.state, metrics = self.train_step(self.state, x, y)
          step += 1
          window.append(metrics)
          window_steps += 1
          in_flight.append(metrics["loss"])
          if len(in_flight) > _MAX_IN_FLIGHT:
            in_flight.popleft().block_until_ready()
          bar.update(batch)
          epoch_end = step % self.steps_per_epoch == 0 or step == self.total_steps
          # Logging windows end at the same steps in a straight and in a
          # stopped-and-resumed run: a stop (max_steps) or a mid-window save
          # carries the open window in the checkpoint instead.
          if step % cfg.log.every_steps == 0 or epoch_end:
            self.check_finite()
            self.window.add(window)
            mean = self.window.mean()
            self.check_collapse(step, self.window.steps, mean)
            elapsed = time.time() - window_start
            mean["examples_per_sec"] = window_steps * batch / max(elapsed, 1e-9)
            self.writer.write("train", step, step / self.steps_per_epoch, mean)
            bar.set_postfix(loss=f"{mean['loss']:.4f}", reg=f"{mean['reg']:.4g}",
                            acc=f"{mean['acc']:.3f}")
            self.window = MetricWindow()
            window, window_start, window_steps = [], time.time(), 0
          pause = time.time()  # examples/s counts training, not eval/saves
          if epoch_end:
            self.end_epoch(step)
            if self.stops_early(step):
              self.early_stop_epoch = step // self.steps_per_epoch
              self.event(step, "early stop")
              self.log("epoch %d: validation %s accuracy has not improved "
                       "for %d epochs (best %.2f%% at epoch %d); stopping "
                       "early.", self.early_stop_epoch, cfg.eval.select_on,
                       cfg.eval.patience,
                       100 * self.best[f"val_{cfg.eval.select_on}_acc"],
                       self.best["epoch"])
              return True
          elif step == stop_at or (cfg.checkpoint.every_steps and
                                   step % cfg.checkpoint.every_steps == 0):
            self.check_finite()
            self.window.add(window)
            window = []
            self.ckpt.save(self.state, self.meta(step))
          window_start += time.time() - pause
          if step - epoch * self.steps_per_epoch >= last:
            break
    finally:
      stream.close()
      bar.close()
    return step >= self.total_steps

  def end_epoch(self, step: int) -> None:
    cfg = self.config
    epoch = (step - 1) // self.steps_per_epoch
    self.check_finite()
    sums = jax.device_get(self.state.epoch_sums)
    count = max(float(sums["steps"]), 1.0)
    means = {k: float(sums[k]) / count for k in train_state.EPOCH_METRICS}
    self.writer.write("train_epoch", step, step / self.steps_per_epoch,
                      dict(means, steps=count))
    if cfg.eval.epoch_test_clean:
      # Monitoring only, as in published training logs: model selection
      # ("best") uses the validation split, never this.
      result = steps.clean_accuracy(
          self.clean_step, self.state.params, self.state.model_state,
          self.dataset.test, batch_size=cfg.eval.batch_size,
          num_examples=0, image_size=cfg.data.image_size, mesh=self.mesh)
      self.writer.write("test_clean", step, step / self.steps_per_epoch, result)
      self.log("epoch %d: train mean CE %.4f, reg %.4g; test clean %.2f%% on "
               "all %d test images (monitoring, never used to select)",
               epoch + 1, means["ce"], means["reg"],
               100 * result["clean_acc"], result["examples"])
    is_best = False
    every = cfg.eval.every_epochs
    if every and ((epoch + 1) % every == 0 or step == self.total_steps):
      result = self.validate_epoch(epoch, step)
      selected = f"{cfg.eval.select_on}_acc"
      if result[selected] > self.best.get(f"val_{selected}", -1.0):
        self.best = {"val_pgd_acc": result["pgd_acc"],
                     "val_clean_acc": result["clean_acc"], "step": step,
                     "epoch": epoch + 1}
        self.event(step, "best", val_pgd_acc=result["pgd_acc"])
        is_best = True
    self.ckpt.save(self.state, self.meta(step), best=is_best)

  def finished(self) -> bool:
    """Whether the restored run needs no more training: its schedule is
    done, or validation stopped it (``eval.patience``)."""
    step = self.start_step
    if step < self.total_steps and self.stops_early(step):
      self.early_stop_epoch = step // self.steps_per_epoch
    return step >= self.total_steps or self.early_stop_epoch >= 0

  def stops_early(self, step: int) -> bool:
    """Whether validation has not improved for ``eval.patience`` epochs.

    Epochs count from the best epoch, or from the schedule's last learning-
    rate decay if that is later (a plateau before a decay is not the end of
    training, so no run stops before its last decay). Read from
    the best epoch recorded in the checkpoints' metadata, so a resumed run
    stops where a straight one would.
    """
    patience = self.config.eval.patience
    if not patience or step % self.steps_per_epoch or self.best["epoch"] < 0:
      return False
    optim = self.config.optim
    decays = [e for e in optim.decay_epochs if optim.schedule == "step"]
    since = max([self.best["epoch"]] + [math.ceil(e) for e in decays])
    return step // self.steps_per_epoch - since >= patience

  def test(self) -> dict[str, Any]:
    cfg = self.config
    state, which = self.state, "final"
    if cfg.eval.test_checkpoint == "best":
      try:
        restored = self.ckpt.restore(train_state.abstract_state(self.state),
                                     best=True)
      except Exception as e:  # pylint: disable=broad-except
        # Damaged files (see Checkpoints.restore_intact): test the final state.
        self.log("the best checkpoint in %s does not restore (%s); testing "
                 "the final state instead.", self.workdir / workdir_lib.BEST,
                 text.one_line(e), level=logging.WARNING)
        restored = None
      if restored is not None:
        state, which = restored[0], f"best (step {restored[1]['step']})"
    result = steps.robust_accuracy(self.eval_step, state.params, state.model_state,
                      self.dataset.test, eval_cfg=cfg.eval,
                      num_examples=cfg.eval.test_examples,
                      image_size=cfg.data.image_size, key=self.eval_key,
                      mesh=self.mesh)
    step = int(jax.device_get(self.state.step))
    self.writer.write("test", step, step / self.steps_per_epoch, result)
    return {"test_clean_acc": result["clean_acc"],
            "test_pgd_acc": result["pgd_acc"],
            "test_examples": result["examples"],
            "test_total": len(self.dataset.test), "test_checkpoint": which}

  def close(self) -> None:
    if hasattr(self, "ckpt"):
      self.ckpt.close()
    if hasattr(self, "writer"):
      self.writer.close()
    if self.lock is not None:
      self.lock.release()


# config.eval fields that decide the final test's numbers: a finished run is
# tested again only when one of them changed since its summary.
_TEST_SETTINGS = ("test_examples", "test_checkpoint", "select_on", "eps", "step_size",
                  "num_steps", "restarts", "norm")


def test_settings(config) -> dict[str, Any]:
  """The settings of the final test, as summary.json records them."""
  return {k: config.eval[k] for k in _TEST_SETTINGS if k in config.eval}


def _already_tested(previous: dict[str, Any] | None, step: int,
                    config) -> bool:
  """Whether summary.json holds this finished run's test at these settings."""
  if not previous or not previous.get("completed") or (
      previous.get("step") != step or "test_pgd_acc" not in previous):
    return False
  recorded = previous.get("test_settings")
  return recorded is None or recorded == json.loads(
      json.dumps(test_settings(config)))


def _merged_facts(previous: dict[str, Any], run: _Run) -> dict[str, Any]:
  """The run's recorded facts: earlier calls' and this one's, never reset.

  The collapse verdicts and the best validation result come with the
  restored checkpoint (they cover every step before it); an earlier
  summary's first collapse or NaN step stays unless this call saw an
  earlier one.
  """
  def first(a: int, b: int) -> int:
    seen = [v for v in (a, b) if v is not None and v >= 0]
    return min(seen) if seen else -1
  return {"best_val": run.best,
          "collapse_step": first(previous.get("collapse_step"),
                                 run.collapse_step),
          "collapsed_at_end": run.collapsed_at_end,
          "nan_step": first(previous.get("nan_step"), run.nan_step),
          "early_stop_epoch": (run.early_stop_epoch if run.early_stop_epoch >= 0
                               else previous.get("early_stop_epoch", -1))}


def _history(previous: dict[str, Any], entry: dict[str, Any]
             ) -> list[dict[str, Any]]:
  """Earlier calls' records plus this one's (a summary written before
  histories were kept counts as one record)."""
  if "history" in previous:
    return list(previous["history"]) + [entry]
  if previous:
    return [{"outcome": "completed" if previous.get("completed") else
             "stopped", "to_step": previous.get("step"),
             "seconds": previous.get("seconds"),
             "collapse_step": previous.get("collapse_step", -1)}, entry]
  return [entry]


def _summary(run: _Run, previous: dict[str, Any] | None, outcome: str,
             step: int, completed: bool, tested: dict[str, Any] | None
             ) -> dict[str, Any]:
  """summary.json's content after this call (see train_and_evaluate)."""
  config, previous = run.config, previous or {}
  summary = {"method": config.method, "model": config.model.name,
             "dataset": config.data.name, "step": step,
             "epochs": step / run.steps_per_epoch, "completed": completed,
             **_merged_facts(previous, run)}
  if tested is not None:
    summary.update(tested, test_step=step,
                   test_settings=test_settings(config))
  elif completed and previous.get("step") == step:
    # Not tested again: the earlier test of this very step stands.
    summary.update({k: v for k, v in previous.items()
                    if k.startswith("test_")})
    summary["best_val"] = previous.get("best_val", summary["best_val"])
  summary["seconds"] = time.time() - run.t0
  # A resumed or re-entered run (sweep.py re-enters finished ones) must not
  # overwrite the wall time already spent on this workdir.
  summary["seconds_total"] = float(previous.get(
      "seconds_total", previous.get("seconds", 0.0))) + summary["seconds"]
  summary["history"] = _history(previous, {
      "started": run.started, "seconds": round(summary["seconds"], 3),
      "from_step": run.start_step, "to_step": step, "outcome": outcome,
      "events": run.events})
  return summary


def train_and_evaluate(config, workdir) -> dict[str, Any]:
  """Trains ``config.method`` and evaluates it; resumes from ``workdir``.

  Every user mistake (invalid config, missing data, batch that does not split
  over the devices, a workdir trained with other settings or held by a live
  process) raises before anything is written to ``workdir``. A run that is
  already finished, and tested at the same test settings, is neither trained
  nor tested again: the call says so and returns its summary.

  Args:
    config: a ConfigDict as built in configs/ (see configs/common.py).
    workdir: output folder (local path or URI such as ``gs://bucket/run``);
      an existing one with checkpoints is resumed.

  Returns:
    The summary (also written to summary.json): "method", "step", "epochs",
    "completed" (False when stopped by ``train.max_steps`` or
    ``train.max_epochs``); the facts of the whole run, kept across calls:
    "best_val" (the best validation result and its step), "collapse_step"
    (the first step whose logging window showed a constant classifier, -1
    if none), "collapsed_at_end" (whether the last full window did: such a
    run has no robustness to report), "nan_step" (the first step whose loss
    became NaN/Inf, -1 if none); when completed, "test_clean_acc",
    "test_pgd_acc", "test_examples", "test_checkpoint", "test_step" and
    "test_settings"; "seconds" (this call's wall time), "seconds_total"
    (summed over every call that wrote a summary in ``workdir``; a call
    killed before its summary is not counted) and "history" (one record per
    call: start, steps, outcome, and the events it saw with their steps).

  Raises:
    config_check.ConfigError: invalid config, or a workdir this config may
      not use (``workdir.WorkdirError``).
    data.DataError: missing or corrupt data.
    TrainingDiverged: the loss became NaN/Inf (recorded in summary.json).
  """
  quiet_library_logs()
  config_check.validate(config)
  workdir = workdir_lib.check(workdir)
  init_distributed(config)
  config_check.validate_runtime(config)
  run = _Run(config, workdir)
  run.prepare()
  try:
    run.open_workdir()
    previous = workdir_lib.read_summary(workdir)
    if run.finished() and _already_tested(previous, run.start_step, config):
      summary = _summary(run, previous, "already finished", run.start_step,
                         True, None)
      if run.is_chief:
        workdir_lib.write_summary(workdir, summary)
      early = (f", stopped early after epoch {run.early_stop_epoch}"
               if run.early_stop_epoch >= 0 else "")
      print(f"{workdir} holds a finished run (step {run.start_step} of "
            f"{run.total_steps}{early}): nothing to train or test again. Its "
            f"result, from summary.json:", flush=True)
      print(summary_line(summary, config), flush=True)
      return summary
    logging.info("%s on %s (%s, %d train / %d validation / %d test), %s, "
                 "%d devices, %d steps of batch %d", config.method,
                 config.data.name, run.dataset.source, len(run.dataset.train),
                 len(run.dataset.validation), len(run.dataset.test),
                 config.model.name, run.mesh.size, run.total_steps,
                 config.data.batch_size)
    try:
      completed = run.train()
    except TrainingDiverged:
      if run.is_chief:
        workdir_lib.write_summary(workdir, _summary(
            run, previous, "diverged", run.last_good_step(), False, None))
      raise
    step = int(jax.device_get(run.state.step))
    tested = run.test() if completed else None
    summary = _summary(run, previous, "completed" if completed else "stopped",
                       step, completed, tested)
    if run.is_chief:
      workdir_lib.write_summary(workdir, summary)
  finally:
    run.close()
  print(summary_line(summary, config), flush=True)
  return summary


def summary_line(summary: dict[str, Any], config) -> str:
  """One line: method, steps, test clean / PGD accuracy, best validation, time,
  and CONSTANT CLASSIFIER when the last logging window was one."""
  head = (f"{summary['method']} {summary['model']} on {summary['dataset']}: "
          f"step {summary['step']} ({summary['epochs']:.2f} epochs)")
  if not summary["completed"]:
    return (f"{head}, stopped at train.max_steps/max_epochs; rerun (with a "
            f"larger one) to resume.")
  best = summary["best_val"]
  selected = config.eval.select_on
  best_text = (f", best val {'PGD' if selected == 'pgd' else 'clean'} "
               f"{100 * best[f'val_{selected}_acc']:.2f}% at epoch "
               f"{best['epoch']}" if best.get("step", -1) >= 0 else "")
  if summary.get("early_stop_epoch", -1) >= 0:
    best_text += f", stopped early after epoch {summary['early_stop_epoch']}"
  # "first N" vs "all N": the per-epoch test clean lines (monitoring) use
  # the whole split, the final test config.eval.test_examples of it.
  n, total = summary["test_examples"], summary.get("test_total")
  images = (f"all {n}" if total is None or n >= total else f"the first {n}")
  return (f"{head}, test clean {100 * summary['test_clean_acc']:.2f}%, "
          f"{_pgd_label(config.eval)} {100 * summary['test_pgd_acc']:.2f}% "
          f"on {images} test images ({summary['test_checkpoint']} checkpoint)"
          f"{best_text}, {summary['seconds']:.0f} s"
          f"{', CONSTANT CLASSIFIER' if summary.get('collapsed_at_end') else ''}")
