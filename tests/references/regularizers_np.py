"""The regularizers' formulas in float64 NumPy, on :mod:`tiny_models`.

Input gradients, Hessian-vector products and every ascent direction are
written out from the models' hand derivatives (no autodiff). Sources:

- LFR (Xu et al. 2020, "Adversarial defense via local flatness
  regularization"): the local flatness gamma(x, eps) =
  max_{x' in B_inf(x, eps)} ||d_x L(x')||_1 (Eq. 1), the max found by
  sign-PGD on that norm (Eq. 3, "solved by ... PGD"), from x + 0.001 N(0, 1)
  as the authors' code starts, the penalty lambda * gamma (Eq. 2). The ascent
  direction of ||g(x')||_1 is H(x') sign(g(x')), H the input Hessian of the
  cross-entropy (and H g / ||g||_2, H sign(g_m) e_m for the l_2 and l_inf
  norms, m the largest entry).
- LFR's first-order variants (``lfr_jax.regularizers``' module docstring,
  after Finlay & Oberman 2019, "Scaleable input gradient regularization for
  adversarial robustness", who approximate the gradient norm by a finite
  difference of the loss): with s the dual direction of g = d_x L(x')
  (d||g||/dg: sign(g) for l_1, g / ||g||_2 for l_2, sign(g_m) e_m for
  l_inf), the ascent direction H s is replaced by (g(x' + h s) - g(x')) / h
  and the penalty ||g(x')|| = g . s by (L(x' + h s) - L(x')) / h, s held
  fixed; the uniform start x + eps U[-1, 1]^d, clipped, is Wong et al.
  2020's (Alg. 3, "delta = Uniform(-eps, eps)").
- the first-order penalty ||d_x L(x)||_1 (LFR Definition 2, Theorem 2: LFR
  at eps = 0).
- LLR (Qin et al. 2019, "Adversarial robustness through local
  linearization"): g(delta; x) = |l(x + delta) - l(x) - delta^T grad l(x)|
  (Eq. 5), gamma(eps, x) = max_delta g (Eq. 6), the max found by projected
  Adam ascent (Appendix E: "delta <- Proj(delta - eta Adam(...))", step 0.1)
  from a uniform start in the ball; the objective
  w l(x) + lambda gamma + mu |delta^T grad l(x)| (Eq. 8; w the nominal
  weight of Appendix F). Adam: Kingma & Ba 2015, Alg. 1, with
  beta1 = 0.9, beta2 = 0.999, eps = 1e-8.
- TRADES (Zhang et al. 2019, Eq. 5 and Alg. 1): KL(p(x) || p(x')), x' by
  sign-PGD on that KL from x + 0.001 N(0, 1).
- the decision-Jacobian norm (decision-surface paper, Eq. 11):
  L_norm(d(z_y - max_{i != y} z_i)/dx), in l_1, l_2 or l_inf, optionally
  squared (Drucker & Le Cun 1991) and divided by the number of inputs.
"""

from __future__ import annotations

import numpy as np

from references import attacks_np
from references import maths

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8  # Kingma & Ba 2015, Alg. 1
INIT_STD = 1e-3  # LFR and TRADES authors' start x + 0.001 N(0, 1)


def flat(v):
  return v.reshape(v.shape[0], -1)


def ce_input_gradient(model, x, y):
  return model.vjp(x, maths.cross_entropy_grad(model.logits(x), y))


def ce_hessian_vp(model, x, y, v):
  """H v = J^T (diag p - p p^T) J v + sum_k (p - e_y)_k (d^2 z_k/dx^2) v."""
  z = model.logits(x)
  gauss_newton = model.vjp(x, maths.cross_entropy_hessian_vp(
      z, model.jvp(x, v)))
  return gauss_newton + model.curvature_vjp(x, maths.cross_entropy_grad(z, y),
                                            v)


def norm(v, name):
  f = flat(v)
  if name == "l1":
    return np.abs(f).sum(axis=1)
  if name == "l2":
    return np.sqrt((f ** 2).sum(axis=1))
  return np.abs(f).max(axis=1)


def norm_gradient(g, name):
  """d ||g|| / d g per example: the dual direction s, g . s = ||g|| (0 where
  an l_2 gradient is 0)."""
  f = flat(g)
  if name == "l1":
    out = np.sign(f)
  elif name == "l2":
    size = np.sqrt((f ** 2).sum(axis=1, keepdims=True))
    out = f / np.where(size > 0, size, 1.0)
  else:
    out = np.zeros_like(f)
    m = np.abs(f).argmax(axis=1)
    out[np.arange(len(m)), m] = np.sign(f[np.arange(len(m)), m])
  return out.reshape(g.shape)


def flatness_direction(model, x, y, norm_name="l1"):
  """d/dx' ||d_x L(x')||: the Hessian times the norm's gradient."""
  g = ce_input_gradient(model, x, y)
  return ce_hessian_vp(model, x, y, norm_gradient(g, norm_name))


def project(z, x, eps):
  return np.clip(np.clip(z, x - eps, x + eps), 0.0, 1.0)


def fd_flatness_direction(model, x, y, norm_name, h):
  """(g(x' + h s) - g(x')) / h: the first-order ascent direction."""
  g = ce_input_gradient(model, x, y)
  s = norm_gradient(g, norm_name)
  return (ce_input_gradient(model, x + h * s, y) - g) / h


