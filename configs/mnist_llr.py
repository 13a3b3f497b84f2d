"""Local Linearity Regularization on MNIST as the LFR paper ran it: lam 4, mu 3.

The nominal-loss weight 2 is LLR's own CIFAR-10 setting (Appendix F.2); the
inner maximization uses the LFR paper's shared MNIST setting (K = 40, step 0.01,
here an Adam learning rate).

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/mnist_llr.py --workdir=runs/mnist_llr
    python train.py --config=configs/mnist_llr.py:quick --workdir=runs/mnist_llr_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.mnist(
      "llr", llr={"lam": 4.0, "mu": 3.0, "nominal_weight": 2.0})
  return common.finish(config, arg)
