"""The decision-surface paper's natural MNIST model: its CNN, cross-entropy only.

The baseline row of the paper's Table 1 (Sec. 8.3: "a four-layer neural
network model with two convolutional layers and two fully connected layers
... After natural training, the baseline model achieves 99.17% accuracy").
Network, optimizer and data are those of ``mnist_decision_jacobian`` (Adam
1e-3, batch 128), so the two rows differ only in the penalty. The paper's
model is converged: use ``:converge`` (early stopping on validation clean
accuracy) to compare with its cells.

Run::

    python train.py --config=configs/mnist_ds_natural.py:converge --workdir=runs/ds_natural
"""

from configs import common


def get_config(arg=None):
  """Returns the config; ``arg`` is a variant of ``common.VARIANTS``."""
  config = common.mnist("standard", model="ds_mnist_cnn")
  config.inner.eps = 0.0
  config.optim.update({"name": "adam", "lr": 1e-3})
  return common.finish(config, arg)
