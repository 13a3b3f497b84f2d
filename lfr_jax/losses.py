"""Per-example losses of logits, for training, regularizers and attacks.

Every function maps logits (N, C) and integer labels (N,) to one value per
example (N,); average or sum them yourself. Losses are computed in float32 (at
least) whatever the logits' dtype. Attack losses are oriented so that
*higher is more adversarial* (an attack maximizes them):

- :func:`cross_entropy` - softmax cross-entropy.
- :func:`margin` - Carlini & Wagner's margin max_{i != y} z_i - z_y (> 0 iff
  the example is misclassified).
- :func:`dlr` - Croce & Hein's Difference of Logits Ratio, invariant to
  shifting and (positively) scaling the logits.
- :func:`dlr_targeted` - the targeted DLR of AutoAttack's APGD-T.
- :func:`kl_divergence` - KL(softmax(p) || softmax(q)), TRADES' robust term.

:func:`decision_value` is the exception: z_y - max_{i != y} z_i is the
*signed distance to the decision boundary in logit space*, positive when the
example is classified correctly (so it is ``-margin``).

:func:`get` looks up the attack losses by name ("ce", "margin", "dlr").

Example::

    import jax.numpy as jnp
    from lfr_jax import losses

    logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    y = jnp.array([0, 2])
    losses.cross_entropy(logits, y)        # (2,)
    losses.margin(logits, y)               # [-1.,  2.]: example 1 is wrong
    loss_fn = losses.get("dlr")            # what attacks use
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lfr_jax import _validate
from lfr_jax import precision

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

# Croce & Hein's denominator guard; keeps DLR finite when the top logits tie.
DLR_EPS = 1e-12


def _check(logits, y, *, min_classes: int = 1) -> None:
  """Shape checks only: they are static, so they cost nothing under jit."""
  if getattr(logits, "ndim", None) != 2:
    raise ValueError(f"logits must have shape (N, classes), got shape "
                     f"{getattr(logits, 'shape', None)}.")
  if getattr(y, "ndim", None) != 1 or y.shape[0] != logits.shape[0]:
    raise ValueError(f"labels must have shape ({logits.shape[0]},) to match "
                     f"the logits, got shape {getattr(y, 'shape', None)}.")
  if logits.shape[1] < min_classes:
    raise ValueError(f"this loss needs at least {min_classes} classes, got "
                     f"{logits.shape[1]}.")


def _label_logit(logits: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]


def _best_other_logit(logits: jax.Array, y: jax.Array) -> jax.Array:
  """max_{i != y} z_i: the strongest competitor of the true class."""
  is_label = jax.nn.one_hot(y, logits.shape[1], dtype=bool)
  return jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=1)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Softmax cross-entropy -log softmax(z)_y per example.

  Args:
    logits: (N, C) logits.
    y: (N,) integer labels.

  Returns:
    (N,) losses; higher is more adversarial.
  """
  _check(logits, y)
  logits = precision.at_least_float32(logits)
  return jax.nn.logsumexp(logits, axis=1) - _label_logit(logits, y)


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Carlini & Wagner's margin max_{i != y} z_i - z_y per example.

  Args:
    logits: (N, C) logits, C >= 2.
    y: (N,) integer labels.

  Returns:
    (N,) margins; positive iff misclassified, higher is more adversarial.
  """
  _check(logits, y, min_classes=2)
  logits = precision.at_least_float32(logits)
  return _best_other_logit(logits, y) - _label_logit(logits, y)


def decision_value(logits: jax.Array, y: jax.Array) -> jax.Array:
  """The decision value z_y - max_{i != y} z_i per example (= -margin).

  Unlike the attack losses, *lower* is more adversarial: it is positive iff
  the example is classified correctly. Its input gradient is the normal of
  the local decision surface (decision-surface paper, Eq. 11).

  Args:
    logits: (N, C) logits, C >= 2.
    y: (N,) integer labels.

  Returns:
    (N,) decision values.
  """
  _check(logits, y, min_classes=2)
  logits = precision.at_least_float32(logits)
  return _label_logit(logits, y) - _best_other_logit(logits, y)


def dlr(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Difference of Logits Ratio -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3).

  Croce & Hein (2020), Eq. 6, with z_pi1 >= z_pi2 >= ... the sorted logits and
  1e-12 added to the denominator as in AutoAttack. Invariant to adding a
  constant to, or multiplying by a positive constant, all logits.

  Args:
    logits: (N, C) logits, C >= 3.
    y: (N,) integer labels.

  Returns:
    (N,) losses; higher is more adversarial.
  """
  _check(logits, y, min_classes=3)
  logits = precision.at_least_float32(logits)
  top = jnp.sort(logits, axis=1)[:, ::-1]
  return margin(logits, y) / (top[:, 0] - top[:, 2] + DLR_EPS)


def dlr_targeted(logits: jax.Array, y: jax.Array,
                 y_target: jax.Array) -> jax.Array:
  """Targeted DLR -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) (APGD-T).

  Args:
    logits: (N, C) logits, C >= 4.
    y: (N,) true labels.
    y_target: (N,) target labels.

  Returns:
    (N,) losses; higher is more adversarial (pushes z_t above z_y).
  """
  _check(logits, y, min_classes=4)
  _check(logits, y_target)
  logits = precision.at_least_float32(logits)
  top = jnp.sort(logits, axis=1)[:, ::-1]
  scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_EPS
  return (_label_logit(logits, y_target) - _label_logit(logits, y)) / scale


def kl_divergence(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
  """KL(softmax(p) || softmax(q)) per example.

  TRADES uses KL(clean || adversarial), i.e. ``p_logits`` from the clean
  input. Computed from log-softmax, so it is finite even when q underflows.

  Args:
    p_logits: (N, C) logits of the reference distribution.
    q_logits: (N, C) logits of the other distribution.

  Returns:
    (N,) non-negative divergences; higher is more adversarial.
  """
  p_shape = getattr(p_logits, "shape", None)
  q_shape = getattr(q_logits, "shape", None)
  if p_shape != q_shape or len(p_shape or ()) != 2:
    raise ValueError(f"p_logits and q_logits must both have shape "
                     f"(N, classes), got {p_shape} and {q_shape}.")
  log_p = jax.nn.log_softmax(precision.at_least_float32(p_logits), axis=1)
  log_q = jax.nn.log_softmax(precision.at_least_float32(q_logits), axis=1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=1)


_ATTACK_LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "margin": margin,
    "dlr": dlr,
}


def names() -> list[str]:
  """Returns the names accepted by :func:`get`."""
  return list(_ATTACK_LOSSES)


def get(name: str) -> LossFn:
  """Looks up an attack loss ``(logits, y) -> (N,)`` by name.

  Args:
    name: "ce", "margin" or "dlr".

  Returns:
    The loss function (higher is more adversarial).

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  _validate.choice("loss", name, _ATTACK_LOSSES)
  return _ATTACK_LOSSES[name]


__all__ = [
    "cross_entropy", "margin", "decision_value", "dlr", "dlr_targeted",
    "kl_divergence", "names", "get",
]
