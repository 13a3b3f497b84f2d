"""LFR on MNIST with an eps warm-up: the ball grows linearly from 0.

At initialization the worst point of a 0.3 ball is far from the data, and the
gradient norm there says little about the loss near x. LLR (Qin et al. 2019,
Appendix F.2) grows eps linearly over the first 15 of 110 epochs; the same
fraction here is 15 of the 100 epochs, scaled with the schedule by the
``:repro`` / ``:curve`` variants (0.75 epochs of a 5-epoch ``:curve`` run).
LFR's objective and lambda are unchanged. Everything else is ``mnist_lfr``.

Run::

    python train.py --config=configs/mnist_lfr_warmup.py:curve --workdir=runs/lfr_warmup
"""

from configs import common


WARMUP_EPOCHS = 15.0  # of 100, LLR's 15 of 110 for CIFAR-10


def get_config(arg=None):
  """Returns the config; ``arg`` is a variant of ``common.VARIANTS``."""
  config = common.mnist("lfr", lfr={"lam": 0.02, "norm": "l1"})
  config.model.dropout = 0.0
  config.inner.warmup_epochs = WARMUP_EPOCHS
  return common.finish(config, arg)
