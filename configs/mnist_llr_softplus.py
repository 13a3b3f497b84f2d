"""LLR on MNIST with a softplus SmallCNN: the ``mnist_llr`` preset, smooth.

LLR's regularizer compares the loss with its first-order Taylor expansion, and
its Prop. 4.1 assumes a differentiable loss; the paper therefore trains
softplus networks only (Sec. 5). With ReLU the loss is piecewise linear in x
up to the softmax, so gamma measures mostly the kinks between linear pieces.
Everything else (lam, mu and the eps warm-up scaled to eps 0.3) is
``mnist_llr``.

Run::

    python train.py --config=configs/mnist_llr_softplus.py:repro --workdir=runs/llr_softplus_repro
"""

from configs import mnist_llr


def get_config(arg=None):
  """Returns the config; ``arg`` is a variant of ``common.VARIANTS``."""
  config = mnist_llr.get_config(arg)
  config.model.activation = "softplus"
  return config
