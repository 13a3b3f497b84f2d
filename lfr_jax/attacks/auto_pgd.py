"""Auto-PGD (Croce & Hein 2020): APGD-CE/DLR and APGD-T, as in AutoAttack.

APGD is PGD with momentum and a step size that halves at fixed checkpoints
when the loss stops improving (:func:`apgd_checkpoints`). :func:`apgd` runs it
on an untargeted loss, :func:`apgd_targeted` once per target class on the
targeted DLR loss; both keep the per-example worst run.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax.attacks import auto_pgd

    w = jax.random.normal(jax.random.key(0), (16, 10))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
    x = jnp.full((2, 4, 4, 1), 0.5); y = jnp.array([0, 1])
    x_ce = auto_pgd.apgd(logits_fn, x, y, jax.random.key(1), eps=0.1,
                         num_steps=10)
    x_t = auto_pgd.apgd_targeted(logits_fn, x, y, jax.random.key(1), eps=0.1,
                                 num_steps=10, num_targets=2)
    checkpoints = auto_pgd.apgd_checkpoints(100)   # (0, 22, 41, ..., 99)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lfr_jax import _validate
from lfr_jax import losses
from lfr_jax import precision
from lfr_jax.attacks import common

LogitsFn = common.LogitsFn
PerExampleLoss = common.PerExampleLoss


def apgd_checkpoints(num_steps: int) -> tuple[int, ...]:
  """APGD's step-size checkpoints w_j = ceil(p_j * N) (Croce & Hein 2020).

  p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in the
  integer form of AutoAttack's code: the first interval is max(int(0.22 N), 1)
  steps and each next one is shorter by max(int(0.03 N), 1), down to
  max(int(0.06 N), 1). For N = 100: 0, 22, 41, 57, 70, 80, 87, 93, 99.

  Args:
    num_steps: N, a static int >= 0.

  Returns:
    The checkpoints in steps taken, starting with w_0 = 0; the step-size test
    runs right after step w_j (1-based) for each j >= 1.
  """
  _validate.steps("num_steps", num_steps)
  interval = max(int(0.22 * num_steps), 1)
  shortest = max(int(0.06 * num_steps), 1)
  shrink = max(int(0.03 * num_steps), 1)
  points = [0]
  while points[-1] + interval <= num_steps:
    points.append(points[-1] + interval)
    interval = max(interval - shrink, shortest)
  return tuple(points)


def _checkpoint_tables(num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Per step i (0-based): whether a check follows it, and its window length."""
  points = apgd_checkpoints(num_steps)
  is_check = np.zeros(max(num_steps, 1), bool)
  window = np.ones(max(num_steps, 1), np.float32)
  for prev, point in zip(points[:-1], points[1:]):
    is_check[point - 1] = True
    window[point - 1] = point - prev
  return is_check, window


def _apgd_start(key: jax.Array, x: jax.Array, eps, norm: str) -> jax.Array:
  """AutoAttack's start: a random direction scaled to the ball's boundary."""
  eps = common.nonneg_radius(eps)
  if norm == "linf":
    direction = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    direction = common.scale_per_example(
        1.0 / (common.linf_norm(direction) + common.TINY), direction)
  else:
    direction = common.unit_l2(jax.random.normal(key, x.shape, x.dtype))
  return jnp.clip(x + eps * direction, 0.0, 1.0)


def _apgd_move(x_adv, x_prev, grad, step, x, eps, norm: str, momentum):
  """One APGD step with heavy-ball momentum ``momentum`` (alpha).

  z = P(x_k + eta dir(grad)), then
  x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha) (x_k - x_{k-1})).
  """
  z = common.project(
      x_adv + common.scale_per_example(
          step, common.ascent_direction(grad, norm)), x, eps, norm)
  return common.project(x_adv + momentum * (z - x_adv)
                        + (1.0 - momentum) * (x_adv - x_prev), x, eps, norm)


class _ApgdState(NamedTuple):
  x_adv: jax.Array
  x_prev: jax.Array
  grad: jax.Array
  step: jax.Array            # (N,) eta
  x_best: jax.Array          # highest-loss iterate
  grad_best: jax.Array
  loss_best: jax.Array
  x_best_adv: jax.Array      # last misclassified iterate
  fooled: jax.Array
  loss_prev: jax.Array       # loss of the previous iterate
  increases: jax.Array       # successful increases since the last checkpoint
  loss_best_last: jax.Array  # loss_best at the last checkpoint
  reduced_last: jax.Array    # whether eta was halved at the last checkpoint


