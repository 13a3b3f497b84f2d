"""Maths of the regularizers: finite differences, closed forms, LFR's theorems."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfr_jax import losses
from lfr_jax import regularizers
from lfr_jax.models import layers
from lfr_jax.models.conv import fast_conv_general_dilated

N, H, W, C, CLASSES = 4, 8, 8, 1, 3


def tiny_conv_params(key, dtype=jnp.float32):
  """A smooth conv net (softplus) small enough for float64 finite differences."""
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "conv": jax.random.normal(k1, (3, 3, C, 4), dtype) * 0.5,
      "dense": jax.random.normal(k2, (6 * 6 * 4, CLASSES), dtype) * 0.3,
      "bias": jax.random.normal(k3, (CLASSES,), dtype) * 0.1,
  }


def tiny_conv_logits(params, x):
  h = fast_conv_general_dilated(x, params["conv"], (1, 1), "VALID",
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jax.nn.softplus(h).reshape(x.shape[0], -1)
  return h @ params["dense"] + params["bias"]


def batch(key, dtype=jnp.float32, lo=0.0, hi=1.0):
  kx, ky = jax.random.split(key)
  x = jax.random.uniform(kx, (N, H, W, C), dtype, lo, hi)
  y = jax.random.randint(ky, (N,), 0, CLASSES)
  return x, y


def test_local_flatness_param_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    params = tiny_conv_params(jax.random.key(0), jnp.float64)
    x, y = batch(jax.random.key(1), jnp.float64)
    key = jax.random.key(2)
    settings = dict(eps=0.1, step_size=0.02, num_steps=3)

    def value(p):
      v, _ = regularizers.local_flatness(
          functools.partial(tiny_conv_logits, p), x, y, key, **settings)
      return v.mean()

    grad = jax.grad(value)(params)
    # x_worst is under stop_gradient: hold it fixed for the finite difference.
    _, x_worst = regularizers.local_flatness(
        functools.partial(tiny_conv_logits, params), x, y, key, **settings)

    def fixed_point_value(p):
      return regularizers.input_gradient_norm(
          functools.partial(tiny_conv_logits, p), x_worst, y).mean()

    direction = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(3), a.shape, a.dtype), params)
    h = 1e-6
    plus = fixed_point_value(jax.tree.map(lambda a, d: a + h * d, params, direction))
    minus = fixed_point_value(jax.tree.map(lambda a, d: a - h * d, params, direction))
    fd = (plus - minus) / (2 * h)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad),
                                                  jax.tree.leaves(direction)))
    np.testing.assert_allclose(analytic, fd, rtol=1e-6)


def test_input_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    params = tiny_conv_params(jax.random.key(0), jnp.float64)
    x, y = batch(jax.random.key(1), jnp.float64)
    logits_fn = functools.partial(tiny_conv_logits, params)
    grads = regularizers.input_gradients(logits_fn, x, y)
    direction = jax.random.normal(jax.random.key(5), x.shape, x.dtype)
    h = 1e-6
    ce = lambda z: losses.cross_entropy(logits_fn(z), y)
    fd = (ce(x + h * direction) - ce(x - h * direction)) / (2 * h)
    analytic = (grads * direction).reshape(N, -1).sum(1)
    np.testing.assert_allclose(analytic, fd, rtol=1e-6)


def test_local_flatness_at_eps_zero_equals_input_gradient_norm():
  """LFR Theorem 2: the first-order penalty is LFR with eps = 0."""
  params = tiny_conv_params(jax.random.key(0))
  x, y = batch(jax.random.key(1))
  logits_fn = functools.partial(tiny_conv_logits, params)
  for norm in regularizers.NORMS:
    value, x_worst = regularizers.local_flatness(
        logits_fn, x, y, jax.random.key(2), eps=0.0, step_size=0.01,
        num_steps=5, norm=norm)
    np.testing.assert_array_equal(x_worst, x)
    np.testing.assert_allclose(
        value, regularizers.input_gradient_norm(logits_fn, x, y, norm=norm),
        rtol=1e-6)


def softplus_mlp(params, x):
  h = jax.nn.softplus(x.reshape(x.shape[0], -1) @ params[0])
  return h @ params[1]


def test_theorem3_fgsm_loss_increase_is_eps_times_l1_gradient_norm():
  """L(x + eps sign g) - L(x) = eps ||g||_1 + O(eps^2) for a smooth model."""
  with jax.enable_x64(True):
    k1, k2 = jax.random.split(jax.random.key(0))
    params = (jax.random.normal(k1, (H * W * C, 16), jnp.float64) * 0.3,
              jax.random.normal(k2, (16, CLASSES), jnp.float64))
    # Interior points so the small steps are never clipped.
    x, y = batch(jax.random.key(1), jnp.float64, 0.3, 0.7)
    logits_fn = functools.partial(softplus_mlp, params)
    ce = lambda z: losses.cross_entropy(logits_fn(z), y)
    g = regularizers.input_gradients(logits_fn, x, y)
    l1 = regularizers.input_gradient_norm(logits_fn, x, y)

    def error(eps):
      return jnp.abs(ce(x + eps * jnp.sign(g)) - ce(x) - eps * l1)

    eps = 1e-2
    e1, e2, e3 = error(eps), error(eps / 2), error(eps / 4)
    # Second-order remainder: halving eps quarters the error.
    np.testing.assert_allclose(e1 / e2, 4.0, rtol=0.15)
    np.testing.assert_allclose(e2 / e3, 4.0, rtol=0.15)
    assert jnp.all(e1 < 0.1 * eps * l1)


def test_inner_maximization_increases_gradient_norm():
  params = tiny_conv_params(jax.random.key(0))
  x, y = batch(jax.random.key(1))
  logits_fn = functools.partial(tiny_conv_logits, params)
  start, _ = regularizers.local_flatness(
      logits_fn, x, y, jax.random.key(2), eps=0.3, step_size=0.02, num_steps=0)
  worst, x_worst = regularizers.local_flatness(
      logits_fn, x, y, jax.random.key(2), eps=0.3, step_size=0.02,
      num_steps=20)
  assert jnp.all(worst > start)
  assert jnp.all(jnp.abs(x_worst - x) <= 0.3 + 1e-6)
  assert jnp.all((x_worst >= 0) & (x_worst <= 1))


@pytest.mark.parametrize("num_steps", [1, 4])
def test_rolled_and_unrolled_loops_agree(num_steps):
  params = tiny_conv_params(jax.random.key(0))
  x, y = batch(jax.random.key(1))
  logits_fn = functools.partial(tiny_conv_logits, params)
  run = functools.partial(regularizers.local_flatness, logits_fn, x, y,
                          jax.random.key(2), eps=0.3, step_size=0.02,
                          num_steps=num_steps)
  np.testing.assert_allclose(run(unroll=True)[0], run(unroll=False)[0],
                             rtol=1e-5)


def test_decision_jacobian_closed_form_on_linear_model():
  weight = jax.random.normal(jax.random.key(0), (H * W * C, CLASSES))
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ weight
  x, y = batch(jax.random.key(1))
  logits = logits_fn(x)
  runner_up = jnp.argmax(jnp.where(jax.nn.one_hot(y, CLASSES) > 0, -jnp.inf,
                                   logits), -1)
  expected = jnp.abs(weight[:, y] - weight[:, runner_up]).sum(0)
  np.testing.assert_allclose(
      regularizers.decision_jacobian_norm(logits_fn, x, y), expected, rtol=1e-5)


def test_local_linearity_is_zero_at_eps_zero_and_grows_with_ascent():
  params = tiny_conv_params(jax.random.key(0))
  x, y = batch(jax.random.key(1), lo=0.2, hi=0.8)
  logits_fn = functools.partial(tiny_conv_logits, params)
  gamma0, first0 = regularizers.local_linearity(
      logits_fn, x, y, jax.random.key(2), eps=0.0, num_steps=3)
  np.testing.assert_allclose(gamma0, 0.0, atol=1e-6)
  np.testing.assert_allclose(first0, 0.0, atol=1e-6)
  start, _ = regularizers.local_linearity(
      logits_fn, x, y, jax.random.key(2), eps=0.1, num_steps=0)
  ascended, first = regularizers.local_linearity(
      logits_fn, x, y, jax.random.key(2), eps=0.1, step_size=0.01,
      num_steps=20)
  assert jnp.all(ascended >= 0) and jnp.all(first >= 0)
  assert jnp.mean(ascended) > jnp.mean(start)


def test_local_linearity_matches_its_definition():
  """gamma = |l(x+d) - l(x) - d.grad l(x)| at the returned delta."""
  params = tiny_conv_params(jax.random.key(0))
  x, y = batch(jax.random.key(1), lo=0.2, hi=0.8)
  logits_fn = functools.partial(tiny_conv_logits, params)
  key = jax.random.key(2)
  delta = regularizers.linearity_ascent(logits_fn, x, y, key, eps=0.1,
                                        step_size=0.01, num_steps=5)
  gamma, first = regularizers.local_linearity(logits_fn, x, y, key, eps=0.1,
                                              step_size=0.01, num_steps=5)
  ce = lambda z: losses.cross_entropy(logits_fn(z), y)
  g = regularizers.input_gradients(logits_fn, x, y)
  lin = (delta * g).reshape(N, -1).sum(1)
  np.testing.assert_allclose(gamma, jnp.abs(ce(x + delta) - ce(x) - lin),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(first, jnp.abs(lin), rtol=1e-4, atol=1e-6)
  assert jnp.all(jnp.abs(delta) <= 0.1 + 1e-6)


def test_trades_kl_zero_at_eps_zero_and_positive_after_ascent():
  params = tiny_conv_params(jax.random.key(0))
  x, _ = batch(jax.random.key(1))
  logits_fn = functools.partial(tiny_conv_logits, params)
  kl0, x0 = regularizers.trades_kl(logits_fn, x, jax.random.key(2), eps=0.0,
                                   step_size=0.01, num_steps=3)
  np.testing.assert_allclose(kl0, 0.0, atol=1e-6)
  np.testing.assert_array_equal(x0, x)
  kl, x_adv = regularizers.trades_kl(logits_fn, x, jax.random.key(2), eps=0.3,
                                     step_size=0.03, num_steps=10)
  assert jnp.all(kl > 1e-4)
  assert jnp.all(jnp.abs(x_adv - x) <= 0.3 + 1e-6)


def test_per_example_norms():
  v = jnp.array([[3.0, -4.0], [0.0, 0.0]]).reshape(2, 1, 1, 2)
  np.testing.assert_allclose(regularizers.per_example_norm(v, "l1"), [7, 0])
  np.testing.assert_allclose(regularizers.per_example_norm(v, "l2"), [5, 0])
  np.testing.assert_allclose(regularizers.per_example_norm(v, "linf"), [4, 0])
  grad = jax.grad(lambda v: regularizers.per_example_norm(v, "l2").sum())(v)
  assert jnp.all(jnp.isfinite(grad))


def test_jitted_regularizer_traces_once():
  params = tiny_conv_params(jax.random.key(0))
  x, y = batch(jax.random.key(1))
  traces = []

  def logits_fn(z):
    traces.append(1)
    return tiny_conv_logits(params, z)

  fn = jax.jit(functools.partial(regularizers.local_flatness, logits_fn,
                                 eps=0.3, step_size=0.01, num_steps=2))
  fn(x, y, jax.random.key(0))
  count = len(traces)
  fn(x, y, jax.random.key(1))
  fn(x * 0.5, y, jax.random.key(2))
  assert len(traces) == count


def test_vmap_over_independent_batches():
  params = tiny_conv_params(jax.random.key(0))
  logits_fn = functools.partial(tiny_conv_logits, params)
  xs = jax.random.uniform(jax.random.key(1), (2, N, H, W, C))
  ys = jnp.zeros((2, N), jnp.int32)
  out = jax.vmap(lambda x, y: regularizers.input_gradient_norm(logits_fn, x, y))(xs, ys)
  np.testing.assert_allclose(
      out[1], regularizers.input_gradient_norm(logits_fn, xs[1], ys[1]),
      rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=-0.1), "eps must be >= 0"),
    (dict(step_size=0.0), "step_size must be > 0"),
    (dict(num_steps=-1), "num_steps must be >= 0"),
    (dict(num_steps=2.5), "num_steps must be a non-negative int"),
    (dict(norm="l3"), "unknown norm 'l3'"),
])
def test_bad_settings_raise_one_clear_sentence(kwargs, message):
  params = tiny_conv_params(jax.random.key(0))
  x, y = batch(jax.random.key(1))
  settings = {**dict(eps=0.3, step_size=0.01, num_steps=2), **kwargs}
  with pytest.raises(ValueError, match=message):
    regularizers.local_flatness(functools.partial(tiny_conv_logits, params),
                                x, y, jax.random.key(0), **settings)


def test_bad_batches_raise():
  params = tiny_conv_params(jax.random.key(0))
  logits_fn = functools.partial(tiny_conv_logits, params)
  x, y = batch(jax.random.key(1))
  with pytest.raises(ValueError, match=r"x must hold pixels in \[0, 1\]"):
    regularizers.input_gradient_norm(logits_fn, x * 2.0, y)
  with pytest.raises(ValueError, match="different batch sizes"):
    regularizers.input_gradient_norm(logits_fn, x, y[:2])
  with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
    regularizers.input_gradient_norm(logits_fn, x[0], y)


def test_layers_dropout_requires_key():
  with pytest.raises(ValueError, match="dropout_key"):
    layers.dropout(jnp.ones((2, 3)), 0.5, None, True)
