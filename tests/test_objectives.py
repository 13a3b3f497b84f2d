"""The objectives registry: every objective's value against a float64
reference, BatchNorm and dropout conventions, gradients, and clear errors.

The value tests run the objectives on TinyNet, defined here: flatten ->
BatchNorm -> dropout -> linear, on 2x4 single-channel images. With BatchNorm
at the clean batch's statistics its logits are affine in x, so every
objective has a closed form or a short float64 reference written in this file
(its own softmax, sign-PGD and Adam), computed from the parameters and the
statistics of x without lfr_jax's losses, attacks or regularizers.

The conventions under test (``lfr_jax.objectives`` module docstring): the
clean forward in train mode with batch statistics; every other forward with
the clean statistics; inner maximizations in eval mode (no dropout); outer
terms with their own dropout mask. Keys: ``split(key, 3)`` gives the clean
dropout, outer dropout and inner-maximization keys.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from lfr_jax import models
from lfr_jax import objectives
from lfr_jax.models import layers

SMALL = {
    "standard": {},
    "pgd_at": {"step_size": 0.1, "num_steps": 2},
    "trades": {"step_size": 0.1, "num_steps": 2, "beta": 1.0},
    "llr": {"step_size": 0.1, "num_steps": 2},
    "lfr": {"step_size": 0.1, "num_steps": 2},
    "gradient_norm": {},
    "decision_jacobian": {},
}

# ---------------------------------------------------------------- TinyNet --

N, IMAGE, FEATURES = 6, (2, 4, 1), 8
BN_EPS = 1e-5        # layers.BatchNorm's epsilon
DROPOUT = 0.25


class TinyNet(nnx.Module):
  """flatten -> BatchNorm -> inverted dropout -> linear."""

  def __init__(self, *, rngs, classes, dropout):
    self.bn = layers.BatchNorm(FEATURES)
    self.dense = nnx.Linear(FEATURES, classes, rngs=rngs)
    self.rate = dropout

  def __call__(self, x, *, train=False, bn_mode="running", dropout_key=None):
    h = self.bn(x.reshape(x.shape[0], -1), bn_mode)
    if train and self.rate > 0:
      h = jnp.where(dropout_mask(dropout_key, self.rate, h.shape),
                    h / (1 - self.rate), 0.0)
    return self.dense(h)


def dropout_mask(key, rate, shape):
  return jax.random.bernoulli(key, 1.0 - rate, shape)


def split_keys(key):
  """(clean dropout, outer dropout, inner maximization) keys of a step."""
  return tuple(jax.random.split(key, 3))


def tiny_problem(classes, seed=0):
  """A float64 TinyNet (live BatchNorm affine), a batch and the reference's
  parameters, with the clean batch's statistics computed here by numpy."""
  k_init, k_scale, k_shift, kx, ky = jax.random.split(jax.random.key(seed), 5)
  module = TinyNet(rngs=nnx.Rngs(params=k_init), classes=classes,
                   dropout=DROPOUT)
  module.bn.scale[...] = jax.random.uniform(k_scale, (FEATURES,), jnp.float32,
                                            0.5, 1.5)
  module.bn.bias[...] = 0.3 * jax.random.normal(k_shift, (FEATURES,),
                                                jnp.float32)
  graphdef, params, state = nnx.split(module, nnx.Param, ...)
  as64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
  net = models.Network(graphdef=graphdef, params=as64(params),
                       state=as64(state))
  # Pixels clipped to the box so some ball corners leave [0, 1].
  x = jnp.clip(jax.random.uniform(kx, (N,) + IMAGE, jnp.float64, -0.2, 1.2),
               0.0, 1.0)
  y = jax.random.randint(ky, (N,), 0, classes)
  flat = np.asarray(x).reshape(N, -1)
  ref = {
      "w": np.asarray(params["dense"]["kernel"][...], np.float64),
      "b": np.asarray(params["dense"]["bias"][...], np.float64),
      "scale": np.asarray(params["bn"]["scale"][...], np.float64),
      "shift": np.asarray(params["bn"]["bias"][...], np.float64),
      "mu": flat.mean(axis=0),
      "var": flat.var(axis=0),
  }
  return net, x, y, ref


# ------------------------------------------------------- float64 reference --


def ref_logits(p, x, mask=None):
  """TinyNet by hand, BatchNorm at the clean statistics; mask = dropout."""
  h = x.reshape(x.shape[0], -1)
  h = (h - p["mu"]) / jnp.sqrt(p["var"] + BN_EPS) * p["scale"] + p["shift"]
  if mask is not None:
    h = jnp.where(mask, h / (1 - DROPOUT), 0.0)
  return h @ p["w"] + p["b"]


