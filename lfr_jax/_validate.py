"""Argument checks that run in Python, before anything reaches XLA.

Each check raises ``ValueError`` with one sentence. What holds where:

- Shapes, dtypes (floating images, integer labels), PRNG keys (typed or
  raw) and static settings (norms, step counts, names) are checked on every
  call, traced or not: they are known before tracing.
- Checks on array *values* (eps >= 0, pixels in [0, 1]) run only on
  concrete arrays, i.e. when a function is called eagerly; under
  ``jax.jit`` the values are tracers and cannot be read without a host
  sync. For radii the library instead holds by construction: every
  projection onto an eps-ball (and every sample from one) uses
  ``max(eps, 0)``, so a traced negative eps gives the clean point
  (delta = 0) and no output ever leaves the ball. Pixel values of a traced
  batch are not checked (outputs are still clipped to [0, 1]).

Example::

    import jax
    from lfr_jax import _validate
    _validate.nonneg("eps", 0.3)
    _validate.key("key", jax.random.key(0))   # or jax.random.PRNGKey(0)
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np


def _concrete(v) -> bool:
  return not isinstance(v, jax.core.Tracer)


def nonneg(name: str, value) -> None:
  """Raises unless ``value >= 0`` (skipped for traced values)."""
  if _concrete(value) and not np.all(np.asarray(value) >= 0):
    raise ValueError(f"{name} must be >= 0, got {value}.")


def positive(name: str, value) -> None:
  """Raises unless ``value > 0`` (skipped for traced values)."""
  if _concrete(value) and not np.all(np.asarray(value) > 0):
    raise ValueError(f"{name} must be > 0, got {value}.")


def in_unit_interval(name: str, value) -> None:
  """Raises unless ``0 <= value <= 1`` (skipped for traced values)."""
  if _concrete(value) and not np.all((np.asarray(value) >= 0) & (np.asarray(value) <= 1)):
    raise ValueError(f"{name} must lie in [0, 1], got {value}.")


def steps(name: str, value) -> None:
  """Raises unless ``value`` is a Python int >= 0 (it shapes the loop)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be a non-negative int, got {value!r}.")
  if value < 0:
    raise ValueError(f"{name} must be >= 0, got {value}.")


def key(name: str, value, hint: str = "") -> None:
  """Raises unless ``value`` is a PRNG key: typed (``jax.random.key``) or raw.

  A raw key is ``jax.random.PRNGKey``'s uint32 array of 2 (or 4) words.
  Checked on tracers too (dtype and shape are static).

  Args:
    name: the argument's name.
    value: the argument.
    hint: appended to the message (e.g. the right call).
  """
  dtype = getattr(value, "dtype", None)
  shape = tuple(getattr(value, "shape", ()) or ())
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return
  if dtype == np.uint32 and len(shape) >= 1 and shape[-1] in (2, 4):
    return
  got = (f"{dtype} array of shape {shape}" if dtype is not None
         else type(value).__name__)
  raise ValueError(f"{name} must be a PRNG key (jax.random.key(0), or a raw "
                   f"jax.random.PRNGKey(0)), got {got}{hint}.")


def choice(name: str, value, valid: Iterable[str]) -> None:
  """Raises unless ``value`` is one of ``valid``, listing the valid names."""
  valid = list(valid)
  if value not in valid:
    raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}.")


def batch(x, y=None, *, check_range: bool = True) -> None:
  """Checks an image batch (N, H, W, C) and optional labels (N,).

  Args:
    x: floating-point images; pixel range [0, 1] is checked when ``x`` is
      concrete.
    y: integer labels or None.
    check_range: whether to check the pixel range.
  """
  if getattr(x, "ndim", None) != 4:
    raise ValueError(f"x must be a batch of images (N, H, W, C), got shape "
                     f"{getattr(x, 'shape', None)}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must hold floating-point pixels in [0, 1], got dtype "
                     f"{x.dtype} (convert with x.astype(jnp.float32) / 255).")
  if y is not None:
    if getattr(y, "ndim", None) != 1:
      raise ValueError(f"y must be a vector of integer labels (N,), got shape "
                       f"{getattr(y, 'shape', None)}.")
    if y.shape[0] != x.shape[0]:
      raise ValueError(f"x and y have different batch sizes: {x.shape[0]} vs "
                       f"{y.shape[0]}.")
    if not np.issubdtype(np.dtype(y.dtype), np.integer):
      raise ValueError(f"y must hold integer labels, got dtype {y.dtype}.")
  if check_range and _concrete(x):
    # np.asarray first: jnp reductions would be staged into an enclosing trace.
    values = np.asarray(x)
    lo, hi = float(values.min()), float(values.max())
    if lo < 0.0 or hi > 1.0:
      raise ValueError(f"x must hold pixels in [0, 1], got values in "
                       f"[{lo:.4g}, {hi:.4g}].")
