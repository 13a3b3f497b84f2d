"""Local Flatness Regularization on MNIST: the LFR paper's Table 1 setup (lam 0.02).

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/mnist_lfr.py --workdir=runs/mnist_lfr
    python train.py --config=configs/mnist_lfr.py:quick --workdir=runs/mnist_lfr_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.mnist("lfr", lfr={"lam": 0.02, "norm": "l1"})
  return common.finish(config, arg)
