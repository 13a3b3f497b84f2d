"""Losses of logits and their logit gradients, float64 NumPy, by hand.

Every function takes logits z (N, K) and integer labels; gradients are with
respect to z, per example. Sources:

- cross-entropy: -log softmax(z)_y, gradient softmax(z) - e_y, Hessian
  diag(p) - p p^T;
- margin (Carlini & Wagner): max_{i != y} z_i - z_y;
- DLR (Croce & Hein 2020, Eq. 6 of "Reliable evaluation of adversarial
  robustness with an ensemble of diverse parameter-free attacks"; the
  reference code fra31/auto-attack ``autopgd_base.py`` ``dlr_loss``, lines
  191-197 at commit a392200, adds 1e-12 to the denominator):
  -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), pi the logits sorted
  in decreasing order;
- targeted DLR (same code, ``dlr_loss_targeted`` lines 595-600):
  -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12);
- KL(softmax(p) || softmax(q)) (TRADES, Zhang et al. 2019, Eq. 5); its
  gradient in q is softmax(q) - softmax(p).
"""

from __future__ import annotations

import numpy as np

DLR_GUARD = 1e-12  # autopgd_base.py lines 197 and 600


def rows(n):
  return np.arange(n)


def log_softmax(z):
  top = z.max(axis=1, keepdims=True)
  return z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))


def softmax(z):
  return np.exp(log_softmax(z))


def one_hot(y, k):
  return np.eye(k)[np.asarray(y)]


def cross_entropy(z, y):
  return -log_softmax(z)[rows(len(y)), y]


def cross_entropy_grad(z, y):
  return softmax(z) - one_hot(y, z.shape[1])


def cross_entropy_hessian_vp(z, w):
  """(diag(p) - p p^T) w per example, w (N, K)."""
  p = softmax(z)
  return p * w - p * (p * w).sum(axis=1, keepdims=True)


def runner_up(z, y):
  """argmax_{i != y} z_i (no ties on the tests' inputs)."""
  masked = z.copy()
  masked[rows(len(y)), y] = -np.inf
  return masked.argmax(axis=1)


def margin(z, y):
  r = runner_up(z, y)
  return z[rows(len(y)), r] - z[rows(len(y)), y]


def margin_grad(z, y):
  k = z.shape[1]
  return one_hot(runner_up(z, y), k) - one_hot(y, k)


def decision_value_grad(z, y):
  """Gradient of z_y - max_{i != y} z_i: e_y - e_runner_up."""
  return -margin_grad(z, y)


def _sorted_desc(z):
  return np.argsort(-z, axis=1, kind="stable")


def dlr(z, y):
  order = _sorted_desc(z)
  n = rows(len(y))
  scale = z[n, order[:, 0]] - z[n, order[:, 2]] + DLR_GUARD
  return margin(z, y) / scale


def dlr_grad(z, y):
  """Quotient rule on margin / (z_pi1 - z_pi3 + guard)."""
  k = z.shape[1]
  order = _sorted_desc(z)
  n = rows(len(y))
  scale = z[n, order[:, 0]] - z[n, order[:, 2]] + DLR_GUARD
  d_scale = one_hot(order[:, 0], k) - one_hot(order[:, 2], k)
  return (margin_grad(z, y) / scale[:, None]
          - (margin(z, y) / scale ** 2)[:, None] * d_scale)


def dlr_targeted(z, y, t):
  order = _sorted_desc(z)
  n = rows(len(y))
  scale = (z[n, order[:, 0]] - 0.5 * (z[n, order[:, 2]] + z[n, order[:, 3]])
           + DLR_GUARD)
  return (z[n, t] - z[n, y]) / scale


def dlr_targeted_grad(z, y, t):
  k = z.shape[1]
  order = _sorted_desc(z)
  n = rows(len(y))
  scale = (z[n, order[:, 0]] - 0.5 * (z[n, order[:, 2]] + z[n, order[:, 3]])
           + DLR_GUARD)
  d_scale = (one_hot(order[:, 0], k) - 0.5 * one_hot(order[:, 2], k)
             - 0.5 * one_hot(order[:, 3], k))
  num = z[n, t] - z[n, y]
  return ((one_hot(t, k) - one_hot(y, k)) / scale[:, None]
          - (num / scale ** 2)[:, None] * d_scale)


def kl(p_logits, q_logits):
  log_p, log_q = log_softmax(p_logits), log_softmax(q_logits)
  return (np.exp(log_p) * (log_p - log_q)).sum(axis=1)


def kl_grad_q(p_logits, q_logits):
  return softmax(q_logits) - softmax(p_logits)


LOSSES = {
    "ce": (cross_entropy, cross_entropy_grad),
    "margin": (margin, margin_grad),
    "dlr": (dlr, dlr_grad),
}


def loss_and_input_grad(model, loss, x, y):
  """Per-example attack loss and its input gradient J^T dloss/dz."""
  value, grad = LOSSES[loss]
  z = model.logits(x)
  return value(z, y), model.vjp(x, grad(z, y))
