"""The decision-surface paper's robustness indicator (Sec. 4.3): J and H.

With L(x) = z_y - max_{i != y} z_i the decision value
(:func:`lfr_jax.losses.decision_value`), a robust model has a small and
sparse input Jacobian J = dL/dx and a flat input Hessian H = d^2 L / dx^2.

- :func:`decision_jacobian`, :func:`jacobian_stats` - J, its l1 norm and
  sparsity.
- :func:`hvp`, :func:`lanczos`, :func:`tridiagonal_eigh`,
  :func:`hessian_eigs` - Lanczos estimate of the spectrum of H from
  Hessian-vector products only; the dense Hessian is never built.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax.geometry import curvature

    w = jax.random.normal(jax.random.key(0), (16, 10))
    logits_fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w)
    x = jnp.full((2, 4, 4, 1), 0.5); y = jnp.array([3, 7])
    stats = curvature.jacobian_stats(logits_fn, x, y)   # stats.l1: (2,)
    eigs = curvature.hessian_eigs(logits_fn, x, y, num_iters=4,
                                  key=jax.random.key(1))  # eigs.top: (2,)
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lfr_jax import _validate
from lfr_jax import losses
from lfr_jax import regularizers
from lfr_jax.geometry import chunks

LogitsFn = Callable[[jax.Array], jax.Array]

# Decision-surface paper, footnote 3: Jacobian entries below this count as 0.
JACOBIAN_ZERO = 1e-3
# Same footnote for Hessian eigenvalues. Only exact zeros (piecewise-linear
# nets) survive this in float32, where Lanczos' round-off is ~1e-7 ||H||.
HESSIAN_ZERO = 1e-10


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


def _decision_fn(logits_fn: LogitsFn, y: jax.Array) -> Callable:
  """x (H, W, C) -> L(x), the decision value of one image."""
  return lambda z: losses.decision_value(logits_fn(z[None]), y[None])[0]


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
  decision = _decision_fn(logits_fn, jnp.asarray(y))
  return jax.grad(lambda z: jnp.vdot(jax.grad(decision)(z), v))(x)


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
  dim = v0.shape[0]
  if not 1 <= num_iters <= dim:
    raise ValueError(f"num_iters must lie in [1, {dim}], got {num_iters}.")
  dtype = v0.dtype
  tiny = jnp.finfo(dtype).tiny
  breakdown_tol = 32 * jnp.finfo(dtype).eps
  basis = jnp.zeros((num_iters + 1, dim), dtype)
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
    broke = beta <= breakdown_tol * scale
    fresh = orthogonal(jax.random.normal(jax.random.fold_in(key, i), (dim,),
                                         dtype), basis)
    next_vector = jnp.where(
        broke, fresh / jnp.maximum(jnp.linalg.norm(fresh), tiny),
        w / jnp.maximum(beta, tiny))
    return (basis.at[i + 1].set(next_vector), alphas.at[i].set(alpha),
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

  def one_image(image, label, image_key):
    matvec = lambda v: hvp(logits_fn, image, label, v.reshape(shape)).ravel()
    key_start, key_restart = jax.random.split(image_key)
    v0 = jax.random.normal(key_start, (dim,), image.dtype)
    alphas, betas = lanczos(matvec, v0, num_iters, key_restart)
    eigs, weights = tridiagonal_eigh(alphas, betas)
    return HessianEigs(
        eigs=eigs, weights=weights, top=eigs[0],
        ritz_l1=jnp.abs(eigs).sum(),
        l1_estimate=dim * jnp.sum(weights * jnp.abs(eigs)),
        zero_share=jnp.sum(weights * (jnp.abs(eigs) < zero_threshold)))

  keys = jax.random.split(key, x.shape[0])
  return chunks.map_chunks(
      lambda _, x_chunk, y_chunk, key_chunk: jax.vmap(one_image)(
          x_chunk, y_chunk, key_chunk),
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
  chunks.check_chunk_size(chunk_size)
  num_iters = min(num_iters, x[0].size)
  run = jax.jit(functools.partial(
      _hessian_eigs, logits_fn, num_iters=num_iters, chunk_size=chunk_size))
  return run(x, y, key, zero_threshold=zero_threshold)
