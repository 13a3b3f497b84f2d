"""Local Linearity Regularization (Qin et al. 2019) on MNIST at eps 0.3.

LLR's objective (Eq. 8) is ``w l(x) + lam gamma(eps, x) + mu |delta^T grad l(x)|``
with LLR's CIFAR-10 weights w = 2, lam = 4, mu = 3 at eps = 8/255 (Appendix
F.2). Those weights do not carry over to eps = 0.3:

- The constant classifier (logits independent of x) has gamma = 0 and
  delta^T grad l = 0, so its objective is w ln 10 = 4.61. By LLR's Prop. 4.1,
  |l(x + delta) - l(x)| <= |delta^T grad l(x)| + gamma, so a model beats it only
  if min(lam, mu) times its loss increase at delta_LLR stays below
  w (ln 10 - l(x)): under 1.5 nats anywhere in the 0.3 ball at lam 4, mu 3,
  which no model early in training meets. At these weights training collapses
  to the constant classifier (final loss 2 ln 10).
- At a fixed model both penalties grow with the radius: |delta^T grad l| <=
  eps ||grad l||_1 exactly linearly, gamma quadratically in small balls and
  about linearly once the ball spans many linear pieces of the network, as
  a 0.3 ball does. Keeping lam gamma and mu |delta^T grad l| at the share of
  the objective LLR chose at 8/255 therefore scales lam and mu by
  (8/255) / 0.3 = 0.105: lam = 0.418, mu = 0.314 (the quadratic law would give
  a ten times weaker lam). The loss-increase budget becomes 4.61 / 0.314 = 15
  nats, which training can meet from the start.
- The nominal weight w = 2 is kept (LLR: 2 on CIFAR-10, 3 on ImageNet).
- eps grows linearly from 0 as LLR does (15 of its 110 CIFAR-10 epochs; here
  15 of 100, scaled with the schedule by ``:repro`` and ``:curve``).

The inner maximization is the LFR paper's shared MNIST setting (K = 40, step
0.01, here an Adam learning rate; ``:repro`` uses K = 10 steps of 0.075). LLR
asks for a smooth network (Sec. 5): ``mnist_llr_softplus`` is this preset with
a softplus SmallCNN.

Run (full protocol; ``:repro`` is the docs/RESULTS.md protocol, ``:quick`` a
few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/mnist_llr.py --workdir=runs/mnist_llr
    python train.py --config=configs/mnist_llr.py:repro --workdir=runs/mnist_llr_repro
"""

from configs import common

# LLR's CIFAR-10 weights (Appendix F.2), scaled from its eps to ours.
EPS_RATIO = common.CIFAR_EPS / common.MNIST_EPS
LAM, MU, NOMINAL_WEIGHT = 4.0 * EPS_RATIO, 3.0 * EPS_RATIO, 2.0
WARMUP_EPOCHS = 15.0  # of 100, LLR's 15 of 110 for CIFAR-10


def get_config(arg=None):
  """Returns the config; ``arg`` is a variant of ``common.VARIANTS``."""
  config = common.mnist("llr", llr={"lam": LAM, "mu": MU,
                                    "nominal_weight": NOMINAL_WEIGHT})
  config.inner.warmup_epochs = WARMUP_EPOCHS
  return common.finish(config, arg)
