"""Adversarial attacks as pure functions of a ``logits_fn``.

Every attack has the signature ``attack(logits_fn, x, y, key, **settings)``:
``logits_fn`` is any JAX callable mapping images (N, H, W, C) in [0, 1] to
logits (N, classes) with the model parameters closed over, ``x`` the clean
images, ``y`` the (N,) integer labels and ``key`` a PRNG key (unused by the
deterministic attacks, kept so that all attacks are interchangeable). The
result is under ``jax.lax.stop_gradient`` and always lies in the attack's
eps-ball around ``x`` intersected with [0, 1].

Loops are ``lax.fori_loop``/``lax.scan`` with per-example state, so an attack
never syncs with the host and works inside ``jax.jit`` and ``jax.vmap``.
Settings that shape the computation (``num_steps``, ``norm``, ``loss``,
``restarts``, ``num_targets``, ``random_start``, ``unroll``, ...) must be
static; radii and step sizes (``eps``, ``step_size``) may be traced. Per-example
losses are summed before ``jax.grad`` so each example gets its own gradient;
this assumes examples do not interact inside ``logits_fn`` (evaluation mode or
frozen BatchNorm statistics).

Attacks: :func:`fgsm`, :func:`pgd`, :func:`bim`, :func:`mifgsm`, :func:`ddn`
(returns ``(x_adv, norms)``), :func:`multi_targeted`, :func:`apgd` and
:func:`apgd_targeted` (AutoAttack's APGD-CE/DLR and APGD-T). :func:`worst_case`
chains attacks AutoAttack-style on the still-robust points (host-side).

Example::

    import functools, jax
    from lfr_jax import attacks, models

    net = models.create("small_cnn", jax.random.key(0))
    logits_fn = net.logits_fn()
    x = jax.numpy.zeros((8, 28, 28, 1)); y = jax.numpy.zeros((8,), "int32")

    pgd = jax.jit(functools.partial(attacks.pgd, logits_fn),
                  static_argnames=("num_steps", "norm", "loss"))
    x_adv = pgd(x, y, jax.random.key(1), eps=0.3, step_size=0.01,
                num_steps=40)

    x_worst, broken_by = attacks.worst_case(
        [("apgd-ce", functools.partial(attacks.apgd, eps=0.3)),
         ("apgd-t", functools.partial(attacks.apgd_targeted, eps=0.3))],
        logits_fn, x, y, jax.random.key(2))
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lfr_jax import _validate
from lfr_jax import losses

LogitsFn = Callable[[jax.Array], jax.Array]
PerExampleLoss = Callable[[jax.Array], jax.Array]
NORMS = ("linf", "l2")

# AutoAttack's guard in its normalizations (x / (||x|| + 1e-12)).
_TINY = 1e-12


# ----------------------------------------------------------------- helpers --


def _where(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-example select: ``mask`` (N,) broadcast over the trailing axes."""
  return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)


def _scale(s: jax.Array, v: jax.Array) -> jax.Array:
  """Multiplies each example of ``v`` by its scalar in ``s`` (N,)."""
  return s.reshape(s.shape + (1,) * (v.ndim - 1)) * v


def l2_norm(v: jax.Array) -> jax.Array:
  """Per-example l2 norm of a batch ``v`` (N, ...), returned as (N,)."""
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def _linf_norm(v: jax.Array) -> jax.Array:
  return jnp.max(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)


def _l1_norm(v: jax.Array) -> jax.Array:
  return jnp.sum(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)


def _unit_l2(v: jax.Array) -> jax.Array:
  return _scale(1.0 / (l2_norm(v) + _TINY), v)


def project(x_adv: jax.Array, x: jax.Array, eps, norm: str = "linf"
            ) -> jax.Array:
  """Projects onto the ``norm`` ball B(x, eps) intersected with [0, 1].

  For l2 the point is first pulled radially into the ball, then clipped to
  [0, 1]; clipping moves every pixel towards ``x`` (which lies in [0, 1]),
  so the result stays in the ball.

  Args:
    x_adv: (N, H, W, C) points to project.
    x: (N, H, W, C) ball centres in [0, 1].
    eps: radius (scalar, may be traced).
    norm: "linf" or "l2".

  Returns:
    The projected points.
  """
  if norm == "linf":
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)
  delta = x_adv - x
  n = l2_norm(delta)
  # AutoAttack's x + delta / (|delta| + tiny) * min(eps, |delta|): no NaN at 0.
  return jnp.clip(x + _scale(jnp.minimum(eps, n) / (n + _TINY), delta),
                  0.0, 1.0)


