"""Input-space geometry of a classifier: decision surfaces and curvature.

Pure functions of a ``logits_fn`` (images (N, H, W, C) -> logits (N, classes),
parameters closed over), arrays in and arrays out; plotting lives in
:mod:`lfr_jax.plots`. Each public function runs as one jitted computation
(compiled per call, because ``logits_fn`` is a fresh closure) and can also be
called inside your own ``jax.jit``.

- :func:`surface` - the decision surface L(x + i u + j v) (decision-surface
  paper, Eq. 1 and 2; LFR Fig. 1) or the loss surface (LFR Fig. 2) of one
  image over an (i, j) grid.
- :func:`random_direction`, :func:`adversarial_direction`,
  :func:`orthogonalize` - the projection axes (unit l_inf, so that the grid
  step is in pixel units).
- :func:`jacobian_stats` - l1 norm and sparsity of dL/dx (decision-surface
  paper, Sec. 4.3).
- :func:`hessian_eigs` - Lanczos estimate of the spectrum of the Hessian of
  L with respect to the input, from Hessian-vector products only.
- :func:`flatness_values`, :func:`linearity_values` - per-example LFR and LLR
  gamma over a data set, for histograms (LLR Fig. 7).

Here L(x) = z_y - max_{i != y} z_i is :func:`lfr_jax.losses.decision_value`,
positive iff x is classified correctly.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax import geometry, models

    net = models.create("small_cnn", jax.random.key(0))
    logits_fn = net.logits_fn()
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    y = jnp.array([3, 7])

    adv = geometry.adversarial_direction(logits_fn, x[0], y[0], kind="ce")
    rnd = geometry.orthogonalize(
        geometry.random_direction(jax.random.key(2), x[0].shape), adv)
    i, j, z = geometry.surface(logits_fn, x[0], y[0], rnd, adv, extent=0.3,
                               resolution=5)          # z: (5, 5)
    stats = geometry.jacobian_stats(logits_fn, x, y)  # stats.l1: (2,)
    eigs = geometry.hessian_eigs(logits_fn, x, y, num_iters=4,
                                 key=jax.random.key(3))
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lfr_jax import _validate
from lfr_jax import attacks
from lfr_jax import losses
from lfr_jax import regularizers

LogitsFn = Callable[[jax.Array], jax.Array]
QUANTITIES = ("decision", "loss")
DIRECTION_NORMS = ("linf", "l2")
ADVERSARIAL_KINDS = ("ce", "margin", "least_likely", "pgd")

# Decision-surface paper, footnote 3: Jacobian entries below this count as 0.
JACOBIAN_ZERO = 1e-3
# Same footnote for Hessian eigenvalues. Only exact zeros (piecewise-linear
# nets) survive this in float32, where Lanczos' round-off is ~1e-7 ||H||.
HESSIAN_ZERO = 1e-10


# ----------------------------------------------------------------- helpers --


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


def _check_chunk(chunk_size) -> None:
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or (
      chunk_size < 1):
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")


def _per_example(s: jax.Array, v: jax.Array) -> jax.Array:
  """Broadcasts per-example scalars (N,) over the trailing axes of ``v``."""
  return s.reshape(s.shape + (1,) * (v.ndim - s.ndim))


def _map_chunks(fn: Callable, size: int, *arrays: jax.Array):
  """``fn(index, *chunks)`` over consecutive chunks of the leading axis.

  The arrays are padded (by repeating their last row, so pixels and labels
  stay valid) to a multiple of ``size`` and visited with ``lax.map``; the
  outputs are stitched back and the padding dropped. ``fn`` sees real
  batches, so ``logits_fn`` is never vmapped.
  """
  n = arrays[0].shape[0]
  size = min(size, n)
  num = -(-n // size)
  pad = num * size - n

  def chunked(a):
    a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
    return a.reshape((num, size) + a.shape[1:])

  chunks = tuple(chunked(a) for a in arrays)
  if num == 1:
    # No loop for a single chunk: nothing to gain, and XLA:CPU can run
    # convolution gradients slower inside loops.
    out = fn(jnp.zeros((), jnp.int32), *(c[0] for c in chunks))
    return jax.tree.map(lambda o: o[:n], out)
  out = lax.map(lambda args: fn(*args),
                (jnp.arange(num, dtype=jnp.int32),) + chunks)
  return jax.tree.map(lambda o: o.reshape((num * size,) + o.shape[2:])[:n],
                      out)


def _decision_fn(logits_fn: LogitsFn, y: jax.Array) -> Callable:
  """x (H, W, C) -> L(x), the decision value of one image."""
  return lambda z: losses.decision_value(logits_fn(z[None]), y[None])[0]


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
  g = jax.random.normal(key, tuple(shape), dtype)
  if norm == "linf":
    return jnp.sign(g)
  return g / jnp.linalg.norm(g.ravel())


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
  uu = jnp.vdot(u, u)
  coef = jnp.where(uu > 0, jnp.vdot(u, v) / jnp.where(uu > 0, uu, 1.0), 0.0)
  w = v - coef * u
  if norm is None:
    return w
  measure = (lambda a: jnp.abs(a).max()) if norm == "linf" else (
      lambda a: jnp.linalg.norm(a.ravel()))
  size = measure(w)
  return w * jnp.where(size > 0, measure(v) / jnp.where(size > 0, size, 1.0),
                       1.0)


def _adversarial_direction(logits_fn, x, y, key, *, kind, eps, step_size,
                           num_steps):
  if kind == "pgd":
    x_adv = attacks.pgd(
        logits_fn, x, y, jax.random.key(0) if key is None else key, eps=eps,
        step_size=step_size, num_steps=num_steps,
        random_start=key is not None)
    delta = x_adv - x
    size = regularizers.per_example_norm(delta, "linf")
    return delta / _per_example(jnp.where(size > 0, size, 1.0), delta)
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
  xb, yb = (x[None], jnp.asarray(y)[None]) if single else (x, jnp.asarray(y))
  _validate.batch(xb, yb)
  if kind == "pgd":
    _validate.nonneg("eps", eps)
    _validate.positive("step_size", step_size)
    _validate.steps("num_steps", num_steps)
  run = jax.jit(lambda xb, yb, key: _adversarial_direction(
      logits_fn, xb, yb, key, kind=kind, eps=eps, step_size=step_size,
      num_steps=num_steps))
  out = run(xb, yb, key)
  return out[0] if single else out


# ----------------------------------------------------------------- surface --


def grid_coordinates(extent, resolution: int) -> jax.Array:
  """``resolution`` evenly spaced values on [-extent, extent].

  Written as extent * (2k - (R - 1)) / (R - 1) so that the grid is exactly
  symmetric and, for odd R, its middle value is exactly 0 (the clean input).
  """
  k = jnp.arange(resolution, dtype=jnp.float32)
  if resolution == 1:
    return jnp.zeros((1,), jnp.float32)
  return extent * (2.0 * k - (resolution - 1)) / (resolution - 1)


def _surface(logits_fn, x, y, dir_u, dir_v, extent, *, resolution, quantity,
             clip, chunk_size):
  coords = grid_coordinates(extent, resolution).astype(x.dtype)
  # "xy" indexing: i runs along columns, j along rows, as matplotlib expects.
  ii, jj = jnp.meshgrid(coords, coords, indexing="xy")
  value = (losses.decision_value if quantity == "decision"
           else losses.cross_entropy)

  def chunk_values(_, ci, cj):
    # The points are built per chunk, so memory scales with the chunk only.
    points = (x[None] + _per_example(ci, x[None]) * dir_u[None]
              + _per_example(cj, x[None]) * dir_v[None])
    if clip:
      points = jnp.clip(points, 0.0, 1.0)
    return value(logits_fn(points), jnp.broadcast_to(y, ci.shape))

  z = _map_chunks(chunk_values, chunk_size, ii.ravel(), jj.ravel())
  return ii, jj, z.reshape(ii.shape)


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
  _check_chunk(chunk_size)
  run = jax.jit(functools.partial(
      _surface, logits_fn, resolution=resolution, quantity=quantity,
      clip=bool(clip), chunk_size=chunk_size))
  return run(x, jnp.asarray(y), dir_u, dir_v, extent)


# ------------------------------------------------------------ Jacobian --


class JacobianStats(NamedTuple):
  """Per-example statistics of the decision Jacobian J = dL/dx."""
  l1: jax.Array        # (N,) ||J||_1 (the paper's ~500 natural, ~50 robust)
  sparsity: jax.Array  # (N,) share of entries with |J_k| < threshold
  jacobian: jax.Array  # (N, H, W, C) J itself, e.g. for plots


def decision_jacobian(logits_fn: LogitsFn, x: jax.Array, y: jax.Array
                      ) -> jax.Array:
  """Per-example input gradients of the decision value, shaped like ``x``.

  The same gradient whose norm :func:`lfr_jax.regularizers.
  decision_jacobian_norm` returns (a subgradient at ties of the max).

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) images in [0, 1].
    y: (N,) labels.

  Returns:
    (N, H, W, C) gradients dL_n/dx_n.
  """
  return jax.grad(lambda z: losses.decision_value(logits_fn(z), y).sum())(x)


def _jacobian_stats(logits_fn, x, y, threshold):
  jac = decision_jacobian(logits_fn, x, y)
  flat = jnp.abs(jac.reshape(jac.shape[0], -1))
  return JacobianStats(regularizers.per_example_norm(jac, "l1"),
                       jnp.mean(flat < threshold, axis=1), jac)


def jacobian_stats(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *,
                   threshold=JACOBIAN_ZERO) -> JacobianStats:
  """The Jacobian half of the decision-surface robustness indicator (Sec. 4.3).

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) images in [0, 1].
    y: (N,) labels.
    threshold: entries with |J_k| below it count as zero (the paper's
      footnote 3; it writes "10e-3" and means 1e-3).

  Returns:
    :class:`JacobianStats` with l1 (N,), sparsity (N,) in [0, 1] and the
    Jacobians (N, H, W, C).
  """
  _validate.batch(x, y)
  _validate.nonneg("threshold", threshold)
  run = jax.jit(functools.partial(_jacobian_stats, logits_fn))
  return run(x, y, threshold)


# ------------------------------------------------------------- Hessian --


class HessianEigs(NamedTuple):
  """Lanczos estimate of the spectrum of H = d^2 L / dx^2, per example.

  ``eigs`` are the Ritz values of a ``num_iters``-step Lanczos run, sorted by
  decreasing magnitude: the first few converge to H's largest-magnitude
  eigenvalues; the rest summarize the interior of the spectrum.
  ``weights`` are their stochastic-Lanczos-quadrature weights (squared first
  components of the Ritz vectors, summing to 1): sum_k w_k delta(lambda -
  eigs_k) estimates H's spectral density (Ghorbani et al. 2019).
  """
  eigs: jax.Array         # (N, k) Ritz values, largest |value| first
  weights: jax.Array      # (N, k) spectral-density weights, sum 1
  top: jax.Array          # (N,) eigs[:, 0], the signed dominant eigenvalue
  ritz_l1: jax.Array      # (N,) sum_k |eigs_k|: l1 "norm" of the top k
  l1_estimate: jax.Array  # (N,) dim * sum_k w_k |eigs_k| ~ sum_all |lambda|
  zero_share: jax.Array   # (N,) sum_k w_k [|eigs_k| < zero_threshold]


def hvp(logits_fn: LogitsFn, x: jax.Array, y, v: jax.Array) -> jax.Array:
  """Hessian-vector product H v of the decision value of one image.

  Reverse-over-reverse, grad_x <grad_x L(x), v>: the models' convolutions
  define only a ``custom_vjp``, so forward mode (``jax.jvp``) through them
  raises.

  Args:
    logits_fn: x -> logits.
    x: one image (H, W, C).
    y: its label (scalar).
    v: vector shaped like ``x``.

  Returns:
    H v, shaped like ``x``.
  """
  f = _decision_fn(logits_fn, jnp.asarray(y))
  return jax.grad(lambda z: jnp.vdot(jax.grad(f)(z), v))(x)


def lanczos(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array,
            num_iters: int, key: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
  """Lanczos tridiagonalization with full reorthogonalization.

  Symmetric ``matvec`` on vectors of size d; ``num_iters`` (<= d) steps build
  an orthonormal basis V and the tridiagonal T = V^T A V. Each new vector is
  orthogonalized against the whole basis twice ("twice is enough"), so T's
  eigenvalues do not come in spurious copies. At a breakdown (the Krylov
  space is invariant, e.g. A = 0 or low rank) the run restarts from a random
  vector orthogonal to the basis with a zero off-diagonal, so every
  eigenvalue of T is still one of A's.

  Args:
    matvec: v (d,) -> A v (d,), A symmetric.
    v0: (d,) start vector, non-zero.
    num_iters: steps k, a static int in [1, d].
    key: PRNG key for restarts.

  Returns:
    (alphas (k,), betas (k - 1,)): diagonal and off-diagonal of T.
  """
  d = v0.shape[0]
  if not 1 <= num_iters <= d:
    raise ValueError(f"num_iters must lie in [1, {d}], got {num_iters}.")
  dtype = v0.dtype
  tiny = jnp.finfo(dtype).tiny
  tol = 32 * jnp.finfo(dtype).eps
  basis = jnp.zeros((num_iters + 1, d), dtype)
  basis = basis.at[0].set(v0 / jnp.linalg.norm(v0))

  def orthogonal(w, basis):
    # Rows of the basis not yet written are zero and drop out.
    w = w - basis.T @ (basis @ w)
    return w - basis.T @ (basis @ w)

  def step(i, carry):
    basis, alphas, betas, scale = carry
    v = basis[i]
    w = matvec(v)
    alpha = jnp.vdot(v, w)
    w = orthogonal(w, basis)
    beta = jnp.linalg.norm(w)
    scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
    broke = beta <= tol * scale
    fresh = orthogonal(jax.random.normal(jax.random.fold_in(key, i), (d,),
                                         dtype), basis)
    nxt = jnp.where(broke, fresh / jnp.maximum(jnp.linalg.norm(fresh), tiny),
                    w / jnp.maximum(beta, tiny))
    return (basis.at[i + 1].set(nxt), alphas.at[i].set(alpha),
            betas.at[i].set(jnp.where(broke, 0.0, beta)), scale)

  init = (basis, jnp.zeros((num_iters,), dtype),
          jnp.zeros((num_iters,), dtype), jnp.zeros((), dtype))
  _, alphas, betas, _ = lax.fori_loop(0, num_iters, step, init)
  return alphas, betas[:-1]


def tridiagonal_eigh(alphas: jax.Array, betas: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
  """Eigenvalues and SLQ weights of the tridiagonal T(alphas, betas).

  Returns:
    (eigenvalues sorted by decreasing magnitude, weights = squared first
    components of the eigenvectors, in the same order).
  """
  t = (jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1))
  vals, vecs = jnp.linalg.eigh(t)
  order = jnp.argsort(-jnp.abs(vals), stable=True)
  return vals[order], jnp.square(vecs[0, order])


def _hessian_eigs(logits_fn, x, y, key, *, num_iters, zero_threshold,
                  chunk_size):
  shape = x.shape[1:]
  dim = x[0].size

  def one(x1, y1, k1):
    matvec = lambda v: hvp(logits_fn, x1, y1, v.reshape(shape)).ravel()
    k_start, k_restart = jax.random.split(k1)
    v0 = jax.random.normal(k_start, (dim,), x1.dtype)
    alphas, betas = lanczos(matvec, v0, num_iters, k_restart)
    eigs, weights = tridiagonal_eigh(alphas, betas)
    return HessianEigs(
        eigs=eigs, weights=weights, top=eigs[0],
        ritz_l1=jnp.abs(eigs).sum(),
        l1_estimate=dim * jnp.sum(weights * jnp.abs(eigs)),
        zero_share=jnp.sum(weights * (jnp.abs(eigs) < zero_threshold)))

  keys = jax.random.split(key, x.shape[0])
  return _map_chunks(lambda _, xc, yc, kc: jax.vmap(one)(xc, yc, kc),
                     chunk_size, x, y, keys)


def hessian_eigs(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *,
                 key: jax.Array, num_iters: int = 32,
                 zero_threshold=HESSIAN_ZERO, chunk_size: int = 100
                 ) -> HessianEigs:
  """Spectrum of the input Hessian of the decision value, per image (Sec. 4.3).

  For each image, ``num_iters`` Lanczos steps on H = d^2 L / dx^2 (L the
  decision value, H of size dim x dim, dim = H*W*C) using only
  Hessian-vector products (:func:`hvp`, reverse-over-reverse), then ``eigh``
  of the small tridiagonal matrix; the dense Hessian is never built. Images
  are vmapped in chunks of ``chunk_size`` (the paper: 100 test images per
  model). Each step costs about two backward passes.

  The paper's Hessian "l1 norm" (0.53 robust vs 1.26 natural on MNIST) is
  the sum of absolute eigenvalues; ``ritz_l1`` sums the k Ritz values (exact
  when num_iters = dim, a lower bound dominated by the top eigenvalues
  otherwise) and ``l1_estimate`` is the stochastic-Lanczos-quadrature
  estimate of the full sum from one random start vector; both are
  estimates. Note that a piecewise-linear network (ReLU, max-pool) has
  H = 0 almost everywhere, so all values are 0 for such models; use
  a smooth activation (e.g. ``activation="softplus"``) to see curvature.

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) images in [0, 1].
    y: (N,) labels.
    key: PRNG key for the start vectors (one per image).
    num_iters: Lanczos steps k, a static int >= 1 (capped at dim).
    zero_threshold: |eigenvalue| below which it counts as zero for
      ``zero_share`` (the paper's footnote 3: 1e-10).
    chunk_size: images per vmapped chunk, a static int >= 1.

  Returns:
    :class:`HessianEigs`, each field with a leading axis N.
  """
  _validate.batch(x, y)
  _validate.steps("num_iters", num_iters)
  if num_iters < 1:
    raise ValueError("num_iters must be >= 1, got 0.")
  _validate.nonneg("zero_threshold", zero_threshold)
  _check_chunk(chunk_size)
  num_iters = min(num_iters, x[0].size)
  run = jax.jit(functools.partial(
      _hessian_eigs, logits_fn, num_iters=num_iters, chunk_size=chunk_size))
  return run(x, y, key, zero_threshold=zero_threshold)


# -------------------------------------------------- histograms' values --


def _gamma_values(gamma_fn, x, y, key, chunk_size):
  def chunk(index, xc, yc):
    return gamma_fn(xc, yc, jax.random.fold_in(key, index))
  return _map_chunks(chunk, chunk_size, x, y)


def flatness_values(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                    key: jax.Array, *, eps, step_size, num_steps: int,
                    norm: str = "l1", chunk_size: int = 100,
                    unroll: bool = False) -> jax.Array:
  """Per-example local flatness gamma(x, eps) over a data set (LFR Eq. 1).

  :func:`lfr_jax.regularizers.local_flatness` in chunks of ``chunk_size``,
  chunk c using ``fold_in(key, c)``, for histograms of the LFR penalty.

  Args:
    logits_fn: x -> logits (evaluation mode).
    x: (N, H, W, C) images in [0, 1].
    y: (N,) labels.
    key: PRNG key.
    eps: l_inf radius.
    step_size: sign-PGD step.
    num_steps: sign-PGD steps, a static int.
    norm: gradient norm, "l1" (LFR), "l2" or "linf".
    chunk_size: images per chunk, a static int >= 1.
    unroll: unroll the ascent loop (compiles slower; rolled is the default
      for evaluation).

  Returns:
    (N,) values of max_{x' in B_inf(x, eps)} ||d CE(x')/dx'||.
  """
  _validate.batch(x, y)
  _check_chunk(chunk_size)

  def gamma(xc, yc, k):
    return regularizers.local_flatness(
        logits_fn, xc, yc, k, eps=eps, step_size=step_size,
        num_steps=num_steps, norm=norm, unroll=unroll)[0]

  run = jax.jit(lambda x, y, key: _gamma_values(gamma, x, y, key, chunk_size))
  return run(x, y, key)


def linearity_values(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                     key: jax.Array, *, eps, step_size=0.1,
                     num_steps: int = 50, chunk_size: int = 100,
                     unroll: bool = False) -> jax.Array:
  """Per-example local linearity gamma(eps, x) over a data set (LLR Eq. 6).

  :func:`lfr_jax.regularizers.local_linearity` in chunks, with LLR's
  evaluation settings as defaults: 50 Adam steps of 0.1 (LLR Sec. 5 and
  Fig. 7, which histograms gamma(8/255, x) on the test set).

  Args:
    logits_fn: x -> logits (evaluation mode).
    x: (N, H, W, C) images in [0, 1].
    y: (N,) labels.
    key: PRNG key; chunk c uses ``fold_in(key, c)``.
    eps: l_inf radius.
    step_size: Adam learning rate.
    num_steps: Adam steps, a static int.
    chunk_size: images per chunk, a static int >= 1.
    unroll: unroll the ascent loop.

  Returns:
    (N,) values of max_{delta} |l(x+delta) - l(x) - delta^T grad l(x)|.
  """
  _validate.batch(x, y)
  _check_chunk(chunk_size)

  def gamma(xc, yc, k):
    return regularizers.local_linearity(
        logits_fn, xc, yc, k, eps=eps, step_size=step_size,
        num_steps=num_steps, unroll=unroll)[0]

  run = jax.jit(lambda x, y, key: _gamma_values(gamma, x, y, key, chunk_size))
  return run(x, y, key)


__all__ = [
    "QUANTITIES", "DIRECTION_NORMS", "ADVERSARIAL_KINDS", "JACOBIAN_ZERO",
    "HESSIAN_ZERO", "random_direction", "orthogonalize",
    "adversarial_direction", "grid_coordinates", "surface", "JacobianStats",
    "decision_jacobian", "jacobian_stats", "HessianEigs", "hvp", "lanczos",
    "tridiagonal_eigh", "hessian_eigs", "flatness_values",
    "linearity_values",
]
