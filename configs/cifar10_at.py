"""PGD adversarial training on CIFAR-10 (LLR's recreated ADV baseline): WRN-28-8
softplus, eps 8/255 with warm-up, K = 10, step 2/255.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/cifar10_at.py --workdir=runs/cifar10_at
    python train.py --config=configs/cifar10_at.py:quick --workdir=runs/cifar10_at_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.cifar10("pgd_at")
  return common.finish(config, arg)