def _ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
  """Steepest-ascent unit step for the ``norm`` ball (zero where grad is 0)."""
  if norm == "linf":
    return jnp.sign(grad)
  return _unit_l2(grad)


def _random_start(key: jax.Array, x: jax.Array, eps, norm: str) -> jax.Array:
  """A uniform sample of the ``norm`` ball B(x, eps), clipped to [0, 1]."""
  if norm == "linf":
    noise = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    return jnp.clip(x + eps * noise, 0.0, 1.0)
  k_dir, k_rad = jax.random.split(key)
  direction = _unit_l2(jax.random.normal(k_dir, x.shape, x.dtype))
  dim = math.prod(x.shape[1:])
  # Radius eps * U^(1/d) makes the sample uniform in volume, not on the shell.
  radius = eps * jax.random.uniform(k_rad, x.shape[:1], x.dtype) ** (1.0 / dim)
  return jnp.clip(x + _scale(radius, direction), 0.0, 1.0)


def _loss_and_grad(logits_fn: LogitsFn, loss_fn: PerExampleLoss,
                   x_adv: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example loss, logits and per-example input gradient in one pass."""

  def total(z):
    logits = logits_fn(z)
    per_example = loss_fn(logits)
    return per_example.sum(), (per_example, logits)

  (_, (per_example, logits)), grad = jax.value_and_grad(
      total, has_aux=True)(x_adv)
  return per_example, logits, grad


def _misclassified(logits: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.argmax(logits, axis=1) != y


def _unroll(num_steps: int, unroll) -> int:
  """fori_loop's unroll factor: True means fully unrolled."""
  if unroll is True:
    return max(int(num_steps), 1)
  return max(int(unroll), 1)


class _Worst(NamedTuple):
  """The per-example worst point found so far."""
  x_adv: jax.Array   # (N, H, W, C)
  fooled: jax.Array  # (N,) bool: misclassified
  score: jax.Array   # (N,) the attack's loss; ranks points that are not fooled


def _no_worst_yet(x: jax.Array) -> _Worst:
  n = x.shape[0]
  return _Worst(x, jnp.zeros((n,), bool), jnp.full((n,), -jnp.inf, x.dtype))


def _keep_worst(best: _Worst, cand: _Worst) -> _Worst:
  """Misclassified beats correct; among equals, the higher score wins."""
  take = (cand.fooled & ~best.fooled) | (
      (cand.fooled == best.fooled) & (cand.score > best.score))
  return _Worst(_where(take, cand.x_adv, best.x_adv), best.fooled | cand.fooled,
                jnp.where(take, cand.score, best.score))


def _worst_over(run: Callable[[Any], _Worst], init: _Worst, xs: Any,
                length: int) -> _Worst:
  """Folds ``_keep_worst`` over ``run(item)`` for the items of ``xs``.

  A single item runs without a loop: XLA:CPU runs convolution gradients
  inside loops several times slower, and one run is the common case.
  """
  if length == 1:
    return _keep_worst(init, run(jax.tree.map(lambda a: a[0], xs)))
  best, _ = lax.scan(lambda best, item: (_keep_worst(best, run(item)), None),
                     init, xs)
  return best


def _top_other_classes(logits: jax.Array, y: jax.Array, k: int) -> jax.Array:
  """(N, k) indices of the k largest logits other than the true class."""
  masked = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool),
                     -jnp.inf, logits)
  return lax.top_k(masked, k)[1]


def _label_logit(logits: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]


# ------------------------------------------------------------- validation --


def _check_batch(x, y) -> None:
  _validate.batch(x, y)


def _check_ball(eps, norm: str) -> None:
  _validate.nonneg("eps", eps)
  _validate.choice("norm", norm, NORMS)


def _check_iterative(eps, step_size, num_steps, norm: str) -> None:
  _check_ball(eps, norm)
  _validate.positive("step_size", step_size)
  _validate.steps("num_steps", num_steps)


