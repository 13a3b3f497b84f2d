"""Maths of the regularizers: finite differences, closed forms, LFR's theorems."""

import functools

import chex
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


def test_lfr_inner_max_at_a_binding_radius_matches_reference_sign_pgd():
  """eps = 0.05 with ten steps of 0.01: the ball binds. The inner maximum is
  the sign-PGD of LFR Eq. 3 written out here (start x + 0.001 N(0, 1), step
  along sign d/dx' ||d CE/dx'||_1, clip to the ball and to [0, 1]), in
  float64; x_worst reaches eps in every example wherever [0, 1] does not
  bind."""
  eps, step_size, num_steps = 0.05, 0.01, 10
  with jax.enable_x64(True):
    k1, k2, kx, key = jax.random.split(jax.random.key(0), 4)
    params = (jax.random.normal(k1, (H * W * C, 12), jnp.float64) * 0.3,
              jax.random.normal(k2, (12, CLASSES), jnp.float64))
    logits_fn = functools.partial(softplus_mlp, params)
    x = jnp.clip(jax.random.uniform(kx, (N, H, W, C), jnp.float64, -0.2, 1.2),
                 0.0, 1.0)
    y = jnp.arange(N) % CLASSES

    def summed_l1(z):
      def total_ce(v):
        logits = logits_fn(v)
        return (jax.scipy.special.logsumexp(logits, axis=1)
                - logits[jnp.arange(N), y]).sum()
      return jnp.abs(jax.grad(total_ce)(z)).sum()

    def clip(z):
      return jnp.clip(jnp.clip(z, x - eps, x + eps), 0.0, 1.0)

    ascent = jax.jit(jax.grad(summed_l1))
    want = clip(x + 1e-3 * jax.random.normal(key, x.shape, jnp.float64))
    for _ in range(num_steps):
      want = clip(want + step_size * jnp.sign(ascent(want)))

    value, x_worst = jax.jit(functools.partial(
        regularizers.local_flatness, logits_fn, eps=eps, step_size=step_size,
        num_steps=num_steps))(x, y, key)
    np.testing.assert_allclose(x_worst, want, atol=1e-12)
    free = np.asarray((x >= eps) & (x <= 1 - eps)).reshape(N, -1)
    moved = np.abs(np.asarray(x_worst - x)).reshape(N, -1)
    for i in range(N):
      np.testing.assert_allclose(moved[i][free[i]].max(), eps, rtol=1e-9)
    assert np.mean(np.isclose(moved[free], eps)) > 0.5
    assert moved.max() <= eps * (1 + 1e-12)
    g = jax.grad(lambda z: (jax.scipy.special.logsumexp(logits_fn(z), axis=1)
                            - logits_fn(z)[jnp.arange(N), y]).sum())(x_worst)
    np.testing.assert_allclose(value, jnp.abs(g).reshape(N, -1).sum(1),
                               rtol=1e-10)


