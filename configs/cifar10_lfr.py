"""LFR on CIFAR-10 with LLR's protocol. The LFR paper has no CIFAR-10 run, so
lam 0.02 (its MNIST value) and the shared K = 10, step 2/255 are untuned.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/cifar10_lfr.py --workdir=runs/cifar10_lfr
    python train.py --config=configs/cifar10_lfr.py:quick --workdir=runs/cifar10_lfr_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.cifar10("lfr", lfr={"lam": 0.02, "norm": "l1"})
  return common.finish(config, arg)
