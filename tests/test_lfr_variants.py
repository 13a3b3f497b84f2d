"""LFR's first-order variants against the exact (double-backprop) LFR.

Each variant replaces a second derivative by a finite difference of first
derivatives with step h. The tests check, in float64 on a smooth model, that
the difference to the exact quantity shrinks in proportion to h (a forward
difference is first-order accurate): a variant with a wrong direction, a
missing 1/h or a wrong sign keeps an O(1) error and fails.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfr_jax import objectives
from lfr_jax import regularizers

N, H, W, C, CLASSES = 4, 6, 6, 1, 3
STEPS_H = (1e-2, 1e-3, 1e-4)


def smooth_net(params, x):
  """tanh MLP: every second derivative is non-zero, unlike a ReLU net's."""
  hidden = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
  return hidden @ params["w2"]


def problem(dtype=jnp.float64):
  k1, k2, k3, kx, ky = jax.random.split(jax.random.key(0), 5)
  params = {"w1": jax.random.normal(k1, (H * W * C, 12), dtype) * 0.4,
            "b1": jax.random.normal(k2, (12,), dtype) * 0.1,
            "w2": jax.random.normal(k3, (12, CLASSES), dtype)}
  x = jax.random.uniform(kx, (N, H, W, C), dtype, 0.1, 0.9)
  y = jax.random.randint(ky, (N,), 0, CLASSES)
  return params, x, y


def reference_gradient(params, x, y):
  """Per-example d CE / d x of ``smooth_net`` in closed form (float64 numpy)."""
  p = {k: np.asarray(v) for k, v in params.items()}
  flat = np.asarray(x).reshape(x.shape[0], -1)
  hidden = np.tanh(flat @ p["w1"] + p["b1"])
  logits = hidden @ p["w2"]
  prob = np.exp(logits - logits.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  dlogits = prob - np.eye(CLASSES)[np.asarray(y)]
  dhidden = dlogits @ p["w2"].T * (1 - hidden ** 2)
  return (dhidden @ p["w1"].T).reshape(x.shape)


def rate(errors):
  """The slope of log(error) against log(h): 1 for a first-order method."""
  return np.polyfit(np.log(STEPS_H), np.log(errors), 1)[0]


@pytest.mark.parametrize("norm", regularizers.NORMS)
def test_dual_direction_attains_the_norm_inside_the_dual_ball(norm):
  g = np.random.default_rng(0).normal(size=(3, 4, 4, 2))
  s = np.asarray(regularizers.dual_direction(jnp.asarray(g), norm))
  flat_g, flat_s = g.reshape(3, -1), s.reshape(3, -1)
  expected = {"l1": np.abs(flat_g).sum(1),
              "l2": np.sqrt((flat_g ** 2).sum(1)),
              "linf": np.abs(flat_g).max(1)}[norm]
  np.testing.assert_allclose((flat_g * flat_s).sum(1), expected, rtol=1e-6)
  dual = {"l1": np.abs(flat_s).max(1), "l2": np.sqrt((flat_s ** 2).sum(1)),
          "linf": np.abs(flat_s).sum(1)}[norm]
  np.testing.assert_allclose(dual, 1.0, rtol=1e-6)


def test_dual_direction_is_zero_for_a_zero_gradient():
  for norm in regularizers.NORMS[:2]:
    s = regularizers.dual_direction(jnp.zeros((2, 3, 3, 1)), norm)
    assert not np.any(np.isnan(s)) and not np.any(s)


@pytest.mark.parametrize("norm", regularizers.NORMS)
def test_finite_difference_penalty_converges_to_the_gradient_norm(norm):
  with jax.enable_x64(True):
    params, x, y = problem()
    logits_fn = functools.partial(smooth_net, params)
    g = reference_gradient(params, x, y).reshape(N, -1)
    exact = {"l1": np.abs(g).sum(1), "l2": np.sqrt((g ** 2).sum(1)),
             "linf": np.abs(g).max(1)}[norm]
    errors = [np.abs(np.asarray(regularizers.finite_difference_penalty(
        logits_fn, x, y, norm=norm, fd_step=h)) - exact).max()
              for h in STEPS_H]
    assert errors[-1] < 1e-3 * exact.max()
    assert rate(errors) == pytest.approx(1.0, abs=0.15), errors


def test_finite_difference_penalty_parameter_gradient_converges():
  with jax.enable_x64(True):
    params, x, y = problem()

    def exact(p):
      return regularizers.input_gradient_norm(
          functools.partial(smooth_net, p), x, y).sum()

    def approx(p, h):
      return regularizers.finite_difference_penalty(
          functools.partial(smooth_net, p), x, y, fd_step=h).sum()

    want = jax.grad(exact)(params)
    errors = []
    for h in STEPS_H:
      got = jax.grad(approx)(params, h)
      errors.append(max(float(jnp.abs(a - b).max()) for a, b in
                        zip(jax.tree.leaves(got), jax.tree.leaves(want))))
    scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(want))
    assert errors[-1] < 1e-3 * scale
    assert rate(errors) == pytest.approx(1.0, abs=0.15), errors