def ref_log_softmax(z):
  z = z - z.max(axis=1, keepdims=True)
  return z - jnp.log(jnp.exp(z).sum(axis=1, keepdims=True))


def ref_ce(z, y):
  return -ref_log_softmax(z)[jnp.arange(z.shape[0]), y]


def ref_kl(p_logits, q_logits):
  log_p, log_q = ref_log_softmax(p_logits), ref_log_softmax(q_logits)
  return (jnp.exp(log_p) * (log_p - log_q)).sum(axis=1)


def ref_input_grad(p, x, y, mask=None):
  """Per-example d CE / dx (examples are independent at frozen statistics)."""
  return jax.grad(lambda z: ref_ce(ref_logits(p, z, mask), y).sum())(x)


def ref_project(z, x, eps):
  return jnp.clip(jnp.clip(z, x - eps, x + eps), 0.0, 1.0)


def ref_sign_ascent(objective, x, start, eps, step_size, num_steps):
  grad = jax.jit(jax.grad(objective))
  z = ref_project(start, x, eps)
  for _ in range(num_steps):
    z = ref_project(z + step_size * jnp.sign(grad(z)), x, eps)
  return z


def ref_adam_ascent(objective, x, start, eps, lr, num_steps,
                    b1=0.9, b2=0.999, tiny=1e-8):
  """Adam (Kingma & Ba) ascending ``objective``, projected after each step."""
  grad = jax.jit(jax.grad(objective))
  delta = ref_project(x + start, x, eps) - x
  m = v = jnp.zeros_like(x)
  for t in range(1, num_steps + 1):
    g = grad(delta)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = lr * (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + tiny)
    delta = ref_project(x + delta + step, x, eps) - x
  return delta


def reference(method, p, x, y, key, eps, settings):
  """(loss, ce, reg) of ``method`` computed from scratch in float64."""
  k_clean, k_outer, k_inner = split_keys(key)
  m_clean = dropout_mask(k_clean, DROPOUT, (N, FEATURES))
  m_outer = dropout_mask(k_outer, DROPOUT, (N, FEATURES))
  outer = lambda z: ref_logits(p, z, m_outer)
  inner = lambda z: ref_logits(p, z)          # eval mode: no dropout
  ce = ref_ce(ref_logits(p, x, m_clean), y).mean()
  a, k = settings.get("step_size"), settings.get("num_steps")
  gaussian_start = x + 1e-3 * jax.random.normal(k_inner, x.shape, x.dtype)

  if method == "standard":
    return ce, ce, 0.0
  if method == "pgd_at":
    # Two classes: d CE / dx = (p_1 - [y = 1]) * A (e_1 - e_0) keeps its sign,
    # so sign-PGD with k * a >= 2 eps ends at the ball's corner in that
    # direction, clipped to [0, 1], wherever it starts.
    assert p["w"].shape[1] == 2 and k * a >= 2 * eps
    gain = p["scale"] / np.sqrt(p["var"] + BN_EPS)
    toward_other = np.where(np.asarray(y) == 0, 1.0, -1.0)[:, None]
    direction = toward_other * (gain * (p["w"][:, 1] - p["w"][:, 0]))[None]
    x_adv = jnp.clip(x + eps * jnp.sign(direction).reshape(x.shape), 0, 1)
    adv = ref_ce(outer(x_adv), y).mean()
    return adv, ce, adv
  if method == "trades":
    clean_inner = inner(x)
    x_adv = ref_sign_ascent(lambda z: ref_kl(clean_inner, inner(z)).sum(),
                            x, gaussian_start, eps, a, k)
    kl = ref_kl(outer(x), outer(x_adv)).mean()
    return ce + settings["beta"] * kl, ce, kl
  if method == "lfr":
    grad_l1 = lambda z: jnp.abs(ref_input_grad(p, z, y)).sum()
    x_worst = ref_sign_ascent(grad_l1, x, gaussian_start, eps, a, k)
    flat = jnp.abs(ref_input_grad(p, x_worst, y, m_outer)).reshape(N, -1)
    reg = flat.sum(axis=1).mean()
    return ce + settings["lam"] * reg, ce, reg
  if method == "llr":
    def gap(mask, delta):
      # |l(x + d) - l(x) - d . grad l(x)| and d . grad l(x), LLR Eq. 6.
      logits = lambda z: ref_logits(p, z, mask)
      first = (delta * ref_input_grad(p, x, y, mask)).reshape(N, -1).sum(1)
      rest = ref_ce(logits(x + delta), y) - ref_ce(logits(x), y)
      return jnp.abs(rest - first), first
    uniform = jax.random.uniform(k_inner, x.shape, x.dtype, -1.0, 1.0) * eps
    delta = ref_adam_ascent(lambda d: gap(None, d)[0].sum(), x, uniform, eps,
                            a, k)
    gamma, first = gap(m_outer, delta)
    loss = (settings["nominal_weight"] * ce + settings["lam"] * gamma.mean()
            + settings["mu"] * jnp.abs(first).mean())
    return loss, ce, gamma.mean()
  if method == "gradient_norm":
    # Closed form: d CE_i / dx_i = gain * mask_i / (1 - rate) * W (p_i - e_y).
    z = outer(x)
    residual = jnp.exp(ref_log_softmax(z)) - jax.nn.one_hot(y, z.shape[1])
    gain = p["scale"] / np.sqrt(p["var"] + BN_EPS)
    grad = gain * jnp.where(m_outer, 1 / (1 - DROPOUT), 0.0) * (
        residual @ p["w"].T)
    reg = jnp.abs(grad).sum(axis=1).mean()
    return ce + settings["lam"] * reg, ce, reg
  if method == "decision_jacobian":
    # d(z_y - z_r)/dx = gain * mask / (1 - rate) * (w_y - w_r), r the runner-up.
    z = np.asarray(outer(x))
    others = np.where(np.eye(z.shape[1], dtype=bool)[np.asarray(y)], -np.inf, z)
    r = others.argmax(axis=1)
    gain = p["scale"] / np.sqrt(p["var"] + BN_EPS)
    jac = gain * np.where(m_outer, 1 / (1 - DROPOUT), 0.0) * (
        p["w"][:, np.asarray(y)] - p["w"][:, r]).T
    sq = (jac ** 2).sum(axis=1)
    per_example = sq if settings.get("squared") else np.sqrt(sq)
    if settings.get("pixel_mean"):
      per_example = per_example / FEATURES
    reg = per_example.mean()
    return ce + settings["c"] * reg, ce, reg
  raise AssertionError(method)


