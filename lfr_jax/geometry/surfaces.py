"""Decision and loss surfaces of one image on a plane, and the plane's axes.

- :func:`surface` - the decision surface L(x + i u + j v) (decision-surface
  paper, Eq. 1 and 2; LFR Fig. 1) or the loss surface (LFR Fig. 2) of one
  image over an (i, j) grid of :func:`grid_coordinates`.
- :func:`random_direction`, :func:`adversarial_direction`,
  :func:`orthogonalize` - the projection axes (unit l_inf, so that the grid
  step is in pixel units).

Example::

    import jax, jax.numpy as jnp
    from lfr_jax.geometry import surfaces

    w = jax.random.normal(jax.random.key(0), (16, 10))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
    x = jnp.full((4, 4, 1), 0.5); y = jnp.array(3)
    adv = surfaces.adversarial_direction(logits_fn, x, y, kind="margin")
    rnd = surfaces.orthogonalize(
        surfaces.random_direction(jax.random.key(1), x.shape), adv)
    i, j, z = surfaces.surface(logits_fn, x, y, rnd, adv, extent=0.3,
                               resolution=3)          # z: (3, 3)
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from lfr_jax import _validate
from lfr_jax import attacks
from lfr_jax import losses
from lfr_jax import regularizers
from lfr_jax.geometry import chunks

LogitsFn = Callable[[jax.Array], jax.Array]
QUANTITIES = ("decision", "loss")
DIRECTION_NORMS = ("linf", "l2")
ADVERSARIAL_KINDS = ("ce", "margin", "least_likely", "pgd")


def _check_image(x, y, name: str = "x") -> None:
  """One image (H, W, C) in [0, 1] and a scalar integer label."""
  if getattr(x, "ndim", None) != 3:
    raise ValueError(f"{name} must be one image (H, W, C), got shape "
                     f"{getattr(x, 'shape', None)}.")
  y = jnp.asarray(y)
  if y.ndim != 0:
    raise ValueError(f"y must be a scalar label, got shape {y.shape}.")
  _validate.batch(x[None], y[None])


def _check_like(name: str, v, x) -> None:
  if getattr(v, "shape", None) != x.shape:
    raise ValueError(f"{name} must have the image's shape {x.shape}, got "
                     f"{getattr(v, 'shape', None)}.")


# -------------------------------------------------------------- directions --


def random_direction(key: jax.Array, shape, *, norm: str = "linf",
                     dtype=jnp.float32) -> jax.Array:
  """A random unit direction for a projection axis.

  Args:
    key: PRNG key.
    shape: the image shape (H, W, C).
    norm: "linf" (the decision-surface paper: sign of a Gaussian, entries
      +-1, so a grid step of s moves every pixel by s) or "l2" (a Gaussian
      scaled to unit l2 norm).
    dtype: floating dtype.

  Returns:
    The direction, shaped ``shape``.
  """
  _validate.choice("norm", norm, DIRECTION_NORMS)
  gaussian = jax.random.normal(key, tuple(shape), dtype)
  if norm == "linf":
    return jnp.sign(gaussian)
  return gaussian / jnp.linalg.norm(gaussian.ravel())


def orthogonalize(v: jax.Array, u: jax.Array, *, norm: str | None = "linf"
                  ) -> jax.Array:
  """Removes from ``v`` its component along ``u`` (one Gram-Schmidt step).

  Use it so that the random axis of a surface is orthogonal to the
  adversarial one. For sign vectors in high dimension the change is small
  (the overlap is ~1/sqrt(dim)), but it makes the two axes independent.

  Args:
    v: direction to adjust (any shape).
    u: reference direction, same shape. If it is zero, ``v`` is returned
      (rescaled as below).
    norm: rescale the result to ``v``'s own "linf" or "l2" norm, so the grid
      step keeps its units; None keeps the raw projection.

  Returns:
    w with <w, u> = 0 (up to round-off), shaped like ``v``.
  """
  if getattr(v, "shape", None) != getattr(u, "shape", None):
    raise ValueError(f"v and u must have the same shape, got "
                     f"{getattr(v, 'shape', None)} and "
                     f"{getattr(u, 'shape', None)}.")
  if norm is not None:
    _validate.choice("norm", norm, DIRECTION_NORMS)
  u_dot_u = jnp.vdot(u, u)
  coefficient = jnp.where(
      u_dot_u > 0, jnp.vdot(u, v) / jnp.where(u_dot_u > 0, u_dot_u, 1.0), 0.0)
  orthogonal = v - coefficient * u
  if norm is None:
    return orthogonal
  measure = (lambda a: jnp.abs(a).max()) if norm == "linf" else (
      lambda a: jnp.linalg.norm(a.ravel()))
  size = measure(orthogonal)
  return orthogonal * jnp.where(
      size > 0, measure(v) / jnp.where(size > 0, size, 1.0), 1.0)


def _adversarial_direction(logits_fn, x, y, key, *, kind, eps, step_size,
                           num_steps):
  if kind == "pgd":
    x_adv = attacks.pgd(
        logits_fn, x, y, jax.random.key(0) if key is None else key, eps=eps,
        step_size=step_size, num_steps=num_steps,
        random_start=key is not None)
    delta = x_adv - x
    size = regularizers.per_example_norm(delta, "linf")
    return delta / chunks.broadcast_per_example(
        jnp.where(size > 0, size, 1.0), delta)
  if kind == "least_likely":
    # Kurakin et al.: *descend* CE towards the least likely class.
    target = jnp.argmin(logits_fn(x), axis=1)
    objective = lambda z: -losses.cross_entropy(logits_fn(z), target).sum()
  else:
    loss_fn = losses.get(kind)
    objective = lambda z: loss_fn(logits_fn(z), y).sum()
  return jnp.sign(jax.grad(objective)(x))


def adversarial_direction(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *,
                          kind: str = "ce", key: jax.Array | None = None,
                          eps=0.3, step_size=0.01, num_steps: int = 40
                          ) -> jax.Array:
  """An adversarial projection axis with unit l_inf norm.

  The decision-surface paper's beta = sign(grad_x loss(x)) (Sec. 3.2), i.e.
  the FGSM direction, or the direction of a PGD perturbation. Moving along it
  decreases the decision value (to first order, for the gradient kinds).

  Args:
    logits_fn: x -> logits.
    x: one image (H, W, C) or a batch (N, H, W, C), in [0, 1].
    y: its label () or labels (N,).
    kind: "ce" (sign of grad CE), "margin" (sign of grad of the C&W margin,
      i.e. of -L), "least_likely" (sign of grad log p_ll, towards the least
      likely class) or "pgd" ((x_pgd - x) / ||x_pgd - x||_inf, from
      :func:`lfr_jax.attacks.pgd` with CE: then a step of
      ||x_pgd - x||_inf along the axis reaches x_pgd exactly).
    key: PRNG key for PGD's random start; None starts PGD at x.
    eps: PGD radius (kind "pgd" only).
    step_size: PGD step (kind "pgd" only).
    num_steps: PGD steps (kind "pgd" only, static).

  Returns:
    The direction(s), shaped like ``x``; zero where the gradient is zero.
  """
  _validate.choice("kind", kind, ADVERSARIAL_KINDS)
  single = getattr(x, "ndim", None) == 3
  x_batch, y_batch = ((x[None], jnp.asarray(y)[None]) if single
                      else (x, jnp.asarray(y)))
  _validate.batch(x_batch, y_batch)
  if kind == "pgd":
    _validate.nonneg("eps", eps)
    _validate.positive("step_size", step_size)
    _validate.steps("num_steps", num_steps)
  run = jax.jit(lambda x_batch, y_batch, key: _adversarial_direction(
      logits_fn, x_batch, y_batch, key, kind=kind, eps=eps,
      step_size=step_size, num_steps=num_steps))
  out = run(x_batch, y_batch, key)
  return out[0] if single else out


# ----------------------------------------------------------------- surface --


def grid_coordinates(extent, resolution: int) -> jax.Array:
  """``resolution`` evenly spaced values on [-extent, extent].

  Written as extent * (2k - (R - 1)) / (R - 1) so that the grid is exactly
  symmetric and, for odd R, its middle value is exactly 0 (the clean input).
  """
  index = jnp.arange(resolution, dtype=jnp.float32)
  if resolution == 1:
    return jnp.zeros((1,), jnp.float32)
  return extent * (2.0 * index - (resolution - 1)) / (resolution - 1)


def _surface(logits_fn, x, y, dir_u, dir_v, extent, *, resolution, quantity,
             clip, chunk_size):
  coords = grid_coordinates(extent, resolution).astype(x.dtype)
  # "xy" indexing: i runs along columns, j along rows, as matplotlib expects.
  grid_i, grid_j = jnp.meshgrid(coords, coords, indexing="xy")
  value = (losses.decision_value if quantity == "decision"
           else losses.cross_entropy)

  def chunk_values(_, chunk_i, chunk_j):
    # The points are built per chunk, so memory scales with the chunk only.
    points = (x[None] + chunks.broadcast_per_example(chunk_i, x[None])
              * dir_u[None]
              + chunks.broadcast_per_example(chunk_j, x[None]) * dir_v[None])
    if clip:
      points = jnp.clip(points, 0.0, 1.0)
    return value(logits_fn(points), jnp.broadcast_to(y, chunk_i.shape))

  values = chunks.map_chunks(chunk_values, chunk_size, grid_i.ravel(),
                             grid_j.ravel())
  return grid_i, grid_j, values.reshape(grid_i.shape)


def surface(logits_fn: LogitsFn, x: jax.Array, y, dir_u: jax.Array,
            dir_v: jax.Array, *, extent, resolution: int,
            quantity: str = "decision", clip: bool = False,
            chunk_size: int = 256
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The decision (or loss) surface of one image on the plane (u, v).

  V(i, j) = F(x + i u + j v) over a resolution x resolution grid of (i, j) in
  [-extent, extent]^2 (decision-surface paper, Eq. 1), with F the decision
  value z_y - max_{k != y} z_k (Eq. 2; LFR Fig. 1) or the cross-entropy
  (LFR Fig. 2). The grid points go through the model in chunks of
  ``chunk_size`` images inside one ``lax.map``.

  Args:
    logits_fn: x -> logits.
    x: one image (H, W, C) in [0, 1].
    y: its integer label (scalar).
    dir_u: first axis (i, plotted as x), shaped like ``x``; typically
      a :func:`random_direction`.
    dir_v: second axis (j, plotted as y), shaped like ``x``; typically
      an :func:`adversarial_direction`.
    extent: half-width of the grid in units of the directions (with unit
      l_inf directions: in pixel units, e.g. 0.3 for MNIST's eps).
    resolution: points per axis, a static int >= 1 (odd puts (0, 0), the
      clean image, on the grid).
    quantity: "decision" or "loss".
    clip: clip the grid points to [0, 1]. The papers do not, so the default
      is False; clipping flattens the surface where pixels saturate.
    chunk_size: images per model call, a static int >= 1.

  Returns:
    (I, J, Z), each (resolution, resolution): I[r, c] = i_c, J[r, c] = j_r
    (``meshgrid`` "xy" indexing, ready for matplotlib) and Z the values.
  """
  _check_image(x, y)
  _check_like("dir_u", dir_u, x)
  _check_like("dir_v", dir_v, x)
  _validate.choice("quantity", quantity, QUANTITIES)
  _validate.steps("resolution", resolution)
  if resolution < 1:
    raise ValueError("resolution must be >= 1, got 0.")
  _validate.nonneg("extent", extent)
  chunks.check_chunk_size(chunk_size)
  run = jax.jit(functools.partial(
      _surface, logits_fn, resolution=resolution, quantity=quantity,
      clip=bool(clip), chunk_size=chunk_size))
  return run(x, jnp.asarray(y), dir_u, dir_v, extent)
