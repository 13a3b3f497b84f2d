"""One training loop for every method: a jitted, sharded step, checkpoints, metrics.

``train_and_evaluate(config, workdir)`` checks the config, loads the data,
builds the model and ``objectives.build(config.method, ...)``, and trains with
one ``jax.jit`` step whose batch is sharded over a 1-D ``("data",)`` mesh and
whose parameters are replicated. Each epoch it measures clean and PGD accuracy
on the validation split (never the test split) and checkpoints; at the end it
measures the test split and prints a one-line summary.

The workdir holds ``config.json``, ``metrics.jsonl`` (one JSON record per log
interval / epoch / final test), ``summary.json``, TensorBoard events under
``tensorboard/``, the last ``checkpoint.keep`` checkpoints under
``checkpoints/`` and the best one (by validation PGD accuracy) under
``best_checkpoint/``. Running again with the same workdir resumes from the
latest checkpoint, at the exact batch where it stopped.

Example::

    from configs import mnist_lfr
    from lfr_jax import training
    summary = training.train_and_evaluate(mnist_lfr.get_config("quick"),
                                          "runs/mnist_lfr_quick")
    summary["test_pgd_acc"]
"""

from __future__ import annotations

import collections
import json
import logging as std_logging
import math
import os
import time
from typing import Any, Callable, Iterator

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct

from lfr_jax import attacks
from lfr_jax import config_check
from lfr_jax import data
from lfr_jax import models
from lfr_jax import objectives

# Steps in flight before the host waits for the oldest one: keeps the device
# busy while bounding how far the host runs ahead (queued batches hold memory).
_MAX_IN_FLIGHT = 2


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; the run stopped without saving that state."""


@struct.dataclass
class TrainState:
  """Everything a step changes; checkpointed as one pytree.

  Attributes:
    step: global step (int32 scalar); with the seed it fixes the data position.
    params: model parameters (``nnx.State``).
    opt_state: optax state.
    model_state: non-parameter model state (BatchNorm statistics).
    rng: raw PRNG key data (uint32), split once per step.
    bad_step: first step (counted like ``step``, so update k gives step k)
      whose loss or gradient was NaN/Inf, or -1. Kept on the device and read
      only at logging intervals (no per-step host sync).
    epoch_sums: running sums of :data:`EPOCH_METRICS` and the step count
      ("steps") since the current epoch began. They live in the state, not on
      the host, so a run resumed mid-epoch still reports whole-epoch means.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  rng: jax.Array
  bad_step: jax.Array
  epoch_sums: dict[str, jax.Array]


# Step metrics averaged over each whole epoch (the "train_epoch" record): the
# quantities published training logs report per epoch, e.g. the LFR authors'
# mean regularizer and clean cross-entropy.
EPOCH_METRICS = ("loss", "ce", "reg", "acc", "grad_norm")