def _initial_state(logits_fn: LogitsFn, loss_fn: PerExampleLoss,
                   x: jax.Array, y: jax.Array, key: jax.Array, eps,
                   norm: str) -> _ApgdState:
  """The state before the first step: every field at the random start."""
  start = _apgd_start(key, x, eps, norm)
  loss0, logits0, grad0 = common.loss_and_grad(logits_fn, loss_fn, start)
  n = x.shape[0]
  return _ApgdState(
      x_adv=start, x_prev=start, grad=grad0,
      step=jnp.full((n,), 2.0, x.dtype) * eps,
      x_best=start, grad_best=grad0, loss_best=loss0, x_best_adv=start,
      fooled=common.misclassified(logits0, y), loss_prev=loss0,
      increases=jnp.zeros((n,), jnp.int32), loss_best_last=loss0,
      reduced_last=jnp.ones((n,), bool))


def _apgd_run(logits_fn: LogitsFn, loss_fn: PerExampleLoss, x: jax.Array,
              y: jax.Array, key: jax.Array, *, eps, num_steps: int, norm: str,
              rho, unroll) -> common.WorstSoFar:
  """One APGD run (AutoAttack's ``attack_single_run``), per-example state."""
  is_check, window = _checkpoint_tables(num_steps)
  is_check, window = jnp.asarray(is_check), jnp.asarray(window)

  def step(i, state: _ApgdState) -> _ApgdState:
    # The first step has no momentum (alpha = 1), later ones alpha = 0.75.
    momentum = jnp.where(i > 0, 0.75, 1.0).astype(x.dtype)
    x_new = _apgd_move(state.x_adv, state.x_prev, state.grad, state.step, x,
                       eps, norm, momentum)
    loss, logits, grad = common.loss_and_grad(logits_fn, loss_fn, x_new)
    wrong = common.misclassified(logits, y)
    improved = loss > state.loss_best
    loss_best = jnp.where(improved, loss, state.loss_best)
    x_best = common.select_per_example(improved, x_new, state.x_best)
    grad_best = common.select_per_example(improved, grad, state.grad_best)
    increases = state.increases + (loss > state.loss_prev).astype(jnp.int32)

    check = is_check[i]
    oscillating = increases <= window[i] * rho
    stalled = ~state.reduced_last & (state.loss_best_last >= loss_best)
    halve = check & (oscillating | stalled)
    # On halving, restart from the best point with its gradient.
    return _ApgdState(
        x_adv=common.select_per_example(halve, x_best, x_new),
        x_prev=state.x_adv,
        grad=common.select_per_example(halve, grad_best, grad),
        step=jnp.where(halve, 0.5 * state.step, state.step),
        x_best=x_best, grad_best=grad_best, loss_best=loss_best,
        x_best_adv=common.select_per_example(wrong, x_new, state.x_best_adv),
        fooled=state.fooled | wrong, loss_prev=loss,
        increases=jnp.where(check, 0, increases),
        loss_best_last=jnp.where(check, loss_best, state.loss_best_last),
        reduced_last=jnp.where(check, oscillating | stalled,
                               state.reduced_last))

  final = lax.fori_loop(
      0, num_steps, step,
      _initial_state(logits_fn, loss_fn, x, y, key, eps, norm),
      unroll=common.unroll_factor(num_steps, unroll))
  return common.WorstSoFar(
      common.select_per_example(final.fooled, final.x_best_adv, final.x_best),
      final.fooled, final.loss_best)


def _check_apgd(x, y, key, eps, num_steps, norm, rho) -> None:
  common.check_batch(x, y)
  common.check_key(key)
  common.check_ball(eps, norm)
  _validate.steps("num_steps", num_steps)
  _validate.in_unit_interval("rho", rho)


def _finish_apgd(best: common.WorstSoFar, x: jax.Array,
                 clean_logits: jax.Array, y: jax.Array) -> jax.Array:
  # As in AutoAttack, points misclassified when clean are returned unchanged.
  out = common.select_per_example(common.misclassified(clean_logits, y), x,
                                  best.x_adv)
  return lax.stop_gradient(out)