def _check_count(name: str, value, lo: int, hi: int | None = None) -> None:
  """A static int in [lo, hi]."""
  _validate.steps(name, value)
  if value < lo or (hi is not None and value > hi):
    bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
    raise ValueError(f"{name} must be {bound}, got {value}.")


# ------------------------------------------------------------ FGSM / PGD --


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
  _check_batch(x, y)
  _check_ball(eps, "linf")
  start_eps = eps if start_eps is None else start_eps
  step = eps if step is None else step
  _validate.nonneg("start_eps", start_eps)
  _validate.positive("step", step)
  loss_fn = losses.get(loss)
  x0 = _random_start(key, x, start_eps, "linf") if random_start else x
  _, _, grad = _loss_and_grad(logits_fn, lambda lg: loss_fn(lg, y), x0)
  return lax.stop_gradient(project(x0 + step * jnp.sign(grad), x, eps))


def _pgd_run(logits_fn: LogitsFn, loss_fn: PerExampleLoss, x: jax.Array,
             start: jax.Array, *, eps, step_size, num_steps: int, norm: str,
             unroll) -> jax.Array:
  """Projected steepest ascent from ``start``; returns the last iterate."""

  def step(_, x_adv):
    _, _, grad = _loss_and_grad(logits_fn, loss_fn, x_adv)
    return project(x_adv + step_size * _ascent_direction(grad, norm), x, eps,
                   norm)

  return lax.fori_loop(0, num_steps, step, start,
                       unroll=_unroll(num_steps, unroll))


def _score(logits_fn: LogitsFn, loss_fn: PerExampleLoss, x_adv: jax.Array,
           y: jax.Array) -> _Worst:
  logits = logits_fn(x_adv)
  return _Worst(x_adv, _misclassified(logits, y), loss_fn(logits))


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
  _check_batch(x, y)
  _check_iterative(eps, step_size, num_steps, norm)
  _check_count("restarts", restarts, 1)
  loss_fn = losses.get(loss)
  per_example = lambda logits: loss_fn(logits, y)

  def run(k):
    start = _random_start(k, x, eps, norm) if random_start else x
    return _pgd_run(logits_fn, per_example, x, start, eps=eps,
                    step_size=step_size, num_steps=num_steps, norm=norm,
                    unroll=unroll)

  if restarts == 1:  # no need to score the only run
    return lax.stop_gradient(run(key))
  best = _worst_over(lambda k: _score(logits_fn, per_example, run(k), y),
                     _no_worst_yet(x), jax.random.split(key, restarts),
                     restarts)
  return lax.stop_gradient(best.x_adv)


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
  _check_batch(x, y)
  _check_iterative(eps, step_size, num_steps, "linf")
  _validate.nonneg("decay", decay)
  loss_fn = losses.get(loss)
  start = _random_start(key, x, eps, "linf") if random_start else x

  def step(_, carry):
    x_adv, momentum = carry
    _, _, grad = _loss_and_grad(logits_fn, lambda lg: loss_fn(lg, y), x_adv)
    l1 = _l1_norm(grad)
    # A zero gradient adds nothing (instead of NaN) to the momentum.
    momentum = decay * momentum + _scale(1.0 / jnp.where(l1 > 0, l1, 1.0), grad)
    return project(x_adv + step_size * jnp.sign(momentum), x, eps), momentum

  x_adv, _ = lax.fori_loop(0, num_steps, step, (start, jnp.zeros_like(x)),
                           unroll=_unroll(num_steps, unroll))
  return lax.stop_gradient(x_adv)


# -------------------------------------------------------------------- DDN --


def _ddn_learning_rate(i, num_steps: int):
  """PyTorch's CosineAnnealingLR from 1 to eta_min = 0.01 over num_steps."""
  return 0.01 + 0.99 * 0.5 * (1.0 + jnp.cos(jnp.pi * i / num_steps))


