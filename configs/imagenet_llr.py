"""LLR on ImageNet at 4/255 (LLR Appendix F.2): ResNet-152 softplus, lam 3,
mu 6, nominal weight 3, 2 Adam steps of size 0.1, l2 1e-4, batch 512. For TPU pods.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/imagenet_llr.py --workdir=runs/imagenet_llr
    # on every host of a pod slice; data from tfds (imagenet2012, array_record)
    python train.py --config=configs/imagenet_llr.py:quick --workdir=runs/imagenet_llr_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.imagenet(
      "llr", llr={"lam": 3.0, "mu": 6.0, "nominal_weight": 3.0})
  config.inner.step_size = 0.1
  return common.finish(config, arg)
