"""SmallCNN: the TRADES / LFR MNIST network (4 conv + 3 FC).

conv(1->32,3) relu conv(32->32,3) relu maxpool2 conv(32->64,3) relu
conv(64->64,3) relu maxpool2 flatten fc(1024->200) relu dropout fc(200->200)
relu fc(200->10). Initialization follows TRADES: Kaiming-normal convs with zero
bias, PyTorch-default linear layers, and fc3 all zeros. The flatten is in
(C, H, W) order so that PyTorch state_dicts load without permuting fc1.

Example::

    import jax
    from lfr_jax import models
    net = models.create("small_cnn", jax.random.key(0), dropout=0.5)
    logits = net.logits_fn()(jax.numpy.zeros((2, 28, 28, 1)))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lfr_jax.models import layers


class SmallCNN(nnx.Module):
  """The TRADES SmallCNN for 28x28x1 inputs."""

  def __init__(self, *, rngs: nnx.Rngs, num_classes: int = 10,
               in_channels: int = 1, dropout: float = 0.5,
               activation: str = "relu", dtype: str = "float32",
               conv: str = "auto"):
    """Builds the network.

    Args:
      rngs: NNX random streams for initialization.
      num_classes: number of logits.
      in_channels: input channels.
      dropout: dropout rate after fc1.
      activation: "relu" or "softplus".
      dtype: compute dtype, "float32" or "bfloat16" (see ``layers``).
      conv: "auto", "custom_vjp" or "lax" (see ``layers.resolve_conv``).
    """
    conv = layers.resolve_conv(conv)
    kinds = dict(rngs=rngs, dtype=dtype)
    self.conv1 = layers.conv(in_channels, 32, 3, impl=conv, **kinds)
    self.conv2 = layers.conv(32, 32, 3, impl=conv, **kinds)
    self.conv3 = layers.conv(32, 64, 3, impl=conv, **kinds)
    self.conv4 = layers.conv(64, 64, 3, impl=conv, **kinds)
    self.fc1 = layers.linear(64 * 4 * 4, 200, **kinds)
    self.fc2 = layers.linear(200, 200, **kinds)
    # The classifier computes in float32 (see layers).
    self.fc3 = layers.linear(200, num_classes, zero=True, rngs=rngs)
    self.dtype = layers.compute_dtype(dtype)
    self.dropout_rate = dropout
    self.act = layers.activation(activation)

  def __call__(self, x: jax.Array, *, train: bool = False,
               bn_mode: str = "running",
               dropout_key: jax.Array | None = None) -> jax.Array:
    del bn_mode  # no BatchNorm here
    act = self.act
    h = act(self.conv1(x.astype(self.dtype)))
    h = layers.max_pool_2x2(act(self.conv2(h)))
    h = act(self.conv3(h))
    h = layers.max_pool_2x2(act(self.conv4(h)))
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)
    h = act(self.fc1(h))
    h = layers.dropout(h, self.dropout_rate, dropout_key, train)
    h = act(self.fc2(h))
    return layers.float32_logits(self.fc3(h))