# ----------------------------------------------------------------------------
# Pieces built from the config


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
  """A 1-D ``("data",)`` mesh over the first ``num_devices`` devices (0 = all).

  Auto axis types: with jax 0.10's default Explicit types, reshapes inside the
  models fail with ShardingTypeError.
  """
  devices = jax.devices()
  n = num_devices or len(devices)
  return jax.make_mesh((n,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def learning_rate_schedule(optim_cfg, steps_per_epoch: int
                           ) -> optax.Schedule:
  """Piecewise-constant LR: ``lr`` times ``decay_factor`` after each decay epoch."""
  boundaries = {int(round(e * steps_per_epoch)): optim_cfg.decay_factor
                for e in optim_cfg.decay_epochs}
  return optax.piecewise_constant_schedule(optim_cfg.lr, boundaries)


def make_optimizer(optim_cfg, steps_per_epoch: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD (momentum) or Adam with l2 weight decay added to the gradient.

  Args:
    optim_cfg: ``config.optim``.
    steps_per_epoch: to turn decay epochs into steps.

  Returns:
    (optimizer, learning-rate schedule).
  """
  schedule = learning_rate_schedule(optim_cfg, steps_per_epoch)
  if optim_cfg.name == "sgd":
    base = optax.sgd(schedule, momentum=optim_cfg.momentum or None,
                     nesterov=optim_cfg.nesterov)
  else:
    base = optax.adam(schedule)
  # PyTorch's weight_decay (what the papers used) adds wd * w to the gradient.
  if optim_cfg.weight_decay:
    base = optax.chain(optax.add_decayed_weights(optim_cfg.weight_decay), base)
  return base, schedule


def eps_schedule(inner_cfg, steps_per_epoch: int
                 ) -> Callable[[jax.Array], jax.Array]:
  """Training radius at a step: linear from 0 over ``warmup_epochs`` (LLR)."""
  eps = float(inner_cfg.eps)
  warmup = inner_cfg.warmup_epochs * steps_per_epoch
  if warmup <= 0:
    return lambda step: jnp.asarray(eps, jnp.float32)
  return lambda step: eps * jnp.minimum(1.0, step.astype(jnp.float32) / warmup)


def create_train_state(net: models.Network, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  """A fresh state at step 0.

  Args:
    net: freshly initialized network.
    tx: optimizer.
    rng: typed PRNG key for the steps.

  Returns:
    The :class:`TrainState`.
  """
  zeros = {k: jnp.zeros((), jnp.float32) for k in (*EPOCH_METRICS, "steps")}
  return TrainState(step=jnp.asarray(0, jnp.int32), params=net.params,
                    opt_state=tx.init(net.params), model_state=net.state,
                    rng=jax.random.key_data(rng),
                    bad_step=jnp.asarray(-1, jnp.int32), epoch_sums=zeros)


def make_train_step(objective: objectives.ObjectiveFn, graphdef: Any,
                    tx: optax.GradientTransformation, lr_fn: optax.Schedule,
                    eps_fn: Callable[[jax.Array], jax.Array],
                    mesh: jax.sharding.Mesh, steps_per_epoch: int = 0
                    ) -> Callable[[TrainState, jax.Array, jax.Array],
                                  tuple[TrainState, dict[str, jax.Array]]]:
  """The jitted update ``(state, x, y) -> (state, metrics)``.

  The batch is sharded along ``"data"``, everything else replicated, and the
  state is donated. Metrics are replicated scalars: the objective's ("loss",
  "ce", "reg", "acc") plus "grad_norm", "lr" and "eps".

  Args:
    objective: ``objectives.build(...)`` result.
    graphdef: the network's static graph definition.
    tx: optimizer.
    lr_fn: learning-rate schedule (for the metrics).
    eps_fn: training radius as a function of the traced step.
    mesh: the device mesh.
    steps_per_epoch: ``state.epoch_sums`` restart at every multiple of it;
      0 sums over the whole run.

  Returns:
    The jitted step.
  """
  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P("data"))

  def step(state: TrainState, x: jax.Array, y: jax.Array):
    rng, key = jax.random.split(jax.random.wrap_key_data(state.rng))
    eps = eps_fn(state.step)
    net = models.Network(graphdef=graphdef, params=state.params,
                         state=state.model_state)

    def loss_fn(params):
      return objective(net.replace(params=params), x, y, key, eps)

    (loss, (metrics, model_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step + 1,
                         state.bad_step)
    metrics = dict(metrics, grad_norm=grad_norm, lr=lr_fn(state.step), eps=eps)
    new_epoch = (state.step % steps_per_epoch == 0) if steps_per_epoch else False
    epoch_sums = {k: jnp.where(new_epoch, 0.0, v) + (
        1.0 if k == "steps" else metrics[k].astype(jnp.float32))
                  for k, v in state.epoch_sums.items()}
    new_state = TrainState(step=state.step + 1, params=params,
                           opt_state=opt_state, model_state=model_state,
                           rng=jax.random.key_data(rng), bad_step=bad_step,
                           epoch_sums=epoch_sums)
    return new_state, metrics

  return jax.jit(step, in_shardings=(replicated, batch, batch),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(graphdef: Any, eval_cfg, mesh: jax.sharding.Mesh
                   ) -> Callable[..., dict[str, jax.Array]]:
  """The jitted ``(params, model_state, x, y, mask, key) -> sums`` of one batch.

  An example counts as robust when it is classified correctly both at ``x``
  and at the PGD point (``x`` itself lies in the ball). BatchNorm uses its
  running statistics.

  Returns:
    A function giving {"clean": correct clean, "pgd": robust, "count": n}.
  """
  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P("data"))
  unroll = config_check.resolve_unroll(eval_cfg.unroll)

  def step(params, model_state, x, y, mask, key):
    net = models.Network(graphdef=graphdef, params=params, state=model_state)
    logits_fn = net.logits_fn()
    clean = jnp.argmax(logits_fn(x), -1) == y
    x_adv = attacks.pgd(logits_fn, x, y, key, eps=eval_cfg.eps,
                        step_size=eval_cfg.step_size,
                        num_steps=eval_cfg.num_steps, norm=eval_cfg.norm,
                        restarts=eval_cfg.restarts, unroll=unroll)
    robust = clean & (jnp.argmax(logits_fn(x_adv), -1) == y)
    return {"clean": jnp.sum(clean * mask), "pgd": jnp.sum(robust * mask),
            "count": jnp.sum(mask)}

  return jax.jit(step, in_shardings=(replicated, replicated, batch, batch,
                                     batch, replicated),
                 out_shardings=replicated)


def evaluate(eval_step, params, model_state, split: data.Split, *,
             eval_cfg, num_examples: int, image_size: int, key: jax.Array,
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Clean and PGD accuracy on the first ``num_examples`` of ``split``.

  Returns:
    {"clean_acc", "pgd_acc", "examples"}.
  """
  sharding = NamedSharding(mesh, P("data"))
  totals = []
  batches = data.eval_batches(split, batch_size=eval_cfg.batch_size,
                              num_examples=num_examples,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(),
                              image_size=image_size)
  for i, (x, y, mask) in enumerate(data.prefetch(batches)):
    x, y, mask = data.to_global(sharding, x, y, mask)
    totals.append(eval_step(params, model_state, x, y, mask,
                            jax.random.fold_in(key, i)))
  totals = jax.device_get(totals)
  count = sum(float(t["count"]) for t in totals)
  if not count:
    return {"clean_acc": float("nan"), "pgd_acc": float("nan"), "examples": 0}
  return {"clean_acc": sum(float(t["clean"]) for t in totals) / count,
          "pgd_acc": sum(float(t["pgd"]) for t in totals) / count,
          "examples": int(count)}


def make_clean_step(graphdef: Any, mesh: jax.sharding.Mesh
                    ) -> Callable[..., dict[str, jax.Array]]:
  """The jitted ``(params, model_state, x, y, mask) -> sums`` of clean accuracy.

  Returns:
    A function giving {"clean": correct clean, "count": n} for one batch.
  """
  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P("data"))

  def step(params, model_state, x, y, mask):
    net = models.Network(graphdef=graphdef, params=params, state=model_state)
    clean = jnp.argmax(net.logits_fn()(x), -1) == y
    return {"clean": jnp.sum(clean * mask), "count": jnp.sum(mask)}

  return jax.jit(step, in_shardings=(replicated, replicated, batch, batch,
                                     batch), out_shardings=replicated)


def clean_accuracy(clean_step, params, model_state, split: data.Split, *,
                   batch_size: int, num_examples: int, image_size: int,
                   mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Clean accuracy on the first ``num_examples`` (0 = all) of ``split``.

  Returns:
    {"clean_acc", "examples"}.
  """
  sharding = NamedSharding(mesh, P("data"))
  batches = data.eval_batches(split, batch_size=batch_size,
                              num_examples=num_examples,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(),
                              image_size=image_size)
  totals = [clean_step(params, model_state,
                       *data.to_global(sharding, x, y, mask))
            for x, y, mask in data.prefetch(batches)]
  totals = jax.device_get(totals)
  count = sum(float(t["count"]) for t in totals)
  return {"clean_acc": (sum(float(t["clean"]) for t in totals) / count
                        if count else float("nan")), "examples": int(count)}


# ----------------------------------------------------------------------------
# Checkpoints and metrics


class Checkpoints:
  """The last ``keep`` checkpoints plus the best one by validation PGD accuracy.

  Each checkpoint holds the :class:`TrainState` (params, optimizer and model
  state, step, RNG key) and a JSON record of the data position and the best
  validation result so far.
  """

  def __init__(self, workdir: str, keep: int, keep_best: bool,
               keep_steps: tuple[int, ...] = ()):
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
        os.path.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(**latest, **options))
    self.best = ocp.CheckpointManager(
        os.path.join(workdir, "best_checkpoint"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, **options)
    ) if keep_best else None

  @staticmethod
  def _args(state, meta):
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))

  def save(self, state: TrainState, meta: dict[str, Any], *,
           best: bool = False) -> None:
    """Saves ``state`` under its step (in the best slot too if ``best``)."""
    step = int(meta["step"])
    if self.latest.latest_step() != step:
      self.latest.save(step, args=self._args(state, meta))
    if best and self.best is not None:
      self.best.save(step, args=self._args(state, meta))

  def restore(self, abstract_state: TrainState, *, best: bool = False,
              step: int | None = None
              ) -> tuple[TrainState, dict[str, Any]] | None:
    """The latest (or best, or the given step's) checkpoint, or None."""
    manager = self.best if best else self.latest
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

  def steps(self, *, best: bool = False) -> list[int]:
    """The saved steps, oldest first."""
    manager = self.best if best else self.latest
    return sorted(manager.all_steps()) if manager is not None else []

  def meta(self, step: int, *, best: bool = False) -> dict[str, Any]:
    """The JSON record saved with a step (data position, best so far)."""
    manager = self.best if best else self.latest
    return manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def close(self) -> None:
    for manager in (self.latest, self.best):
      if manager is not None:
        manager.wait_until_finished()
        manager.close()


class MetricWriter:
  """Writes metrics to ``metrics.jsonl`` and TensorBoard (process 0 only).

  TensorBoard events need tensorboardX; without it (e.g. on an accelerator
  machine with no package registry) the writer says so once and keeps to
  ``metrics.jsonl``, the record every tool of this package reads.
  """

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    self._jsonl = self._tb = None
    if enabled:
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:
        logging.warning("tensorboardX is not installed: metrics go to "
                        "metrics.jsonl only (pip install tensorboardX).")
      else:
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, split: str, step: int, epoch: float,
            metrics: dict[str, float]) -> None:
    """Appends one record ``{"split", "step", "epoch", **metrics}``."""
    if not self.enabled:
      return
    record = {"split": split, "step": step, "epoch": round(epoch, 4),
              **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{split}/{k}", float(v), step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


# Schedules are reported at the window's last step, the rest as window means.
_LAST_VALUE = ("lr", "eps")


def _mean_metrics(window: list[dict[str, jax.Array]]) -> dict[str, float]:
  host = jax.device_get(window)
  return {k: float(host[-1][k] if k in _LAST_VALUE else
                   np.mean([m[k] for m in host])) for k in host[0]}


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
  """A logging filter that drops INFO records from orbax (dozens per save)."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or "/orbax/" not in record.pathname


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
        f"jax.distributed.initialize failed ({config_check.one_line(e)}); set "
        f"config.distributed.coordinator_address/num_processes/process_id, or "
        f"--config.distributed.enabled=False on one host.") from e


def _abstract(tree):
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
      tree)


def _pgd_label(eval_cfg) -> str:
  return f"PGD-{eval_cfg.num_steps} {eval_cfg.norm} eps {eval_cfg.eps:.4g}"


class _Run:
  """State of one call of :func:`train_and_evaluate` (host side)."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = workdir
    self.is_chief = jax.process_index() == 0
    self.t0 = time.time()
    # First step flagged by check_collapse (-1: never), and whether the last
    # full logging window was flagged.
    self.collapse_step = -1
    self.collapsed_at_end = False

  # Everything that can fail on a user mistake happens here, before any write.
  def prepare(self) -> None:
    config = self.config
    self.dataset = data.load(config.data)
    self.spe = data.steps_per_epoch(len(self.dataset.train),
                                    config.data.batch_size)
    if self.spe < 1:
      raise data.DataError(
          f"config.data.batch_size {config.data.batch_size} exceeds the "
          f"{len(self.dataset.train)} training examples.")
    self.total_steps = max(1, math.ceil(config.train.num_epochs * self.spe))
    self.mesh = make_mesh(config.mesh.num_devices)
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    self.objective = objectives.build(config.method,
                                      **config_check.objective_settings(config))
    root = jax.random.key(config.seed)
    net = models.create(config.model.name, jax.random.fold_in(root, 0),
                        **config_check.model_kwargs(config))
    self.graphdef = net.graphdef
    self.tx, self.lr_fn = make_optimizer(config.optim, self.spe)
    state = create_train_state(net, self.tx, jax.random.fold_in(root, 1))
    self.state = jax.device_put(state, NamedSharding(self.mesh, P()))
    self.eval_key = jax.random.fold_in(root, 2)
    self.train_step = make_train_step(
        self.objective, self.graphdef, self.tx, self.lr_fn,
        eps_schedule(config.inner, self.spe), self.mesh,
        steps_per_epoch=self.spe)
    self.eval_step = make_eval_step(self.graphdef, config.eval, self.mesh)
    self.clean_step = make_clean_step(self.graphdef, self.mesh)

  def open_workdir(self) -> None:
    ckpt_cfg = self.config.checkpoint
    self.ckpt = Checkpoints(
        self.workdir, ckpt_cfg.keep, ckpt_cfg.keep_best,
        keep_steps=tuple(min(int(e) * self.spe, self.total_steps)
                         for e in ckpt_cfg.keep_epochs))
    self.best = {"val_pgd_acc": -1.0, "step": -1, "epoch": -1}
    try:
      restored = self.ckpt.restore(_abstract(self.state))
    except (ValueError, KeyError, TypeError) as e:
      raise config_check.ConfigError(
          f"the checkpoint in {self.workdir} does not fit this config's model "
          f"and optimizer ({type(e).__name__}); use a new workdir.") from e
    if restored is not None:
      state, meta = restored
      position = (meta["steps_per_epoch"], meta["batch_size"], meta["seed"])
      if position != (self.spe, self.config.data.batch_size, self.config.seed):
        raise config_check.ConfigError(
            f"the checkpoint in {self.workdir} was written with "
            f"{meta['steps_per_epoch']} steps/epoch of batch {meta['batch_size']}"
            f" and seed {meta['seed']}; this config has {self.spe} of batch "
            f"{self.config.data.batch_size} and seed {self.config.seed}. Resume "
            f"with the same data settings or use a new workdir.")
      self.state, self.best = state, meta["best"]
      logging.info("resumed from step %d (epoch %d, step %d of %d) in %s",
                   meta["step"], meta["epoch"], meta["step_in_epoch"],
                   self.spe, self.workdir)
    if self.is_chief:
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        f.write(self.config.to_json(indent=2, sort_keys=True))
    self.writer = MetricWriter(self.workdir, self.is_chief)

  def meta(self, step: int) -> dict[str, Any]:
    return {"step": step, "epoch": step // self.spe,
            "step_in_epoch": step % self.spe, "steps_per_epoch": self.spe,
            "batch_size": self.config.data.batch_size, "seed": self.config.seed,
            "best": self.best}

  def check_finite(self) -> None:
    """Stops the run if a step since the last check produced NaN/Inf."""
    bad = int(jax.device_get(self.state.bad_step))
    if bad >= 0:
      last = self.ckpt.latest.latest_step()
      kept = (f"the last good checkpoint is step {last} in "
              f"{os.path.join(self.workdir, 'checkpoints')}" if last is not None
              else "no checkpoint had been saved yet")
      raise TrainingDiverged(
          f"loss or gradient became NaN/Inf at step {bad} (epoch "
          f"{(bad - 1) // self.spe + 1}); stopped without saving it; {kept}. Lower "
          f"config.optim.lr or the regularizer weight.")

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
    """Warns once per call when a full logging window shows a constant classifier.

    The first window is skipped: a network whose last layer starts at zero
    (SmallCNN, TRADES' init) is constant at step 0 without having collapsed.
    """
    full = window_steps == self.config.log.every_steps
    flagged = full and step > window_steps and is_constant_classifier(mean)
    if flagged and self.collapse_step < 0:
      self.collapse_step = step
      self.log("%s", collapse_message(step, window_steps, mean),
               level=logging.WARNING)
    if full:
      self.collapsed_at_end = flagged

  def validate_epoch(self, epoch: int, step: int) -> dict[str, float]:
    cfg = self.config
    result = evaluate(self.eval_step, self.state.params, self.state.model_state,
                      self.dataset.validation, eval_cfg=cfg.eval,
                      num_examples=cfg.eval.val_examples,
                      image_size=cfg.data.image_size, key=self.eval_key,
                      mesh=self.mesh)
    self.writer.write("val", step, step / self.spe, result)
    self.log("epoch %d: validation clean %.2f%%, %s %.2f%% (%d examples)",
             epoch + 1, 100 * result["clean_acc"], _pgd_label(cfg.eval),
             100 * result["pgd_acc"], result["examples"])
    return result

  def batches(self, epoch: int, start: int) -> Iterator[tuple[jax.Array, ...]]:
    cfg = self.config.data
    local = data.train_batches(
        self.dataset.train, batch_size=cfg.batch_size, seed=self.config.seed,
        epoch=epoch, start_step=start, process_index=jax.process_index(),
        process_count=jax.process_count(), augment=cfg.augment,
        image_size=cfg.image_size)
    for x, y in data.prefetch(local):
      yield data.to_global(self.batch_sharding, x, y)

  def train(self) -> bool:
    """Runs the remaining steps; False when stopped early (max_steps/epochs)."""
    cfg = self.config
    step = int(jax.device_get(self.state.step))
    stop_at = min(self.total_steps, cfg.train.max_steps or self.total_steps,
                  math.ceil(cfg.train.max_epochs * self.spe) or self.total_steps)
    if step >= stop_at:
      return step >= self.total_steps
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    batch = cfg.data.batch_size
    self.bar = bar = tqdm(
        total=self.total_steps * batch, initial=step * batch, unit="ex",
        unit_scale=True, dynamic_ncols=True, smoothing=0.1,
        disable=not (cfg.log.progress and self.is_chief))
    window, in_flight = [], collections.deque()
    window_start, window_steps = time.time(), 0
    try:
      while step < stop_at:
        epoch, first = divmod(step, self.spe)
        bar.set_description(f"{cfg.method} epoch {epoch + 1}/"
                            f"{math.ceil(self.total_steps / self.spe)}")
        last = min(self.spe, stop_at - epoch * self.spe)
        for x, y in self.batches(epoch, first):
          self.state, metrics = self.train_step(self.state, x, y)
          step += 1
          window.append(metrics)
          window_steps += 1
          in_flight.append(metrics["loss"])
          if len(in_flight) > _MAX_IN_FLIGHT:
            in_flight.popleft().block_until_ready()
          bar.update(batch)
          epoch_end = step % self.spe == 0 or step == self.total_steps
          if step % cfg.log.every_steps == 0 or epoch_end or step == stop_at:
            self.check_finite()
            mean = _mean_metrics(window)
            self.check_collapse(step, window_steps, mean)
            elapsed = time.time() - window_start
            mean["examples_per_sec"] = window_steps * batch / max(elapsed, 1e-9)
            self.writer.write("train", step, step / self.spe, mean)
            bar.set_postfix(loss=f"{mean['loss']:.4f}", reg=f"{mean['reg']:.4g}",
                            acc=f"{mean['acc']:.3f}")
            window, window_start, window_steps = [], time.time(), 0
          pause = time.time()  # examples/s counts training, not eval/saves
          if epoch_end:
            self.end_epoch(step)
          elif step == stop_at or (cfg.checkpoint.every_steps and
                                   step % cfg.checkpoint.every_steps == 0):
            self.check_finite()
            self.ckpt.save(self.state, self.meta(step))
          window_start += time.time() - pause
          if step - epoch * self.spe >= last:
            break
    finally:
      bar.close()
    return step >= self.total_steps

  def end_epoch(self, step: int) -> None:
    cfg = self.config
    epoch = (step - 1) // self.spe
    self.check_finite()
    sums = jax.device_get(self.state.epoch_sums)
    steps = max(float(sums["steps"]), 1.0)
    means = {k: float(sums[k]) / steps for k in EPOCH_METRICS}
    self.writer.write("train_epoch", step, step / self.spe,
                      dict(means, steps=steps))
    if cfg.eval.epoch_test_clean:
      # Monitoring only, as in published training logs: model selection
      # ("best") uses the validation split, never this.
      result = clean_accuracy(
          self.clean_step, self.state.params, self.state.model_state,
          self.dataset.test, batch_size=cfg.eval.batch_size,
          num_examples=0, image_size=cfg.data.image_size, mesh=self.mesh)
      self.writer.write("test_clean", step, step / self.spe, result)
      self.log("epoch %d: train mean CE %.4f, reg %.4g; test clean %.2f%% "
               "(%d examples)", epoch + 1, means["ce"], means["reg"],
               100 * result["clean_acc"], result["examples"])
    is_best = False
    every = cfg.eval.every_epochs
    if every and ((epoch + 1) % every == 0 or step == self.total_steps):
      result = self.validate_epoch(epoch, step)
      if result["pgd_acc"] > self.best["val_pgd_acc"]:
        self.best = {"val_pgd_acc": result["pgd_acc"],
                     "val_clean_acc": result["clean_acc"], "step": step,
                     "epoch": epoch + 1}
        is_best = True
    self.ckpt.save(self.state, self.meta(step), best=is_best)

  def test(self) -> dict[str, Any]:
    cfg = self.config
    state, which = self.state, "final"
    if cfg.eval.test_checkpoint == "best":
      restored = self.ckpt.restore(_abstract(self.state), best=True)
      if restored is not None:
        state, which = restored[0], f"best (step {restored[1]['step']})"
    result = evaluate(self.eval_step, state.params, state.model_state,
                      self.dataset.test, eval_cfg=cfg.eval,
                      num_examples=cfg.eval.test_examples,
                      image_size=cfg.data.image_size, key=self.eval_key,
                      mesh=self.mesh)
    step = int(jax.device_get(self.state.step))
    self.writer.write("test", step, step / self.spe, result)
    return {"test_clean_acc": result["clean_acc"],
            "test_pgd_acc": result["pgd_acc"],
            "test_examples": result["examples"], "test_checkpoint": which}

  def close(self) -> None:
    if hasattr(self, "ckpt"):
      self.ckpt.close()
    if hasattr(self, "writer"):
      self.writer.close()


def load_checkpoint(config, workdir: str, *, best: bool = False,
                    step: int | None = None
                    ) -> tuple[TrainState, dict[str, Any]]:
  """Restores the latest (or best, or one step's) train state of a run.

  Args:
    config: the run's config (its model and optimizer give the structure).
    workdir: the run's workdir.
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
                      **config_check.model_kwargs(config))
  tx, _ = make_optimizer(config.optim, 1)
  mesh = make_mesh(config.mesh.num_devices)
  state = jax.device_put(create_train_state(net, tx, jax.random.key(0)),
                         NamedSharding(mesh, P()))
  ckpt = Checkpoints(os.path.abspath(workdir), 1, True)
  try:
    restored = ckpt.restore(_abstract(state), best=best, step=step)
  finally:
    ckpt.close()
  if restored is None:
    what = f"step {step}" if step is not None else "best" if best else "any"
    raise FileNotFoundError(f"no checkpoint ({what}) in {workdir}")
  return restored


def checkpoint_steps(workdir: str) -> tuple[list[int], int | None]:
  """The saved steps of ``checkpoints/`` and the run's steps per epoch.

  Returns:
    (steps oldest first, steps per epoch from the latest one's record, or
    None when there is no checkpoint).
  """
  ckpt = Checkpoints(os.path.abspath(workdir), 1, False)
  try:
    steps = ckpt.steps()
    spe = int(ckpt.meta(steps[-1])["steps_per_epoch"]) if steps else None
  finally:
    ckpt.close()
  return steps, spe


# What a workdir of ours holds; anything else there means a wrong --workdir.
WORKDIR_ENTRIES = ("config.json", "checkpoints", "best_checkpoint",
                   "metrics.jsonl", "summary.json", "tensorboard")


def check_workdir(workdir: str) -> str:
  """The absolute workdir; refuses "" and folders holding other files.

  Raises:
    config_check.ConfigError: empty path, a file, or a non-empty folder that
      is not a workdir of a previous run.
  """
  if not workdir or not str(workdir).strip():
    raise config_check.ConfigError("--workdir must name a folder.")
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise config_check.ConfigError(f"--workdir {path} is a file, not a folder.")
    foreign = sorted(set(os.listdir(path)) - set(WORKDIR_ENTRIES))
    if foreign:
      raise config_check.ConfigError(
          f"--workdir {path} already holds other files ({', '.join(foreign[:3])}"
          f"{', ...' if len(foreign) > 3 else ''}); choose a new folder or "
          f"a previous run's.")
  return path


def _previous_seconds(workdir: str) -> float:
  """Wall time recorded by earlier summaries of ``workdir`` (0 if none)."""
  try:
    with open(os.path.join(workdir, "summary.json")) as f:
      old = json.load(f)
    return float(old.get("seconds_total", old.get("seconds", 0.0)))
  except (OSError, ValueError, TypeError, AttributeError):
    return 0.0


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains ``config.method`` and evaluates it; resumes from ``workdir``.

  Every user mistake (invalid config, missing data, batch that does not split
  over the devices) raises before anything is written to ``workdir``.

  Args:
    config: a ConfigDict as built in configs/ (see configs/common.py).
    workdir: output folder; an existing one with checkpoints is resumed.

  Returns:
    A summary: "method", "step", "epochs", "completed" (False when stopped by
    ``train.max_steps`` or ``train.max_epochs``), "best_val" and, when completed, "test_clean_acc",
    "test_pgd_acc", "test_examples", plus "seconds" (this call's wall time)
    and "seconds_total" (summed over every call that wrote a summary in
    ``workdir``; a call killed before its summary is not counted), and
    "collapse_step" (the first step whose logging window showed a constant
    classifier in this call, -1 if none) and "collapsed_at_end" (whether the
    last full window did: such a run has no robustness to report).

  Raises:
    config_check.ConfigError: invalid config.
    data.DataError: missing or corrupt data.
    TrainingDiverged: the loss became NaN/Inf.
  """
  quiet_library_logs()
  config_check.validate(config)
  workdir = check_workdir(workdir)
  init_distributed(config)
  config_check.validate_runtime(config)
  run = _Run(config, workdir)
  run.prepare()
  logging.info("%s on %s (%s, %d train / %d validation / %d test), %s, "
               "%d devices, %d steps of batch %d", config.method,
               config.data.name, run.dataset.source, len(run.dataset.train),
               len(run.dataset.validation), len(run.dataset.test),
               config.model.name, run.mesh.size, run.total_steps,
               config.data.batch_size)
  try:
    run.open_workdir()
    completed = run.train()
    step = int(jax.device_get(run.state.step))
    summary = {"method": config.method, "model": config.model.name,
               "dataset": config.data.name, "step": step,
               "epochs": step / run.spe, "completed": completed,
               "best_val": run.best, "collapse_step": run.collapse_step,
               "collapsed_at_end": run.collapsed_at_end}
    if completed:
      summary.update(run.test())
    summary["seconds"] = time.time() - run.t0
    # A resumed or re-entered run (sweep.py re-enters finished ones) must not
    # overwrite the wall time already spent on this workdir.
    summary["seconds_total"] = _previous_seconds(workdir) + summary["seconds"]
    if run.is_chief:
      with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
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
  best_text = (f", best val PGD {100 * best['val_pgd_acc']:.2f}% at epoch "
               f"{best['epoch']}" if best.get("step", -1) >= 0 else "")
  return (f"{head}, test clean {100 * summary['test_clean_acc']:.2f}%, "
          f"{_pgd_label(config.eval)} {100 * summary['test_pgd_acc']:.2f}% "
          f"({summary['test_examples']} examples, {summary['test_checkpoint']})"
          f"{best_text}, {summary['seconds']:.0f} s"
          f"{', CONSTANT CLASSIFIER' if summary.get('collapsed_at_end') else ''}")
