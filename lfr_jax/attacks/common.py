"""Shared pieces of the attacks: norms, projection, starts, gradients, checks.

Everything here works per example on a batch (N, H, W, C): norms return (N,),
``select_per_example`` and ``scale_per_example`` broadcast an (N,) vector
over the trailing axes. :class:`WorstSoFar` and its helpers keep, per
example, the strongest point found over several runs (restarts or target
classes): a misclassified point beats a correct one, and among equals the
higher score wins. The ``check_*`` functions validate an attack's arguments
in Python before anything is traced.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax.attacks import common

    x = jnp.full((2, 4, 4, 1), 0.5)
    x_far = x + 1.0
    inside = common.project(x_far, x, 0.3, "l2")     # ||inside - x||_2 = 0.3
    sizes = common.l2_norm(inside - x)               # (2,) both 0.3
    start = common.uniform_in_ball(jax.random.key(0), x, 0.1, "linf")
    common.check_iterative(0.3, 0.01, 40, "linf")    # raises on bad values
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lfr_jax import _validate

LogitsFn = Callable[[jax.Array], jax.Array]
PerExampleLoss = Callable[[jax.Array], jax.Array]
NORMS = ("linf", "l2")

# AutoAttack's guard in its normalizations (x / (||x|| + 1e-12)).
TINY = 1e-12


# ------------------------------------------------------ per-example maths --


def select_per_example(mask: jax.Array, a: jax.Array, b: jax.Array
                       ) -> jax.Array:
  """Per-example select: ``mask`` (N,) broadcast over the trailing axes."""
  return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)


def scale_per_example(s: jax.Array, v: jax.Array) -> jax.Array:
  """Multiplies each example of ``v`` by its scalar in ``s`` (N,)."""
  return s.reshape(s.shape + (1,) * (v.ndim - 1)) * v


def l2_norm(v: jax.Array) -> jax.Array:
  """Per-example l2 norm of a batch ``v`` (N, ...), returned as (N,)."""
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def linf_norm(v: jax.Array) -> jax.Array:
  """Per-example l_inf norm of a batch ``v`` (N, ...), returned as (N,)."""
  return jnp.max(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)


def l1_norm(v: jax.Array) -> jax.Array:
  """Per-example l1 norm of a batch ``v`` (N, ...), returned as (N,)."""
  return jnp.sum(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)


def unit_l2(v: jax.Array) -> jax.Array:
  """``v`` scaled to unit l2 norm per example (zero stays zero)."""
  return scale_per_example(1.0 / (l2_norm(v) + TINY), v)


# ------------------------------------------------------- the eps-ball --


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
    The projected points; a negative (traced) ``eps`` projects onto x.
  """
  eps = nonneg_radius(eps)  # the ball of a negative radius is its centre
  if norm == "linf":
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)
  delta = x_adv - x
  size = l2_norm(delta)
  # AutoAttack's x + delta / (|delta| + tiny) * min(eps, |delta|): no NaN at 0.
  return jnp.clip(
      x + scale_per_example(jnp.minimum(eps, size) / (size + TINY), delta),
      0.0, 1.0)


def nonneg_radius(eps):
  """``max(eps, 0)``: the ball of a negative (traced) radius is the centre.

  Concrete radii are checked (:func:`check_ball`) before anything is
  traced; a traced one cannot be read without a host sync, so every
  projection and every sample of a ball goes through this, and no output
  leaves the ball whatever ``eps`` is.
  """
  if isinstance(eps, (int, float)):
    return max(eps, 0.0)
  return jnp.maximum(eps, 0.0)


def ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
  """Steepest-ascent unit step for the ``norm`` ball (zero where grad is 0)."""
  if norm == "linf":
    return jnp.sign(grad)
  return unit_l2(grad)


def uniform_in_ball(key: jax.Array, x: jax.Array, eps, norm: str
                    ) -> jax.Array:
  """A uniform sample of the ``norm`` ball B(x, eps), clipped to [0, 1]."""
  eps = nonneg_radius(eps)
  if norm == "linf":
    noise = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    return jnp.clip(x + eps * noise, 0.0, 1.0)
  key_direction, key_radius = jax.random.split(key)
  direction = unit_l2(jax.random.normal(key_direction, x.shape, x.dtype))
  dim = math.prod(x.shape[1:])
  # Radius eps * U^(1/d) makes the sample uniform in volume, not on the shell.
  radius = eps * jax.random.uniform(key_radius, x.shape[:1],
                                    x.dtype) ** (1.0 / dim)
  return jnp.clip(x + scale_per_example(radius, direction), 0.0, 1.0)


