"""fast_conv_general_dilated equals lax.conv_general_dilated at every order.

All comparisons run in float64 (enabled per test and restored afterwards), so
the tolerances are tight enough to catch a wrong transpose, not just a sloppy
one. Run with ``pytest tests/test_conv.py -q``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lfr_jax.models.conv import fast_conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")
TOL = dict(rtol=1e-10, atol=1e-12)

# (name, x shape, w shape, conv kwargs). Odd spatial sizes make stride 2 drop
# the last row/column, which the input transpose must handle.
CASES = [
    ("valid_s1", (2, 7, 7, 3), (3, 3, 3, 4),
     dict(window_strides=(1, 1), padding="VALID", dimension_numbers=NHWC)),
    ("valid_s2", (2, 7, 7, 3), (3, 3, 3, 4),
     dict(window_strides=(2, 2), padding="VALID", dimension_numbers=NHWC)),
    ("same_s1", (2, 7, 7, 3), (3, 3, 3, 4),
     dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)),
    ("same_s2", (2, 8, 8, 3), (3, 3, 3, 4),
     dict(window_strides=(2, 2), padding="SAME", dimension_numbers=NHWC)),
    ("torch_pad_s2", (2, 8, 8, 3), (3, 3, 3, 4),
     dict(window_strides=(2, 2), padding=((1, 1), (1, 1)),
          dimension_numbers=NHWC)),
    ("nchw_default_dn", (2, 3, 6, 6), (4, 3, 3, 3),
     dict(window_strides=(1, 1), padding="SAME")),
    ("groups_dilation", (2, 7, 7, 4), (3, 3, 2, 4),
     dict(window_strides=(1, 1), padding="SAME", rhs_dilation=(2, 2),
          feature_group_count=2, dimension_numbers=NHWC)),
]
IDS = [c[0] for c in CASES]


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


def _operands(x_shape, w_shape, seed=0):
  rng = np.random.RandomState(seed)
  return (jnp.asarray(rng.randn(*x_shape)),
          jnp.asarray(0.3 * rng.randn(*w_shape)))


def _convs(kwargs):
  fast = lambda x, w: fast_conv_general_dilated(x, w, **kwargs)
  ref = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
  return fast, ref


def _orders(conv):
  """Scalar functions of (x, w) whose (x, w)-gradients are orders 1, 2, 3."""

  def loss(x, w):
    return jnp.sum(jnp.tanh(conv(x, w)))

  def input_grad_norm(x, w):
    # The LFR/gradient-norm pattern: a function of the input gradient.
    return jnp.sum(jnp.square(jax.grad(loss)(x, w)))

  def third(x, w):
    return jnp.sum(jnp.sin(jax.grad(input_grad_norm, argnums=1)(x, w)))

  return loss, input_grad_norm, third


def _assert_trees_close(a, b):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert u.dtype == jnp.float64
    np.testing.assert_allclose(u, v, **TOL)


@pytest.mark.parametrize("name,x_shape,w_shape,kwargs", CASES, ids=IDS)
def test_value(name, x_shape, w_shape, kwargs):
  x, w = _operands(x_shape, w_shape)
  fast, ref = _convs(kwargs)
  _assert_trees_close(fast(x, w), ref(x, w))


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("name,x_shape,w_shape,kwargs", CASES, ids=IDS)
def test_gradients(name, x_shape, w_shape, kwargs, order):
  """Gradients w.r.t. both operands of the order-1, 2 and 3 functions."""
  x, w = _operands(x_shape, w_shape)
  fast, ref = _convs(kwargs)
  f_fast = _orders(fast)[order - 1]
  f_ref = _orders(ref)[order - 1]
  g_fast = jax.grad(f_fast, argnums=(0, 1))(x, w)
  g_ref = jax.grad(f_ref, argnums=(0, 1))(x, w)
  _assert_trees_close(g_fast, g_ref)
  assert all(float(jnp.abs(g).max()) > 1e-6 for g in g_ref)


@pytest.mark.parametrize("name,x_shape,w_shape,kwargs", CASES[:4], ids=IDS[:4])
def test_jit_double_backprop(name, x_shape, w_shape, kwargs):
  x, w = _operands(x_shape, w_shape)
  fast, ref = _convs(kwargs)
  g_fast = jax.jit(jax.grad(_orders(fast)[1], argnums=(0, 1)))(x, w)
  g_ref = jax.grad(_orders(ref)[1], argnums=(0, 1))(x, w)
  _assert_trees_close(g_fast, g_ref)


@pytest.mark.parametrize("name,x_shape,w_shape,kwargs", CASES[:4], ids=IDS[:4])
def test_vmap_per_example(name, x_shape, w_shape, kwargs):
  """Per-example input gradients and weight gradients under vmap (and jit)."""
  x, w = _operands(x_shape, w_shape)
  fast, ref = _convs(kwargs)

  def per_example(conv):
    loss = _orders(conv)[0]
    one = lambda xi: loss(xi[None], w)
    return jax.jit(jax.vmap(jax.grad(one)))(x)

  _assert_trees_close(per_example(fast), per_example(ref))

  # Batched weights as well: one weight set per example.
  ws = jnp.stack([w, 2.0 * w])  # x has batch 2
  out = lambda conv: jax.vmap(
      jax.grad(_orders(conv)[1], argnums=1))(x[:, None], ws)
  _assert_trees_close(out(fast), out(ref))


def test_jvp_raises():
  """Forward mode is a documented limitation of the custom_vjp conv."""
  name, x_shape, w_shape, kwargs = CASES[0]
  x, w = _operands(x_shape, w_shape)
  fast, _ = _convs(kwargs)
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(lambda x: fast(x, w), (x,), (jnp.ones_like(x),))


def test_float32_follows_lax():
  x, w = _operands((2, 7, 7, 3), (3, 3, 3, 4))
  x, w = x.astype(jnp.float32), w.astype(jnp.float32)
  fast, ref = _convs(CASES[1][3])
  g_fast = jax.grad(_orders(fast)[1], argnums=(0, 1))(x, w)
  g_ref = jax.grad(_orders(ref)[1], argnums=(0, 1))(x, w)
  for u, v in zip(g_fast, g_ref):
    assert u.dtype == jnp.float32
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


def test_rejects_unsupported_arguments():
  x, w = _operands((2, 7, 7, 3), (3, 3, 3, 4))
  with pytest.raises(ValueError, match="batch_group_count"):
    fast_conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC,
                              batch_group_count=2)
  with pytest.raises(ValueError, match="out_sharding"):
    fast_conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC,
                              out_sharding=object())
