"""The gradient-sign attacks, DDN and the diagnostics in float64 NumPy.

Every function takes a model of :mod:`tiny_models` and the random draws as
arrays (the tests draw them with the same keys the code under test uses), and
returns every iterate, so a test can compare a whole trajectory. Sources,
rule by rule:

- l_inf projection: clip to [x - eps, x + eps], then to [0, 1] (Madry et al.
  2018, Eq. 2; torchattacks 3.5.1 ``PGD.forward``).
- l_2 projection: x + delta / (||delta|| + 1e-12) * min(eps, ||delta||), then
  clip to [0, 1] (fra31/auto-attack ``autopgd_base.py`` lines 338-340 at
  commit a392200; the 1e-12 guard of its ``normalize``, line 189).
- l_2 ascent direction: grad / (||grad||_2 + 1e-12) (same ``normalize``).
- uniform l_inf start: x + eps * U[-1, 1]^d, clipped (Madry et al. 2018,
  Sec. 5; torchattacks ``PGD.forward``).
- uniform l_2 start: a direction N(0, I) / ||.||_2 and a radius eps U^(1/d),
  the radius whose CDF r^d makes the sample uniform in the d-ball (Muller
  1959), clipped.
- FGSM: x0 + step * sign(grad), projected (Goodfellow et al. 2015, Eq. 3;
  with a uniform start, Wong et al. 2020, Alg. 3 / torchattacks ``FFGSM``).
- MI-FGSM: g <- mu g + grad / ||grad||_1, x <- P(x + alpha sign(g)) (Dong et
  al. 2018, Alg. 1, Eqs. 6-7).
- MultiTargeted: PGD on z_t - z_y for each of the top non-true classes t,
  keeping the run with the highest final margin (Gowal et al. 2019, Sec. 3).
- restarts and targets: a misclassified point beats a correct one, and among
  equals the higher score wins (``lfr_jax.attacks.pgd``'s documented rule).
- DDN: Rony et al. 2019, Alg. 1 as advertorch 0.2.3 ``DDNL2Attack`` runs it
  (see ``tests/test_ddn_reference.py``), with the budget capped at the
  largest norm the [0, 1] box allows.
- random search: Square Attack's start (vertical stripes of +-eps,
  auto-attack ``square.py`` line 234), its schedule of the window fraction p
  (``p_selection``, lines 192-219: p_init halved after 10, 50, 200, 500,
  1000, 2000, 4000, 6000 and 8000 of 10,000 rescaled queries) and side
  round(sqrt(p h w)) (line 255), kept below min(h, w); a window becomes a
  vertex x +- eps per channel, kept where z_y - max_{i != y} z_i drops while
  it is still positive.
"""

from __future__ import annotations

import numpy as np

from references import maths

L2_GUARD = 1e-12  # autopgd_base.py line 189
SQUARE_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def flat(v):
  return v.reshape(v.shape[0], -1)


def per_example(s, v):
  return s.reshape(s.shape + (1,) * (v.ndim - 1)) * v


def l2(v):
  return np.sqrt((flat(v) ** 2).sum(axis=1))


def project(z, x, eps, norm):
  if norm == "linf":
    return np.clip(np.clip(z, x - eps, x + eps), 0.0, 1.0)
  delta = z - x
  size = l2(delta)
  return np.clip(x + per_example(np.minimum(eps, size) / (size + L2_GUARD),
                                 delta), 0.0, 1.0)


def direction(grad, norm):
  if norm == "linf":
    return np.sign(grad)
  return per_example(1.0 / (l2(grad) + L2_GUARD), grad)


def uniform_start(x, eps, norm, draws):
  """draws: U[-1, 1] noise (linf), or (normal noise, U[0, 1] radii) (l2)."""
  if norm == "linf":
    return np.clip(x + eps * draws, 0.0, 1.0)
  noise, u = draws
  d = int(np.prod(x.shape[1:]))
  radius = eps * u ** (1.0 / d)
  unit = per_example(1.0 / (l2(noise) + L2_GUARD), noise)
  return np.clip(x + per_example(radius, unit), 0.0, 1.0)