def test_trades_inner_max_ascends_kl_from_clean_to_adversarial():
  """TRADES' inner max is sign-PGD on KL(p(x) || p(x')) from x + 0.001 N(0,1)
  (Zhang et al. 2019), written out here in float64; with eight steps of
  0.02 in a ball of 0.3 every step's sign counts, and ascending the reversed
  KL(p(x') || p(x)) ends elsewhere. The value is KL(p(x) || p(x_adv))."""
  eps, step_size, num_steps = 0.3, 0.02, 8
  with jax.enable_x64(True):
    k1, k2, kx, key = jax.random.split(jax.random.key(1), 4)
    params = (jax.random.normal(k1, (H * W * C, 12), jnp.float64) * 0.3,
              jax.random.normal(k2, (12, CLASSES), jnp.float64))
    logits_fn = functools.partial(softplus_mlp, params)
    x = jnp.clip(jax.random.uniform(kx, (N, H, W, C), jnp.float64, -0.2, 1.2),
                 0.0, 1.0)

    def log_softmax(z):
      return z - jax.scipy.special.logsumexp(z, axis=1, keepdims=True)

    def kl(p_logits, q_logits):
      log_p, log_q = log_softmax(p_logits), log_softmax(q_logits)
      return (jnp.exp(log_p) * (log_p - log_q)).sum(axis=1)

    def sign_pgd(objective):
      ascent = jax.jit(jax.grad(objective))
      clip = lambda z: jnp.clip(jnp.clip(z, x - eps, x + eps), 0.0, 1.0)
      z = clip(x + 1e-3 * jax.random.normal(key, x.shape, jnp.float64))
      for _ in range(num_steps):
        z = clip(z + step_size * jnp.sign(ascent(z)))
      return z

    clean = logits_fn(x)
    want = sign_pgd(lambda z: kl(clean, logits_fn(z)).sum())
    reversed_kl = sign_pgd(lambda z: kl(logits_fn(z), clean).sum())
    assert float(jnp.abs(want - reversed_kl).max()) > 0.1
    value, x_adv = jax.jit(functools.partial(
        regularizers.trades_kl, logits_fn, eps=eps, step_size=step_size,
        num_steps=num_steps))(x, key)
    np.testing.assert_allclose(x_adv, want, atol=1e-12)
    np.testing.assert_allclose(value, kl(clean, logits_fn(want)), rtol=1e-10)


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


def test_decision_jacobian_squared_pixel_mean_on_linear_model():
  """squared + pixel_mean is the mean of J^2 over pixels, what torch's .mean() gives."""
  weight = jax.random.normal(jax.random.key(0), (H * W * C, CLASSES))
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ weight
  x, y = batch(jax.random.key(1))
  logits = logits_fn(x)
  runner_up = jnp.argmax(jnp.where(jax.nn.one_hot(y, CLASSES) > 0, -jnp.inf,
                                   logits), -1)
  jac = weight[:, y] - weight[:, runner_up]            # (d, N)
  value = functools.partial(regularizers.decision_jacobian_norm, logits_fn, x,
                            y, norm="l2")
  np.testing.assert_allclose(value(squared=True), (jac ** 2).sum(0), rtol=1e-5)
  np.testing.assert_allclose(value(pixel_mean=True),
                             jnp.sqrt((jac ** 2).sum(0)) / (H * W * C),
                             rtol=1e-5)
  np.testing.assert_allclose(value(squared=True, pixel_mean=True),
                             (jac ** 2).mean(0), rtol=1e-5)


def test_decision_jacobian_scales_with_the_logits():
  """Scaling the logits by s: an unsquared norm grows like s, a squared one like s^2.

  So near zero logits the unsquared penalty's slope is c ||J||, which must
  stay below the logit gap or the constant classifier wins; the squared
  penalty's slope there is 0, so it never favours it.
  """
  params = tiny_conv_params(jax.random.key(0))
  x, y = batch(jax.random.key(1))

  def penalty(s, squared):
    logits_fn = lambda z: s * tiny_conv_logits(params, z)
    return regularizers.decision_jacobian_norm(
        logits_fn, x, y, norm="l2", squared=squared).mean()

  for s in (0.5, 0.01):
    np.testing.assert_allclose(penalty(s, False), s * penalty(1.0, False),
                               rtol=1e-5)
    np.testing.assert_allclose(penalty(s, True), s ** 2 * penalty(1.0, True),
                               rtol=1e-5)
  assert float(penalty(1.0, False)) > 0.1


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


# --- every regularizer, eagerly and under jit (chex variants) --------------------


def _reference_ce(logits, y):
  return jax.scipy.special.logsumexp(logits, axis=1) - logits[jnp.arange(N), y]


