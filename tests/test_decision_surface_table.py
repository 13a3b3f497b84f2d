"""tools/decision_surface_table.py: the decision-surface paper's attack cells."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def test_decision_surface_table_attacks_and_rows():
  """tools/decision_surface_table.py on a linear model: BIM is at least as
  strong as FGSM at every eps, accuracy falls with eps, paper rows printed."""
  import jax
  import jax.numpy as jnp
  from tools import decision_surface_table as table
  w = jax.random.normal(jax.random.key(0), (784, 10)) * 0.05
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = jax.random.uniform(jax.random.key(1), (64, 28, 28, 1))
  y = jnp.argmax(logits_fn(x), axis=1)  # every point starts correct
  acc = table.attack_accuracies(logits_fn, x, y)
  assert acc["natural"] == 1.0
  for name in ("fgsm", "bim", "cw"):
    assert acc[name] == sorted(acc[name], reverse=True), (name, acc[name])
  for fgsm, bim in zip(acc["fgsm"], acc["bim"]):
    assert bim <= fgsm + 1e-9
  assert acc["bim"][-1] < 0.2  # an undefended linear model falls
  md = table.markdown({"ours": acc}, 64)
  assert "| paper: Ours (c=500) | 98.40 | 91.60" in md and "| ours | 100.00" in md
