"""The jitted steps on the mesh: one training update, robust and clean evaluation.

:func:`make_train_step` turns any ``objectives.build(...)`` objective into one
``jax.jit`` update of a :class:`~lfr_jax.train_state.TrainState`, with the
batch sharded over the ``"data"`` axis, everything else replicated and the
state donated. The evaluation steps return per-batch sums, so the host only
reads totals.

Example::

    import jax, jax.numpy as jnp
    from configs import mnist_lfr
    from lfr_jax import models, objectives, sharding, steps, train_state
    config = mnist_lfr.get_config("smoke")
    net = models.create("small_cnn", jax.random.key(0))
    tx, lr = train_state.make_optimizer(config.optim, steps_per_epoch=10)
    step = steps.make_train_step(
        objectives.build("lfr", num_steps=2), net.graphdef, tx, lr,
        train_state.eps_schedule(config.inner, 10), sharding.make_mesh(1))
    state = train_state.create_train_state(net, tx, jax.random.key(1))
    x, y = jnp.zeros((4, 28, 28, 1)), jnp.zeros((4,), jnp.int32)
    state, metrics = step(state, x, y)
    int(state.step)                          # 1
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from lfr_jax import attacks
from lfr_jax import data
from lfr_jax import models
from lfr_jax import objectives
from lfr_jax import sharding
from lfr_jax.train_state import TrainState


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
  replicated, batch = sharding.replicated(mesh), sharding.batch(mesh)

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


def make_robust_eval_step(graphdef: Any, eval_cfg, mesh: jax.sharding.Mesh
                          ) -> Callable[..., dict[str, jax.Array]]:
  """The jitted ``(params, model_state, x, y, mask, key) -> sums`` of one batch.

  An example counts as robust when it is classified correctly both at ``x``
  and at the PGD point (``x`` itself lies in the ball). BatchNorm uses its
  running statistics.

  Returns:
    A function giving {"clean": correct clean, "pgd": robust, "count": n}.
  """
  replicated, batch = sharding.replicated(mesh), sharding.batch(mesh)
  unroll = objectives.resolve_unroll(eval_cfg.unroll, sharding.platform(mesh))

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


def robust_accuracy(eval_step, params, model_state, split: data.Split, *,
                    eval_cfg, num_examples: int, image_size: int,
                    key: jax.Array, mesh: jax.sharding.Mesh
                    ) -> dict[str, float]:
  """Clean and PGD accuracy on the first ``num_examples`` of ``split``.

  Returns:
    {"clean_acc", "pgd_acc", "examples"}.
  """
  batch_sharding = sharding.batch(mesh)
  totals = []
  batches = data.eval_batches(split, batch_size=eval_cfg.batch_size,
                              num_examples=num_examples,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(),
                              image_size=image_size)
  for i, (x, y, mask) in enumerate(data.prefetch(batches)):
    x, y, mask = data.to_global(batch_sharding, x, y, mask)
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
  replicated, batch = sharding.replicated(mesh), sharding.batch(mesh)

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
  batch_sharding = sharding.batch(mesh)
  batches = data.eval_batches(split, batch_size=batch_size,
                              num_examples=num_examples,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(),
                              image_size=image_size)
  totals = [clean_step(params, model_state,
                       *data.to_global(batch_sharding, x, y, mask))
            for x, y, mask in data.prefetch(batches)]
  totals = jax.device_get(totals)
  count = sum(float(t["count"]) for t in totals)
  return {"clean_acc": (sum(float(t["clean"]) for t in totals) / count
                        if count else float("nan")), "examples": int(count)}
