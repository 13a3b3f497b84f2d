"""LFR on MNIST with a softplus SmallCNN: the LFR preset, smooth activations.

LFR penalizes the input-gradient norm at the worst point of the ball, so its
inner ascent and its outer gradient both go through the Hessian of the loss in
input space. With ReLU that Hessian is zero almost everywhere (the network is
piecewise linear in x), so the regularizer sees only first-order information
inside each linear region. LLR (Qin et al. 2019, Sec. 5) trains a softplus
network for this reason: a curvature regularizer needs a network whose
curvature it can measure and change. Everything else is ``mnist_lfr``.

Run::

    python train.py --config=configs/mnist_lfr_softplus.py:curve --workdir=runs/lfr_softplus
"""

from configs import mnist_lfr


def get_config(arg=None):
  """Returns the config; ``arg`` is a variant of ``common.VARIANTS``."""
  config = mnist_lfr.get_config(arg)
  config.model.activation = "softplus"
  return config
