"""Input-gradient l1 penalty on MNIST: LFR at eps = 0 (LFR Theorem 2), lam 0.02.

The penalty is taken at the clean point, so ``inner`` is unused in training;
evaluation still attacks at eps 0.3.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/mnist_gradient_norm.py --workdir=runs/mnist_gradient_norm
    python train.py --config=configs/mnist_gradient_norm.py:quick --workdir=runs/mnist_gradient_norm_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.mnist(
      "gradient_norm", gradient_norm={"lam": 0.02, "norm": "l1"})
  config.inner.eps = 0.0
  return common.finish(config, arg)
