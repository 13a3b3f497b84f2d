"""Standard training of WRN-28-8 (softplus) on CIFAR-10 with LLR's schedule.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/cifar10_standard.py --workdir=runs/cifar10_standard
    python train.py --config=configs/cifar10_standard.py:quick --workdir=runs/cifar10_standard_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.cifar10("standard")
  return common.finish(config, arg)
