"""Per-example LFR and LLR gamma over a data set, for histograms (LLR Fig. 7).

The regularizers' inner maximizations (:mod:`lfr_jax.regularizers`), run in
chunks over many images: :func:`flatness_values` gives LFR's local flatness,
:func:`linearity_values` LLR's local linearity.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax.geometry import gamma

    w = jax.random.normal(jax.random.key(0), (16, 10))
    logits_fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w)
    x = jnp.full((3, 4, 4, 1), 0.5); y = jnp.array([3, 7, 1])
    flat = gamma.flatness_values(logits_fn, x, y, jax.random.key(1), eps=0.1,
                                 step_size=0.02, num_steps=3, chunk_size=2)
    linear = gamma.linearity_values(logits_fn, x, y, jax.random.key(1),
                                    eps=0.1, num_steps=3)   # (3,)
"""

from __future__ import annotations

from typing import Callable

import jax

from lfr_jax import _validate
from lfr_jax import regularizers
from lfr_jax.geometry import chunks

LogitsFn = Callable[[jax.Array], jax.Array]


def _gamma_values(gamma_fn, x, y, key, chunk_size):
  def chunk(index, x_chunk, y_chunk):
    return gamma_fn(x_chunk, y_chunk, jax.random.fold_in(key, index))
  return chunks.map_chunks(chunk, chunk_size, x, y)


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
  chunks.check_chunk_size(chunk_size)

  def gamma(x_chunk, y_chunk, chunk_key):
    return regularizers.local_flatness(
        logits_fn, x_chunk, y_chunk, chunk_key, eps=eps, step_size=step_size,
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
  chunks.check_chunk_size(chunk_size)

  def gamma(x_chunk, y_chunk, chunk_key):
    return regularizers.local_linearity(
        logits_fn, x_chunk, y_chunk, chunk_key, eps=eps, step_size=step_size,
        num_steps=num_steps, unroll=unroll)[0]

  run = jax.jit(lambda x, y, key: _gamma_values(gamma, x, y, key, chunk_size))
  return run(x, y, key)
