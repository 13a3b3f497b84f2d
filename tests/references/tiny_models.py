"""Three tiny models in float64 NumPy, with their derivatives by hand.

Each model maps images x (N, H, W, C) to logits z (N, K), examples being
independent, and offers, per example n:

- ``logits(x)``: the forward pass;
- ``vjp(x, u)``: d(u_n . z_n)/dx_n, i.e. J^T u;
- ``jvp(x, v)``: J v, the directional derivative of z_n along v_n;
- ``curvature_vjp(x, u, v)``: sum_k u_nk (d^2 z_nk / dx^2) v_n, the second
  derivative of the logits (zero for the linear model and, almost
  everywhere, for the ReLU CNN).

All derivatives are analytic (written out below, not taken by autodiff);
:func:`check_derivatives` compares them with central finite differences of
the NumPy forward, so a wrong hand derivative fails the tests that use it.
``jax_logits()`` is the same forward in ``jax.numpy``: the model that the
code under test attacks or regularizes.

The models (a few hundred parameters each):

- :class:`Linear`: z = x W + b.
- :class:`SoftplusMLP`: z = softplus(x W1 + b1) W2 + b2.
- :class:`ReluCNN`: a 3x3 VALID convolution with bias, ReLU, then a dense
  layer with bias.
"""

from __future__ import annotations

import numpy as np


def _flat(x):
  return x.reshape(x.shape[0], -1)


def softplus(a):
  return np.logaddexp(0.0, a)


def sigmoid(a):
  return 0.5 * (1.0 + np.tanh(0.5 * a))


class Linear:
  """z = x_flat W + b."""

  def __init__(self, rng, shape, classes, scale=0.6):
    d = int(np.prod(shape))
    self.shape = tuple(shape)
    self.w = rng.normal(0.0, scale, (d, classes))
    self.b = rng.normal(0.0, 0.2, classes)

  def logits(self, x):
    return _flat(x) @ self.w + self.b

  def vjp(self, x, u):
    return (u @ self.w.T).reshape(x.shape)

  def jvp(self, x, v):
    return _flat(v) @ self.w

  def curvature_vjp(self, x, u, v):
    return np.zeros_like(x)

  def jax_logits(self):
    import jax.numpy as jnp
    w, b = jnp.asarray(self.w), jnp.asarray(self.b)
    return lambda x: x.reshape(x.shape[0], -1) @ w + b


class SoftplusMLP:
  """z = softplus(x_flat W1 + b1) W2 + b2."""

  def __init__(self, rng, shape, classes, hidden=12, scale=1.0):
    d = int(np.prod(shape))
    self.shape = tuple(shape)
    self.w1 = rng.normal(0.0, scale / np.sqrt(d) * 2.0, (d, hidden))
    self.b1 = rng.normal(0.0, 0.3, hidden)
    self.w2 = rng.normal(0.0, scale, (hidden, classes))
    self.b2 = rng.normal(0.0, 0.2, classes)

  def _pre(self, x):
    return _flat(x) @ self.w1 + self.b1

  def logits(self, x):
    return softplus(self._pre(x)) @ self.w2 + self.b2

  def vjp(self, x, u):
    # dz/dh = W2^T, dh/da = sigmoid(a), da/dx = W1^T.
    s = sigmoid(self._pre(x))
    return (((u @ self.w2.T) * s) @ self.w1.T).reshape(x.shape)

  def jvp(self, x, v):
    s = sigmoid(self._pre(x))
    return ((_flat(v) @ self.w1) * s) @ self.w2

  def curvature_vjp(self, x, u, v):
    # sum_k u_k d^2 z_k/dx^2 = W1 diag((W2 u) * sigmoid'(a)) W1^T.
    s = sigmoid(self._pre(x))
    ds = s * (1.0 - s)
    inner = (u @ self.w2.T) * ds * (_flat(v) @ self.w1)
    return (inner @ self.w1.T).reshape(x.shape)

  def jax_logits(self):
    import jax
    import jax.numpy as jnp
    w1, b1, w2, b2 = (jnp.asarray(a) for a in (self.w1, self.b1, self.w2,
                                                 self.b2))
    return lambda x: jax.nn.softplus(
        x.reshape(x.shape[0], -1) @ w1 + b1) @ w2 + b2