# ------------------------------------------------------ losses, gradients --


def loss_and_grad(logits_fn: LogitsFn, loss_fn: PerExampleLoss,
                  x_adv: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example loss, logits and per-example input gradient in one pass.

  The per-example losses are summed before differentiating: examples do not
  interact inside ``logits_fn``, so each gets its own gradient.
  """

  def total(z):
    logits = logits_fn(z)
    per_example = loss_fn(logits)
    return per_example.sum(), (per_example, logits)

  (_, (per_example, logits)), grad = jax.value_and_grad(
      total, has_aux=True)(x_adv)
  return per_example, logits, grad


def misclassified(logits: jax.Array, y: jax.Array) -> jax.Array:
  """(N,) bool: the top logit is not the label's."""
  return jnp.argmax(logits, axis=1) != y


def top_other_classes(logits: jax.Array, y: jax.Array, k: int) -> jax.Array:
  """(N, k) indices of the k largest logits other than the true class."""
  masked = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool),
                     -jnp.inf, logits)
  return lax.top_k(masked, k)[1]


def label_logit(logits: jax.Array, y: jax.Array) -> jax.Array:
  """(N,) the logit of class ``y[n]`` for each example n."""
  return jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]


def unroll_factor(num_steps: int, unroll) -> int:
  """fori_loop's unroll factor: True means fully unrolled."""
  if unroll is True:
    return max(int(num_steps), 1)
  return max(int(unroll), 1)


# ------------------------------------------------- the worst point so far --


class WorstSoFar(NamedTuple):
  """The per-example worst point found so far."""
  x_adv: jax.Array   # (N, H, W, C)
  fooled: jax.Array  # (N,) bool: misclassified
  score: jax.Array   # (N,) the attack's loss; ranks points that are not fooled


def no_worst_yet(x: jax.Array) -> WorstSoFar:
  """The start of a fold: ``x`` itself, not fooled, with score -inf."""
  n = x.shape[0]
  return WorstSoFar(x, jnp.zeros((n,), bool),
                    jnp.full((n,), -jnp.inf, x.dtype))


def keep_worst(best: WorstSoFar, candidate: WorstSoFar) -> WorstSoFar:
  """Misclassified beats correct; among equals, the higher score wins."""
  take = (candidate.fooled & ~best.fooled) | (
      (candidate.fooled == best.fooled) & (candidate.score > best.score))
  return WorstSoFar(select_per_example(take, candidate.x_adv, best.x_adv),
                    best.fooled | candidate.fooled,
                    jnp.where(take, candidate.score, best.score))


def worst_over(run: Callable[[Any], WorstSoFar], init: WorstSoFar, xs: Any,
               length: int) -> WorstSoFar:
  """Folds :func:`keep_worst` over ``run(item)`` for the items of ``xs``.

  A single item runs without a loop: XLA:CPU runs convolution gradients
  inside loops several times slower, and one run is the common case.
  """
  if length == 1:
    return keep_worst(init, run(jax.tree.map(lambda a: a[0], xs)))
  best, _ = lax.scan(lambda best, item: (keep_worst(best, run(item)), None),
                     init, xs)
  return best


# ------------------------------------------------------- argument checks --


def check_batch(x, y) -> None:
  """Floating images (N, H, W, C) in [0, 1] and integer labels (N,)."""
  _validate.batch(x, y)


def check_key(key) -> None:
  """A PRNG key, typed (``jax.random.key``) or raw (``PRNGKey``)."""
  _validate.key("key", key)


def check_ball(eps, norm: str) -> None:
  """A radius >= 0 and a norm of :data:`NORMS`."""
  _validate.nonneg("eps", eps)
  _validate.choice("norm", norm, NORMS)


def check_iterative(eps, step_size, num_steps, norm: str) -> None:
  """The ball, a step size > 0 and a static step count >= 0."""
  check_ball(eps, norm)
  _validate.positive("step_size", step_size)
  _validate.steps("num_steps", num_steps)


def check_count(name: str, value, lo: int, hi: int | None = None) -> None:
  """A static int in [lo, hi]."""
  _validate.steps(name, value)
  if value < lo or (hi is not None and value > hi):
    bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
    raise ValueError(f"{name} must be {bound}, got {value}.")
