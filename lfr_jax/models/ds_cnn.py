"""Networks of the decision-surface paper (Yu et al., 2018).

"Interpreting Adversarial Robustness: A View from Decision Surface in Input
Space" trains a 2-conv + 2-FC network on MNIST and a 5-conv network with global
average pooling on CIFAR-10. The paper gives only these outlines, so:

- :class:`DSMnistCNN` is the classic Madry et al. MNIST-challenge network:
  conv(5x5, 32, SAME) relu maxpool2, conv(5x5, 64, SAME) relu maxpool2,
  flatten, fc(7*7*64 -> 1024) relu, fc(1024 -> classes). The flatten is in
  (H, W, C) order and the default init is the challenge's (truncated normal
  std 0.1 weights, 0.1 biases), so TensorFlow checkpoints load unchanged.
- :class:`DSCifarConvNet` is a plain VGG-style network: five 3x3 convs with
  widths (64, 128, 128, 256, 256) and strides (1, 2, 1, 2, 1), each followed by
  optional BatchNorm and the activation, then global average pooling and a
  linear layer. Padding is PyTorch's (1 on every side).

Example::

    import jax, jax.numpy as jnp
    from lfr_jax import models
    net = models.create("ds_mnist_cnn", jax.random.key(0))
    logits = net.logits_fn()(jnp.zeros((2, 28, 28, 1)))
    cifar = models.create("ds_cifar_convnet", jax.random.key(0))
    logits, cifar = cifar.apply(jnp.zeros((2, 32, 32, 3)), bn_mode="batch")
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from lfr_jax.models import layers

MNIST_INITS = ("madry", "torch")


class DSMnistCNN(nnx.Module):
  """Madry's MNIST-challenge CNN (2 conv + 2 FC) for 28x28 inputs."""

  def __init__(self, *, rngs: nnx.Rngs, num_classes: int = 10,
               in_channels: int = 1, activation: str = "relu",
               init: str = "madry", dtype: str = "float32",
               conv: str = "auto"):
    """Builds the network.

    Args:
      rngs: NNX random streams for initialization.
      num_classes: number of logits.
      in_channels: input channels.
      activation: "relu" or "softplus".
      init: "madry" (truncated normal std 0.1 weights, constant 0.1 biases, as
        in the challenge code) or "torch" (Kaiming-normal convs with zero bias
        and PyTorch-default linear layers, as in SmallCNN).
      dtype: compute dtype, "float32" or "bfloat16" (see ``layers``).
      conv: "auto", "custom_vjp" or "lax" (see ``layers.resolve_conv``).
    """
    if init not in MNIST_INITS:
      raise ValueError(f"unknown init {init!r}; valid: {list(MNIST_INITS)}")
    conv = layers.resolve_conv(conv)
    kinds = dict(rngs=rngs, dtype=dtype)
    if init == "madry":
      w = nnx.initializers.truncated_normal(stddev=0.1)
      b = nnx.initializers.constant(0.1)
      self.conv1 = layers.conv(in_channels, 32, 5, padding="SAME",
                               kernel_init=w, bias_init=b, impl=conv, **kinds)
      self.conv2 = layers.conv(32, 64, 5, padding="SAME", kernel_init=w,
                               bias_init=b, impl=conv, **kinds)
      linear = dict(kernel_init=w, bias_init=b, rngs=rngs,
                    dtype=layers.compute_dtype(dtype),
                    param_dtype=jax.numpy.float32)
      self.fc1 = nnx.Linear(7 * 7 * 64, 1024, **linear)
      # The classifier computes in float32 (see layers).
      self.fc2 = nnx.Linear(1024, num_classes,
                            **dict(linear, dtype=jax.numpy.float32))
    else:
      self.conv1 = layers.conv(in_channels, 32, 5, padding="SAME", impl=conv,
                               **kinds)
      self.conv2 = layers.conv(32, 64, 5, padding="SAME", impl=conv, **kinds)
      self.fc1 = layers.linear(7 * 7 * 64, 1024, **kinds)
      self.fc2 = layers.linear(1024, num_classes, rngs=rngs)  # float32
    self.dtype = layers.compute_dtype(dtype)
    self.act = layers.activation(activation)

  def __call__(self, x: jax.Array, *, train: bool = False,
               bn_mode: str = "running",
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Computes logits.

    Args:
      x: (N, 28, 28, C) inputs.
      train: unused (no dropout), accepted for the common interface.
      bn_mode: unused (no BatchNorm).
      dropout_key: unused.

    Returns:
      (N, num_classes) logits.
    """
    del train, bn_mode, dropout_key
    h = layers.max_pool_2x2(self.act(self.conv1(x.astype(self.dtype))))
    h = layers.max_pool_2x2(self.act(self.conv2(h)))
    h = h.reshape(h.shape[0], -1)  # (H, W, C) order, as in the TF original
    h = self.act(self.fc1(h))
    return layers.float32_logits(self.fc2(h))


class DSCifarConvNet(nnx.Module):
  """Five 3x3 conv layers, global average pooling and a linear classifier."""

  def __init__(self, *, rngs: nnx.Rngs, num_classes: int = 10,
               in_channels: int = 3,
               widths: Sequence[int] = (64, 128, 128, 256, 256),
               strides: Sequence[int] = (1, 2, 1, 2, 1),
               batch_norm: bool = True, activation: str = "relu",
               mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, dtype: str = "float32",
               conv: str = "auto"):
    """Builds the network.

    Args:
      rngs: NNX random streams for initialization.
      num_classes: number of logits.
      in_channels: input channels.
      widths: output channels of the five convs.
      strides: strides of the five convs.
      batch_norm: BatchNorm after each conv (the convs then have no bias).
      activation: "relu" or "softplus".
      mean: optional per-channel input mean, subtracted inside the model.
      std: optional per-channel input std, divided out inside the model.
      dtype: compute dtype, "float32" or "bfloat16" (see ``layers``).
      conv: "auto", "custom_vjp" or "lax" (see ``layers.resolve_conv``).
    """
    if len(widths) != len(strides):
      raise ValueError(f"widths {widths} and strides {strides} differ in length")
    conv = layers.resolve_conv(conv)
    self.convs = nnx.List()
    self.bns = nnx.List()
    prev = in_channels
    for width, stride in zip(widths, strides):
      self.convs.append(layers.conv(
          prev, width, 3, stride=stride, padding=((1, 1), (1, 1)),
          use_bias=not batch_norm, kernel_init=layers.kaiming_normal_fan_out(),
          rngs=rngs, dtype=dtype, impl=conv))
      if batch_norm:
        self.bns.append(layers.BatchNorm(width))
      prev = width
    self.fc = layers.linear(prev, num_classes, rngs=rngs)  # float32
    self.dtype = layers.compute_dtype(dtype)
    self.batch_norm = batch_norm
    self.act = layers.activation(activation)
    self.input_mean = layers.channel_stats(mean)
    self.input_std = layers.channel_stats(std)

  def __call__(self, x: jax.Array, *, train: bool = False,
               bn_mode: str = "running",
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Computes logits.

    Args:
      x: (N, H, W, C) inputs.
      train: unused (no dropout), accepted for the common interface.
      bn_mode: "batch", "running" or "frozen" (see ``layers.BatchNorm``).
      dropout_key: unused.

    Returns:
      (N, num_classes) logits.
    """
    del train, dropout_key
    h = layers.normalize_input(x, self.input_mean, self.input_std)
    h = h.astype(self.dtype)
    for i, conv in enumerate(self.convs):
      h = conv(h)
      if self.batch_norm:
        h = self.bns[i](h, bn_mode)
      h = self.act(h)
    return layers.float32_logits(layers.pooled_logits(h, self.fc))
