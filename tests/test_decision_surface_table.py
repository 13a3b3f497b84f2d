"""tools/decision_surface_table.py: the decision-surface paper's attack cells."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import decision_surface_table as table  # noqa: E402


def _linear_problem():
  w = jax.random.normal(jax.random.key(0), (784, 10)) * 0.05
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = jax.random.uniform(jax.random.key(1), (64, 28, 28, 1))
  y = jnp.argmax(logits_fn(x), axis=1)  # every point starts correct
  return w, logits_fn, x, y


def test_decision_surface_table_attacks_and_rows():
  """On a linear model: BIM is at least as strong as FGSM at every eps,
  accuracy falls with eps, the worst case is below every attack, and the
  paper rows are printed."""
  _, logits_fn, x, y = _linear_problem()
  acc = table.attack_accuracies(logits_fn, x, y, batch=32, worst_case=True)
  assert acc["natural"] == 1.0
  for name in ("fgsm", "bim", "cw", "worst"):
    assert acc[name] == sorted(acc[name], reverse=True), (name, acc[name])
  for i in range(len(table.EPS)):
    assert acc["bim"][i] <= acc["fgsm"][i] + 1e-9
    assert acc["worst"][i] <= min(acc[k][i] for k in
                                  ("fgsm", "bim", "cw", "apgd_ce", "apgd_t"))
  assert acc["bim"][-1] < 0.2  # an undefended linear model falls
  md = table.markdown({"ours": acc}, 64)
  assert "| paper: Ours (c=500) | 98.4 | 91.6" in md
  assert "| ours | 100.0 ± 0.0" in md and "worst case 0.3" in md


def _reference_iterations(w, x, y, eps, reading):
  """The BIM readings in float64 numpy for a linear model, whose CE input
  gradient is W (softmax(xW) - onehot(y))."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  w = np.asarray(w, np.float64)
  z = x.copy()
  for _ in range(table.ITERATIONS):
    logits = z @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(10)[np.asarray(y)]) @ w.T
    z = z + table.STEP * np.sign(g)
    if reading == "ours":
      z = np.clip(np.clip(z, x - eps, x + eps), 0, 1)
    elif reading == "no_box":
      z = np.clip(z, x - eps, x + eps)
    elif reading == "box_before_ball":
      z = np.clip(np.clip(z, 0, 1), x - eps, x + eps)
  if reading == "project_at_end":
    z = np.clip(np.clip(z, x - eps, x + eps), 0, 1)
  return z


@pytest.mark.parametrize("reading", ["ours", "no_box", "box_before_ball",
                                     "project_at_end"])
def test_bim_readings_match_a_float64_reference(reading):
  from lfr_jax import losses  # pylint: disable=g-import-not-at-top
  with jax.enable_x64(True):
    w, _, x, y = _linear_problem()
    w, x = w.astype(jnp.float64), x.astype(jnp.float64)
    logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w
    got = np.asarray(table.sign_iterations(
        logits_fn, losses.cross_entropy, x, y, eps=0.2, step=table.STEP,
        num_steps=table.ITERATIONS, reading=reading))
  want = _reference_iterations(w, x, y, 0.2, reading)
  np.testing.assert_allclose(got.reshape(len(x), -1), want, atol=1e-9)
  assert np.abs(got - np.asarray(x)).max() <= 0.2 + 1e-9
  if reading != "no_box":
    assert got.min() >= 0 and got.max() <= 1
  else:  # the reading lets pixels leave [0, 1]
    assert got.min() < 0 or got.max() > 1


def test_probability_margin_is_the_softmax_margin():
  logits = jnp.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
  p = np.exp(np.asarray(logits))
  p /= p.sum(1, keepdims=True)
  want = [p[0, 2] - p[0, 0], p[1, 0] - p[1, 1]]
  np.testing.assert_allclose(
      table._probability_margin(logits, jnp.array([0, 1])), want, rtol=1e-6)


def test_within_interval():
  assert table.within_interval(0.22, 22.5, 1000)
  assert not table.within_interval(0.45, 22.5, 1000)
  assert table.within_interval(0.0, 0.0, 1000)
