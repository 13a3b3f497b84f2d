"""Rematerialization and the convolution choice change memory and speed, never gradients.

Each test differentiates a whole training objective (LFR: an inner loop of
Hessian-vector products, then double backprop to the parameters, so second
order through every convolution) with and without the setting, and compares
the parameter gradients against each other: both sides are computed by
different programs (recomputed blocks; a different convolution lowering).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_lfr
from configs import mnist_lfr
from lfr_jax import config_check
from lfr_jax import models
from lfr_jax import objectives

# The WideResNet twins run with -m slow (about a minute each on 2 cores).
MODELS = ["resnet", pytest.param("wide_resnet", marks=pytest.mark.slow)]
TINY = {
    "resnet": dict(stage_sizes=(1, 1), width=4, num_classes=10),
    "wide_resnet": dict(depth=10, width=1, num_classes=10, dropout=0.2),
}


def _lfr_grads(name, kwargs, *, remat_inner=False):
  return _cached_lfr_grads(name, tuple(sorted(kwargs.items())), remat_inner)


@functools.lru_cache(maxsize=None)
def _cached_lfr_grads(name, kwargs, remat_inner):
  net = models.create(name, jax.random.key(0), **dict(kwargs))
  # A rolled loop: the same maths, compiled in a fraction of the time.
  objective = objectives.build("lfr", num_steps=2, step_size=0.01,
                               unroll=False, remat_inner=remat_inner)
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  y = jnp.arange(2)

  def loss(params, x, y):  # x, y as arguments: no constant folding
    return objective(net.replace(params=params), x, y, jax.random.key(2),
                     0.03)[0]

  value, grads = jax.jit(jax.value_and_grad(loss))(net.params, x, y)
  return float(value), jax.tree.leaves(grads)


def _assert_same(a, b, rtol=1e-4):
  """Equal up to float32 rounding: recomputation and another lowering
  reorder sums (measured: <= 2e-5 of an entry, or 1.5e-6 absolute on small
  entries), so each leaf is compared to 1e-4 of its largest entry."""
  assert a[0] == pytest.approx(b[0], rel=rtol)
  for ga, gb in zip(a[1], b[1]):
    np.testing.assert_allclose(ga, gb, rtol=rtol,
                               atol=rtol * float(np.abs(gb).max()))


@pytest.mark.parametrize("name", MODELS)
def test_remat_blocks_gives_the_same_gradients(name):
  plain = _lfr_grads(name, TINY[name])
  _assert_same(_lfr_grads(name, dict(TINY[name], remat=True)), plain)


def test_remat_inner_gives_the_same_gradients():
  plain = _lfr_grads("resnet", TINY["resnet"])
  _assert_same(_lfr_grads("resnet", TINY["resnet"], remat_inner=True), plain)


@pytest.mark.parametrize("name", MODELS)
def test_lax_and_custom_vjp_convolutions_give_the_same_gradients(name):
  custom = _lfr_grads(name, TINY[name])   # "auto" is the custom VJP on CPU
  plain = _lfr_grads(name, dict(TINY[name], conv="lax"))
  _assert_same(custom, plain)


def test_auto_convolution_follows_the_platform():
  assert models.layers.resolve_conv("auto", "cpu") == "custom_vjp"
  assert models.layers.resolve_conv("auto", "tpu") == "lax"
  assert models.layers.resolve_conv("lax", "cpu") == "lax"
  kwargs = models.kwargs_from_config(mnist_lfr.get_config().model,
                                     platform="tpu")
  assert kwargs["conv"] == "lax" and kwargs["dtype"] == "float32"


def test_remat_settings_reach_model_and_objective():
  config = cifar10_lfr.get_config("smoke")
  config.train.remat = "blocks"
  config_check.validate(config)
  assert models.kwargs_from_config(config.model, remat="blocks")["remat"]
  config.train.remat = "inner"
  assert objectives.settings_from_config(config)["remat_inner"] is True
  assert objectives.settings_from_config(
      mnist_lfr.get_config("smoke"))["remat_inner"] is False


def test_remat_blocks_needs_residual_blocks():
  config = mnist_lfr.get_config("smoke")
  config.train.remat = "blocks"
  with pytest.raises(config_check.ConfigError, match="residual blocks"):
    config_check.validate(config)
  config.train.remat = "everything"
  with pytest.raises(config_check.ConfigError, match="train.remat"):
    config_check.validate(config)


def test_unknown_dtype_and_conv_are_refused():
  config = mnist_lfr.get_config("smoke")
  config.model.dtype = "float16"
  with pytest.raises(config_check.ConfigError, match="model.dtype"):
    config_check.validate(config)
  config.model.dtype = "bfloat16"
  config.model.conv = "fft"
  with pytest.raises(config_check.ConfigError, match="model.conv"):
    config_check.validate(config)