class RegularizerVariantsTest(chex.TestCase):
  """Each regularizer's value against a reference written here, with and without jit."""

  def setUp(self):
    super().setUp()
    self.logits_fn = functools.partial(tiny_conv_logits,
                                       tiny_conv_params(jax.random.key(0)))
    self.x, self.y = batch(jax.random.key(1))
    self.key = jax.random.key(2)

  def _input_gradient(self, z):
    return jax.grad(lambda v: _reference_ce(self.logits_fn(v), self.y).sum())(z)

  @chex.variants(with_jit=True, without_jit=True)
  def test_input_gradient_norm(self):
    run = self.variant(functools.partial(regularizers.input_gradient_norm,
                                         self.logits_fn, norm="l2"))
    value = run(self.x, self.y)
    chex.assert_shape(value, (N,))
    want = jnp.sqrt((self._input_gradient(self.x) ** 2).reshape(N, -1).sum(1))
    np.testing.assert_allclose(value, want, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_local_flatness_is_the_gradient_norm_at_its_worst_point(self):
    eps = 0.1
    run = self.variant(functools.partial(
        regularizers.local_flatness, self.logits_fn, eps=eps, step_size=0.02,
        num_steps=3))
    value, x_worst = run(self.x, self.y, self.key)
    chex.assert_shape(value, (N,))
    chex.assert_equal_shape([x_worst, self.x])
    chex.assert_trees_all_close(
        value, jnp.abs(self._input_gradient(x_worst)).reshape(N, -1).sum(1),
        rtol=1e-5)
    assert float(jnp.abs(x_worst - self.x).max()) <= eps + 1e-6
    assert float(x_worst.min()) >= 0.0 and float(x_worst.max()) <= 1.0

  @chex.variants(with_jit=True, without_jit=True)
  def test_local_linearity_is_the_gap_at_its_delta(self):
    run = self.variant(functools.partial(
        regularizers.local_linearity, self.logits_fn, eps=0.1, step_size=0.05,
        num_steps=3))
    gamma, first_order = run(self.x, self.y, self.key)
    chex.assert_shape([gamma, first_order], (N,))
    assert bool(jnp.all(gamma >= 0)) and bool(jnp.all(first_order >= 0))
    # Both terms at the same delta: recover it from the ascent, then check
    # |l(x+d) - l(x) - d^T g| and |d^T g| written out here.
    delta = regularizers.linearity_ascent(self.logits_fn, self.x, self.y,
                                          self.key, eps=0.1, step_size=0.05,
                                          num_steps=3, unroll=True)
    g = self._input_gradient(self.x)
    dot = (delta * g).reshape(N, -1).sum(1)
    gap = (_reference_ce(self.logits_fn(self.x + delta), self.y)
           - _reference_ce(self.logits_fn(self.x), self.y) - dot)
    np.testing.assert_allclose(gamma, jnp.abs(gap), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(first_order, jnp.abs(dot), rtol=1e-4, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_trades_kl_is_the_kl_at_its_adversarial_point(self):
    run = self.variant(functools.partial(
        regularizers.trades_kl, self.logits_fn, eps=0.1, step_size=0.02,
        num_steps=3))
    kl, x_adv = run(self.x, self.key)
    chex.assert_shape(kl, (N,))
    p = jax.nn.log_softmax(self.logits_fn(self.x))
    q = jax.nn.log_softmax(self.logits_fn(x_adv))
    np.testing.assert_allclose(kl, (jnp.exp(p) * (p - q)).sum(1), rtol=1e-4,
                               atol=1e-7)
    assert float(jnp.abs(x_adv - self.x).max()) <= 0.1 + 1e-6

  @chex.variants(with_jit=True, without_jit=True)
  def test_decision_jacobian_norm_on_a_linear_model(self):
    w = jax.random.normal(jax.random.key(3), (H * W * C, CLASSES))
    logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w
    run = self.variant(functools.partial(regularizers.decision_jacobian_norm,
                                         logits_fn, norm="l1"))
    value = run(self.x, self.y)
    logits = logits_fn(self.x)
    others = jnp.where(jax.nn.one_hot(self.y, CLASSES) > 0, -jnp.inf, logits)
    runner_up = jnp.argmax(others, axis=1)
    want = jnp.abs(w[:, self.y] - w[:, runner_up]).sum(0)  # closed form
    np.testing.assert_allclose(value, want, rtol=1e-5)