def fd_penalty(model, x, y, norm_name, h):
  """(L(x' + h s) - L(x')) / h: the first-order penalty."""
  s = norm_gradient(ce_input_gradient(model, x, y), norm_name)
  ce = lambda v: maths.cross_entropy(model.logits(v), y)
  return (ce(x + h * s) - ce(x)) / h


def flatness_start(x, eps, draw, start="gaussian"):
  """x + 0.001 N(0, 1) (draw normal) or x + eps U[-1, 1] (draw uniform),
  projected."""
  if start == "uniform":
    return project(x + eps * draw, x, eps)
  return project(x + INIT_STD * draw, x, eps)


def flatness_ascent(model, x, y, noise, eps, step, num_steps, norm_name="l1",
                    ascent="exact", h=None, start="gaussian"):
  """LFR Eq. 3 by sign-PGD: (every iterate, the start first; every point at
  which the model is queried). ``noise`` is the start's draw."""
  out = [flatness_start(x, eps, noise, start)]
  queries = []
  for _ in range(num_steps):
    z = out[-1]
    if ascent == "exact":
      d = flatness_direction(model, z, y, norm_name)
      queries.append(z)
    else:
      d = fd_flatness_direction(model, z, y, norm_name, h)
      s = norm_gradient(ce_input_gradient(model, z, y), norm_name)
      queries += [z, z + h * s]
    out.append(project(z + step * np.sign(d), x, eps))
  return out, queries


def local_flatness(model, x, y, noise, eps, step, num_steps, norm_name="l1",
                   ascent="exact", penalty="exact", h=None, start="gaussian"):
  """(value, iterates, queries) of LFR (or its first-order variants)."""
  iterates, queries = flatness_ascent(model, x, y, noise, eps, step,
                                      num_steps, norm_name, ascent, h, start)
  last = iterates[-1]
  if penalty == "exact":
    value = norm(ce_input_gradient(model, last, y), norm_name)
    queries = queries + [last]
  else:
    value = fd_penalty(model, last, y, norm_name, h)
    s = norm_gradient(ce_input_gradient(model, last, y), norm_name)
    queries = queries + [last, last + h * s, last]
  return value, iterates, queries


def trades(model, x, noise, eps, step, num_steps):
  clean = model.logits(x)
  out = [project(x + INIT_STD * noise, x, eps)]
  for _ in range(num_steps):
    z = out[-1]
    g = model.vjp(z, maths.kl_grad_q(clean, model.logits(z)))
    out.append(project(z + step * np.sign(g), x, eps))
  return maths.kl(clean, model.logits(out[-1])), out


def linearity_terms(model, x, y, delta):
  """(inner, first) with inner = l(x+d) - l(x) - d.g and first = d.g."""
  g = ce_input_gradient(model, x, y)
  first = (flat(delta) * flat(g)).sum(axis=1)
  ce = lambda v: maths.cross_entropy(model.logits(v), y)
  return ce(x + delta) - ce(x) - first, first


def llr_ascent(model, x, y, uniform, eps, lr, num_steps):
  """Projected Adam ascent of g(delta; x): every delta, the start first."""
  g_clean = ce_input_gradient(model, x, y)
  delta = project(x + uniform * eps, x, eps) - x
  out = [delta]
  m = np.zeros_like(x)
  v = np.zeros_like(x)
  for t in range(1, num_steps + 1):
    inner, _ = linearity_terms(model, x, y, delta)
    # d g / d delta = sign(inner) (grad l(x + delta) - grad l(x)); Adam
    # minimizes -g.
    grad = -np.sign(inner)[:, None, None, None] * (
        ce_input_gradient(model, x + delta, y) - g_clean)
    m = ADAM_B1 * m + (1 - ADAM_B1) * grad
    v = ADAM_B2 * v + (1 - ADAM_B2) * grad ** 2
    m_hat = m / (1 - ADAM_B1 ** t)
    v_hat = v / (1 - ADAM_B2 ** t)
    delta = delta - lr * m_hat / (np.sqrt(v_hat) + ADAM_EPS)
    delta = project(x + delta, x, eps) - x
    out.append(delta)
  return out


def local_linearity(model, x, y, uniform, eps, lr, num_steps):
  """(gamma, |first order|, inner, first, deltas)."""
  deltas = llr_ascent(model, x, y, uniform, eps, lr, num_steps)
  inner, first = linearity_terms(model, x, y, deltas[-1])
  return np.abs(inner), np.abs(first), inner, first, deltas


def decision_jacobian(model, x, y, norm_name="l1", squared=False,
                      pixel_mean=False):
  z = model.logits(x)
  jac = model.vjp(x, maths.decision_value_grad(z, y))
  value = norm(jac, norm_name)
  if squared:
    value = value ** 2
  if pixel_mean:
    value = value / flat(jac).shape[1]
  return value, jac


def pgd_linf_ce(model, x, y, start, eps, step, num_steps):
  """PGD-AT's inner max (Madry et al. 2018), for the objectives' check."""
  return attacks_np.pgd_iterates(model, attacks_np.logit_gradient("ce", y), x,
                                 start, eps, step, num_steps, "linf")[-1]
