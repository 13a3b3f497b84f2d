"""Chunked evaluation over a batch, shared by the geometry modules.

The geometry quantities run many model calls per image (a grid of points, a
Lanczos run, an inner maximization). :func:`map_chunks` visits a batch in
chunks of a fixed size inside one ``lax.map``, so memory scales with the
chunk and ``logits_fn`` always sees real batches (it is never vmapped).

Example::

    import jax.numpy as jnp
    from lfr_jax.geometry import chunks

    squares = chunks.map_chunks(lambda index, a: a * a, 4, jnp.arange(10.0))
    chunks.check_chunk_size(4)                        # raises unless int >= 1
    scaled = chunks.broadcast_per_example(jnp.ones(3), jnp.ones((3, 2, 2))) * 2
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax


def check_chunk_size(chunk_size) -> None:
  """Raises unless ``chunk_size`` is a Python int >= 1 (it shapes the map)."""
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or (
      chunk_size < 1):
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")


def broadcast_per_example(s: jax.Array, v: jax.Array) -> jax.Array:
  """Broadcasts per-example scalars (N,) over the trailing axes of ``v``."""
  return s.reshape(s.shape + (1,) * (v.ndim - s.ndim))


def map_chunks(fn: Callable, size: int, *arrays: jax.Array):
  """``fn(index, *chunks)`` over consecutive chunks of the leading axis.

  The arrays are padded (by repeating their last row, so pixels and labels
  stay valid) to a multiple of ``size`` and visited with ``lax.map``; the
  outputs are stitched back and the padding dropped. ``fn`` sees real
  batches, so ``logits_fn`` is never vmapped.

  Args:
    fn: (chunk index, *chunks) -> pytree of arrays with a leading chunk axis.
    size: rows per chunk, a static int >= 1 (capped at the batch size).
    *arrays: arrays with the same leading size N.

  Returns:
    ``fn``'s outputs for all N rows, in order.
  """
  n = arrays[0].shape[0]
  size = min(size, n)
  num_chunks = -(-n // size)
  padding = num_chunks * size - n

  def split_into_chunks(a):
    if padding:
      a = jnp.concatenate([a, jnp.repeat(a[-1:], padding, axis=0)])
    return a.reshape((num_chunks, size) + a.shape[1:])

  chunked = tuple(split_into_chunks(a) for a in arrays)
  if num_chunks == 1:
    # No loop for a single chunk: nothing to gain, and XLA:CPU can run
    # convolution gradients slower inside loops.
    out = fn(jnp.zeros((), jnp.int32), *(c[0] for c in chunked))
    return jax.tree.map(lambda o: o[:n], out)
  out = lax.map(lambda args: fn(*args),
                (jnp.arange(num_chunks, dtype=jnp.int32),) + chunked)
  return jax.tree.map(
      lambda o: o.reshape((num_chunks * size,) + o.shape[2:])[:n], out)
