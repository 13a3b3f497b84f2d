"""Cross-check with an independent library: Foolbox 3's LinfPGD on our model.

Optional: skipped unless ``foolbox`` (3.x, with eagerpy) is installed
(``pip install foolbox==3.3.4``). Our PGD, at the same settings, must be at
least as strong as Foolbox's, within sampling noise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfr_jax import attacks
from test_attacks import accuracy  # noqa: F401  (shared helpers)
from test_attacks import mnist  # noqa: F401  (module fixture: trained MLP)

fb = pytest.importorskip("foolbox")

EPS, STEP, STEPS = 0.05, 0.005, 40


def test_our_pgd_is_at_least_as_strong_as_foolbox_linf_pgd(mnist):
  logits_fn, x, y = mnist
  model = fb.JAXModel(jax.jit(logits_fn), bounds=(0.0, 1.0),
                      data_format="channels_last")
  fb_attack = fb.attacks.LinfPGD(abs_stepsize=STEP, steps=STEPS,
                                 random_start=True)
  _, fb_adv, _ = fb_attack(model, x, y, epsilons=EPS)
  fb_adv = jnp.asarray(fb_adv)
  assert float(jnp.max(jnp.abs(fb_adv - x))) <= EPS + 1e-5
  ours = attacks.pgd(logits_fn, x, y, jax.random.key(0), eps=EPS,
                     step_size=STEP, num_steps=STEPS)
  acc_fb = accuracy(logits_fn, fb_adv, y)
  acc_ours = accuracy(logits_fn, ours, y)
  n = x.shape[0]
  # Two binomial standard errors of a difference, plus one example.
  noise = 2 * np.sqrt(2 * 0.25 / n) + 1.0 / n
  print(f"robust accuracy at eps {EPS}: Foolbox LinfPGD {float(acc_fb):.3f}, "
        f"ours {float(acc_ours):.3f} (n={n})")
  assert acc_fb > 0.05, "eps too large for a meaningful comparison"
  assert acc_ours <= acc_fb + noise, (acc_ours, acc_fb)
