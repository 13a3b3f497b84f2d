"""PGD adversarial training (Madry et al.) of SmallCNN on MNIST, eps 0.3, K = 40.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/mnist_at.py --workdir=runs/mnist_at
    python train.py --config=configs/mnist_at.py:quick --workdir=runs/mnist_at_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.mnist("pgd_at")
  return common.finish(config, arg)