def logit_gradient(loss, y, target=None):
  """dloss/dz for an attack loss by name, or z_t - z_y for "toward"."""
  if loss == "toward":
    def grad(z):
      return maths.one_hot(target, z.shape[1]) - maths.one_hot(y, z.shape[1])
    return grad
  _, grad = maths.LOSSES[loss]
  return lambda z: grad(z, y)


def input_gradient(model, x, dloss_dz):
  return model.vjp(x, dloss_dz(model.logits(x)))


def pgd_iterates(model, dloss_dz, x, start, eps, step, num_steps, norm):
  """[start, x_1, ..., x_K] of projected steepest ascent."""
  out = [start]
  for _ in range(num_steps):
    z = out[-1]
    g = input_gradient(model, z, dloss_dz)
    out.append(project(z + step * direction(g, norm), x, eps, norm))
  return out


def fgsm(model, loss, x, y, start, eps, step):
  g = input_gradient(model, start, logit_gradient(loss, y))
  return project(start + step * np.sign(g), x, eps, "linf")


def mifgsm_iterates(model, loss, x, y, start, eps, step, num_steps, decay):
  dloss_dz = logit_gradient(loss, y)
  out, momentum = [start], np.zeros_like(x)
  for _ in range(num_steps):
    g = input_gradient(model, out[-1], dloss_dz)
    l1 = np.abs(flat(g)).sum(axis=1)
    momentum = decay * momentum + per_example(1.0 / l1, g)
    out.append(project(out[-1] + step * np.sign(momentum), x, eps, "linf"))
  return out


def keep_worst(best, candidate):
  """(x, fooled, score) per example: fooled first, then the higher score."""
  bx, bf, bs = best
  cx, cf, cs = candidate
  take = (cf & ~bf) | ((cf == bf) & (cs > bs))
  return (np.where(take.reshape(-1, *([1] * (bx.ndim - 1))), cx, bx),
          bf | cf, np.where(take, cs, bs))


def no_worst_yet(x):
  n = x.shape[0]
  return x, np.zeros(n, bool), np.full(n, -np.inf)


def fooled(model, x_adv, y):
  return model.logits(x_adv).argmax(axis=1) != y


def pgd(model, loss, x, y, starts, eps, step, num_steps, norm):
  """PGD over restarts; ``starts`` one start per restart."""
  runs = [pgd_iterates(model, logit_gradient(loss, y), x, s, eps, step,
                       num_steps, norm) for s in starts]
  if len(runs) == 1:
    return runs[0][-1], runs
  best = no_worst_yet(x)
  value, _ = maths.LOSSES[loss]
  for run in runs:
    last = run[-1]
    best = keep_worst(best, (last, fooled(model, last, y),
                             value(model.logits(last), y)))
  return best[0], runs


def top_other_classes(z, y, k):
  masked = z.copy()
  masked[np.arange(len(y)), y] = -np.inf
  return np.argsort(-masked, axis=1, kind="stable")[:, :k]


def multi_targeted(model, x, y, starts, eps, step, num_steps, norm):
  """One PGD run per target, starts[t] the start of the t-th target's run."""
  targets = top_other_classes(model.logits(x), y, len(starts))
  best, runs = no_worst_yet(x), []
  for t, start in enumerate(starts):
    run = pgd_iterates(model, logit_gradient("toward", y, targets[:, t]), x,
                       start, eps, step, num_steps, norm)
    runs.append(run)
    m = maths.margin(model.logits(run[-1]), y)
    best = keep_worst(best, (run[-1], m > 0, m))
  return best[0], runs, targets


def ddn_learning_rate(i, num_steps):
  """CosineAnnealingLR(T_max=num_steps, eta_min=0.01) at step i + 1."""
  return 0.01 + 0.99 * 0.5 * (1.0 + np.cos(np.pi * (i + 1) / num_steps))


