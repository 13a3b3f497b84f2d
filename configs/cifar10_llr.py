"""LLR on CIFAR-10 (LLR Appendix F.2): WRN-28-8 softplus, lam 4, mu 3, nominal
weight 2, 10 Adam steps of size 0.1, eps 8/255 grown over 15 epochs.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/cifar10_llr.py --workdir=runs/cifar10_llr
    python train.py --config=configs/cifar10_llr.py:quick --workdir=runs/cifar10_llr_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.cifar10(
      "llr", llr={"lam": 4.0, "mu": 3.0, "nominal_weight": 2.0})
  config.inner.step_size = 0.1
  return common.finish(config, arg)
