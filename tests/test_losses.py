"""Tests for lfr_jax.losses: hand-computed values, invariances, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lfr_jax import losses

LOGITS = jnp.array([[2.0, 1.0, 0.0, -1.0],
                    [0.0, 3.0, 1.0, 2.0]])
Y = jnp.array([0, 2])


def test_cross_entropy_by_hand():
  want = [math.log(1 + math.exp(-1) + math.exp(-2) + math.exp(-3)),
          math.log(math.exp(0) + math.exp(3) + math.exp(1) + math.exp(2)) - 1]
  np.testing.assert_allclose(losses.cross_entropy(LOGITS, Y), want, rtol=1e-6)


def test_cross_entropy_gradient_is_softmax_minus_onehot():
  grad = jax.grad(lambda z: losses.cross_entropy(z, Y).sum())(LOGITS)
  want = jax.nn.softmax(LOGITS) - jax.nn.one_hot(Y, 4)
  np.testing.assert_allclose(grad, want, atol=1e-6)


def test_margin_and_decision_value_by_hand():
  np.testing.assert_allclose(losses.margin(LOGITS, Y), [-1.0, 2.0])
  np.testing.assert_allclose(losses.decision_value(LOGITS, Y), [1.0, -2.0])


def test_dlr_by_hand():
  # Example 0: -(2 - 1) / (2 - 0); example 1: -(1 - 3) / (3 - 1).
  np.testing.assert_allclose(losses.dlr(LOGITS, Y), [-0.5, 1.0], rtol=1e-6)


def test_dlr_targeted_by_hand():
  target = jnp.array([3, 1])
  # Example 0: -(2 - (-1)) / (2 - (0 + -1) / 2);
  # example 1: -(1 - 3) / (3 - (1 + 0) / 2).
  np.testing.assert_allclose(losses.dlr_targeted(LOGITS, Y, target),
                             [-3.0 / 2.5, 2.0 / 2.5], rtol=1e-6)


def test_kl_divergence_by_hand():
  p = jnp.array([[0.0, 0.0]])
  q = jnp.array([[math.log(3.0), 0.0]])  # softmax (0.75, 0.25)
  np.testing.assert_allclose(losses.kl_divergence(p, q),
                             [0.5 * math.log(4 / 3)], rtol=1e-6)
  np.testing.assert_allclose(losses.kl_divergence(LOGITS, LOGITS), [0.0, 0.0],
                             atol=1e-7)


def test_kl_divergence_finite_when_q_underflows():
  p = jnp.array([[0.0, 0.0]])
  q = jnp.array([[200.0, -200.0]])
  value = losses.kl_divergence(p, q)
  assert np.isfinite(value).all() and value[0] > 100


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 100.0),
       shift=st.floats(-50.0, 50.0))
def test_dlr_invariant_to_logit_shift_and_scale(seed, scale, shift):
  logits = jax.random.normal(jax.random.key(seed), (6, 10))
  y = jnp.arange(6) % 10
  target = (y + 1) % 10
  np.testing.assert_allclose(losses.dlr(scale * logits + shift, y),
                             losses.dlr(logits, y), rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(
      losses.dlr_targeted(scale * logits + shift, y, target),
      losses.dlr_targeted(logits, y, target), rtol=1e-3, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_margin_sign_is_misclassification(seed):
  logits = jax.random.normal(jax.random.key(seed), (16, 5))
  y = jax.random.randint(jax.random.key(seed + 1), (16,), 0, 5)
  wrong = np.asarray(jnp.argmax(logits, 1) != y)
  assert (np.asarray(losses.margin(logits, y) > 0) == wrong).all()
  assert (np.asarray(losses.dlr(logits, y) > 0) == wrong).all()
  np.testing.assert_allclose(losses.decision_value(logits, y),
                             -losses.margin(logits, y))
  assert (np.asarray(losses.kl_divergence(logits, logits[::-1])) >= -1e-6).all()


def test_losses_jit():
  for name in losses.names():
    value = jax.jit(losses.get(name))(LOGITS, Y)
    np.testing.assert_allclose(value, losses.get(name)(LOGITS, Y), rtol=1e-6)


def test_get_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="ce, margin, dlr"):
    losses.get("hinge")
  assert losses.get("ce") is losses.cross_entropy


@pytest.mark.parametrize("call, match", [
    (lambda: losses.cross_entropy(jnp.zeros((3,)), Y),
     "logits must have shape"),
    (lambda: losses.margin(LOGITS, jnp.zeros((3,), int)),
     "labels must have shape"),
    (lambda: losses.dlr(LOGITS[:, :2], Y), "at least 3 classes"),
    (lambda: losses.dlr_targeted(LOGITS[:, :3], Y, Y), "at least 4 classes"),
    (lambda: losses.kl_divergence(LOGITS, LOGITS[:1]), "must both have shape"),
])
def test_bad_shapes_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()