def ddn(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
        num_steps: int, gamma=0.05, init_norm=1.0, max_norm=None,
        levels: int | None = None, unroll: bool | int = False
        ) -> tuple[jax.Array, jax.Array]:
  """Decoupled Direction and Norm l2 attack (Rony et al. 2019), untargeted.

  Each step takes a unit-l2 gradient step on the cross-entropy with a
  cosine-annealed length, then rescales the perturbation to a norm budget that
  shrinks by (1 - gamma) while the point is adversarial and grows by
  (1 + gamma) while it is not, optionally rounds ``x + delta`` to ``levels``
  grey levels, and clips to [0, 1]. The smallest adversarial perturbation
  seen is kept per example. As in advertorch's ``DDNL2Attack`` (which the LFR
  authors ran), an iterate is judged at the start of the next step, so the
  last one is never judged, and step i has the length that PyTorch's
  ``CosineAnnealingLR(T_max=num_steps, eta_min=0.01)`` gives when
  ``scheduler.step()`` precedes ``optimizer.step()``: cos-annealed at i + 1,
  from 0.994 down to 0.01 for 20 steps. Unlike advertorch, the budget never
  exceeds the largest norm the [0, 1] box allows (which 20 steps from norm 1
  cannot reach: 1.05^20 = 2.65), so long runs do not waste steps shrinking a
  budget that clipping had already made meaningless.

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) integer labels.
    key: PRNG key, used only to replace zero gradients by random directions.
    num_steps: static int >= 0.
    gamma: norm-budget factor in [0, 1].
    init_norm: initial norm budget > 0.
    max_norm: if given (> 0), the returned perturbations are projected onto
      the l2 ball of this radius, which may undo their success.
    levels: if given (>= 2), every iterate ``x + delta`` is rounded to this
      many evenly spaced values in [0, 1] (advertorch's default: 256, as 8-bit
      images), so every point judged adversarial is a valid image.
    unroll: unroll factor of the step loop (static).

  Returns:
    (x_adv, norms): x_adv is ``x`` plus the best perturbation (``x`` where
    none was found); norms (N,) is the l2 norm of the best adversarial
    perturbation before any ``max_norm`` projection, inf where none was found.
  """
  _check_batch(x, y)
  _validate.steps("num_steps", num_steps)
  _validate.in_unit_interval("gamma", gamma)
  _validate.positive("init_norm", init_norm)
  if max_norm is not None:
    _validate.positive("max_norm", max_norm)
  if levels is not None and (not isinstance(levels, int) or levels < 2):
    raise ValueError(f"levels must be an integer >= 2 or None, got {levels!r}.")
  n = x.shape[0]
  worst_norm = l2_norm(jnp.maximum(x, 1.0 - x))
  ce = lambda logits: losses.cross_entropy(logits, y)

  def step(i, carry):
    delta, budget, best_norm, best_delta = carry
    size = l2_norm(delta)
    _, logits, grad = _loss_and_grad(logits_fn, ce, x + delta)
    is_adv = _misclassified(logits, y)
    better = is_adv & (size < best_norm)
    best_norm = jnp.where(better, size, best_norm)
    best_delta = _where(better, delta, best_delta)
    g_norm = l2_norm(grad)
    noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    direction = _where(g_norm > 0,
                       _scale(1.0 / jnp.where(g_norm > 0, g_norm, 1.0), grad),
                       noise)
    # PyTorch's scheduler.step() runs before optimizer.step() in the
    # reference, so step i already uses the schedule's value at i + 1.
    delta = delta + _ddn_learning_rate(i + 1, num_steps) * direction
    budget = jnp.minimum(budget * jnp.where(is_adv, 1.0 - gamma, 1.0 + gamma),
                         worst_norm)
    size = l2_norm(delta)
    delta = _scale(budget / jnp.where(size > 0, size, 1.0), delta)
    x_new = x + delta
    if levels is not None:
      x_new = jnp.round(x_new * (levels - 1)) / (levels - 1)
    delta = jnp.clip(x_new, 0.0, 1.0) - x
    return delta, budget, best_norm, best_delta

  init = (jnp.zeros_like(x), jnp.full((n,), init_norm, x.dtype), worst_norm,
          jnp.zeros_like(x))
  _, _, best_norm, best_delta = lax.fori_loop(
      0, num_steps, step, init, unroll=_unroll(num_steps, unroll))
  found = best_norm < worst_norm
  norms = jnp.where(found, best_norm, jnp.inf)
  if max_norm is not None:
    size = l2_norm(best_delta)
    best_delta = _scale(jnp.where(size > max_norm, max_norm / size, 1.0),
                        best_delta)
  x_adv = jnp.clip(x + best_delta, 0.0, 1.0)
  return lax.stop_gradient(x_adv), lax.stop_gradient(norms)


