"""TRADES on CIFAR-10 with beta = 6 (TRADES' CIFAR-10 setting), LLR's schedule.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/cifar10_trades.py --workdir=runs/cifar10_trades
    python train.py --config=configs/cifar10_trades.py:quick --workdir=runs/cifar10_trades_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.cifar10("trades", trades={"beta": 6.0})
  return common.finish(config, arg)
