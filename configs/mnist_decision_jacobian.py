"""Decision-Jacobian regularization on MNIST (decision-surface paper, Eq. 11).

Its network (``ds_mnist_cnn``: 2 conv + 2 FC) and c = 500 are from the paper's
Sec. 8.3. The paper leaves the norm open (l1, l2 or linf); l2 is used here. Its
optimizer is not given; this network comes from Madry et al.'s MNIST challenge,
whose code trains it with Adam at 1e-4, used here (SGD at lr 0.01 diverges with
c = 500). Epochs and schedule are the LFR paper's MNIST ones.

Run (full protocol; add ``:quick`` for a few CPU minutes, ``:smoke`` for tests)::

    python train.py --config=configs/mnist_decision_jacobian.py --workdir=runs/mnist_decision_jacobian
    python train.py --config=configs/mnist_decision_jacobian.py:quick --workdir=runs/mnist_decision_jacobian_quick
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is "", "quick" or "smoke"."""
  config = common.mnist("decision_jacobian", model="ds_mnist_cnn",
                        decision_jacobian={"c": 500.0, "norm": "l2"})
  config.inner.eps = 0.0
  config.optim.update({"name": "adam", "lr": 1e-4})
  return common.finish(config, arg)