# ------------------------------------------------------- MultiTargeted --


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
  _check_batch(x, y)
  _check_iterative(eps, step_size, num_steps, norm)
  clean_logits = logits_fn(x)
  num_classes = clean_logits.shape[1]
  num_targets = num_classes - 1 if num_targets is None else num_targets
  _check_count("num_targets", num_targets, 1, num_classes - 1)
  targets = _top_other_classes(clean_logits, y, num_targets)

  def per_target(target_and_key):
    target, k = target_and_key
    toward_target = lambda lg: _label_logit(lg, target) - _label_logit(lg, y)
    start = _random_start(k, x, eps, norm) if random_start else x
    x_t = _pgd_run(logits_fn, toward_target, x, start, eps=eps,
                   step_size=step_size, num_steps=num_steps, norm=norm,
                   unroll=unroll)
    margin = losses.margin(logits_fn(x_t), y)
    return _Worst(x_t, margin > 0, margin)

  best = _worst_over(per_target, _no_worst_yet(x),
                     (targets.T, jax.random.split(key, num_targets)),
                     num_targets)
  return lax.stop_gradient(best.x_adv)


# ------------------------------------------------------------------ APGD --


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
  if norm == "linf":
    t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    t = _scale(1.0 / (_linf_norm(t) + _TINY), t)
  else:
    t = _unit_l2(jax.random.normal(key, x.shape, x.dtype))
  return jnp.clip(x + eps * t, 0.0, 1.0)


