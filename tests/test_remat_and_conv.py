"""Rematerialization and the convolution choice change memory and speed, never gradients.

Each test differentiates a whole training objective (LFR: an inner loop of
Hessian-vector products, then double backprop to the parameters, so second
order through every convolution) with and without the setting, and compares
the parameter gradients against each other: the two sides are different
computations (recomputed blocks; a different convolution lowering), compiled
together in one program to save compile time.
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

TINY = {
    "resnet": dict(stage_sizes=(1,), width=4, num_classes=10),
    "wide_resnet": dict(depth=10, width=1, num_classes=10, dropout=0.2),
}
# Each variant of the plain model: (model keywords, objective's remat_inner).
VARIANTS = {
    "plain": ({}, False),
    "remat_blocks": ({"remat": True}, False),
    "remat_inner": ({}, True),
    "lax_conv": ({"conv": "lax"}, False),  # "auto" is the custom VJP on CPU
}


def _lfr_loss(name, variant):
  """params -> the LFR objective's value for one variant of a tiny model."""
  kwargs, remat_inner = VARIANTS[variant]
  net = models.create(name, jax.random.key(0), **TINY[name], **kwargs)
  # A rolled loop: the same maths, compiled in a fraction of the time.
  objective = objectives.build("lfr", num_steps=2, step_size=0.01,
                               unroll=False, remat_inner=remat_inner)
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  y = jnp.arange(2)
  return lambda params: objective(net.replace(params=params), x, y,
                                  jax.random.key(2), 0.03)[0]


@functools.lru_cache(maxsize=None)
def _lfr_grads(name, variants):
  """{variant: (value, gradient leaves)}, all variants in one program.

  One compile instead of one per variant (about half the compile time).
  XLA may share work between the variants only where they compute the same
  expressions, so a variant that changed the maths would still differ.
  """
  params = models.create(name, jax.random.key(0), **TINY[name]).params
  losses = {v: _lfr_loss(name, v) for v in variants}
  out = jax.jit(lambda p: {v: jax.value_and_grad(f)(p)
                           for v, f in losses.items()})(params)
  return {v: (float(value), jax.tree.leaves(grads))
          for v, (value, grads) in out.items()}


def _assert_same(a, b, rtol=1e-4):
  """Equal up to float32 rounding: recomputation and another lowering
  reorder sums (measured: <= 2e-5 of an entry, or 1.5e-6 absolute on small
  entries), so each leaf is compared to 1e-4 of its largest entry."""
  assert a[0] == pytest.approx(b[0], rel=rtol)
  for ga, gb in zip(a[1], b[1]):
    np.testing.assert_allclose(ga, gb, rtol=rtol,
                               atol=rtol * float(np.abs(gb).max()))


@pytest.mark.parametrize("variant", ["remat_blocks", "remat_inner",
                                     "lax_conv"])
def test_variant_gives_the_same_gradients(variant):
  grads = _lfr_grads("resnet", tuple(VARIANTS))
  _assert_same(grads[variant], grads["plain"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["remat_blocks", "lax_conv"])
def test_wide_resnet_variant_gives_the_same_gradients(variant):
  grads = _lfr_grads("wide_resnet", ("plain", variant))
  _assert_same(grads[variant], grads["plain"])


@pytest.mark.parametrize("variant, remat", [
    ("plain", False), ("remat_blocks", True), ("remat_inner", True)])
def test_remat_settings_checkpoint_the_step(variant, remat):
  """The equal gradients above come from a program that does rematerialize."""
  params = models.create("resnet", jax.random.key(0), **TINY["resnet"]).params
  jaxpr = str(jax.make_jaxpr(jax.grad(_lfr_loss("resnet", variant)))(params))
  assert ("remat" in jaxpr) is remat   # jax.checkpoint's primitive: remat2


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
