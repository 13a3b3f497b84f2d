"""The gradient-sign family: FGSM, PGD, BIM, MI-FGSM and MultiTargeted PGD.

Each step follows the steepest-ascent direction of the attack loss for the
ball (sign of the gradient for l_inf, unit gradient for l2) and projects back
onto B(x, eps) intersected with [0, 1]. :func:`pgd_run` is the shared loop;
:func:`pgd` and :func:`multi_targeted` keep the per-example worst of several
runs (restarts, target classes).

Example::

    import jax, jax.numpy as jnp
    from lfr_jax.attacks import gradient_sign

    w = jax.random.normal(jax.random.key(0), (16, 10))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
    x = jnp.full((2, 4, 4, 1), 0.5); y = jnp.array([0, 1])
    x_fgsm = gradient_sign.fgsm(logits_fn, x, y, jax.random.key(1), eps=0.1)
    x_pgd = gradient_sign.pgd(logits_fn, x, y, jax.random.key(1), eps=0.1,
                              step_size=0.02, num_steps=10, restarts=2)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lfr_jax import _validate
from lfr_jax import losses
from lfr_jax import precision
from lfr_jax.attacks import common

LogitsFn = common.LogitsFn
PerExampleLoss = common.PerExampleLoss


@precision.float32_inputs
def fgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
         eps, random_start: bool = False, start_eps=None, step=None,
         loss: str = "ce") -> jax.Array:
  """Fast Gradient Sign Method (Goodfellow et al. 2015), l_inf.

  One step ``x' = x0 + step * sign(grad loss(x0))`` projected onto
  B_inf(x, eps) intersected with [0, 1]. Plain FGSM starts at ``x0 = x``; with
  ``random_start`` ``x0`` is uniform in B_inf(x, start_eps) (the LFR authors'
  "FGSM": one step of 0.3 from a uniform start).

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) integer labels.
    key: PRNG key for the random start.
    eps: l_inf radius >= 0.
    random_start: start uniformly in the ball (static).
    start_eps: radius of the random start; defaults to ``eps``.
    step: sign-step length > 0; defaults to ``eps``.
    loss: attack loss name, see :func:`lfr_jax.losses.get` (static).

  Returns:
    x_adv (N, H, W, C).
  """
  common.check_batch(x, y)
  common.check_key(key)
  common.check_ball(eps, "linf")
  start_eps = eps if start_eps is None else start_eps
  step = eps if step is None else step
  _validate.nonneg("start_eps", start_eps)
  _validate.positive("step", step)
  loss_fn = losses.get(loss)
  x0 = common.uniform_in_ball(key, x, start_eps, "linf") if random_start else x
  _, _, grad = common.loss_and_grad(
      logits_fn, lambda logits: loss_fn(logits, y), x0)
  return lax.stop_gradient(common.project(x0 + step * jnp.sign(grad), x, eps))


def pgd_run(logits_fn: LogitsFn, loss_fn: PerExampleLoss, x: jax.Array,
            start: jax.Array, *, eps, step_size, num_steps: int, norm: str,
            unroll) -> jax.Array:
  """Projected steepest ascent of ``loss_fn`` from ``start``.

  Args:
    logits_fn: x -> logits.
    loss_fn: logits -> (N,) loss to ascend.
    x: (N, H, W, C) ball centres.
    start: (N, H, W, C) first iterate, inside the ball.
    eps: radius.
    step_size: step length.
    num_steps: static int >= 0.
    norm: "linf" or "l2" (static).
    unroll: unroll factor of the step loop (static; True = fully).

  Returns:
    The last iterate.
  """

  def step(_, x_adv):
    _, _, grad = common.loss_and_grad(logits_fn, loss_fn, x_adv)
    return common.project(
        x_adv + step_size * common.ascent_direction(grad, norm), x, eps, norm)

  return lax.fori_loop(0, num_steps, step, start,
                       unroll=common.unroll_factor(num_steps, unroll))


def _score(logits_fn: LogitsFn, loss_fn: PerExampleLoss, x_adv: jax.Array,
           y: jax.Array) -> common.WorstSoFar:
  logits = logits_fn(x_adv)
  return common.WorstSoFar(x_adv, common.misclassified(logits, y),
                           loss_fn(logits))


@precision.float32_inputs
def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
        eps, step_size, num_steps: int, norm: str = "linf", loss: str = "ce",
        random_start: bool = True, restarts: int = 1,
        unroll: bool | int = False) -> jax.Array:
  """Projected Gradient Descent (Madry et al. 2018) in l_inf or l2.

  Each step moves by ``step_size`` along sign(grad) (l_inf) or grad/||grad||_2
  (l2) and projects onto B(x, eps) intersected with [0, 1]; a run returns its
  last iterate. With several restarts (fresh random starts) the per-example
  worst run is kept: a misclassified point if any, else the highest loss.

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) integer labels.
    key: PRNG key for the random starts.
    eps: radius >= 0 (may be traced).
    step_size: step length > 0 (may be traced).
    num_steps: number of steps, a static int >= 0.
    norm: "linf" or "l2" (static).
    loss: "ce", "margin" or "dlr" (static).
    random_start: start uniformly in the ball instead of at ``x`` (static).
    restarts: number of runs, a static int >= 1.
    unroll: unroll factor of the step loop (static; True = fully). With
      the models' fast convolution a rolled loop is as fast as an unrolled
      one on CPU and compiles much faster, so the default is rolled.

  Returns:
    x_adv (N, H, W, C).
  """
  common.check_batch(x, y)
  common.check_key(key)
  common.check_iterative(eps, step_size, num_steps, norm)
  common.check_count("restarts", restarts, 1)
  loss_fn = losses.get(loss)
  per_example = lambda logits: loss_fn(logits, y)

  def run(run_key):
    start = (common.uniform_in_ball(run_key, x, eps, norm) if random_start
             else x)
    return pgd_run(logits_fn, per_example, x, start, eps=eps,
                   step_size=step_size, num_steps=num_steps, norm=norm,
                   unroll=unroll)

  if restarts == 1:  # no need to score the only run
    return lax.stop_gradient(run(key))
  best = common.worst_over(
      lambda run_key: _score(logits_fn, per_example, run(run_key), y),
      common.no_worst_yet(x), jax.random.split(key, restarts), restarts)
  return lax.stop_gradient(best.x_adv)


@precision.float32_inputs
def bim(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
        eps, step_size, num_steps: int, norm: str = "linf", loss: str = "ce",
        unroll: bool | int = False) -> jax.Array:
  """Basic Iterative Method (Kurakin et al. 2017): PGD started at ``x``.

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) integer labels.
    key: unused (uniform attack signature).
    eps: radius >= 0.
    step_size: step length > 0.
    num_steps: static int >= 0.
    norm: "linf" or "l2" (static).
    loss: attack loss name (static).
    unroll: unroll factor of the step loop (static).

  Returns:
    x_adv (N, H, W, C).
  """
  return pgd(logits_fn, x, y, key, eps=eps, step_size=step_size,
             num_steps=num_steps, norm=norm, loss=loss, random_start=False,
             restarts=1, unroll=unroll)


@precision.float32_inputs
def mifgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
           eps, step_size, num_steps: int, decay=1.0,
           random_start: bool = False, loss: str = "ce",
           unroll: bool | int = False) -> jax.Array:
  """Momentum Iterative FGSM (Dong et al. 2018), l_inf.

  ``g <- decay * g + grad / ||grad||_1`` per example, then a sign step along
  ``g`` projected onto B_inf(x, eps) intersected with [0, 1].

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) integer labels.
    key: PRNG key for the optional random start.
    eps: l_inf radius >= 0.
    step_size: step length > 0.
    num_steps: static int >= 0.
    decay: momentum decay mu >= 0.
    random_start: start uniformly in the ball (static).
    loss: attack loss name (static).
    unroll: unroll factor of the step loop (static).

  Returns:
    x_adv (N, H, W, C).
  """
  common.check_batch(x, y)
  common.check_key(key)
  common.check_iterative(eps, step_size, num_steps, "linf")
  _validate.nonneg("decay", decay)
  loss_fn = losses.get(loss)
  start = common.uniform_in_ball(key, x, eps, "linf") if random_start else x

  def step(_, carry):
    x_adv, momentum = carry
    _, _, grad = common.loss_and_grad(
        logits_fn, lambda logits: loss_fn(logits, y), x_adv)
    grad_l1 = common.l1_norm(grad)
    # A zero gradient adds nothing (instead of NaN) to the momentum.
    momentum = decay * momentum + common.scale_per_example(
        1.0 / jnp.where(grad_l1 > 0, grad_l1, 1.0), grad)
    return (common.project(x_adv + step_size * jnp.sign(momentum), x, eps),
            momentum)

  x_adv, _ = lax.fori_loop(0, num_steps, step, (start, jnp.zeros_like(x)),
                           unroll=common.unroll_factor(num_steps, unroll))
  return lax.stop_gradient(x_adv)


@precision.float32_inputs
def multi_targeted(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                   key: jax.Array, *, eps, step_size, num_steps: int,
                   num_targets: int | None = None, norm: str = "linf",
                   random_start: bool = True,
                   unroll: bool | int = False) -> jax.Array:
  """MultiTargeted PGD (Gowal et al. 2019; LLR Table 1).

  For each of the ``num_targets`` classes t != y with the largest clean
  logits, PGD maximizes z_t - z_y; the per-example worst run is kept, i.e. the
  one with the highest final margin max_{i != y} z_i - z_y (so any success
  wins). Targets are visited with ``lax.scan``.

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) integer labels.
    key: PRNG key for the random starts.
    eps: radius >= 0.
    step_size: step length > 0.
    num_steps: steps per target, static int >= 0.
    num_targets: number of target classes (static); all classes - 1 if None.
    norm: "linf" or "l2" (static).
    random_start: start each run uniformly in the ball (static).
    unroll: unroll factor of the step loop (static).

  Returns:
    x_adv (N, H, W, C).
  """
  common.check_batch(x, y)
  common.check_key(key)
  common.check_iterative(eps, step_size, num_steps, norm)
  clean_logits = logits_fn(x)
  num_classes = clean_logits.shape[1]
  num_targets = num_classes - 1 if num_targets is None else num_targets
  common.check_count("num_targets", num_targets, 1, num_classes - 1)
  targets = common.top_other_classes(clean_logits, y, num_targets)

  def per_target(target_and_key):
    target, run_key = target_and_key
    toward_target = lambda logits: (common.label_logit(logits, target)
                                    - common.label_logit(logits, y))
    start = (common.uniform_in_ball(run_key, x, eps, norm) if random_start
             else x)
    x_target = pgd_run(logits_fn, toward_target, x, start, eps=eps,
                       step_size=step_size, num_steps=num_steps, norm=norm,
                       unroll=unroll)
    margin = losses.margin(logits_fn(x_target), y)
    return common.WorstSoFar(x_target, margin > 0, margin)

  best = common.worst_over(
      per_target, common.no_worst_yet(x),
      (targets.T, jax.random.split(key, num_targets)), num_targets)
  return lax.stop_gradient(best.x_adv)
