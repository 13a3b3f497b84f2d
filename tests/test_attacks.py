"""Tests for lfr_jax.attacks: constraints, closed forms, strength, tracing."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from lfr_jax import attacks, losses
from lfr_jax.attacks import chain

# ---------------------------------------------------------------- helpers --

TINY_SHAPE = (3, 4, 4, 1)
_W1 = jax.random.normal(jax.random.key(10), (16, 16))
_W2 = jax.random.normal(jax.random.key(11), (16, 10))


def tiny_logits(x):
  """A small random MLP with 10 classes."""
  return jnp.tanh(x.reshape(x.shape[0], -1) @ _W1) @ _W2


def tiny_batch(seed):
  kx, ky = jax.random.split(jax.random.key(seed))
  # Values outside [0, 1] clipped, so that some pixels sit on the box faces.
  x = jnp.clip(jax.random.uniform(kx, TINY_SHAPE, minval=-0.3, maxval=1.3),
               0.0, 1.0)
  return x, jax.random.randint(ky, TINY_SHAPE[:1], 0, 10)


def flat(v):
  return np.asarray(v).reshape(v.shape[0], -1)


def assert_in_ball(x_adv, x, eps, norm):
  x_adv, x = np.asarray(x_adv), np.asarray(x)
  if x_adv.size == 0:
    return
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  delta = flat(x_adv - x)
  if norm == "linf":
    assert np.abs(delta).max() <= eps + 1e-6
  else:
    assert np.linalg.norm(delta, axis=1).max() <= eps * (1 + 1e-5) + 1e-6


def accuracy(logits_fn, x, y):
  return float(jnp.mean(jnp.argmax(logits_fn(x), 1) == y))


# ------------------------------------------- constraints (property-based) --

# name -> (norm of the ball, attack(x, y, key, eps) with eps traced).
CASES = {
    "fgsm": ("linf", lambda x, y, k, e: attacks.fgsm(
        tiny_logits, x, y, k, eps=e)),
    "fgsm-random-start": ("linf", lambda x, y, k, e: attacks.fgsm(
        tiny_logits, x, y, k, eps=e, random_start=True, step=0.3)),
    "pgd-linf": ("linf", lambda x, y, k, e: attacks.pgd(
        tiny_logits, x, y, k, eps=e, step_size=0.1, num_steps=3, restarts=2)),
    "pgd-l2-dlr": ("l2", lambda x, y, k, e: attacks.pgd(
        tiny_logits, x, y, k, eps=e, step_size=0.5, num_steps=3, norm="l2",
        loss="dlr")),
    "bim-l2-margin": ("l2", lambda x, y, k, e: attacks.bim(
        tiny_logits, x, y, k, eps=e, step_size=0.5, num_steps=3, norm="l2",
        loss="margin")),
    "mifgsm": ("linf", lambda x, y, k, e: attacks.mifgsm(
        tiny_logits, x, y, k, eps=e, step_size=0.1, num_steps=3,
        random_start=True)),
    "ddn-max-norm": ("l2", lambda x, y, k, e: attacks.ddn(
        tiny_logits, x, y, k, num_steps=5, max_norm=e)[0]),
    "multi_targeted-linf": ("linf", lambda x, y, k, e: attacks.multi_targeted(
        tiny_logits, x, y, k, eps=e, step_size=0.1, num_steps=3,
        num_targets=2)),
    "multi_targeted-l2": ("l2", lambda x, y, k, e: attacks.multi_targeted(
        tiny_logits, x, y, k, eps=e, step_size=0.5, num_steps=3,
        num_targets=2, norm="l2")),
    "apgd-linf-ce": ("linf", lambda x, y, k, e: attacks.apgd(
        tiny_logits, x, y, k, eps=e, num_steps=5, restarts=2)),
    "apgd-l2-dlr": ("l2", lambda x, y, k, e: attacks.apgd(
        tiny_logits, x, y, k, eps=e, num_steps=5, norm="l2", loss="dlr")),
    "apgd_targeted-linf": ("linf", lambda x, y, k, e: attacks.apgd_targeted(
        tiny_logits, x, y, k, eps=e, num_steps=5, num_targets=2)),
    "apgd_targeted-l2": ("l2", lambda x, y, k, e: attacks.apgd_targeted(
        tiny_logits, x, y, k, eps=e, num_steps=5, num_targets=1, norm="l2")),
    "random_search": ("linf", lambda x, y, k, e: attacks.random_search(
        tiny_logits, x, y, k, eps=e, num_steps=6)["x_adv"]),
    "pgd_loss_trace": ("linf", lambda x, y, k, e: attacks.pgd_loss_trace(
        tiny_logits, x, y, k, eps=e, step_size=0.1, num_steps=3)["x_adv"]),
}
_JITTED = {name: jax.jit(fn) for name, (_, fn) in CASES.items()}


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1),
       eps=st.one_of(st.just(0.0), st.floats(1e-3, 1.5)))
def test_output_inside_ball_and_box(name, seed, eps):
  norm, _ = CASES[name]
  if name.startswith("ddn"):
    eps = max(eps, 1e-3)  # max_norm must be positive
  x, y = tiny_batch(seed)
  x_adv = _JITTED[name](x, y, jax.random.key(seed), eps)
  assert x_adv.shape == x.shape
  assert_in_ball(x_adv, x, eps, norm)


# ------------------------------------------------- linear model: optimum --

D = 16


def linear_problem(seed, y=(0, 1, 0, 1), bias=(0.0, 0.0)):
  """logits = x_flat @ W + b with 2 classes; returns the ascent direction."""
  kw, kx = jax.random.split(jax.random.key(seed))
  w = jax.random.normal(kw, (D, 2))
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w + jnp.array(bias)
  y = jnp.array(y)
  x = jax.random.uniform(kx, (y.shape[0], 4, 4, 1))
  # d loss / dx is a positive multiple of w_wrong - w_true (CE and margin).
  sign = jnp.where(y == 0, 1.0, -1.0)[:, None]
  direction = (w[:, 1] - w[:, 0])[None, :] * sign
  return logits_fn, x, y, direction.reshape(x.shape)


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_linf_reaches_closed_form_optimum(loss):
  logits_fn, x, y, direction = linear_problem(0)
  eps = 0.1
  x_adv = attacks.pgd(logits_fn, x, y, jax.random.key(1), eps=eps,
                      step_size=0.05, num_steps=10, loss=loss)
  want = jnp.clip(x + eps * jnp.sign(direction), 0.0, 1.0)
  np.testing.assert_allclose(x_adv, want, atol=1e-6)


def test_fgsm_and_apgd_linf_reach_closed_form_optimum():
  # A large bias keeps every point correct, so APGD returns its best-loss
  # point; the margin's gradient does not vanish however large the bias.
  logits_fn, x, y, direction = linear_problem(3, y=(0, 0, 0, 0),
                                              bias=(1000.0, 0.0))
  eps = 0.1
  want = jnp.clip(x + eps * jnp.sign(direction), 0.0, 1.0)
  x_fgsm = attacks.fgsm(logits_fn, x, y, jax.random.key(0), eps=eps,
                        loss="margin")
  np.testing.assert_allclose(x_fgsm, want, atol=1e-6)
  x_apgd = attacks.apgd(logits_fn, x, y, jax.random.key(0), eps=eps,
                        num_steps=10, loss="margin")
  np.testing.assert_allclose(x_apgd, want, atol=1e-6)


def test_pgd_l2_reaches_closed_form_optimum():
  logits_fn, _, y, direction = linear_problem(1)
  x = jnp.full((4, 4, 4, 1), 0.5)  # interior: the box does not bind
  eps = 0.3
  x_adv = attacks.pgd(logits_fn, x, y, jax.random.key(2), eps=eps,
                      step_size=eps, num_steps=40, norm="l2")
  norms = jnp.linalg.norm(flat(direction), axis=1)
  unit = direction / norms[:, None, None, None]
  np.testing.assert_allclose(x_adv, x + eps * unit, atol=1e-4)


# --------------------------------------------------- exact relationships --


def reference_bim(logits_fn, x, y, eps, step_size, num_steps):
  """Kurakin et al.'s iteration, written out: sign steps of the CE from x,
  clipped to the eps-box around x and to [0, 1] after every step."""
  def total_ce(z):
    logits = logits_fn(z)
    logp = logits - jax.scipy.special.logsumexp(logits, axis=1, keepdims=True)
    return -jnp.take_along_axis(logp, y[:, None], axis=1).sum()

  z = x
  for _ in range(num_steps):
    z = z + step_size * jnp.sign(jax.grad(total_ce)(z))
    z = jnp.clip(jnp.minimum(jnp.maximum(z, x - eps), x + eps), 0.0, 1.0)
  return z


def test_bim_matches_its_iteration_and_mifgsm_without_momentum_is_bim():
  x, y = tiny_batch(0)
  key = jax.random.key(0)
  kw = dict(eps=0.2, step_size=0.05, num_steps=6)
  x_bim = attacks.bim(tiny_logits, x, y, key, **kw)
  want = reference_bim(tiny_logits, x, y, **kw)
  np.testing.assert_allclose(x_bim, want, atol=1e-6)
  assert float(jnp.abs(want - x).max()) > 0.1  # it moved past one step
  # With decay 0, sign(grad / ||grad||_1) = sign(grad): the same iteration.
  np.testing.assert_allclose(
      attacks.mifgsm(tiny_logits, x, y, key, decay=0.0, **kw), want,
      atol=1e-6)


def test_pgd_restarts_keep_per_example_worst():
  x, y = tiny_batch(1)
  key = jax.random.key(3)
  kw = dict(eps=0.05, step_size=0.01, num_steps=2)
  x_best = attacks.pgd(tiny_logits, x, y, key, restarts=3, **kw)
  runs = [attacks.pgd(tiny_logits, x, y, k, **kw)
          for k in jax.random.split(key, 3)]
  for i in range(x.shape[0]):
    def rank(x_adv):
      logits = tiny_logits(x_adv[i:i + 1])
      return (bool(jnp.argmax(logits, 1)[0] != y[i]),
              float(losses.cross_entropy(logits, y[i:i + 1])[0]))
    worst = max(runs, key=rank)
    np.testing.assert_allclose(x_best[i], worst[i], atol=1e-6)


def test_apgd_step_halving_reaches_an_interior_optimum():
  """Two classes with z_1 = -||x - c||^2 and z_0 = 0: the CE peaks at c,
  strictly inside the ball, and is never misclassified, so APGD returns its
  best point. A constant step of 2 eps (APGD's first) jumps across c from
  face to face of the ball; only the halving at the checkpoints closes in."""
  eps, n = 0.1, 4
  x = jax.random.uniform(jax.random.key(0), (n, 4, 4, 1), minval=0.2,
                         maxval=0.8)
  u = jax.random.uniform(jax.random.key(1), x.shape, minval=-1, maxval=1)
  c = x + 0.6 * eps * u

  def logits_fn(z):
    z1 = -jnp.sum(jnp.square((z - c).reshape(n, -1)), axis=1)
    return jnp.stack([jnp.zeros_like(z1), z1], axis=1)

  y = jnp.zeros((n,), jnp.int32)
  x_adv = jax.jit(functools.partial(attacks.apgd, logits_fn, eps=eps,
                                    num_steps=100))(x, y, jax.random.key(2))
  assert float(jnp.abs(x_adv - c).max()) < 0.05 * eps


def test_apgd_checkpoints_match_paper_formula():
  p = [0.0, 0.22]
  while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  want = tuple(math.ceil(round(v * 100, 9)) for v in p)
  assert want == (0, 22, 41, 57, 70, 80, 87, 93, 99)
  assert attacks.apgd_checkpoints(100) == want
  assert attacks.apgd_checkpoints(10) == (0, 2, 3, 4, 5, 6, 7, 8, 9, 10)
  assert attacks.apgd_checkpoints(0) == (0,)


def test_bucket_sizes():
  assert [chain.padded_batch_size(m, 200)
          for m in (1, 2, 3, 5, 64, 65, 150, 200)] == \
      [1, 2, 4, 8, 64, 128, 200, 200]


def test_ddn_finds_the_closed_form_minimal_l2_distance():
  """For two linear classes the smallest l2 perturbation that flips the
  label has length |z_1 - z_0| / ||w_1 - w_0||; DDN must not beat it (it
  cannot) and must come within 1% of it."""
  kw, kx = jax.random.split(jax.random.key(0))
  w = jax.random.normal(kw, (D, 2))
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w
  x = jax.random.uniform(kx, (6, 4, 4, 1), minval=0.35, maxval=0.65)
  z = np.asarray(logits_fn(x), np.float64)
  y = jnp.asarray(z.argmax(1))
  normal = np.asarray(w[:, 1] - w[:, 0], np.float64)
  distance = np.abs(z[:, 1] - z[:, 0]) / np.linalg.norm(normal)
  # The closest flipped point lies inside [0, 1], so the box does not bind.
  closest = flat(x) + (distance / np.linalg.norm(normal))[:, None] * (
      np.where(np.asarray(y) == 0, 1.0, -1.0)[:, None] * normal)
  assert closest.min() > 0 and closest.max() < 1
  x_adv, norms = jax.jit(functools.partial(attacks.ddn, logits_fn,
                                           num_steps=50))(x, y,
                                                          jax.random.key(1))
  assert np.all(np.asarray(jnp.argmax(logits_fn(x_adv), 1)) != np.asarray(y))
  ratio = np.asarray(norms) / distance
  assert np.all(ratio >= 1 - 1e-4) and np.all(ratio <= 1.01), ratio


# -------------------------------------------------- jit, tracing and vmap --

_STATIC = ("num_steps", "norm", "loss", "random_start", "restarts",
           "num_targets", "unroll")
TRACE_CASES = {
    "fgsm": dict(eps=0.1),
    "pgd": dict(eps=0.1, step_size=0.05, num_steps=3),
    "bim": dict(eps=0.1, step_size=0.05, num_steps=3),
    "mifgsm": dict(eps=0.1, step_size=0.05, num_steps=3),
    "ddn": dict(num_steps=3),
    "multi_targeted": dict(eps=0.1, step_size=0.05, num_steps=3, num_targets=2),
    "apgd": dict(eps=0.1, num_steps=5),
    "apgd_targeted": dict(eps=0.1, num_steps=5, num_targets=2),
}


def test_trace_cases_cover_registry():
  assert sorted(TRACE_CASES) == sorted(attacks.names())


@pytest.mark.parametrize("name", sorted(TRACE_CASES))
def test_jitted_attack_traces_once(name):
  traces = []

  def counting_logits(x):
    traces.append(1)
    return tiny_logits(x)

  static = {k: v for k, v in TRACE_CASES[name].items() if k in _STATIC}
  dynamic = {k: v for k, v in TRACE_CASES[name].items() if k not in _STATIC}
  fn = jax.jit(functools.partial(attacks.get(name), counting_logits),
               static_argnames=tuple(static))
  counts = []
  for seed in range(3):
    x, y = tiny_batch(seed)
    scaled = {k: v * (1 + 0.1 * seed) for k, v in dynamic.items()}
    jax.block_until_ready(fn(x, y, jax.random.key(seed), **static, **scaled))
    counts.append(len(traces))
  assert counts[0] > 0 and counts[0] == counts[-1]


def test_attacks_vmap_over_keys_and_eps():
  x, y = tiny_batch(2)
  keys = jax.random.split(jax.random.key(0), 3)
  out = jax.vmap(lambda k: attacks.pgd(tiny_logits, x, y, k, eps=0.1,
                                       step_size=0.05, num_steps=2))(keys)
  assert out.shape == (3,) + x.shape
  for x_adv in out:
    assert_in_ball(x_adv, x, 0.1, "linf")
  epss = jnp.array([0.0, 0.05, 0.2])
  out = jax.vmap(lambda e: attacks.apgd(tiny_logits, x, y, jax.random.key(1),
                                        eps=e, num_steps=3))(epss)
  for x_adv, eps in zip(out, epss):
    assert_in_ball(x_adv, x, float(eps), "linf")
  np.testing.assert_array_equal(out[0], x)  # eps = 0 cannot move


# --------------------------------------------------------- bad arguments --

_X, _Y = tiny_batch(0)
_K = jax.random.key(0)
_PGD = dict(eps=0.1, step_size=0.01, num_steps=2)


@pytest.mark.parametrize("call, match", [
    (lambda: attacks.pgd(tiny_logits, _X, _Y, _K, **{**_PGD, "eps": -0.1}),
     r"eps must be >= 0"),
    (lambda: attacks.pgd(tiny_logits, _X, _Y, _K, **{**_PGD, "step_size": 0.0}),
     r"step_size must be > 0"),
    (lambda: attacks.pgd(tiny_logits, _X, _Y, _K, **{**_PGD, "num_steps": -1}),
     r"num_steps must be >= 0"),
    (lambda: attacks.pgd(tiny_logits, _X, _Y, _K, **{**_PGD, "num_steps": 2.5}),
     r"num_steps must be a non-negative int"),
    (lambda: attacks.pgd(tiny_logits, _X, _Y, _K, norm="l3", **_PGD),
     r"unknown norm 'l3'; valid: linf, l2"),
    (lambda: attacks.pgd(tiny_logits, _X, _Y, _K, loss="hinge", **_PGD),
     r"unknown loss 'hinge'; valid: ce, margin, dlr"),
    (lambda: attacks.pgd(tiny_logits, _X, _Y, _K, restarts=0, **_PGD),
     r"restarts must be >= 1"),
    (lambda: attacks.pgd(tiny_logits, _X * 2, _Y, _K, **_PGD),
     r"x must hold pixels in \[0, 1\]"),
    (lambda: attacks.pgd(tiny_logits, _X, _Y[:2], _K, **_PGD),
     r"different batch sizes: 3 vs 2"),
    (lambda: attacks.pgd(tiny_logits, _X[0], _Y, _K, **_PGD),
     r"x must be a batch of images"),
    (lambda: attacks.fgsm(tiny_logits, _X, _Y, _K, eps=0.1, step=0.0),
     r"step must be > 0"),
    (lambda: attacks.mifgsm(tiny_logits, _X, _Y, _K, decay=-1.0, **_PGD),
     r"decay must be >= 0"),
    (lambda: attacks.ddn(tiny_logits, _X, _Y, _K, num_steps=2, gamma=2.0),
     r"gamma must lie in \[0, 1\]"),
    (lambda: attacks.ddn(tiny_logits, _X, _Y, _K, num_steps=2, max_norm=0.0),
     r"max_norm must be > 0"),
    (lambda: attacks.multi_targeted(tiny_logits, _X, _Y, _K, num_targets=10,
                                    **_PGD),
     r"num_targets must be between 1 and 9, got 10"),
    (lambda: attacks.apgd(tiny_logits, _X, _Y, _K, eps=0.1, rho=1.5),
     r"rho must lie in \[0, 1\]"),
    (lambda: attacks.apgd(tiny_logits, _X, _Y, _K, eps=0.1, norm="l1"),
     r"unknown norm 'l1'"),
    (lambda: attacks.apgd_targeted(lambda x: tiny_logits(x)[:, :3], _X,
                                   _Y % 3, _K, eps=0.1),
     r"at least 4 classes"),
    (lambda: attacks.apgd_targeted(tiny_logits, _X, _Y, _K, eps=0.1,
                                   num_targets=0),
     r"num_targets must be between 1 and 9, got 0"),
    (lambda: attacks.get("cw"),
     r"unknown attack 'cw'; valid: fgsm, pgd, bim, mifgsm, ddn"),
    (lambda: attacks.worst_case([attacks.pgd], tiny_logits, _X, _Y, _K),
     r"attacks must be \(name, callable\) pairs"),
])
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ----------------------------------------------- trained MNIST classifier --


def _mlp(params, x):
  h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


@pytest.fixture(scope="module")
def mnist(mnist_train, mnist_test):
  """Undefended 784-128-10 MLP (300 Adam steps, 4k images), 200 test images."""
  x_train, y_train = mnist_train
  x_test, y_test = mnist_test
  x_train, y_train = jnp.asarray(x_train[:4000]), jnp.asarray(y_train[:4000])
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"w1": jax.random.normal(k1, (784, 128)) * (2 / 784) ** 0.5,
            "b1": jnp.zeros(128),
            "w2": jax.random.normal(k2, (128, 10)) * (1 / 128) ** 0.5,
            "b2": jnp.zeros(10)}
  opt = optax.adam(1e-3)

  @jax.jit
  def train(params, key):
    def step(i, carry):
      params, state = carry
      idx = jax.random.randint(jax.random.fold_in(key, i), (128,), 0, 4000)
      grads = jax.grad(lambda p: losses.cross_entropy(
          _mlp(p, x_train[idx]), y_train[idx]).mean())(params)
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state
    return jax.lax.fori_loop(0, 300, step, (params, opt.init(params)))[0]

  params = train(params, jax.random.key(1))
  logits_fn = lambda x: _mlp(params, x)
  x, y = jnp.asarray(x_test[:200]), jnp.asarray(y_test[:200])
  assert accuracy(logits_fn, x, y) > 0.85
  return logits_fn, x, y


def _robust_accuracy(mnist, name, key=5, **settings):
  logits_fn, x, y = mnist
  attack = jax.jit(functools.partial(attacks.get(name), logits_fn, **settings))
  x_adv = attack(x, y, jax.random.key(key))
  eps = settings.get("eps")
  if eps is not None:
    assert_in_ball(x_adv, x, eps, settings.get("norm", "linf"))
  return accuracy(logits_fn, x_adv, y)


def test_strong_attacks_break_undefended_model_at_eps_03(mnist):
  assert _robust_accuracy(mnist, "pgd", eps=0.3, step_size=0.01,
                          num_steps=40) < 0.05
  assert _robust_accuracy(mnist, "apgd", eps=0.3, num_steps=100) < 0.05
  assert _robust_accuracy(mnist, "apgd", eps=0.3, num_steps=100,
                          loss="dlr") < 0.05
  # The LFR authors' "FGSM": one 0.3 step from a uniform start.
  assert _robust_accuracy(mnist, "fgsm", eps=0.3, random_start=True) < 0.3


def test_attack_strength_ordering_at_small_eps(mnist):
  eps = 0.05
  tol = 0.02  # one example in 200 is 0.005
  pgd = _robust_accuracy(mnist, "pgd", eps=eps, step_size=eps / 4,
                         num_steps=40)
  assert pgd < accuracy(*mnist) - 0.2
  assert _robust_accuracy(mnist, "fgsm", eps=eps) >= pgd
  assert _robust_accuracy(mnist, "apgd", eps=eps, num_steps=100) <= pgd + tol
  assert _robust_accuracy(mnist, "multi_targeted", eps=eps, step_size=eps / 4,
                          num_steps=20, num_targets=3) <= pgd + tol
  assert _robust_accuracy(mnist, "apgd_targeted", eps=eps, num_steps=50,
                          num_targets=3) <= pgd + tol
  assert _robust_accuracy(mnist, "mifgsm", eps=eps, step_size=eps / 10,
                          num_steps=20) <= _robust_accuracy(mnist, "fgsm",
                                                            eps=eps) + tol


def test_apgd_returns_clean_misclassified_points_unchanged(mnist):
  logits_fn, x, y = mnist
  x_adv = jax.jit(functools.partial(attacks.apgd, logits_fn, eps=0.05,
                                    num_steps=10))(x, y, jax.random.key(0))
  wrong = np.asarray(jnp.argmax(logits_fn(x), 1) != y)
  assert wrong.any()
  np.testing.assert_array_equal(np.asarray(x_adv)[wrong], np.asarray(x)[wrong])


def test_ddn_finds_small_l2_adversarials(mnist):
  logits_fn, x, y = mnist
  ddn = jax.jit(functools.partial(attacks.ddn, logits_fn, num_steps=100))
  x_adv, norms = ddn(x, y, jax.random.key(0))
  norms = np.asarray(norms)
  assert np.isfinite(norms).all()
  assert np.median(norms) < 2.0
  assert accuracy(logits_fn, x_adv, y) == 0.0
  np.testing.assert_allclose(np.linalg.norm(flat(x_adv - x), axis=1), norms,
                             rtol=1e-4, atol=1e-5)
  # Projected onto a small l2 ball, only the points with small norms survive.
  x_small, _ = attacks.ddn(logits_fn, x, y, jax.random.key(0), num_steps=100,
                           max_norm=0.5)
  assert_in_ball(x_small, x, 0.5, "l2")


def test_worst_case_chains_attacks_on_robust_points(mnist):
  logits_fn, x, y = mnist
  traces = []

  def counting_logits(z):
    traces.append(1)
    return logits_fn(z)

  chain = [
      ("fgsm", functools.partial(attacks.fgsm, eps=0.05)),
      ("pgd", functools.partial(attacks.pgd, eps=0.05, step_size=0.0125,
                                num_steps=20)),
      ("ddn", functools.partial(attacks.ddn, num_steps=20, max_norm=0.5)),
  ]
  x_adv, broken_by = attacks.worst_case(chain, counting_logits, x, y,
                                        jax.random.key(0))
  broken_by = np.asarray(broken_by)
  pred = np.asarray(jnp.argmax(logits_fn(x_adv), 1))
  clean_pred = np.asarray(jnp.argmax(logits_fn(x), 1))
  y = np.asarray(y)
  np.testing.assert_array_equal(broken_by == -2, clean_pred != y)
  assert set(np.unique(broken_by)) <= {-2, -1, 0, 1, 2}
  assert (broken_by == 0).any() and (broken_by == 1).any()
  assert (pred[broken_by >= 0] != y[broken_by >= 0]).all()
  unchanged = broken_by < 0
  np.testing.assert_array_equal(np.asarray(x_adv)[unchanged],
                                np.asarray(x)[unchanged])
  linf, l2 = broken_by <= 1, broken_by == 2
  assert_in_ball(np.asarray(x_adv)[linf], np.asarray(x)[linf], 0.05, "linf")
  assert_in_ball(np.asarray(x_adv)[l2], np.asarray(x)[l2], 0.5, "l2")
  # Not weaker than the strongest l_inf attack of the chain on its own.
  robust = float(np.mean(broken_by == -1))
  assert robust <= _robust_accuracy(mnist, "pgd", key=0, eps=0.05,
                                    step_size=0.0125, num_steps=20) + 0.02
  # A second call with the same logits_fn compiles nothing new.
  first = len(traces)
  attacks.worst_case(chain, counting_logits, x, jnp.asarray(y),
                     jax.random.key(0))
  assert len(traces) == first


def test_pgd_loss_trace_follows_attacks_pgd():
  key = jax.random.key(0)
  w = jax.random.normal(key, (784, 10)) * 0.1
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1))
  y = jnp.arange(6)
  out = attacks.pgd_loss_trace(logits_fn, x, y, jax.random.key(2),
                                  eps=0.3, step_size=0.05, num_steps=5)
  ref = attacks.pgd(logits_fn, x, y, jax.random.key(2), eps=0.3,
                    step_size=0.05, num_steps=5)
  np.testing.assert_allclose(out["x_adv"], ref, atol=1e-6)
  assert out["loss"].shape == (6, 6)
  assert float(out["loss"][-1].mean()) > float(out["loss"][0].mean())


def test_random_search_stays_in_the_ball_and_lowers_the_margin():
  w = jax.random.normal(jax.random.key(0), (784, 10)) * 0.1
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
  y = jnp.argmax(logits_fn(x), axis=1)
  run = jax.jit(functools.partial(attacks.random_search, logits_fn,
                                  num_steps=50))
  out = run(x, y, jax.random.key(2), eps=0.1)
  delta = out["x_adv"] - x
  assert float(jnp.abs(delta).max()) <= 0.1 + 1e-6
  assert float(out["x_adv"].min()) >= 0.0 and float(out["x_adv"].max()) <= 1.0
  start = attacks.random_search(logits_fn, x, y, jax.random.key(2),
                                   eps=0.1, num_steps=0)["decision"]
  assert bool(jnp.all(out["decision"] <= start))


# ------------------------------------- random search and the loss trace --


def reference_decision(logits, y):
  """z_y - max_{i != y} z_i in float64, written out."""
  z = np.asarray(logits, np.float64)
  y = np.asarray(y)
  own = z[np.arange(len(y)), y]
  others = z.copy()
  others[np.arange(len(y)), y] = -np.inf
  return own - others.max(axis=1)


def reference_ce(logits, y):
  """Per-example cross-entropy in float64, written out."""
  z = np.asarray(logits, np.float64)
  top = z.max(axis=1, keepdims=True)
  log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
  return log_norm - z[np.arange(len(y)), np.asarray(y)]


def random_linear_problem(seed, n=32):
  """An undefended random linear 784 -> 10 model, labels its own predictions."""
  w = jax.random.normal(jax.random.key(seed), (784, 10)) * 0.1
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = jax.random.uniform(jax.random.key(seed + 100), (n, 28, 28, 1))
  return logits_fn, x, jnp.argmax(logits_fn(x), axis=1)


def test_random_search_first_query_is_vertical_stripes():
  """With no query after the first, the point is Square Attack's start: each
  column of each channel moved by +eps or -eps, the same down the column."""
  logits_fn, _, _ = random_linear_problem(0, n=4)
  eps = 0.1
  # Interior pixels, so clipping to [0, 1] never shortens a stripe.
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1), minval=0.3,
                         maxval=0.7)
  y = jnp.arange(4)
  out = attacks.random_search(logits_fn, x, y, jax.random.key(2), eps=eps,
                              num_steps=0)
  delta = np.asarray(out["x_adv"] - x)
  np.testing.assert_allclose(np.abs(delta), eps, atol=1e-6)
  np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1], delta.shape),
                             atol=1e-6)
  assert (delta > 0).any() and (delta < 0).any()
  np.testing.assert_allclose(
      out["decision"], reference_decision(logits_fn(out["x_adv"]), y),
      rtol=1e-5, atol=1e-5)


def test_random_search_breaks_an_undefended_linear_model_at_a_large_eps():
  logits_fn, x, y = random_linear_problem(0)
  run = jax.jit(functools.partial(attacks.random_search, logits_fn,
                                  num_steps=100))
  out = run(x, y, jax.random.key(3), eps=0.3)
  assert_in_ball(out["x_adv"], x, 0.3, "linf")
  fooled = np.asarray(jnp.argmax(logits_fn(out["x_adv"]), 1) != y)
  assert fooled.mean() >= 0.9
  decision = reference_decision(logits_fn(out["x_adv"]), y)
  np.testing.assert_allclose(out["decision"], decision, rtol=1e-5, atol=1e-5)
  # A point counts as broken exactly where its decision value is negative.
  np.testing.assert_array_equal(fooled[decision != 0], decision[decision != 0]
                                < 0)


def test_random_search_more_queries_are_at_least_as_strong():
  logits_fn, x, y = random_linear_problem(1)
  eps = 0.02  # small enough that few queries leave most points correct
  key = jax.random.key(4)

  def attacked(num_steps):
    out = attacks.random_search(logits_fn, x, y, key, eps=eps,
                                num_steps=num_steps)
    decision = reference_decision(logits_fn(out["x_adv"]), y)
    return decision, float(np.mean(decision < 0))

  few, few_fooled = attacked(10)
  many, many_fooled = attacked(300)
  assert many_fooled >= few_fooled + 0.2
  assert many.mean() < few.mean()


def reference_sign_pgd_iterates(logits_fn, x, y, start, eps, step_size,
                                num_steps):
  """Sign ascent of the CE from ``start``, clipped to the eps-box around x
  and to [0, 1] after every step; all iterates, the start first."""
  def total_ce(z):
    logits = logits_fn(z)
    logp = logits - jax.scipy.special.logsumexp(logits, axis=1, keepdims=True)
    return -jnp.take_along_axis(logp, y[:, None], axis=1).sum()

  iterates = [start]
  for _ in range(num_steps):
    z = iterates[-1] + step_size * jnp.sign(jax.grad(total_ce)(iterates[-1]))
    iterates.append(jnp.clip(jnp.minimum(jnp.maximum(z, x - eps), x + eps),
                             0.0, 1.0))
  return iterates


def test_pgd_loss_trace_rows_are_the_ce_of_a_reference_sign_pgd():
  x, y = tiny_batch(5)
  key = jax.random.key(6)
  eps, step_size, num_steps = 0.2, 0.05, 6
  start = attacks.pgd_loss_trace(tiny_logits, x, y, key, eps=eps,
                                 step_size=step_size, num_steps=0)
  assert start["loss"].shape == (1, x.shape[0])
  assert_in_ball(start["x_adv"], x, eps, "linf")
  assert float(jnp.abs(start["x_adv"] - x).max()) > 0  # a random start
  out = jax.jit(functools.partial(
      attacks.pgd_loss_trace, tiny_logits, num_steps=num_steps))(
          x, y, key, eps=eps, step_size=step_size)
  iterates = reference_sign_pgd_iterates(tiny_logits, x, y, start["x_adv"],
                                         eps, step_size, num_steps)
  np.testing.assert_allclose(out["x_adv"], iterates[-1], atol=1e-6)
  assert out["loss"].shape == (num_steps + 1, x.shape[0])
  want = np.stack([reference_ce(tiny_logits(z), y) for z in iterates])
  np.testing.assert_allclose(out["loss"], want, rtol=1e-5, atol=1e-5)
  # The last row is the CE at the returned point.
  np.testing.assert_allclose(out["loss"][-1],
                             reference_ce(tiny_logits(out["x_adv"]), y),
                             rtol=1e-5, atol=1e-5)


# --- the attacks on the closed-form problem, eagerly and under jit (chex) -------


class ClosedFormVariantsTest(chex.TestCase):
  """On a linear model the l_inf optimum is x + eps sign(w_wrong - w_y), clipped."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_linf_attacks_reach_the_vertex(self):
    logits_fn, x, y, direction = linear_problem(3, y=(0, 0, 0, 0),
                                                bias=(1000.0, 0.0))
    eps = 0.1
    want = jnp.clip(x + eps * jnp.sign(direction), 0.0, 1.0)
    runs = {
        "fgsm": functools.partial(attacks.fgsm, logits_fn, eps=eps,
                                  loss="margin"),
        "pgd": functools.partial(attacks.pgd, logits_fn, eps=eps,
                                 step_size=0.05, num_steps=10, loss="margin"),
        "apgd": functools.partial(attacks.apgd, logits_fn, eps=eps,
                                  num_steps=10, loss="margin"),
    }
    for name, run in runs.items():
      x_adv = self.variant(run)(x, y, jax.random.key(0))
      chex.assert_equal_shape([x_adv, x])
      chex.assert_trees_all_close(x_adv, want, atol=1e-6,
                                  custom_message=name)