class ReluCNN:
  """3x3 VALID convolution (HWIO kernel) + bias -> ReLU -> dense + bias."""

  def __init__(self, rng, shape, classes, channels=3):
    h, w, c = shape
    self.shape = tuple(shape)
    self.kernel = rng.normal(0.0, 0.6, (3, 3, c, channels))
    self.bias = rng.normal(0.0, 0.1, channels)
    self.dense = rng.normal(0.0, 0.5, ((h - 2) * (w - 2) * channels,
                                       classes))
    self.dense_bias = rng.normal(0.0, 0.2, classes)

  def _conv(self, x):
    """Cross-correlation, as lax.conv_general_dilated computes it."""
    patches = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))
    return np.einsum("nijcab,abco->nijo", patches, self.kernel)

  def _conv_transpose(self, g, like):
    out = np.zeros_like(like)
    _, hh, ww, _ = g.shape
    for a in range(3):
      for b in range(3):
        out[:, a:a + hh, b:b + ww, :] += g @ self.kernel[a, b].T
    return out

  def _mask(self, x):
    return (self._conv(x) + self.bias) > 0

  def logits(self, x):
    h = np.maximum(self._conv(x) + self.bias, 0.0)
    return _flat(h) @ self.dense + self.dense_bias

  def vjp(self, x, u):
    mask = self._mask(x)
    g = (u @ self.dense.T).reshape(mask.shape) * mask
    return self._conv_transpose(g, x)

  def jvp(self, x, v):
    return _flat(self._conv(v) * self._mask(x)) @ self.dense

  def curvature_vjp(self, x, u, v):
    # Piecewise linear: the logits' Hessian is zero wherever it exists.
    return np.zeros_like(x)

  def jax_logits(self):
    import jax
    import jax.numpy as jnp
    kernel, bias, dense, dense_bias = (
        jnp.asarray(a) for a in (self.kernel, self.bias, self.dense,
                                 self.dense_bias))

    def logits(x):
      h = jax.lax.conv_general_dilated(
          x, kernel, (1, 1), "VALID",
          dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
      return jax.nn.relu(h).reshape(x.shape[0], -1) @ dense + dense_bias

    return logits


MODELS = {"linear": Linear, "softplus_mlp": SoftplusMLP, "relu_cnn": ReluCNN}


def make(name, seed, shape, classes):
  """A model of :data:`MODELS` with parameters drawn from ``seed``."""
  return MODELS[name](np.random.default_rng(seed), shape, classes)


def check_derivatives(model, x, h=1e-6, rtol=1e-6):
  """Asserts the hand derivatives against central finite differences.

  J v and J^T u against (z(x + h v) - z(x - h v)) / 2h; the curvature term
  against the finite difference of the hand J^T u along v. Points where a
  ReLU sits within h of its kink would make the differences meaningless, so
  pick x away from them (the tests use random x; the check would fail
  loudly, not silently pass).
  """
  rng = np.random.default_rng(123)
  k = model.logits(x).shape[1]
  v = rng.normal(size=x.shape)
  u = rng.normal(size=(x.shape[0], k))
  fd_jvp = (model.logits(x + h * v) - model.logits(x - h * v)) / (2 * h)
  np.testing.assert_allclose(model.jvp(x, v), fd_jvp, rtol=rtol, atol=1e-8)
  # <J^T u, v> = <u, J v> per example.
  lhs = (_flat(model.vjp(x, u)) * _flat(v)).sum(1)
  rhs = (u * model.jvp(x, v)).sum(1)
  np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-12)
  fd_curv = (model.vjp(x + h * v, u) - model.vjp(x - h * v, u)) / (2 * h)
  np.testing.assert_allclose(model.curvature_vjp(x, u, v), fd_curv,
                             rtol=rtol, atol=1e-7)
