"""APGD and APGD-T restated in float64 NumPy from the paper and its code.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks" (ICML), Algorithm 1 and Sec. 3,
and the reference implementation fra31/auto-attack, ``autoattack/
autopgd_base.py`` at commit a392200 (``APGDAttack.attack_single_run``, lines
201-443; ``APGDAttack_targeted``, lines 566-686). Every constant, with its
source:

- start on the ball's boundary: l_inf x + eps t / (||t||_inf + 1e-12), t
  uniform in [-1, 1]^d (lines 206-209); l_2 x + eps t / (||t||_2 + 1e-12),
  t ~ N(0, I) (lines 210-213; the 1e-12 of ``normalize``, line 189); then
  clipped to [0, 1] (line 230).
- step size eta_0 = 2 eps (Sec. 3.2; lines 293-295).
- momentum alpha = 0.75 except at the first step, alpha = 1 (Sec. 3.2,
  "alpha = 0.75"; line 326): z = P(x_k + eta dir(grad)),
  x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))
  (Algorithm 1, lines 6-7; code lines 328-344).
- checkpoints: the first window is max(int(0.22 N), 1) steps, each next one
  shorter by max(int(0.03 N), 1) down to max(int(0.06 N), 1) (the integer
  form, lines 153-155 and 424, of Sec. 3.2's p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)).
- Condition 1: the loss increased in at most rho * window of the window's
  steps, rho = 0.75 (Sec. 3.2; ``check_oscillation`` lines 166-171, "<=" as
  in the code; default rho line 115).
- Condition 2: eta was not halved at the last checkpoint and the best loss
  has not improved since (Sec. 3.2; lines 409-410), with "halved" true
  before the first checkpoint (line 315).
- on either condition: eta <- eta / 2 and restart from the best point with
  its gradient (Algorithm 1, line 13; code lines 416-422).
- the best point is the highest-loss iterate, "y1 > loss_best" (lines
  395-401); the adversarial point is the last misclassified iterate (lines
  381-385).
- APGD-T: targets are the 2nd, 3rd, ... largest clean logits (lines 655,
  668), on the targeted DLR loss (lines 595-600).

The first check compares the first step's loss with an entry of
``loss_steps`` that is not yet written (zero): ``first_check="zero"`` follows
the code, ``first_check="start"`` compares with the starting point's loss
instead, as ``lfr_jax.attacks.apgd`` documents it does.
"""

from __future__ import annotations

import numpy as np

from references import attacks_np
from references import maths

GUARD = 1e-12  # autopgd_base.py line 189


def _normalize(t, norm):
  if norm == "linf":
    size = np.abs(attacks_np.flat(t)).max(axis=1)
  else:
    size = attacks_np.l2(t)
  return attacks_np.per_example(1.0 / (size + GUARD), t)


def start_point(x, eps, norm, draw):
  return np.clip(x + eps * _normalize(draw, norm), 0.0, 1.0)


def _project(z, x, eps, norm):
  if norm == "linf":
    return np.clip(np.minimum(np.maximum(z, x - eps), x + eps), 0.0, 1.0)
  delta = z - x
  size = attacks_np.l2(delta)
  return np.clip(x + attacks_np.per_example(
      np.minimum(eps, size) / (size + GUARD), delta), 0.0, 1.0)


def _move(x_adv, x_old, grad, step, x, eps, norm, alpha):
  """Algorithm 1, lines 6-7."""
  if norm == "linf":
    z = _project(x_adv + attacks_np.per_example(step, np.sign(grad)), x, eps,
                 norm)
  else:
    z = _project(x_adv + attacks_np.per_example(step, _normalize(grad, norm)),
                 x, eps, norm)
  return _project(x_adv + (z - x_adv) * alpha + (x_adv - x_old) * (1 - alpha),
                  x, eps, norm)


