"""A convolution that stays fast at every order of differentiation.

LFR differentiates a gradient norm (inner PGD) and then differentiates that
again with respect to the parameters (outer double backprop). Under
``jax.grad`` of ``jax.grad``, XLA lowers the plain convolution's second-order
weight gradients to ``rhs_reversal`` convolutions that are up to 50x slower on
CPU than a canonical convolution. Here the convolution ``fwd(x, w)`` and its two
transposes, ``input_t(g, w)`` (the gradient with respect to ``x``) and
``weight_t(x, g)`` (the gradient with respect to ``w``), are each a
``jax.custom_vjp`` whose backward rules are again these three functions. The
three are bilinear, so every derivative of any order is one of them, always
lowered to the same canonical convolutions.

Only reverse mode is defined (``custom_vjp``); ``jax.jvp`` through it raises.
Use ``lax.conv_general_dilated`` directly where forward mode is needed.

Example::

    import jax, jax.numpy as jnp
    from flax import nnx
    from lfr_jax.models.conv import fast_conv_general_dilated

    conv = nnx.Conv(1, 32, (3, 3), padding="VALID", rngs=nnx.Rngs(0),
                    conv_general_dilated=fast_conv_general_dilated)
    y = conv(jnp.ones((2, 28, 28, 1)))
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _hashable_padding(padding, lhs_shape, rhs_shape, strides, dimension_numbers,
                      lhs_dilation, rhs_dilation):
  """Resolves string padding to explicit pairs so it can key a cache."""
  if isinstance(padding, str):
    dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    in_spatial = [lhs_shape[i] for i in dn.lhs_spec[2:]]
    k_spatial = [rhs_shape[i] for i in dn.rhs_spec[2:]]
    if rhs_dilation is not None:
      k_spatial = [(k - 1) * d + 1 for k, d in zip(k_spatial, rhs_dilation)]
    if lhs_dilation is not None:
      in_spatial = [(s - 1) * d + 1 for s, d in zip(in_spatial, lhs_dilation)]
    padding = lax.padtype_to_pads(in_spatial, k_spatial, strides, padding)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _hashable_dn(dimension_numbers):
  if dimension_numbers is None or isinstance(dimension_numbers, tuple) and all(
      isinstance(s, str) for s in dimension_numbers):
    return dimension_numbers
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers
  return tuple(dimension_numbers)


@functools.lru_cache(maxsize=None)
def _conv_ops(x_aval, w_aval, strides, padding, lhs_dilation, rhs_dilation,
              dimension_numbers, feature_group_count, precision,
              preferred_element_type):
  """Builds the closed set {fwd, input_t, weight_t} for one conv shape.

  One function on purpose (longer than the others): the three custom_vjp
  functions refer to each other in their backward rules, so they are defined
  together as closures over the same shapes and settings.
  """

  def raw(x, w):
    return lax.conv_general_dilated(
        x, w, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type)

  x_struct = jax.ShapeDtypeStruct(*x_aval)
  w_struct = jax.ShapeDtypeStruct(*w_aval)

  dn = lax.conv_dimension_numbers(x_aval[0], w_aval[0], dimension_numbers)
  plain = (all(s == 1 for s in strides) and feature_group_count == 1
           and (lhs_dilation is None or all(d == 1 for d in lhs_dilation))
           and (rhs_dilation is None or all(d == 1 for d in rhs_dilation)))

  def raw_input_t(g, w):
    if not plain:
      (dx,) = jax.linear_transpose(lambda x: raw(x, w), x_struct)(g)
      return dx
    # Stride 1: the input gradient is a forward conv with the flipped,
    # in/out-swapped kernel. Building that kernel explicitly gives XLA a fresh
    # array whose layout it may choose; inside a rolled while loop the
    # transposed view of a loop-carried kernel otherwise gets a layout that
    # is about 10x slower on CPU.
    out_ax, in_ax = dn.rhs_spec[0], dn.rhs_spec[1]
    spatial = dn.rhs_spec[2:]
    w_t = jnp.flip(jnp.swapaxes(w, out_ax, in_ax), axis=spatial)
    ksize = [w_aval[0][a] for a in spatial]
    pads = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(ksize, padding)]
    return lax.conv_general_dilated(
        g, w_t, strides, pads, None, None,
        lax.ConvDimensionNumbers(dn.out_spec, dn.rhs_spec, dn.lhs_spec),
        precision=precision, preferred_element_type=preferred_element_type
    ).astype(x_aval[1])

  def raw_weight_t(x, g):
    (dw,) = jax.linear_transpose(lambda w: raw(x, w), w_struct)(g)
    return dw

  @jax.custom_vjp
  def fwd(x, w):
    return raw(x, w)

  def fwd_fwd(x, w):
    return raw(x, w), (x, w)

  def fwd_bwd(res, g):
    x, w = res
    g = g.astype(jnp.result_type(x, w))
    return input_t(g, w).astype(x.dtype), weight_t(x, g).astype(w.dtype)

  fwd.defvjp(fwd_fwd, fwd_bwd)

  @jax.custom_vjp
  def input_t(g, w):
    return raw_input_t(g, w)

  def input_t_fwd(g, w):
    return raw_input_t(g, w), (g, w)

  def input_t_bwd(res, ct):
    g, w = res
    # <ct, A_w^T g> = <conv(ct, w), g>
    return fwd(ct.astype(x_aval[1]), w).astype(g.dtype), weight_t(
        ct.astype(x_aval[1]), g).astype(w.dtype)

  input_t.defvjp(input_t_fwd, input_t_bwd)

  @jax.custom_vjp
  def weight_t(x, g):
    return raw_weight_t(x, g)

  def weight_t_fwd(x, g):
    return raw_weight_t(x, g), (x, g)

  def weight_t_bwd(res, ct):
    x, g = res
    # <ct, B_x^T g> = <conv(x, ct), g>
    ct = ct.astype(w_aval[1])
    return input_t(g, ct).astype(x.dtype), fwd(x, ct).astype(g.dtype)

  weight_t.defvjp(weight_t_fwd, weight_t_bwd)
  return fwd


def fast_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> jax.Array:
  """Drop-in replacement for ``lax.conv_general_dilated``, fast under grad-of-grad.

  Args:
    lhs: input, e.g. (N, H, W, C) with NHWC dimension numbers.
    rhs: kernel, e.g. (kh, kw, C_in, C_out).
    window_strides: spatial strides.
    padding: "SAME", "VALID" or explicit (low, high) pairs.
    lhs_dilation: input dilation.
    rhs_dilation: kernel dilation.
    dimension_numbers: as for ``lax.conv_general_dilated``.
    feature_group_count: grouped convolution count.
    batch_group_count: must be 1.
    precision: matmul precision.
    preferred_element_type: accumulation dtype.
    out_sharding: accepted for signature compatibility with flax; must be None
      (the convolution's output follows the input's sharding).

  Returns:
    The convolution, numerically equal to ``lax.conv_general_dilated``.
  """
  if batch_group_count != 1:
    raise ValueError("fast_conv_general_dilated supports batch_group_count=1 only.")
  if out_sharding is not None:
    raise ValueError("fast_conv_general_dilated does not take out_sharding; "
                     "shard the input instead.")
  strides = tuple(int(s) for s in window_strides)
  lhs_dilation = None if lhs_dilation is None else tuple(lhs_dilation)
  rhs_dilation = None if rhs_dilation is None else tuple(rhs_dilation)
  dn = _hashable_dn(dimension_numbers)
  pads = _hashable_padding(padding, lhs.shape, rhs.shape, strides, dn,
                           lhs_dilation, rhs_dilation)
  if isinstance(precision, list):
    precision = tuple(precision)
  op = _conv_ops((tuple(lhs.shape), jnp.dtype(lhs.dtype)),
                 (tuple(rhs.shape), jnp.dtype(rhs.dtype)), strides, pads,
                 lhs_dilation, rhs_dilation, dn, int(feature_group_count),
                 precision, preferred_element_type)
  return op(lhs, rhs)