@precision.float32_inputs
def apgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
         eps, num_steps: int = 100, norm: str = "linf", loss: str = "ce",
         rho=0.75, restarts: int = 1, unroll: bool | int = False
         ) -> jax.Array:
  """Auto-PGD (Croce & Hein 2020) as in AutoAttack's ``APGDAttack``.

  Starts on the ball's boundary in a random direction, takes momentum steps
  x_{k+1} = P(x_k + 0.75 (z_k - x_k) + 0.25 (x_k - x_{k-1})) with
  z_k = P(x_k + eta_k dir(grad)) (no momentum at the first step), eta_0 =
  2 eps. At the checkpoints of :func:`apgd_checkpoints` eta is halved, and the
  iterate reset to the best point, where the loss increased in at most a
  fraction rho of the steps since the last checkpoint, or where eta was not
  halved at the last checkpoint and the best loss has not improved since.

  Returns per example the last misclassified iterate if one was found, else
  the highest-loss iterate; over restarts, a misclassified run beats a
  correct one and otherwise the higher best loss wins. Points misclassified
  when clean are returned unchanged, as AutoAttack does. Differences from the
  reference: every restart runs on all points (its result is then discarded
  for points already broken), and the first step-size check counts the
  first step as an increase if it beats the starting loss, where the
  reference compares with an unwritten zero entry.

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) integer labels.
    key: PRNG key for the random starts.
    eps: radius >= 0 (may be traced).
    num_steps: iterations N, a static int >= 0.
    norm: "linf" or "l2" (static).
    loss: "ce" (APGD-CE), "dlr" (APGD-DLR) or "margin" (static).
    rho: step-size decrease threshold in [0, 1].
    restarts: static int >= 1.
    unroll: unroll factor of the step loop (static).

  Returns:
    x_adv (N, H, W, C).
  """
  _check_apgd(x, y, key, eps, num_steps, norm, rho)
  common.check_count("restarts", restarts, 1)
  loss_fn = losses.get(loss)
  per_example = lambda logits: loss_fn(logits, y)
  clean_logits = logits_fn(x)

  def run(run_key):
    return _apgd_run(logits_fn, per_example, x, y, run_key, eps=eps,
                     num_steps=num_steps, norm=norm, rho=rho, unroll=unroll)

  best = common.worst_over(run, common.no_worst_yet(x),
                           jax.random.split(key, restarts), restarts)
  return _finish_apgd(best, x, clean_logits, y)


@precision.float32_inputs
def apgd_targeted(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                  key: jax.Array, *, eps, num_steps: int = 100,
                  norm: str = "linf", num_targets: int = 9, rho=0.75,
                  unroll: bool | int = False) -> jax.Array:
  """APGD-T (AutoAttack's ``APGDAttack_targeted``): APGD on the targeted DLR.

  One APGD run (see :func:`apgd`) per target class, the targets being the
  ``num_targets`` non-true classes with the largest clean logits, in order;
  the per-example worst run is kept (misclassified first, then the highest
  targeted-DLR loss). Targets are visited with ``lax.scan``.

  Args:
    logits_fn: x -> logits with at least 4 classes.
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) integer labels.
    key: PRNG key for the random starts.
    eps: radius >= 0.
    num_steps: iterations per target, static int >= 0.
    norm: "linf" or "l2" (static).
    num_targets: static int in [1, classes - 1].
    rho: step-size decrease threshold in [0, 1].
    unroll: unroll factor of the step loop (static).

  Returns:
    x_adv (N, H, W, C).
  """
  _check_apgd(x, y, key, eps, num_steps, norm, rho)
  clean_logits = logits_fn(x)
  num_classes = clean_logits.shape[1]
  if num_classes < 4:
    raise ValueError(f"apgd_targeted needs at least 4 classes for the targeted "
                     f"DLR loss, got {num_classes}.")
  common.check_count("num_targets", num_targets, 1, num_classes - 1)
  targets = common.top_other_classes(clean_logits, y, num_targets)

  def per_target(target_and_key):
    target, run_key = target_and_key
    loss_fn = lambda logits: losses.dlr_targeted(logits, y, target)
    return _apgd_run(logits_fn, loss_fn, x, y, run_key, eps=eps,
                     num_steps=num_steps, norm=norm, rho=rho, unroll=unroll)

  best = common.worst_over(per_target, common.no_worst_yet(x),
                           (targets.T, jax.random.split(key, num_targets)),
                           num_targets)
  return _finish_apgd(best, x, clean_logits, y)