# Settings at which the ball binds (K * step > eps) and every term counts.
VALUE_CASES = {
    "standard": (3, 0.0, {}),
    "pgd_at": (2, 0.1, {"step_size": 0.05, "num_steps": 5}),
    "trades": (3, 0.1, {"step_size": 0.02, "num_steps": 8, "beta": 2.0}),
    "llr": (3, 0.1, {"step_size": 0.02, "num_steps": 6, "lam": 4.0, "mu": 3.0,
                     "nominal_weight": 2.0}),
    "lfr": (3, 0.1, {"step_size": 0.02, "num_steps": 8, "lam": 0.5,
                     "norm": "l1"}),
    "gradient_norm": (3, 0.0, {"lam": 0.5, "norm": "l1"}),
    "decision_jacobian": (3, 0.0, {"c": 0.7, "norm": "l2"}),
}


def test_value_cases_cover_registry():
  assert set(VALUE_CASES) == set(objectives.names())


# Further settings whose value changes the formula.
VARIANT_CASES = {
    "decision_jacobian-squared-pixel_mean": (
        "decision_jacobian", (3, 0.0, {"c": 0.7, "norm": "l2", "squared": True,
                                       "pixel_mean": True})),
}


@pytest.mark.parametrize("method", sorted(VALUE_CASES) + sorted(VARIANT_CASES))
def test_objective_value_matches_float64_reference(method):
  if method in VARIANT_CASES:
    method, (classes, eps, settings) = VARIANT_CASES[method]
  else:
    classes, eps, settings = VALUE_CASES[method]
  with jax.enable_x64(True):
    net, x, y, p = tiny_problem(classes)
    key = jax.random.key(7)
    objective = objectives.build(method, **settings)
    loss, (metrics, new_state) = jax.jit(objective)(net, x, y, key, eps)
    want_loss, want_ce, want_reg = reference(method, p, x, y, key, eps,
                                             settings)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-9)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-9)
    np.testing.assert_allclose(metrics["ce"], want_ce, rtol=1e-9)
    np.testing.assert_allclose(metrics["reg"], want_reg, rtol=1e-9,
                               atol=1e-12)
    k_clean, _, _ = split_keys(key)
    clean = ref_logits(p, x, dropout_mask(k_clean, DROPOUT, (N, FEATURES)))
    np.testing.assert_allclose(
        metrics["acc"], np.mean(np.argmax(clean, 1) == np.asarray(y)))
    # One batch-mode update of the statistics, from the clean batch only.
    bn = new_state["bn"]
    np.testing.assert_allclose(bn["snap_mean"][...], p["mu"], rtol=1e-12)
    np.testing.assert_allclose(bn["snap_var"][...], p["var"], rtol=1e-12)
    np.testing.assert_allclose(bn["mean"][...], 0.1 * p["mu"], rtol=1e-12)
    np.testing.assert_allclose(bn["var"][...], 0.9 + 0.1 * p["var"],
                               rtol=1e-12)


