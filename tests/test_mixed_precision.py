"""bfloat16 compute: float32 parameters, logits and losses; the eps-ball holds.

A SmallCNN is trained briefly on MNIST in float32; each regularizer's value
and parameter gradient is then computed with the same parameters by the
float32 model and by its bfloat16-compute twin (``dtype="bfloat16"``), at the
same inner points (the inner maximization runs on the float32 model for both,
so the comparison measures arithmetic precision, not where a bf16 search
lands; ``bench/mixed_precision.py`` reports both). Bounds are about 3x the
differences measured on 2026-12-03 (2-core x86_64 CPU): value <= 0.7%,
gradient l2 error <= 7% of its norm.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lfr_jax import attacks
from lfr_jax import losses
from lfr_jax import models
from lfr_jax import regularizers

pytestmark = pytest.mark.mnist

EPS = 0.3


@pytest.fixture(scope="module")
def trained(mnist_train):
  """SmallCNN after 100 SGD steps of 64 MNIST images, and a test batch."""
  x, y = (jnp.asarray(a[:2048]) for a in mnist_train)
  net = models.create("small_cnn", jax.random.key(0), dropout=0.0)
  tx = optax.sgd(0.05, momentum=0.9)

  @jax.jit
  def step(params, opt, xb, yb):
    def loss(p):
      logits = net.replace(params=p).logits_fn()(xb)
      return losses.cross_entropy(logits, yb).mean()
    grads = jax.grad(loss)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  params, opt = net.params, tx.init(net.params)
  for i in range(100):
    j = (i * 64) % 2048
    params, opt = step(params, opt, x[j:j + 64], y[j:j + 64])
  return params, x[:32], y[:32]


def _regularizers(inner, key, xt, yt):
  # Rolled inner loops: the same maths, compiled in a fraction of the time.
  k = dict(eps=EPS, num_steps=3, unroll=False)
  return {
      "lfr": lambda lf: regularizers.local_flatness(
          lf, xt, yt, key, step_size=0.01, inner_logits_fn=inner, **k)[0],
      "gradient_norm": lambda lf: regularizers.input_gradient_norm(lf, xt, yt),
      "llr": lambda lf: regularizers.local_linearity(
          lf, xt, yt, key, step_size=0.1, inner_logits_fn=inner, **k)[0],
      "trades": lambda lf: regularizers.trades_kl(
          lf, xt, key, step_size=0.01, inner_logits_fn=inner, **k)[0],
      "decision_jacobian": lambda lf: regularizers.decision_jacobian_norm(
          lf, xt, yt, norm="l2", squared=True),
  }


NAMES = ["lfr", "gradient_norm", "llr", "trades", "decision_jacobian"]


def _values_and_grads(dtype, params, xt, yt):
  """{name: (value, flat float64 gradient)} of every regularizer's batch mean.

  All five in one jitted program per dtype (half the compile time of one
  program each).
  """
  net32 = models.create("small_cnn", jax.random.key(0), dropout=0.0)
  net = models.create("small_cnn", jax.random.key(0), dropout=0.0,
                      dtype=dtype)

  def all_values(p, x, y):
    # x and y are arguments, not closed-over constants XLA would fold.
    inner = net32.replace(params=jax.lax.stop_gradient(p)).logits_fn()
    fns = _regularizers(inner, jax.random.key(3), x, y)
    return {name: jax.value_and_grad(
        lambda q, f=fns[name]: f(net.replace(params=q).logits_fn()).mean())(p)
            for name in NAMES}

  out = jax.jit(all_values)(params, xt, yt)
  return {name: (float(value), np.concatenate(
      [np.ravel(g) for g in jax.tree.leaves(grads)]).astype(np.float64))
          for name, (value, grads) in out.items()}


@pytest.fixture(scope="module")
def both_dtypes(trained):
  params, xt, yt = trained
  return {dtype: _values_and_grads(dtype, params, xt, yt)
          for dtype in ("float32", "bfloat16")}


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_regularizer_close_to_float32(both_dtypes, name):
  v32, g32 = both_dtypes["float32"][name]
  v16, g16 = both_dtypes["bfloat16"][name]
  value_error = abs(v16 - v32) / abs(v32)
  grad_error = np.linalg.norm(g16 - g32) / np.linalg.norm(g32)
  print(f"{name}: value {v32:.5g} (f32) vs {v16:.5g} (bf16), relative "
        f"{value_error:.2e}; gradient relative l2 error {grad_error:.3f}")
  assert value_error < 0.02, (v32, v16)
  assert grad_error < 0.2, grad_error


def test_bfloat16_model_keeps_float32_parameters_and_logits():
  net = models.create("resnet", jax.random.key(0), stage_sizes=(1,), width=4,
                      num_classes=10, dtype="bfloat16")
  assert {p.dtype for p in jax.tree.leaves(net.params)} == {
      jnp.dtype(jnp.float32)}
  # Dtypes only: traced, not run.
  logits, updated = jax.eval_shape(
      lambda: net.apply(jnp.ones((2, 16, 16, 3)) * 0.5, bn_mode="batch"))
  assert logits.dtype == jnp.float32
  assert {s.dtype for s in jax.tree.leaves(updated.state)} == {
      jnp.dtype(jnp.float32)}
  # The convolutions did compute in bfloat16.
  jaxpr = str(jax.make_jaxpr(
      lambda x: net.apply(x, bn_mode="batch")[0])(jnp.ones((2, 16, 16, 3))))
  assert "bf16" in jaxpr


def _bf16_linear_model():
  w = jax.random.normal(jax.random.key(0), (28 * 28, 10)).astype(jnp.bfloat16)
  return lambda z: z.reshape(z.shape[0], -1).astype(jnp.bfloat16) @ w


@pytest.mark.parametrize("attack", ["pgd", "fgsm", "bim", "mifgsm", "apgd"])
def test_bfloat16_attacks_stay_in_the_ball(attack):
  """bf16 images and logits: the returned points are float32 and in the ball.

  Projecting in bfloat16 rounds x + eps to a bf16 value: one step of 0.01
  reached |delta| = 0.3027 at eps = 0.3 before losses, norms and projections
  were moved to float32.
  """
  logits_fn = _bf16_linear_model()
  x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1)).astype(jnp.bfloat16)
  y = jnp.arange(8) % 10
  settings = {"eps": EPS}
  if attack != "fgsm":
    settings["num_steps"] = 5
  if attack in ("pgd", "bim", "mifgsm"):
    settings["step_size"] = 0.1
  x_adv = getattr(attacks, attack)(logits_fn, x, y, jax.random.key(2),
                                   **settings)
  assert x_adv.dtype == jnp.float32
  delta = jnp.abs(x_adv - x.astype(jnp.float32))
  assert float(jnp.max(delta)) <= float(jnp.float32(EPS))
  assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0


@pytest.mark.parametrize("name", ["lfr", "llr", "trades"])
def test_bfloat16_regularizer_inner_points_stay_in_the_ball(name):
  logits_fn = _bf16_linear_model()
  x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1)).astype(jnp.bfloat16)
  y = jnp.arange(8) % 10
  key = jax.random.key(2)
  if name == "lfr":
    value, point = regularizers.local_flatness(
        logits_fn, x, y, key, eps=EPS, step_size=0.1, num_steps=5)
  elif name == "trades":
    value, point = regularizers.trades_kl(logits_fn, x, key, eps=EPS,
                                          step_size=0.1, num_steps=5)
  else:
    delta = regularizers.linearity_ascent(logits_fn, x, y, key, eps=EPS,
                                          step_size=0.1, num_steps=5)
    value, point = None, x.astype(jnp.float32) + delta
  assert point.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(point - x.astype(jnp.float32)))) <= float(
      jnp.float32(EPS))
  if value is not None:
    assert value.dtype == jnp.float32


def test_losses_are_float32_for_bfloat16_logits():
  logits = jnp.array([[2.0, 1.0, 0.0, -1.0], [0.5, 3.0, 1.0, 0.0]],
                     jnp.bfloat16)
  y = jnp.array([0, 2])
  for fn in (losses.cross_entropy, losses.margin, losses.dlr,
             losses.decision_value):
    assert fn(logits, y).dtype == jnp.float32, fn.__name__
  assert losses.kl_divergence(logits, logits[::-1]).dtype == jnp.float32
  reference = -jax.nn.log_softmax(logits.astype(jnp.float32))[
      jnp.arange(2), y]
  np.testing.assert_allclose(losses.cross_entropy(logits, y), reference,
                             rtol=1e-6)
