"""LFR on ImageNet at 4/255 with LLR's ImageNet protocol (ResNet-152 softplus,
batch 512). lam 0.02 and K = 2, step 2/255 are untuned. For TPU pods.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/imagenet_lfr.py --workdir=runs/imagenet_lfr
    # on every host of a pod slice; data from tfds (imagenet2012, array_record)
    python train.py --config=configs/imagenet_lfr.py:quick --workdir=runs/imagenet_lfr_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.imagenet("lfr", lfr={"lam": 0.02, "norm": "l1"})
  return common.finish(config, arg)
