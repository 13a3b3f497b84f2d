"""Local Flatness Regularization on MNIST: the LFR paper's Table 1 setup (lam 0.02).

The authors' own settings, as recorded beside their published model: SmallCNN
without dropout (``model.dropout`` 0; the TRADES SmallCNN's default is 0.5),
eps 0.3, K = 40 sign steps of 0.01, SGD lr 0.01 momentum 0.9 (x0.1 at epoch
90), batch 128, 100 epochs.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:repro`` or
``:curve`` for the reduced protocols of docs/RESULTS.md, ``:smoke`` for tests)::

    python train.py --config=configs/mnist_lfr.py --workdir=runs/mnist_lfr
    python train.py --config=configs/mnist_lfr.py:quick --workdir=runs/mnist_lfr_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is a variant of ``common.VARIANTS``."""
  config = common.mnist("lfr", lfr={"lam": 0.02, "norm": "l1"})
  config.model.dropout = 0.0
  return common.finish(config, arg)
