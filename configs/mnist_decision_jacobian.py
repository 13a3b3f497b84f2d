"""Decision-Jacobian regularization on MNIST (decision-surface paper, Eq. 11).

The loss is ``CE(x) + c L_norm(J)`` with J = d(z_y - max_{i!=y} z_i)/dx. The
network (``ds_mnist_cnn``: 2 conv + 2 FC) and c = 500 are the paper's (Sec.
8.3); L_norm is "l1, l2 or linf", its normalization unstated. c = 500 fixes it:

- Scale all logits by s. The cross-entropy's slope at s = 0 is -(z_y - z_bar)
  and an unsquared norm adds c ||J||, so zero logits are optimal unless the
  logit gap per unit ||J|| (a first-order distance to the decision boundary)
  exceeds c. Summed over pixels, c = 500 asks for an l2 distance of 500 where
  MNIST images are at most 28 apart: it trains to 22% clean. Averaged over
  the 784 pixels, c = 500 is 0.64 per unit l1 norm, an l_inf distance of 0.64
  (more than twice eps), or 0.64 per unit l2 norm, a weight our unsquared l2
  already trains with but that buys no robustness at eps 0.3 (c = 1: 92%
  clean, ~0% PGD).
- A gradient of the batch-mean decision value (the usual PyTorch code) is
  J / B per example, which makes every squared form vanish (c / B^2).
- Double backpropagation (Drucker & Le Cun 1991, which the paper follows)
  penalizes the squared gradient: its slope at s = 0 is zero, so no c makes
  the constant classifier optimal, and c sets a trade-off instead. With the
  mean over pixels (``.mean()`` of J^2 over the image tensor) c = 500 weighs
  ||J||_2^2 by 500 / 784 = 0.64, and one :repro epoch lands near the paper's
  Table 1 (1,000 test images, ours / paper; ``tools/decision_surface_table.py``,
  docs/results/decision_surface/): clean 93.8 / 98.4%, FGSM at
  eps 0.1/0.2/0.3 80.1 / 91.6, 59.3 / 70.3, 34.5 / 41.6%; BIM (10 steps of 0.1)
  79.8 / 88.1, 38.7 / 64.9, 4.1 / 26.7%.

So: l2, squared, mean over pixels, c = 500. The paper gives no optimizer;
Adam is used at its default 1e-3 (this network's MNIST-challenge code uses
1e-4, which leaves the 430-step :repro run at 89.5% clean; the full schedule
ends at 1e-4 after its x0.1 at epoch 90). Epochs and schedule are the LFR
paper's MNIST ones; there is no inner maximization (eps 0).

Run (full protocol; ``:repro`` is the docs/RESULTS.md protocol, ``:quick`` a
few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/mnist_decision_jacobian.py --workdir=runs/mnist_decision_jacobian
    python train.py --config=configs/mnist_decision_jacobian.py:repro --workdir=runs/mnist_decision_jacobian_repro
"""

from configs import common

# Eq. 11 with the paper's c, on the mean over pixels of J^2 (see above).
DECISION_JACOBIAN = {"c": 500.0, "norm": "l2", "squared": True,
                     "pixel_mean": True}


def get_config(arg=None):
  """Returns the config; ``arg`` is a variant of ``common.VARIANTS``."""
  config = common.mnist("decision_jacobian", model="ds_mnist_cnn",
                        decision_jacobian=dict(DECISION_JACOBIAN))
  config.inner.eps = 0.0
  config.optim.update({"name": "adam", "lr": 1e-3})
  return common.finish(config, arg)
