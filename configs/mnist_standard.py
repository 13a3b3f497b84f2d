"""Standard (cross-entropy) training of SmallCNN on MNIST, the LFR paper's baseline.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/mnist_standard.py --workdir=runs/mnist_standard
    python train.py --config=configs/mnist_standard.py:quick --workdir=runs/mnist_standard_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.mnist("standard")
  return common.finish(config, arg)