def ddn(model, x, y, num_steps, gamma=0.05, init_norm=1.0, levels=None,
        max_norm=None, noise=None):
  """DDN's iterates x + delta_i (i < num_steps), best norms and point.

  ``noise(i)`` gives step i's N(0, I) draw, the direction of the examples
  whose gradient is zero (advertorch replaces those by ``randn``).
  """
  n = x.shape[0]
  worst = l2(np.maximum(x, 1.0 - x))
  delta = np.zeros_like(x)
  budget = np.full(n, init_norm)
  best_norm, best_delta = worst.copy(), np.zeros_like(x)
  queries = []
  for i in range(num_steps):
    queries.append(x + delta)
    size = l2(delta)
    z = model.logits(x + delta)
    is_adv = z.argmax(axis=1) != y
    better = is_adv & (size < best_norm)
    best_norm = np.where(better, size, best_norm)
    best_delta[better] = delta[better]
    g = model.vjp(x + delta, maths.cross_entropy_grad(z, y))
    size_g = l2(g)
    step = per_example(1.0 / np.where(size_g > 0, size_g, 1.0), g)
    if noise is not None:
      step = np.where((size_g > 0)[:, None, None, None], step, noise(i))
    delta = delta + ddn_learning_rate(i, num_steps) * step
    budget = np.minimum(budget * np.where(is_adv, 1.0 - gamma, 1.0 + gamma),
                        worst)
    delta = per_example(budget / l2(delta), delta)
    x_new = x + delta
    if levels is not None:
      x_new = np.round(x_new * (levels - 1)) / (levels - 1)
    delta = np.clip(x_new, 0.0, 1.0) - x
  found = best_norm < worst
  norms = np.where(found, best_norm, np.inf)
  if max_norm is not None:
    size = l2(best_delta)
    best_delta = per_example(np.where(size > max_norm, max_norm / size, 1.0),
                             best_delta)
  return np.clip(x + best_delta, 0.0, 1.0), norms, queries


def loss_trace(model, x, y, start, eps, step, num_steps):
  """PGD (l_inf, CE) iterates and the CE of each, rows 0..K."""
  iterates = pgd_iterates(model, logit_gradient("ce", y), x, start, eps,
                          step, num_steps, "linf")
  ce = np.stack([maths.cross_entropy(model.logits(z), y) for z in iterates])
  return iterates, ce


def window_fraction(i, num_steps, p_init):
  # Square's int(it / n_queries * 10000), in exact integer arithmetic.
  query = i * 10000 // max(num_steps, 1)
  halvings = sum(query > t for t in SQUARE_THRESHOLDS)
  return p_init / 2 ** halvings


def square_side(fraction, height, width):
  side = int(np.round(np.sqrt(fraction * height * width)))
  return int(min(max(side, 1), max(min(height, width) - 1, 1)))


def random_search(model, x, y, eps, num_steps, stripes, draw, p_init=0.8):
  """stripes: (N, 1, W, C) signs; draw(i, side) -> (top, left, signs).

  Returns the best points, their decision values and every queried point
  (the stripes, then one candidate per step).
  """
  n, height, width, _ = x.shape
  x_best = np.clip(x + eps * stripes, 0.0, 1.0)
  decision = -maths.margin(model.logits(x_best), y)
  queries = [x_best]
  for i in range(num_steps):
    side = square_side(window_fraction(i, num_steps, p_init), height, width)
    top, left, signs = draw(i, side)
    window = np.zeros(x.shape[:3] + (1,), bool)
    for k in range(n):
      window[k, top[k]:top[k] + side, left[k]:left[k] + side] = True
    x_new = np.clip(np.where(window, x + eps * signs, x_best), 0.0, 1.0)
    queries.append(x_new)
    decision_new = -maths.margin(model.logits(x_new), y)
    take = (decision_new < decision) & (decision > 0)
    x_best = np.where(take[:, None, None, None], x_new, x_best)
    decision = np.where(take, decision_new, decision)
  return x_best, decision, queries