@pytest.mark.parametrize("norm", regularizers.NORMS)
def test_finite_difference_ascent_direction_converges_to_hessian_product(norm):
  with jax.enable_x64(True):
    params, x, y = problem()
    logits_fn = functools.partial(smooth_net, params)
    s = np.asarray(regularizers.dual_direction(
        jnp.asarray(reference_gradient(params, x, y)), norm))
    # H s as the derivative of the closed-form gradient along s (float64
    # central difference of the reference with a tiny step).
    t = 1e-6
    hvp = (reference_gradient(params, x + t * s, y)
           - reference_gradient(params, x - t * s, y)) / (2 * t)
    exact = regularizers.flatness_ascent_direction(logits_fn, x, y, norm=norm)
    np.testing.assert_allclose(exact, hvp, atol=1e-6 * np.abs(hvp).max())
    errors = [np.abs(np.asarray(regularizers.flatness_ascent_direction(
        logits_fn, x, y, norm=norm, ascent="finite_difference", fd_step=h))
                     - hvp).max() for h in STEPS_H]
    assert errors[-1] < 3e-3 * np.abs(hvp).max()
    assert rate(errors) == pytest.approx(1.0, abs=0.15), errors


def test_first_order_lfr_tends_to_exact_lfr():
  """The whole regularizer: same x_worst once h is small, value error O(h)."""
  with jax.enable_x64(True):
    params, x, y = problem()
    logits_fn = functools.partial(smooth_net, params)
    settings = dict(eps=0.1, step_size=0.02, num_steps=3)
    key = jax.random.key(1)
    exact, x_exact = regularizers.local_flatness(logits_fn, x, y, key,
                                                 **settings)
    errors = []
    for h in STEPS_H:
      value, x_worst = regularizers.local_flatness(
          logits_fn, x, y, key, ascent="finite_difference",
          penalty="finite_difference", fd_step=h, **settings)
      errors.append(float(jnp.abs(value - exact).max()))
    np.testing.assert_array_equal(x_worst, x_exact)
    assert errors[-1] < 1e-3 * float(exact.max())
    assert errors[0] > errors[-1] * 10


def test_uniform_start_fills_the_ball():
  x = jnp.full((64, 4, 4, 1), 0.5)
  start = regularizers.flatness_ascent(
      lambda z: z.reshape(z.shape[0], -1)[:, :3], x, jnp.zeros(64, jnp.int32),
      jax.random.key(0), eps=0.2, step_size=0.01, num_steps=0,
      start="uniform")
  delta = np.asarray(start - x).ravel()
  assert np.abs(delta).max() <= 0.2 + 1e-7
  # Uniform on [-0.2, 0.2]: mean |delta| 0.1, far from the Gaussian start's
  # 1e-3 scale.
  assert np.mean(np.abs(delta)) == pytest.approx(0.1, rel=0.05)


def test_first_order_objective_matches_exact_objective_at_small_h():
  from lfr_jax import models  # pylint: disable=g-import-not-at-top
  net = models.create("small_cnn", jax.random.key(0), dropout=0.0)
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  y = jnp.arange(4)
  settings = dict(step_size=0.05, num_steps=2, lam=0.5)
  exact = objectives.build("lfr", **settings)
  cheap = objectives.build("lfr", ascent="finite_difference",
                           penalty="finite_difference", fd_step=1e-3,
                           **settings)
  (loss_e, (m_e, _)) = exact(net, x, y, jax.random.key(2), 0.3)
  (loss_c, (m_c, _)) = cheap(net, x, y, jax.random.key(2), 0.3)
  # float32 and a ReLU net: the forward difference is exact on a linear
  # piece, so the two agree to rounding wherever h crosses no kink.
  np.testing.assert_allclose(m_c["reg"], m_e["reg"], rtol=2e-2)
  np.testing.assert_allclose(loss_c, loss_e, rtol=2e-2)


@pytest.mark.parametrize("kwargs, message", [
    ({"ascent": "second"}, "unknown ascent 'second'"),
    ({"penalty": "fd"}, "unknown penalty 'fd'"),
    ({"start": "zero"}, "unknown start 'zero'"),
    ({"fd_step": 0.0}, "fd_step must be > 0"),
])
def test_bad_variant_settings_raise_one_sentence(kwargs, message):
  with pytest.raises(ValueError, match=message):
    objectives.build("lfr", **kwargs)
  x = jnp.zeros((2, 4, 4, 1))
  with pytest.raises(ValueError, match=message):
    regularizers.local_flatness(lambda z: z.reshape(2, -1)[:, :3], x,
                                jnp.zeros(2, jnp.int32), jax.random.key(0),
                                eps=0.1, step_size=0.01, num_steps=1, **kwargs)
