"""Attacks that check the others: a gradient-free search and a loss trace.

:func:`random_search` needs no gradients, so it is not fooled by gradient
masking: a model that resists PGD but not random search masks its
gradients. :func:`pgd_loss_trace` records PGD's loss at every step, to see
whether the ascent really ascends. Both return dicts of arrays.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax.attacks import diagnostics

    w = jax.random.normal(jax.random.key(0), (16, 10))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
    x = jnp.full((2, 4, 4, 1), 0.5); y = jnp.array([0, 1])
    found = diagnostics.random_search(logits_fn, x, y, jax.random.key(1),
                                      eps=0.1, num_steps=20)
    trace = diagnostics.pgd_loss_trace(logits_fn, x, y, jax.random.key(1),
                                       eps=0.1, step_size=0.02, num_steps=5)
    losses_per_step = trace["loss"]                  # (6, 2)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lfr_jax import losses
from lfr_jax import precision
from lfr_jax.attacks import common

# Square Attack's schedule for a 10,000-query budget: the window fraction is
# p_init / 2^k after the k-th of these (rescaled) query counts.
_SQUARE_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _window_fraction(i, num_steps: int, p_init: float, dtype) -> jax.Array:
  """Square Attack's fraction p of the pixels at step i of ``num_steps``."""
  query = (i * 10000) // max(num_steps, 1)
  fraction = jnp.asarray(p_init, dtype)
  for halvings, threshold in enumerate(_SQUARE_SCHEDULE, start=1):
    fraction = jnp.where(query > threshold, p_init / 2 ** halvings, fraction)
  return fraction


def _random_squares(key: jax.Array, n: int, height: int, width: int,
                    side: jax.Array) -> jax.Array:
  """(N, H, W, 1) masks, each of one ``side`` x ``side`` square at random."""
  key_top, key_left = jax.random.split(key)
  top = jax.random.randint(key_top, (n,), 0, height - side + 1)
  left = jax.random.randint(key_left, (n,), 0, width - side + 1)
  rows, cols = jnp.arange(height), jnp.arange(width)
  in_rows = (rows[None] >= top[:, None]) & (rows[None] < (top + side)[:, None])
  in_cols = (cols[None] >= left[:, None]) & (
      cols[None] < (left + side)[:, None])
  return in_rows[:, :, None, None] & in_cols[:, None, :, None]


@precision.float32_inputs
def random_search(logits_fn: common.LogitsFn, x: jax.Array, y: jax.Array,
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
  common.check_batch(x, y)
  common.check_key(key)
  common.check_ball(eps, "linf")
  eps = common.nonneg_radius(eps)  # its stripes and squares are +-eps
  n, height, width, channels = x.shape
  key_init, key_loop = jax.random.split(key)
  signs = jnp.array([-1.0, 1.0], x.dtype)
  stripes = eps * jax.random.choice(key_init, signs, (n, 1, width, channels))
  x_best = jnp.clip(x + stripes, 0.0, 1.0)
  decision_best = losses.decision_value(logits_fn(x_best), y)
  largest_side = max(min(height, width) - 1, 1)

  def step(i, carry):
    x_best, decision_best = carry
    key_position, key_sign = jax.random.split(jax.random.fold_in(key_loop, i))
    fraction = _window_fraction(i, num_steps, p_init, x.dtype)
    side = jnp.clip(jnp.round(jnp.sqrt(fraction * height * width)), 1,
                    largest_side).astype(jnp.int32)
    window = _random_squares(key_position, n, height, width, side)
    vertex = eps * jax.random.choice(key_sign, signs, (n, 1, 1, channels))
    x_new = jnp.clip(jnp.where(window, x + vertex, x_best), 0.0, 1.0)
    decision_new = losses.decision_value(logits_fn(x_new), y)
    # Only points still classified correctly (decision > 0) keep searching.
    take = (decision_new < decision_best) & (decision_best > 0)
    return (common.select_per_example(take, x_new, x_best),
            jnp.where(take, decision_new, decision_best))

  x_best, decision_best = lax.fori_loop(0, num_steps, step,
                                        (x_best, decision_best))
  return {"x_adv": lax.stop_gradient(x_best), "decision": decision_best}


@precision.float32_inputs
def pgd_loss_trace(logits_fn: common.LogitsFn, x: jax.Array, y: jax.Array,
                   key: jax.Array, *, eps, step_size, num_steps: int
                   ) -> dict[str, jax.Array]:
  """l_inf PGD with CE and a uniform start, recording the loss at each step.

  The same iterates as :func:`lfr_jax.attacks.pgd` with one restart and the
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
  common.check_batch(x, y)
  common.check_key(key)
  common.check_ball(eps, "linf")
  start = common.uniform_in_ball(key, x, eps, "linf")
  ce = lambda logits: losses.cross_entropy(logits, y)

  def step(x_adv, _):
    loss, _, grad = common.loss_and_grad(logits_fn, ce, x_adv)
    return common.project(x_adv + step_size * jnp.sign(grad), x, eps), loss

  x_adv, history = lax.scan(step, start, None, length=num_steps)
  last = ce(logits_fn(x_adv))
  return {"x_adv": lax.stop_gradient(x_adv),
          "loss": jnp.concatenate([history, last[None]], axis=0)}