def _apgd_move(x_adv, x_prev, grad, step, x, eps, norm: str, momentum):
  """One APGD step with heavy-ball momentum ``momentum`` (alpha).

  z = P(x_k + eta dir(grad)), then
  x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha) (x_k - x_{k-1})).
  """
  z = project(x_adv + _scale(step, _ascent_direction(grad, norm)), x, eps, norm)
  return project(x_adv + momentum * (z - x_adv)
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


def _apgd_run(logits_fn: LogitsFn, loss_fn: PerExampleLoss, x: jax.Array,
              y: jax.Array, key: jax.Array, *, eps, num_steps: int, norm: str,
              rho, unroll) -> _Worst:
  """One APGD run (AutoAttack's ``attack_single_run``), per-example state."""
  is_check, window = _checkpoint_tables(num_steps)
  is_check, window = jnp.asarray(is_check), jnp.asarray(window)
  start = _apgd_start(key, x, eps, norm)
  loss0, logits0, grad0 = _loss_and_grad(logits_fn, loss_fn, start)
  n = x.shape[0]
  state = _ApgdState(
      x_adv=start, x_prev=start, grad=grad0,
      step=jnp.full((n,), 2.0, x.dtype) * eps,
      x_best=start, grad_best=grad0, loss_best=loss0, x_best_adv=start,
      fooled=_misclassified(logits0, y), loss_prev=loss0,
      increases=jnp.zeros((n,), jnp.int32), loss_best_last=loss0,
      reduced_last=jnp.ones((n,), bool))

  def step(i, s: _ApgdState) -> _ApgdState:
    # The first step has no momentum (alpha = 1), later ones alpha = 0.75.
    momentum = jnp.where(i > 0, 0.75, 1.0).astype(x.dtype)
    x_new = _apgd_move(s.x_adv, s.x_prev, s.grad, s.step, x, eps, norm,
                       momentum)
    loss, logits, grad = _loss_and_grad(logits_fn, loss_fn, x_new)
    wrong = _misclassified(logits, y)
    improved = loss > s.loss_best
    loss_best = jnp.where(improved, loss, s.loss_best)
    x_best = _where(improved, x_new, s.x_best)
    grad_best = _where(improved, grad, s.grad_best)
    increases = s.increases + (loss > s.loss_prev).astype(jnp.int32)

    check = is_check[i]
    oscillating = increases <= window[i] * rho
    stalled = ~s.reduced_last & (s.loss_best_last >= loss_best)
    halve = check & (oscillating | stalled)
    # On halving, restart from the best point with its gradient.
    return _ApgdState(
        x_adv=_where(halve, x_best, x_new), x_prev=s.x_adv,
        grad=_where(halve, grad_best, grad),
        step=jnp.where(halve, 0.5 * s.step, s.step),
        x_best=x_best, grad_best=grad_best, loss_best=loss_best,
        x_best_adv=_where(wrong, x_new, s.x_best_adv),
        fooled=s.fooled | wrong, loss_prev=loss,
        increases=jnp.where(check, 0, increases),
        loss_best_last=jnp.where(check, loss_best, s.loss_best_last),
        reduced_last=jnp.where(check, oscillating | stalled, s.reduced_last))

  s = lax.fori_loop(0, num_steps, step, state,
                    unroll=_unroll(num_steps, unroll))
  return _Worst(_where(s.fooled, s.x_best_adv, s.x_best), s.fooled,
                s.loss_best)


def _check_apgd(x, y, eps, num_steps, norm, rho) -> None:
  _check_batch(x, y)
  _check_ball(eps, norm)
  _validate.steps("num_steps", num_steps)
  _validate.in_unit_interval("rho", rho)


def _finish_apgd(best: _Worst, x: jax.Array, clean_logits: jax.Array,
                 y: jax.Array) -> jax.Array:
  # As in AutoAttack, points misclassified when clean are returned unchanged.
  out = _where(_misclassified(clean_logits, y), x, best.x_adv)
  return lax.stop_gradient(out)


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
  _check_apgd(x, y, eps, num_steps, norm, rho)
  _check_count("restarts", restarts, 1)
  loss_fn = losses.get(loss)
  per_example = lambda logits: loss_fn(logits, y)
  clean_logits = logits_fn(x)

  def run(k):
    return _apgd_run(logits_fn, per_example, x, y, k, eps=eps,
                     num_steps=num_steps, norm=norm, rho=rho, unroll=unroll)

  best = _worst_over(run, _no_worst_yet(x), jax.random.split(key, restarts),
                     restarts)
  return _finish_apgd(best, x, clean_logits, y)


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
  _check_apgd(x, y, eps, num_steps, norm, rho)
  clean_logits = logits_fn(x)
  num_classes = clean_logits.shape[1]
  if num_classes < 4:
    raise ValueError(f"apgd_targeted needs at least 4 classes for the targeted "
                     f"DLR loss, got {num_classes}.")
  _check_count("num_targets", num_targets, 1, num_classes - 1)
  targets = _top_other_classes(clean_logits, y, num_targets)

  def per_target(target_and_key):
    target, k = target_and_key
    loss_fn = lambda logits: losses.dlr_targeted(logits, y, target)
    return _apgd_run(logits_fn, loss_fn, x, y, k, eps=eps,
                     num_steps=num_steps, norm=norm, rho=rho, unroll=unroll)

  best = _worst_over(per_target, _no_worst_yet(x),
                     (targets.T, jax.random.split(key, num_targets)),
                     num_targets)
  return _finish_apgd(best, x, clean_logits, y)


# ---------------------------------------------- random search, loss trace --


def random_search(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                  key: jax.Array, *, eps, num_steps: int, p_init: float = 0.8
                  ) -> dict[str, jax.Array]:
  """A gradient-free l_inf attack: Square-Attack-like random vertex search.

  Starts, as Square Attack (Andriushchenko et al. 2020), from vertical
  stripes of +-eps; each step redraws a random square window of the current
  perturbation as a vertex (+-eps per channel) and keeps the change where
  the decision value z_y - max_{i != y} z_i drops, until the point is
  misclassified. The window covers a fraction p of the pixels, p_init halved
  on Square Attack's schedule (rescaled to ``num_steps``). One forward pass
  per step and no gradients, so it is immune to gradient masking.

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) images in [0, 1].
    y: (N,) labels.
    key: PRNG key.
    eps: l_inf radius (may be traced).
    num_steps: queries after the first, a static int >= 0.
    p_init: initial window fraction of the pixels.

  Returns:
    {"x_adv": (N, H, W, C) in the ball, "decision": (N,) its decision value}.
  """
  _validate.batch(x, y)
  n, h, w, c = x.shape
  k_init, k_loop = jax.random.split(key)
  signs = jnp.array([-1.0, 1.0], x.dtype)
  stripes = eps * jax.random.choice(k_init, signs, (n, 1, w, c))
  x_best = jnp.clip(x + stripes, 0.0, 1.0)
  m_best = losses.decision_value(logits_fn(x_best), y)
  rows, cols = jnp.arange(h), jnp.arange(w)
  # Square Attack's schedule for a 10,000-query budget: p_init / 2^k after
  # these (rescaled) query counts.
  thresholds = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

  def step(i, carry):
    x_best, m_best = carry
    k_pos, k_sign = jax.random.split(jax.random.fold_in(k_loop, i))
    it = (i * 10000) // max(num_steps, 1)
    p = jnp.asarray(p_init, x.dtype)
    for j, t in enumerate(thresholds):
      p = jnp.where(it > t, p_init / 2 ** (j + 1), p)
    side = jnp.clip(jnp.round(jnp.sqrt(p * h * w)), 1, max(min(h, w) - 1, 1)
                    ).astype(jnp.int32)
    kh, kw = jax.random.split(k_pos)
    top = jax.random.randint(kh, (n,), 0, h - side + 1)
    left = jax.random.randint(kw, (n,), 0, w - side + 1)
    in_h = (rows[None] >= top[:, None]) & (rows[None] < (top + side)[:, None])
    in_w = (cols[None] >= left[:, None]) & (cols[None] < (left + side)[:, None])
    window = in_h[:, :, None, None] & in_w[:, None, :, None]
    vertex = eps * jax.random.choice(k_sign, signs, (n, 1, 1, c))
    x_new = jnp.clip(jnp.where(window, x + vertex, x_best), 0.0, 1.0)
    m_new = losses.decision_value(logits_fn(x_new), y)
    take = (m_new < m_best) & (m_best > 0)
    return (jnp.where(take[:, None, None, None], x_new, x_best),
            jnp.where(take, m_new, m_best))

  x_best, m_best = lax.fori_loop(0, num_steps, step, (x_best, m_best))
  return {"x_adv": lax.stop_gradient(x_best), "decision": m_best}


def pgd_loss_trace(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                   key: jax.Array, *, eps, step_size, num_steps: int
                   ) -> dict[str, jax.Array]:
  """l_inf PGD with CE and a uniform start, recording the loss at each step.

  The same iterates as :func:`pgd` with one restart and the
  same key, plus the per-example cross-entropy of every iterate.

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) images in [0, 1].
    y: (N,) labels.
    key: PRNG key of the random start.
    eps: l_inf radius.
    step_size: sign-step length.
    num_steps: static int >= 0.

  Returns:
    {"x_adv": the last iterate, "loss": (num_steps + 1, N) CE of iterates
    0 (the random start) .. num_steps}.
  """
  _validate.batch(x, y)
  noise = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  start = jnp.clip(x + eps * noise, 0.0, 1.0)

  def total(z):
    per = losses.cross_entropy(logits_fn(z), y)
    return per.sum(), per

  def step(x_adv, _):
    (_, per), grad = jax.value_and_grad(total, has_aux=True)(x_adv)
    return project(x_adv + step_size * jnp.sign(grad), x, eps), per

  x_adv, history = lax.scan(step, start, None, length=num_steps)
  last = losses.cross_entropy(logits_fn(x_adv), y)
  return {"x_adv": lax.stop_gradient(x_adv),
          "loss": jnp.concatenate([history, last[None]], axis=0)}


# ------------------------------------------------------------ worst case --

# Compiled per logits_fn, weakly: an entry (and the executables holding the
# closed-over parameters) goes away with its logits_fn.
_COMPILED: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _predict_labels(fn: LogitsFn, x: jax.Array) -> jax.Array:
  return jnp.argmax(fn(x), axis=1)


def _compiled(attack: Callable[..., Any] | None, logits_fn: LogitsFn
              ) -> Callable[..., Any]:
  """A jitted ``attack(logits_fn, x, y, key)`` (or prediction for None)."""
  try:
    per_fn = _COMPILED.setdefault(logits_fn, {})
    ref = weakref.ref(logits_fn)
  except TypeError:  # not weak-referenceable: compile without caching
    per_fn, ref = {}, (lambda: logits_fn)
  if attack not in per_fn:
    # Through the weak reference, the cached executables do not keep
    # logits_fn (and its parameters) alive.
    if attack is None:
      per_fn[attack] = jax.jit(lambda x: _predict_labels(ref(), x))
    else:
      per_fn[attack] = jax.jit(lambda x, y, k: attack(ref(), x, y, k))
  return per_fn[attack]


def _bucket(m: int, n: int) -> int:
  """Padded subset size: the next power of two, at most the full batch."""
  return min(1 << max(m - 1, 0).bit_length(), n)


def worst_case(attacks: Sequence[tuple[str, Callable[..., Any]]],
               logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
               key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Runs attacks in order, each on the points still robust (AutoAttack-style).

  An evaluation tool that runs on the host between attacks: after each attack
  the still-correct points are gathered, padded (by repeating one of them) to
  a power-of-two size or the full batch so that at most log2(N) + 1 shapes are
  compiled per attack, and passed to the next attack. The jitted attacks are
  cached per ``logits_fn`` object, so pass the same ``logits_fn`` for every
  batch to compile once.

  Args:
    attacks: (name, attack) pairs; ``attack(logits_fn, x, y, key)`` returns
      x_adv or a tuple whose first element is x_adv (e.g. :func:`ddn`). It is
      run under ``jax.jit``, so bind its settings (``functools.partial``).
    logits_fn: x -> logits.
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) integer labels.
    key: PRNG key; attack i gets ``jax.random.fold_in(key, i)``.

  Returns:
    (x_adv, broken_by): x_adv holds the first successful adversarial point per
    example (``x`` where clean-misclassified or never broken); broken_by (N,)
    int32 holds the index into ``attacks`` of the first attack that broke the
    point, -1 for points no attack broke (robust) and -2 for points
    misclassified when clean.
  """
  _check_batch(x, y)
  for entry in attacks:
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2
            and callable(entry[1])):
      raise ValueError(f"attacks must be (name, callable) pairs, got "
                       f"{entry!r}.")
  n = x.shape[0]
  x_clean, y_np = np.asarray(x), np.asarray(y)
  x_adv = x_clean.copy()
  predict = _compiled(None, logits_fn)
  broken_by = np.where(np.asarray(predict(x)) != y_np, -2, -1).astype(np.int32)
  for i, (_, attack) in enumerate(attacks):
    robust = np.flatnonzero(broken_by == -1)
    if robust.size == 0:
      break
    padded = np.concatenate([robust, np.full(
        _bucket(robust.size, n) - robust.size, robust[0], robust.dtype)])
    out = _compiled(attack, logits_fn)(
        jnp.asarray(x_clean[padded]), jnp.asarray(y_np[padded]),
        jax.random.fold_in(key, i))
    if isinstance(out, (tuple, list)):
      out = out[0]
    hit = (np.asarray(predict(out)) != y_np[padded])[:robust.size]
    x_adv[robust[hit]] = np.asarray(out)[:robust.size][hit]
    broken_by[robust[hit]] = i
  return jnp.asarray(x_adv), jnp.asarray(broken_by)


# --------------------------------------------------------------- registry --

ATTACKS: dict[str, Callable[..., Any]] = {
    "fgsm": fgsm,
    "pgd": pgd,
    "bim": bim,
    "mifgsm": mifgsm,
    "ddn": ddn,
    "multi_targeted": multi_targeted,
    "apgd": apgd,
    "apgd_targeted": apgd_targeted,
}


def names() -> list[str]:
  """Returns the names accepted by :func:`get`."""
  return list(ATTACKS)


def get(name: str) -> Callable[..., Any]:
  """Looks up an attack by name.

  Args:
    name: one of :func:`names`.

  Returns:
    The attack function.

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  _validate.choice("attack", name, ATTACKS)
  return ATTACKS[name]


__all__ = [
    "NORMS", "ATTACKS", "names", "get", "l2_norm", "project", "fgsm", "pgd",
    "bim", "mifgsm", "ddn", "multi_targeted", "apgd_checkpoints", "apgd",
    "apgd_targeted", "worst_case",
]
