"""The library's argument checks hold under jax.jit.

A concrete negative eps raises before tracing; a traced one cannot be read
without a host sync, so every projection and ball sample clamps it at 0: the
output is the clean point, never one outside the ball (|delta| > |eps| was
possible before). dtype and PRNG-key checks raise one sentence before tracing,
traced arguments or not.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfr_jax import attacks
from lfr_jax import regularizers

N, SHAPE, CLASSES = 4, (6, 6, 1), 10


def _model():
  w = jax.random.normal(jax.random.key(0), (int(np.prod(SHAPE)), CLASSES))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w) * 3.0


def _batch():
  x = jax.random.uniform(jax.random.key(1), (N,) + SHAPE, minval=0.2,
                         maxval=0.8)
  return x, jnp.arange(N, dtype=jnp.int32) % CLASSES


def _point(out):
  """The perturbed batch of any attack's or regularizer's output."""
  if isinstance(out, dict):
    return out["x_adv"]
  if isinstance(out, tuple):
    return out[0]
  return out


# name -> fn(logits_fn, x, y, key, eps) returning the perturbed points.
EPS_TAKERS = {
    "fgsm": lambda f, x, y, k, e: attacks.fgsm(f, x, y, k, eps=e),
    "fgsm_random_start": lambda f, x, y, k, e: attacks.fgsm(
        f, x, y, k, eps=e, random_start=True, step=0.1),
    "pgd": lambda f, x, y, k, e: attacks.pgd(
        f, x, y, k, eps=e, step_size=0.05, num_steps=3),
    "pgd_l2": lambda f, x, y, k, e: attacks.pgd(
        f, x, y, k, eps=e, step_size=0.5, num_steps=3, norm="l2"),
    "pgd_no_random_start": lambda f, x, y, k, e: attacks.pgd(
        f, x, y, k, eps=e, step_size=0.05, num_steps=3, random_start=False),
    "bim": lambda f, x, y, k, e: attacks.bim(
        f, x, y, k, eps=e, step_size=0.05, num_steps=3),
    "mifgsm": lambda f, x, y, k, e: attacks.mifgsm(
        f, x, y, k, eps=e, step_size=0.05, num_steps=3),
    "multi_targeted": lambda f, x, y, k, e: attacks.multi_targeted(
        f, x, y, k, eps=e, step_size=0.05, num_steps=2, num_targets=2),
    "apgd": lambda f, x, y, k, e: attacks.apgd(f, x, y, k, eps=e,
                                               num_steps=3),
    "apgd_l2": lambda f, x, y, k, e: attacks.apgd(f, x, y, k, eps=e,
                                                  num_steps=3, norm="l2"),
    "apgd_targeted": lambda f, x, y, k, e: attacks.apgd_targeted(
        f, x, y, k, eps=e, num_steps=3, num_targets=2),
    "random_search": lambda f, x, y, k, e: attacks.random_search(
        f, x, y, k, eps=e, num_steps=5),
    "pgd_loss_trace": lambda f, x, y, k, e: attacks.pgd_loss_trace(
        f, x, y, k, eps=e, step_size=0.05, num_steps=3),
    "ddn_max_norm": lambda f, x, y, k, e: attacks.ddn(
        f, x, y, k, num_steps=3, max_norm=e),
    "local_flatness": lambda f, x, y, k, e: regularizers.local_flatness(
        f, x, y, k, eps=e, step_size=0.05, num_steps=3)[1],
    "local_flatness_uniform_fd": lambda f, x, y, k, e:
        regularizers.local_flatness(f, x, y, k, eps=e, step_size=0.05,
                                    num_steps=2, start="uniform",
                                    ascent="finite_difference",
                                    penalty="finite_difference")[1],
    "flatness_ascent": lambda f, x, y, k, e: regularizers.flatness_ascent(
        f, x, y, k, eps=e, step_size=0.05, num_steps=3),
    "linearity_ascent": lambda f, x, y, k, e: x + regularizers.linearity_ascent(
        f, x, y, k, eps=e, step_size=0.1, num_steps=3),
    "trades_kl": lambda f, x, y, k, e: regularizers.trades_kl(
        f, x, k, eps=e, step_size=0.05, num_steps=3)[1],
}


# Public entry points whose outputs are values, not points.
VALUES = {
    "local_linearity": lambda f, x, y, k, e: regularizers.local_linearity(
        f, x, y, k, eps=e, step_size=0.1, num_steps=2),
}


@pytest.mark.parametrize("name", sorted(EPS_TAKERS))
def test_a_traced_negative_eps_never_leaves_the_ball(name):
  logits_fn, (x, y) = _model(), _batch()
  run = EPS_TAKERS[name]
  jitted = jax.jit(lambda e: _point(run(logits_fn, x, y, jax.random.key(2),
                                         e)))
  # A negative radius is an empty ball; the clamp makes it the centre.
  delta = np.asarray(jitted(jnp.float32(-0.1))) - np.asarray(x)
  assert np.abs(delta).max() == 0.0, name
  # A positive traced radius is still honoured (linf or l2 ball).
  delta = np.asarray(jitted(jnp.float32(0.1))) - np.asarray(x)
  size = (np.sqrt((delta.reshape(N, -1) ** 2).sum(1)).max()
          if name in ("pgd_l2", "apgd_l2", "ddn_max_norm")
          else np.abs(delta).max())
  assert size <= 0.1 + 1e-5, (name, size)
  # (DDN returns x where it found no adversarial point inside the bound.)
  assert size > 0.0 or name == "ddn_max_norm", name


def test_local_flatness_value_under_a_traced_negative_eps_is_at_x():
  """The penalty of a negative (warm-up) eps is the one at x itself."""
  logits_fn, (x, y) = _model(), _batch()
  value = jax.jit(lambda e: regularizers.local_flatness(
      logits_fn, x, y, jax.random.key(2), eps=e, step_size=0.05,
      num_steps=3, init_std=0.0)[0])(jnp.float32(-0.2))
  np.testing.assert_allclose(
      value, regularizers.input_gradient_norm(logits_fn, x, y), rtol=1e-5)


@pytest.mark.parametrize("name", ["pgd", "local_flatness", "trades_kl",
                                  "random_search"])
def test_a_concrete_negative_eps_raises_before_tracing(name):
  logits_fn, (x, y) = _model(), _batch()
  with pytest.raises(ValueError, match=r"^eps must be >= 0, got -0.1\.$"):
    EPS_TAKERS[name](logits_fn, x, y, jax.random.key(2), -0.1)


@pytest.mark.parametrize("name", ["pgd", "local_flatness", "local_linearity",
                                  "trades_kl"])
def test_integer_images_are_one_sentence_also_under_jit(name):
  """uint8 images gave "dtype argument to 'normal' must be a float"."""
  logits_fn, (x, y) = _model(), _batch()
  images = (np.asarray(x) * 255).astype(np.uint8)
  run = functools.partial({**EPS_TAKERS, **VALUES}[name], logits_fn)
  message = r"^x must hold floating-point pixels in \[0, 1\], got dtype uint8"
  with pytest.raises(ValueError, match=message):
    run(jnp.asarray(images), y, jax.random.key(2), 0.1)
  with pytest.raises(ValueError, match=message):
    jax.jit(lambda im: run(im, y, jax.random.key(2), 0.1))(images)


def test_float_labels_are_one_sentence():
  logits_fn, (x, y) = _model(), _batch()
  with pytest.raises(ValueError, match="y must hold integer labels"):
    attacks.pgd(logits_fn, x, y.astype(jnp.float32), jax.random.key(0),
                eps=0.1, step_size=0.05, num_steps=1)


@pytest.mark.parametrize("key", [jax.random.key(3), jax.random.PRNGKey(3)],
                         ids=["typed", "raw"])
def test_typed_and_raw_keys_are_accepted(key):
  logits_fn, (x, y) = _model(), _batch()
  attacks.pgd(logits_fn, x, y, key, eps=0.1, step_size=0.05, num_steps=1)
  regularizers.local_flatness(logits_fn, x, y, key, eps=0.1, step_size=0.05,
                              num_steps=1)


@pytest.mark.parametrize("name", ["pgd", "apgd", "local_flatness",
                                  "local_linearity"])
def test_a_non_key_is_one_sentence_before_tracing(name):
  logits_fn, (x, y) = _model(), _batch()
  with pytest.raises(ValueError, match=r"^key must be a PRNG key"):
    jax.jit(lambda k: {**EPS_TAKERS, **VALUES}[name](logits_fn, x, y, k, 0.1))(
        jnp.zeros(3, jnp.int32))


def test_trades_kl_called_with_labels_says_it_takes_none():
  """trades_kl(logits_fn, x, y, ...): the labels land in the key's place."""
  logits_fn, (x, y) = _model(), _batch()
  with pytest.raises(ValueError) as e:
    regularizers.trades_kl(logits_fn, x, y, eps=0.1, step_size=0.05,
                           num_steps=1)
  assert "trades_kl takes no labels" in str(e.value)
  assert "\n" not in str(e.value)
