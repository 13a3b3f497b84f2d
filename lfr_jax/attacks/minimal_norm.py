"""DDN, the Decoupled Direction and Norm l2 attack: the smallest perturbation.

Unlike the fixed-radius attacks, :func:`ddn` searches per example for the
smallest l2 perturbation that changes the decision, and returns its norm
with the point (Rony et al. 2019, as in advertorch's ``DDNL2Attack``).

Example::

    import jax, jax.numpy as jnp
    from lfr_jax.attacks import minimal_norm

    w = jax.random.normal(jax.random.key(0), (16, 2))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
    x = jnp.full((2, 4, 4, 1), 0.5); y = jnp.array([0, 1])
    x_adv, norms = minimal_norm.ddn(logits_fn, x, y, jax.random.key(1),
                                    num_steps=20)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lfr_jax import _validate
from lfr_jax import losses
from lfr_jax import precision
from lfr_jax.attacks import common


def _ddn_learning_rate(i, num_steps: int):
  """PyTorch's CosineAnnealingLR from 1 to eta_min = 0.01 over num_steps."""
  return 0.01 + 0.99 * 0.5 * (1.0 + jnp.cos(jnp.pi * i / num_steps))


def _check_ddn(x, y, key, num_steps, gamma, init_norm, max_norm, levels
               ) -> None:
  common.check_batch(x, y)
  common.check_key(key)
  _validate.steps("num_steps", num_steps)
  _validate.in_unit_interval("gamma", gamma)
  _validate.positive("init_norm", init_norm)
  if max_norm is not None:
    _validate.positive("max_norm", max_norm)
  if levels is not None and (not isinstance(levels, int) or levels < 2):
    raise ValueError(f"levels must be an integer >= 2 or None, got {levels!r}.")


def _limit_norm(delta: jax.Array, max_norm) -> jax.Array:
  """Scales down the perturbations longer than ``max_norm`` to that length."""
  max_norm = common.nonneg_radius(max_norm)
  size = common.l2_norm(delta)
  return common.scale_per_example(
      jnp.where(size > max_norm, max_norm / size, 1.0), delta)


@precision.float32_inputs
def ddn(logits_fn: common.LogitsFn, x: jax.Array, y: jax.Array,
        key: jax.Array, *, num_steps: int, gamma=0.05, init_norm=1.0,
        max_norm=None, levels: int | None = None, unroll: bool | int = False
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
  _check_ddn(x, y, key, num_steps, gamma, init_norm, max_norm, levels)
  n = x.shape[0]
  worst_norm = common.l2_norm(jnp.maximum(x, 1.0 - x))
  ce = lambda logits: losses.cross_entropy(logits, y)

  def step(i, carry):
    delta, budget, best_norm, best_delta = carry
    size = common.l2_norm(delta)
    _, logits, grad = common.loss_and_grad(logits_fn, ce, x + delta)
    is_adv = common.misclassified(logits, y)
    better = is_adv & (size < best_norm)
    best_norm = jnp.where(better, size, best_norm)
    best_delta = common.select_per_example(better, delta, best_delta)
    grad_norm = common.l2_norm(grad)
    noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    direction = common.select_per_example(
        grad_norm > 0,
        common.scale_per_example(
            1.0 / jnp.where(grad_norm > 0, grad_norm, 1.0), grad),
        noise)
    # PyTorch's scheduler.step() runs before optimizer.step() in the
    # reference, so step i already uses the schedule's value at i + 1.
    delta = delta + _ddn_learning_rate(i + 1, num_steps) * direction
    budget = jnp.minimum(budget * jnp.where(is_adv, 1.0 - gamma, 1.0 + gamma),
                         worst_norm)
    size = common.l2_norm(delta)
    delta = common.scale_per_example(
        budget / jnp.where(size > 0, size, 1.0), delta)
    x_new = x + delta
    if levels is not None:
      x_new = jnp.round(x_new * (levels - 1)) / (levels - 1)
    delta = jnp.clip(x_new, 0.0, 1.0) - x
    return delta, budget, best_norm, best_delta

  init = (jnp.zeros_like(x), jnp.full((n,), init_norm, x.dtype), worst_norm,
          jnp.zeros_like(x))
  _, _, best_norm, best_delta = lax.fori_loop(
      0, num_steps, step, init,
      unroll=common.unroll_factor(num_steps, unroll))
  found = best_norm < worst_norm
  norms = jnp.where(found, best_norm, jnp.inf)
  if max_norm is not None:
    best_delta = _limit_norm(best_delta, max_norm)
  x_adv = jnp.clip(x + best_delta, 0.0, 1.0)
  return lax.stop_gradient(x_adv), lax.stop_gradient(norms)