def test_lfr_penalty_is_taken_at_the_worst_point():
  """At a radius that binds, LFR's penalty is the outer (train-mode) gradient
  norm at the x_worst that an eval-mode sign-PGD finds from the same start,
  a number clearly apart from the penalty at the clean x."""
  _, eps, settings = VALUE_CASES["lfr"]
  with jax.enable_x64(True):
    net, x, y, p = tiny_problem(3, seed=1)
    # The clean-statistics gradient-norm landscape, ascended in float64.
    grad_l1 = lambda z: jnp.abs(ref_input_grad(p, z, y)).sum()
    key = jax.random.key(3)
    _, _, k_inner = split_keys(key)
    start = x + 1e-3 * jax.random.normal(k_inner, x.shape, x.dtype)
    x_worst = ref_sign_ascent(grad_l1, x, start, eps, settings["step_size"],
                              settings["num_steps"])
    # |x_worst - x| reaches eps: the ball binds at these settings.
    assert float(jnp.abs(x_worst - x).max()) == pytest.approx(eps, rel=1e-12)
    objective = jax.jit(objectives.build("lfr", **settings))
    _, (metrics, _) = objective(net, x, y, key, eps)
    m_outer = dropout_mask(split_keys(key)[1], DROPOUT, (N, FEATURES))
    reg_outer = jnp.abs(ref_input_grad(p, x_worst, y, m_outer)).reshape(
        N, -1).sum(1).mean()
    np.testing.assert_allclose(metrics["reg"], reg_outer, rtol=1e-9)
    # The penalty at the clean x is a different number: the ball matters.
    at_clean = jnp.abs(ref_input_grad(p, x, y, m_outer)).reshape(
        N, -1).sum(1).mean()
    assert abs(float(at_clean - reg_outer)) > 1e-3 * float(reg_outer)


# ------------------------------------------- BatchNorm in a real network --


def _bn_tree(state, path):
  node = state
  for key in path:
    node = node[key]
  return node


