"""TRADES on MNIST with beta = 1 (the LFR paper's "1/lambda = 1").

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/mnist_trades.py --workdir=runs/mnist_trades
    python train.py --config=configs/mnist_trades.py:quick --workdir=runs/mnist_trades_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.mnist("trades", trades={"beta": 1.0})
  return common.finish(config, arg)
