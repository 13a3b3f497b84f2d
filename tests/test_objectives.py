"""The objectives registry: every method builds, differentiates, and errs clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfr_jax import models
from lfr_jax import objectives

SMALL = {
    "standard": {},
    "pgd_at": {"step_size": 0.1, "num_steps": 2},
    "trades": {"step_size": 0.1, "num_steps": 2, "beta": 1.0},
    "llr": {"step_size": 0.1, "num_steps": 2},
    "lfr": {"step_size": 0.1, "num_steps": 2},
    "gradient_norm": {},
    "decision_jacobian": {},
}


@pytest.fixture(scope="module")
def setup():
  net = models.create("small_cnn", jax.random.key(0))
  # fc3 starts at zero (TRADES init), which zeroes every input gradient; give
  # it weights so the regularizers see something.
  params = jax.tree.map(lambda a: a, net.params)
  kernel = params["fc3"]["kernel"]
  kernel[...] = 0.1 * jax.random.normal(jax.random.key(3), kernel.shape)
  net = net.replace(params=params)
  x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
  y = jnp.arange(8) % 10
  return net, x, y


def test_every_method_is_registered():
  assert set(objectives.names()) == set(SMALL)


@pytest.mark.parametrize("method", sorted(SMALL))
def test_objective_differentiates_and_reports(setup, method):
  net, x, y = setup
  objective = objectives.build(method, **SMALL[method])

  @jax.jit
  def loss_and_grad(params):
    return jax.value_and_grad(
        lambda p: objective(net.replace(params=p), x, y, jax.random.key(2), 0.3),
        has_aux=True)(params)

  (loss, (metrics, new_state)), grads = loss_and_grad(net.params)
  assert set(metrics) >= {"loss", "ce", "reg", "acc"}
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(metrics["loss"], loss)
  flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
  assert jnp.all(jnp.isfinite(flat)) and jnp.any(flat != 0)
  assert jax.tree.structure(new_state) == jax.tree.structure(net.state)


def test_lfr_at_eps_zero_is_the_gradient_norm_objective(setup):
  """Theorem 2 at the level of whole objectives (same keys, same dropout)."""
  net, x, y = setup
  lfr = objectives.build("lfr", lam=0.5, step_size=0.1, num_steps=3)
  grad_norm = objectives.build("gradient_norm", lam=0.5)
  key = jax.random.key(4)
  lfr_loss, _ = lfr(net, x, y, key, 0.0)
  gn_loss, _ = grad_norm(net, x, y, key, 0.0)
  np.testing.assert_allclose(lfr_loss, gn_loss, rtol=1e-6)


def test_lfr_regularizer_weight_moves_the_loss(setup):
  net, x, y = setup
  key = jax.random.key(5)
  base, (m0, _) = objectives.build("lfr", lam=0.0, num_steps=1)(net, x, y, key, 0.3)
  heavy, (m1, _) = objectives.build("lfr", lam=1.0, num_steps=1)(net, x, y, key, 0.3)
  np.testing.assert_allclose(heavy - base, m1["reg"], rtol=1e-5)
  np.testing.assert_allclose(m0["reg"], m1["reg"], rtol=1e-6)


def test_unknown_method_lists_valid_names():
  with pytest.raises(ValueError, match="unknown method 'lfrr'; valid: standard"):
    objectives.build("lfrr")


def test_unknown_setting_lists_valid_settings():
  with pytest.raises(ValueError, match="unknown setting.*'beta'.*valid: lam"):
    objectives.build("lfr", beta=1.0)


@pytest.mark.parametrize("settings, message", [
    ({"step_size": -1.0}, "step_size must be > 0"),
    ({"num_steps": -2}, "num_steps must be >= 0"),
    ({"lam": -0.1}, "lam must be >= 0"),
    ({"norm": "l0"}, "unknown norm 'l0'"),
])
def test_bad_settings(settings, message):
  with pytest.raises(ValueError, match=message):
    objectives.build("lfr", **settings)


def test_negative_eps_at_call_time(setup):
  net, x, y = setup
  with pytest.raises(ValueError, match="eps must be >= 0"):
    objectives.build("standard")(net, x, y, jax.random.key(0), -0.1)