def test_batchnorm_inside_objectives_on_a_tiny_wide_resnet():
  """Clean statistics recorded once, computed here from the stem conv of x;
  the penalty's input gradients have no cross-example terms."""
  net = models.create("wide_resnet", jax.random.key(0), depth=10, width=1)
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
  y = jnp.arange(4) % 10
  key = jax.random.key(2)
  objective = objectives.build("gradient_norm", lam=1.0, norm="l1")
  _, (metrics, new_state) = jax.jit(objective)(net, x, y, key, 0.0)

  # Statistics of the first BatchNorm, whose input is the stem conv of x.
  stem = lax.conv_general_dilated(
      x, net.params["conv1"]["kernel"][...], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  mu = np.asarray(stem, np.float64).mean(axis=(0, 1, 2))
  var = np.asarray(stem, np.float64).var(axis=(0, 1, 2))
  bn1 = _bn_tree(new_state, ("blocks", 0, "bn1"))
  np.testing.assert_allclose(bn1["snap_mean"][...], mu, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(bn1["snap_var"][...], var, rtol=1e-4)
  np.testing.assert_allclose(bn1["mean"][...], 0.1 * mu, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(bn1["var"][...], 0.9 + 0.1 * var, rtol=1e-4)

  # Every statistic: exactly one batch-mode update (no update at perturbed
  # or repeated forwards).
  apply = jax.jit(functools.partial(net.apply, train=True, bn_mode="batch"))
  _, once = apply(x, dropout_key=split_keys(key)[0])
  for a, b in zip(jax.tree.leaves(once.state), jax.tree.leaves(new_state),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

  # The penalty, one example at a time at the clean statistics: a batch of
  # one has no other example to take a gradient through.
  frozen = once.logits_fn(bn_mode="frozen")

  def own_gradient_l1(xi, yi):
    def ce(z):
      logits = frozen(z[None])[0]
      return jax.nn.logsumexp(logits) - logits[yi]
    return jnp.abs(jax.grad(ce)(xi)).sum()

  per_example = jax.jit(jax.vmap(own_gradient_l1))(x, y)
  np.testing.assert_allclose(metrics["reg"], per_example.mean(), rtol=1e-4)


# --------------------------------------------------- SmallCNN end to end --


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
  key = jax.random.key(2)

  @jax.jit
  def loss_and_grad(params):
    return jax.value_and_grad(
        lambda p: objective(net.replace(params=p), x, y, key, 0.3),
        has_aux=True)(params)

  (loss, (metrics, new_state)), grads = loss_and_grad(net.params)
  assert set(metrics) >= {"loss", "ce", "reg", "acc"}
  assert np.isfinite(float(loss))
  # The clean terms, from the model's own train-mode forward (the clean
  # dropout key is the first of split(key, 3)).
  logits, _ = net.apply(x, train=True, bn_mode="batch",
                        dropout_key=split_keys(key)[0])
  logp = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(
      metrics["ce"], -np.mean(np.asarray(logp)[np.arange(8), np.asarray(y)]),
      rtol=1e-5)
  np.testing.assert_allclose(
      metrics["acc"], np.mean(np.argmax(logits, 1) == np.asarray(y)))
  # Penalized methods add their weighted, averaged penalty to the clean CE.
  weight = {"trades": 1.0, "lfr": 0.02, "gradient_norm": 0.02,
            "decision_jacobian": 1.0, "standard": 0.0}
  if method in weight:
    np.testing.assert_allclose(
        loss, metrics["ce"] + weight[method] * metrics["reg"], rtol=1e-5)
  flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
  assert jnp.all(jnp.isfinite(flat)) and jnp.any(flat != 0)
  assert jax.tree.structure(new_state) == jax.tree.structure(net.state)


def test_lfr_at_eps_zero_is_the_gradient_norm_objective(setup):
  """Theorem 2 at the level of whole objectives (same keys, same dropout)."""
  net, x, y = setup
  lfr = objectives.build("lfr", lam=0.5, step_size=0.1, num_steps=3)
  grad_norm = objectives.build("gradient_norm", lam=0.5)
  key = jax.random.key(4)
  lfr_loss, _ = jax.jit(lfr)(net, x, y, key, 0.0)
  gn_loss, _ = jax.jit(grad_norm)(net, x, y, key, 0.0)
  np.testing.assert_allclose(lfr_loss, gn_loss, rtol=1e-6)


def test_lfr_regularizer_weight_moves_the_loss(setup):
  net, x, y = setup
  key = jax.random.key(5)
  base, (m0, _) = objectives.build("lfr", lam=0.0, num_steps=1)(net, x, y, key, 0.3)
  heavy, (m1, _) = objectives.build("lfr", lam=1.0, num_steps=1)(net, x, y, key, 0.3)
  np.testing.assert_allclose(heavy - base, m1["reg"], rtol=1e-5)
  np.testing.assert_allclose(m0["reg"], m1["reg"], rtol=1e-6)


# ------------------------------------------------------------- bad input --


def test_unknown_method_lists_valid_names():
  with pytest.raises(ValueError, match="unknown method 'lfrr'; valid: standard"):
    objectives.build("lfrr")


def test_unknown_setting_lists_valid_settings():
  with pytest.raises(ValueError, match="unknown setting.*'beta'.*valid: .*lam"):
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


def test_decision_jacobian_flags_must_be_bools():
  with pytest.raises(ValueError, match="squared must be True or False"):
    objectives.build("decision_jacobian", squared=1)
  with pytest.raises(ValueError, match="pixel_mean must be True or False"):
    objectives.build("decision_jacobian", pixel_mean="yes")


def test_decision_jacobian_settings_reach_the_regularizer(setup):
  """pixel_mean divides the penalty by the number of input entries."""
  net, x, y = setup
  key = jax.random.key(6)
  _, (plain, _) = objectives.build("decision_jacobian", squared=True)(
      net, x, y, key, 0.0)
  _, (mean, _) = objectives.build("decision_jacobian", squared=True,
                                  pixel_mean=True)(net, x, y, key, 0.0)
  np.testing.assert_allclose(mean["reg"], plain["reg"] / x[0].size, rtol=1e-5)


def test_collapse_metrics():
  y = jnp.array([0, 0, 0, 1, 2, 2, 3, 4])
  constant = objectives.collapse_metrics(jnp.tile(jnp.arange(10.0), (8, 1)), y)
  assert float(constant["logit_spread"]) == 0.0
  assert float(constant["majority"]) == pytest.approx(3 / 8)
  varied = objectives.collapse_metrics(jax.nn.one_hot(y, 10) * 4.0, y)
  assert float(varied["logit_spread"]) > 0.5


def test_negative_eps_at_call_time(setup):
  net, x, y = setup
  with pytest.raises(ValueError, match="eps must be >= 0"):
    objectives.build("standard")(net, x, y, jax.random.key(0), -0.1)