def single_run(model, loss, x, y, draw, eps, num_steps, norm, rho=0.75,
               first_check="start"):
  """One run; ``loss(z) -> (value, dvalue/dz)``.

  Returns:
    dict with x_best, loss_best, fooled, x_best_adv and the queried points
    (the start, then one per step), the step size after every step, and
    per checkpoint the examples halved by Condition 1 alone and by
    Condition 2 alone.
  """
  n = x.shape[0]

  def evaluate(z_in):
    z = model.logits(z_in)
    value, dz = loss(z)
    return value, model.vjp(z_in, dz), z.argmax(axis=1) != y

  x_adv = start_point(x, eps, norm, draw)
  queries = [x_adv]
  loss_now, grad, wrong = evaluate(x_adv)
  loss0 = loss_now.copy()
  fooled, x_best_adv = wrong.copy(), x_adv.copy()
  x_best, grad_best, loss_best = x_adv.copy(), grad.copy(), loss_now.copy()
  step = np.full(n, 2.0 * eps)
  x_old = x_adv.copy()
  window = max(int(0.22 * num_steps), 1)
  shortest = max(int(0.06 * num_steps), 1)
  shrink = max(int(0.03 * num_steps), 1)
  counter = 0
  loss_best_last = loss_best.copy()
  reduced_last = np.ones(n, bool)
  loss_steps = np.zeros((num_steps, n))
  steps, decided_by = [], []

  def previous_loss(j):
    if j >= 0:
      return loss_steps[j]
    return loss0 if first_check == "start" else loss_steps[j]

  for i in range(num_steps):
    alpha = 0.75 if i > 0 else 1.0
    x_new = _move(x_adv, x_old, grad, step, x, eps, norm, alpha)
    x_old = x_adv
    x_adv = x_new
    queries.append(x_adv)
    loss_now, grad, wrong = evaluate(x_adv)
    fooled |= wrong
    x_best_adv[wrong] = x_adv[wrong]
    loss_steps[i] = loss_now
    better = loss_now > loss_best
    x_best[better], grad_best[better] = x_adv[better], grad[better]
    loss_best[better] = loss_now[better]
    counter += 1
    if counter == window:
      increases = sum((loss_steps[i - c] > previous_loss(i - c - 1))
                      for c in range(window))
      oscillating = increases <= window * rho
      stalled = ~reduced_last & (loss_best_last >= loss_best)
      halve = oscillating | stalled
      decided_by.append((oscillating & ~stalled, stalled & ~oscillating))
      reduced_last = halve.copy()
      loss_best_last = loss_best.copy()
      step = step.copy()
      step[halve] /= 2.0
      x_adv = x_adv.copy()
      grad = grad.copy()
      x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
      counter = 0
      window = max(window - shrink, shortest)
    steps.append(step)
  return {"x_best": x_best, "loss_best": loss_best, "fooled": fooled,
          "x_best_adv": x_best_adv, "queries": queries, "steps": steps,
          "decided_by": decided_by}


def untargeted_loss(name, y):
  value, grad = maths.LOSSES[name]
  return lambda z: (value(z, y), grad(z, y))


def targeted_loss(y, target):
  return lambda z: (maths.dlr_targeted(z, y, target),
                    maths.dlr_targeted_grad(z, y, target))


def _worst_of(model, x, y, runs):
  """``lfr_jax.attacks.apgd``'s documented selection over runs, then the
  clean-misclassified points returned unchanged."""
  best = attacks_np.no_worst_yet(x)
  for run in runs:
    point = np.where(run["fooled"][:, None, None, None], run["x_best_adv"],
                     run["x_best"])
    best = attacks_np.keep_worst(best, (point, run["fooled"],
                                        run["loss_best"]))
  clean_wrong = model.logits(x).argmax(axis=1) != y
  return np.where(clean_wrong[:, None, None, None], x, best[0])


def apgd(model, x, y, draws, eps, num_steps, norm, loss="ce", rho=0.75,
         first_check="start"):
  """One run per draw (restart); returns (x_adv, runs)."""
  runs = [single_run(model, untargeted_loss(loss, y), x, y, d, eps,
                     num_steps, norm, rho, first_check) for d in draws]
  return _worst_of(model, x, y, runs), runs


def apgd_targeted(model, x, y, draws, eps, num_steps, norm, rho=0.75,
                  first_check="start"):
  """One run per draw, the t-th run against the (t + 2)-th largest logit."""
  order = np.argsort(-model.logits(x), axis=1, kind="stable")
  runs = [single_run(model, targeted_loss(y, order[:, t + 1]), x, y, d, eps,
                     num_steps, norm, rho, first_check)
          for t, d in enumerate(draws)]
  return _worst_of(model, x, y, runs), runs, order[:, 1:len(draws) + 1]
