"""Training objectives by name: standard, pgd_at, trades, llr, lfr, gradient_norm, decision_jacobian.

``build(method, **settings)`` returns a pure, jittable
``objective_fn(net, x, y, key, eps) -> (loss, (metrics, new_state))``.
Differentiate it with respect to ``net.params``; ``eps`` may be a traced scalar
(for epsilon warm-up), every other setting is static.

Conventions, shared by every method so that the methods differ only in their
loss:

- The clean forward runs in train mode (dropout on) with BatchNorm in "batch"
  mode; it updates the running statistics and records the clean batch's
  statistics (``new_state``).
- Every forward at a perturbed point uses those clean statistics ("frozen"
  BatchNorm, LLR Appendix F), so examples stay independent.
- Inner maximizations run in eval mode (no dropout) with the parameters under
  ``stop_gradient``, as the authors' PyTorch code does with ``model.eval()``
  and ``detach()``; outer terms run in train mode with their own dropout mask.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax import models, objectives

    net = models.create("small_cnn", jax.random.key(0))
    objective = objectives.build("lfr", lam=0.02, step_size=0.01, num_steps=10)
    x = jnp.zeros((8, 28, 28, 1)); y = jnp.zeros((8,), jnp.int32)

    def loss_fn(params):
      return objective(net.replace(params=params), x, y, jax.random.key(1), 0.3)

    (loss, (metrics, new_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(net.params)
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from lfr_jax import _validate
from lfr_jax import attacks
from lfr_jax import losses
from lfr_jax import regularizers

ObjectiveFn = Callable[..., tuple[jax.Array, tuple[dict[str, jax.Array], Any]]]

# Defaults follow the LFR paper's Table 1 setup (MNIST, eps 0.3, step 0.01,
# K = 40) and each method's own paper for its weights.
DEFAULTS: dict[str, dict[str, Any]] = {
    "standard": {},
    "pgd_at": {"step_size": 0.01, "num_steps": 40},
    "trades": {"step_size": 0.01, "num_steps": 40, "beta": 1.0},
    # LLR Appendix F.2 (CIFAR-10): lam 4, mu 3, nominal weight 2, Adam 0.1.
    "llr": {"step_size": 0.1, "num_steps": 10, "lam": 4.0, "mu": 3.0,
            "nominal_weight": 2.0},
    # ascent/penalty "finite_difference" and start "uniform" are the cheap
    # first-order variants (regularizers.local_flatness); fd_step is their h.
    "lfr": {"step_size": 0.01, "num_steps": 40, "lam": 0.02, "norm": "l1",
            "ascent": "exact", "penalty": "exact", "fd_step": 0.01,
            "start": "gaussian"},
    "gradient_norm": {"lam": 0.02, "norm": "l1"},
    # Per-example ||J||_2, unsquared, summed over pixels; the MNIST preset
    # uses the squared, pixel-mean form that its paper's c = 500 implies.
    "decision_jacobian": {"c": 1.0, "norm": "l2", "squared": False,
                          "pixel_mean": False},
}
# Loop settings every method takes (those without an inner loop ignore them):
# ``unroll`` the inner loop; ``remat_inner`` checkpoints the network inside
# it (config.train.remat "inner"), so that the inner step's second-order
# gradient recomputes the forward pass instead of keeping it.
_COMMON = {"unroll": True, "remat_inner": False}
LOOP_SETTINGS = tuple(_COMMON)


def names() -> list[str]:
  """Returns the registered method names."""
  return list(DEFAULTS)


def valid_settings(method: str) -> list[str]:
  """Returns the setting names ``build`` accepts for ``method``."""
  _validate.choice("method", method, names())
  return sorted({**DEFAULTS[method], **_COMMON})


class _Views:
  """The logits functions one training step needs, built once per step."""

  def __init__(self, net, x, key, remat_inner=False):
    k_clean, self.k_outer, self.k_inner = jax.random.split(key, 3)
    self.clean_logits, updated = net.apply(x, train=True, bn_mode="batch",
                                           dropout_key=k_clean)
    self.new_state = updated.state
    # The outer terms use their own dropout mask, like a second forward in
    # PyTorch; BatchNorm uses the clean statistics just recorded.
    self.outer = updated.logits_fn(train=True, bn_mode="frozen",
                                   dropout_key=self.k_outer)
    frozen = updated.replace(params=lax.stop_gradient(updated.params),
                             state=lax.stop_gradient(updated.state))
    self.inner = frozen.logits_fn(train=False, bn_mode="frozen")
    if remat_inner:
      self.inner = jax.checkpoint(self.inner)


def _metrics(views, y, loss, ce, reg):
  logits = lax.stop_gradient(views.clean_logits)
  acc = jnp.mean(jnp.argmax(logits, -1) == y)
  return {"loss": loss, "ce": ce, "reg": reg, "acc": acc,
          **collapse_metrics(logits, y)}


def collapse_metrics(logits: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
  """Two cheap signs of a constant classifier, from one batch's clean logits.

  A regularizer that is zero for input-independent logits (LLR, the
  unsquared decision-Jacobian penalty) can make the constant classifier the
  optimum; such a model's logits do not vary over the batch, and its
  accuracy is the frequency of the one class it predicts.

  Args:
    logits: (N, classes) clean logits.
    y: (N,) labels.

  Returns:
    {"logit_spread": the std over the batch of each class's logit, averaged
    over classes (0 iff the logits do not depend on the input), "majority":
    the largest class frequency in the batch (the best accuracy a constant
    classifier can reach on it)}.
  """
  spread = jnp.std(logits, axis=0).mean()
  majority = jnp.max(jnp.mean(jax.nn.one_hot(y, logits.shape[-1]), axis=0))
  return {"logit_spread": spread, "majority": majority}


def _clean_ce(views, y):
  return losses.cross_entropy(views.clean_logits, y).mean()


def _penalized(views, y, weight, penalty, *, nominal_weight=1.0, extra=0.0):
  """nominal_weight * CE(x) + weight * mean(penalty) + extra, with metrics."""
  ce = _clean_ce(views, y)
  loss = nominal_weight * ce + weight * penalty.mean() + extra
  return loss, (_metrics(views, y, loss, ce, penalty.mean()), views.new_state)


def _standard(net, x, y, key, eps, *, unroll, remat_inner):
  del eps, unroll, remat_inner
  views = _Views(net, x, key)
  return _penalized(views, y, 0.0, jnp.zeros(()))


def _pgd_at(net, x, y, key, eps, *, step_size, num_steps, unroll,
            remat_inner):
  views = _Views(net, x, key, remat_inner)
  x_adv = attacks.pgd(views.inner, x, y, views.k_inner, eps=eps,
                      step_size=step_size, num_steps=num_steps,
                      random_start=True, unroll=unroll)
  adv_ce = losses.cross_entropy(views.outer(x_adv), y).mean()
  ce = lax.stop_gradient(_clean_ce(views, y))
  return adv_ce, (_metrics(views, y, adv_ce, ce, adv_ce), views.new_state)


def _trades(net, x, y, key, eps, *, step_size, num_steps, beta, unroll,
            remat_inner):
  views = _Views(net, x, key, remat_inner)
  kl, _ = regularizers.trades_kl(views.outer, x, views.k_inner, eps=eps,
                                 step_size=step_size, num_steps=num_steps,
                                 unroll=unroll, inner_logits_fn=views.inner)
  return _penalized(views, y, beta, kl)


def _llr(net, x, y, key, eps, *, step_size, num_steps, lam, mu,
         nominal_weight, unroll, remat_inner):
  views = _Views(net, x, key, remat_inner)
  gamma, first_order = regularizers.local_linearity(
      views.outer, x, y, views.k_inner, eps=eps, step_size=step_size,
      num_steps=num_steps, unroll=unroll, inner_logits_fn=views.inner)
  return _penalized(views, y, lam, gamma, nominal_weight=nominal_weight,
                    extra=mu * first_order.mean())


def _lfr(net, x, y, key, eps, *, step_size, num_steps, lam, norm, ascent,
         penalty, fd_step, start, unroll, remat_inner):
  views = _Views(net, x, key, remat_inner)
  flatness, _ = regularizers.local_flatness(
      views.outer, x, y, views.k_inner, eps=eps, step_size=step_size,
      num_steps=num_steps, norm=norm, unroll=unroll,
      inner_logits_fn=views.inner, ascent=ascent, penalty=penalty,
      fd_step=fd_step, start=start)
  return _penalized(views, y, lam, flatness)


def _gradient_norm(net, x, y, key, eps, *, lam, norm, unroll, remat_inner):
  del eps, unroll, remat_inner
  views = _Views(net, x, key)
  return _penalized(views, y, lam, regularizers.input_gradient_norm(
      views.outer, x, y, norm=norm))


def _decision_jacobian(net, x, y, key, eps, *, c, norm, squared, pixel_mean,
                       unroll, remat_inner):
  del eps, unroll, remat_inner
  views = _Views(net, x, key)
  return _penalized(views, y, c, regularizers.decision_jacobian_norm(
      views.outer, x, y, norm=norm, squared=squared, pixel_mean=pixel_mean))


_BUILDERS = {
    "standard": _standard, "pgd_at": _pgd_at, "trades": _trades, "llr": _llr,
    "lfr": _lfr, "gradient_norm": _gradient_norm,
    "decision_jacobian": _decision_jacobian,
}


def _check_values(settings: dict[str, Any]) -> None:
  if "step_size" in settings:
    _validate.positive("step_size", settings["step_size"])
  if "num_steps" in settings:
    _validate.steps("num_steps", settings["num_steps"])
  if "norm" in settings:
    _validate.choice("norm", settings["norm"], regularizers.NORMS)
  for name in ("ascent", "penalty"):
    if name in settings:
      _validate.choice(name, settings[name], regularizers.DERIVATIVES)
  if "start" in settings:
    _validate.choice("start", settings["start"], regularizers.STARTS)
  if "fd_step" in settings:
    _validate.positive("fd_step", settings["fd_step"])
  for weight in ("lam", "mu", "beta", "c", "nominal_weight"):
    if weight in settings:
      _validate.nonneg(weight, settings[weight])
  for flag in ("squared", "pixel_mean"):
    if flag in settings and not isinstance(settings[flag], bool):
      raise ValueError(f"{flag} must be True or False, got {settings[flag]!r}.")


def check_settings(method: str, settings: dict[str, Any]) -> None:
  """Checks a method's settings without building it (what :func:`build` checks).

  Args:
    method: one of :func:`names`.
    settings: keyword settings for :func:`build`.

  Raises:
    ValueError: unknown method, unknown setting, or invalid value, in one
      sentence naming the setting.
  """
  _validate.choice("method", method, names())
  allowed = valid_settings(method)
  unknown = sorted(set(settings) - set(allowed))
  if unknown:
    raise ValueError(f"unknown setting(s) {unknown} for method {method!r}; "
                     f"valid: {', '.join(allowed)}.")
  _check_values({**DEFAULTS[method], **settings})


# The shared inner-maximization settings a method takes from config.inner.
INNER_SETTINGS = ("step_size", "num_steps")


def resolve_unroll(value: str, platform: str | None = None) -> bool:
  """Maps a config's ``"auto"`` / ``"full"`` / ``"none"`` to ``unroll``.

  "auto" unrolls only on CPU, where XLA runs rolled second-order loops about
  3x slower (see docs/BENCHMARKS.md); accelerators skip the compile cost.

  Args:
    value: "auto", "full" or "none".
    platform: the platform the loop will run on ("cpu", "gpu", "tpu"), which
      is not the host's when compiling for other devices; None for the
      host's default backend.

  Returns:
    Whether to unroll.
  """
  if value == "auto":
    return (platform or jax.default_backend()) == "cpu"
  return value == "full"


def settings_from_config(config, platform: str | None = None
                         ) -> dict[str, Any]:
  """The keyword settings of :func:`build` for ``config.method``.

  The method's own section (e.g. ``config.lfr``) plus the shared inner
  settings (``config.inner.step_size/num_steps/unroll``) the method takes.

  Args:
    config: a training config (see configs/common.py).
    platform: the platform the step is compiled for (see
      :func:`resolve_unroll`); None for the host's default backend.

  Returns:
    The settings; ``build(config.method, **settings)`` builds the objective.
  """
  method = config.method
  allowed = valid_settings(method)
  settings = dict(config[method]) if method in config else {}
  for key in INNER_SETTINGS:
    if key in allowed:
      settings[key] = config.inner[key]
  if "unroll" in allowed:
    settings["unroll"] = resolve_unroll(config.inner.unroll, platform)
  if "remat_inner" in allowed:
    settings["remat_inner"] = config.train.get("remat", "none") == "inner"
  return settings


def build(method: str, **settings) -> ObjectiveFn:
  """Builds the objective of a method by name.

  Args:
    method: one of :func:`names`.
    **settings: static settings of that method (see :data:`DEFAULTS` and
      :func:`valid_settings`); omitted ones take the defaults.

  Returns:
    ``objective_fn(net, x, y, key, eps) -> (loss, (metrics, new_state))``
    where ``metrics`` holds scalar "loss", "ce" (clean cross-entropy), "reg"
    (the method's regularizer or robust term), "acc" (clean train-mode
    accuracy) and :func:`collapse_metrics`' "logit_spread" and "majority",
    and ``new_state`` is the updated non-parameter model state.

  Raises:
    ValueError: unknown method, unknown setting, or invalid value.
  """
  check_settings(method, settings)
  merged = {**_COMMON, **DEFAULTS[method], **settings}
  fn = functools.partial(_BUILDERS[method], **merged)

  def objective_fn(net, x, y, key, eps):
    _validate.batch(x, y)
    _validate.nonneg("eps", eps)
    return fn(net, x, y, key, eps)

  objective_fn.__name__ = f"{method}_objective"
  return objective_fn
