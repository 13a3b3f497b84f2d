"""Losses, norms and eps-ball projections in float32 whatever the model computes in.

A model may compute in bfloat16 (``config.model.dtype``), and a user may hand
an attack bfloat16 images or a ``logits_fn`` that returns bfloat16 logits. In
bfloat16 a loss keeps about 3 significant digits, and ``x + eps`` is rounded
to the nearest representable value, so a projected point can leave the
eps-ball (at eps = 0.3, one bf16 step of 0.01 reached |delta| = 0.3027).
:func:`float32_inputs` wraps an attack or a regularizer so that it works on
float32 copies of the images and of the logits: every loss, norm and
projection is float32, the ball holds exactly, and the returned points are
float32. Arrays that already are float32 (or float64) pass through untouched,
so float32 code runs exactly as before.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax import attacks

    w = jax.random.normal(jax.random.key(0), (28 * 28, 10)).astype(jnp.bfloat16)
    logits_fn = lambda z: z.reshape(z.shape[0], -1).astype(jnp.bfloat16) @ w
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1)).astype(jnp.bfloat16)
    y = jnp.arange(4)
    x_adv = attacks.pgd(logits_fn, x, y, jax.random.key(2), eps=0.3,
                        step_size=0.01, num_steps=5)
    x_adv.dtype                                        # float32
    float(jnp.max(jnp.abs(x_adv - x.astype(jnp.float32))))  # <= 0.3
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp


def at_least_float32(a: Any) -> Any:
  """A floating array in float32 (float64 stays); anything else unchanged."""
  dtype = getattr(a, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    return a
  target = jnp.promote_types(dtype, jnp.float32)
  return a if dtype == target else jnp.asarray(a).astype(target)


def float32_logits_fn(logits_fn: Callable[[jax.Array], jax.Array]
                      ) -> Callable[[jax.Array], jax.Array]:
  """``logits_fn`` with its logits returned in at least float32."""
  return lambda z: at_least_float32(logits_fn(z))


def float32_inputs(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Decorates ``fn(logits_fn, x, ...)``: float32 images and logits inside.

  Args:
    fn: an attack or regularizer taking a logits function and images first.

  Returns:
    The wrapped function, with the same signature and docstring.
  """

  @functools.wraps(fn)
  def wrapped(logits_fn, x, *args, **kwargs):
    # Further logits functions come as keywords (inner_logits_fn,
    # direction_logits_fn): their losses are float32 too.
    for name, value in kwargs.items():
      if name.endswith("logits_fn") and value is not None:
        kwargs[name] = float32_logits_fn(value)
    return fn(float32_logits_fn(logits_fn), at_least_float32(x), *args,
              **kwargs)

  return wrapped
