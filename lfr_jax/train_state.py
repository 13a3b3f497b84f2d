"""The training state and what updates it: optimizer, learning-rate and eps schedules.

:class:`TrainState` is everything a training step changes, checkpointed as
one pytree; :func:`create_train_state` builds it at step 0. The schedules
turn the config's epochs into steps.

Example::

    import jax
    from configs import mnist_lfr
    from lfr_jax import models, train_state
    config = mnist_lfr.get_config("smoke")
    net = models.create("small_cnn", jax.random.key(0))
    tx, lr = train_state.make_optimizer(config.optim, steps_per_epoch=10)
    state = train_state.create_train_state(net, tx, jax.random.key(1))
    int(state.step), float(lr(0))            # (0, 0.01)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from lfr_jax import models


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


def abstract_state(tree: Any) -> Any:
  """Shapes, dtypes and shardings of ``tree``: the target of a restore."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
      tree)


SCHEDULES = ("step", "one_cycle")


def learning_rate_schedule(optim_cfg, steps_per_epoch: int,
                           total_steps: int | None = None) -> optax.Schedule:
  """The learning rate at each step.

  "step": ``lr`` times ``decay_factor`` after each of ``decay_epochs``.
  "one_cycle": linear from 0 up to ``lr`` at ``peak_fraction`` of the run,
  then linear down to 0 at its end (the cyclic schedule of Wong et al. 2020,
  "Fast is better than free").

  Args:
    optim_cfg: ``config.optim``.
    steps_per_epoch: to turn epochs into steps.
    total_steps: the run's length in steps; needed by "one_cycle".

  Returns:
    The schedule.
  """
  schedule = getattr(optim_cfg, "schedule", "step")
  if schedule == "one_cycle":
    if not total_steps:
      raise ValueError("the one_cycle learning-rate schedule needs the run's "
                       "total_steps.")
    peak = max(1, int(round(optim_cfg.peak_fraction * total_steps)))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim_cfg.lr, peak),
         optax.linear_schedule(optim_cfg.lr, 0.0, max(1, total_steps - peak))],
        [peak])
  boundaries = {int(round(e * steps_per_epoch)): optim_cfg.decay_factor
                for e in optim_cfg.decay_epochs}
  return optax.piecewise_constant_schedule(optim_cfg.lr, boundaries)


def make_optimizer(optim_cfg, steps_per_epoch: int,
                   total_steps: int | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD (momentum) or Adam with l2 weight decay added to the gradient.

  Args:
    optim_cfg: ``config.optim``.
    steps_per_epoch: to turn decay epochs into steps.
    total_steps: the run's length in steps (for the "one_cycle" schedule).

  Returns:
    (optimizer, learning-rate schedule).
  """
  schedule = learning_rate_schedule(optim_cfg, steps_per_epoch, total_steps)
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
