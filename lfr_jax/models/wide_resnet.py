"""Pre-activation WideResNet (Zagoruyko & Komodakis, 2016) as in TRADES / LLR.

WRN-``depth``-``width`` has a 3x3 stem conv to 16 channels and three groups of
``(depth - 4) / 6`` basic blocks with widths ``16 * width``, ``32 * width`` and
``64 * width`` (strides 1, 2, 2). Each block is BN-act-conv3x3-BN-act-
[dropout]-conv3x3 plus a shortcut; when the block changes the shape, the
shortcut is a 1x1 conv applied to the block's pre-activated input (exactly as
in the TRADES code, so its PyTorch checkpoints map one to one). A final BN-act,
global average pooling and a linear layer give the logits. Convs have no bias
and a N(0, 2 / fan_out) init; the linear layer has PyTorch's default weight
init and a zero bias. Padding is PyTorch's (1 on each side of a 3x3 conv), so
stride-2 convs sample the same pixels as the reference implementation.

WRN-28-10 has 36.5M parameters; WRN-34-10 (TRADES) 46.2M. ``remat=True``
recomputes each block's activations in the backward pass (``jax.checkpoint``
around every block) instead of keeping them.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax import models
    net = models.create("wide_resnet", jax.random.key(0), depth=28, width=10,
                        activation="softplus")
    logits, net = net.apply(jnp.zeros((2, 32, 32, 3)), bn_mode="batch")
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from flax import nnx

from lfr_jax.models import layers

_PAD3 = ((1, 1), (1, 1))


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, *,
          rngs: nnx.Rngs, dtype: str = "float32",
          impl: str = "custom_vjp") -> nnx.Conv:
  return layers.conv(in_ch, out_ch, kernel, stride=stride,
                     padding=_PAD3 if kernel == 3 else "VALID", use_bias=False,
                     kernel_init=layers.kaiming_normal_fan_out(), rngs=rngs,
                     dtype=dtype, impl=impl)


class WideBasicBlock(nnx.Module):
  """BN-act-conv3x3-BN-act-[dropout]-conv3x3 with an identity or 1x1 shortcut."""

  def __init__(self, in_ch: int, out_ch: int, stride: int, *,
               act: Callable[[jax.Array], jax.Array], dropout: float,
               rngs: nnx.Rngs, dtype: str = "float32",
               conv: str = "custom_vjp"):
    kinds = dict(rngs=rngs, dtype=dtype, impl=conv)
    self.bn1 = layers.BatchNorm(in_ch)
    self.conv1 = _conv(in_ch, out_ch, 3, stride, **kinds)
    self.bn2 = layers.BatchNorm(out_ch)
    self.conv2 = _conv(out_ch, out_ch, 3, 1, **kinds)
    if in_ch != out_ch or stride != 1:
      self.shortcut = _conv(in_ch, out_ch, 1, stride, **kinds)
    else:
      self.shortcut = None
    self.act = act
    self.dropout_rate = dropout

  def __call__(self, x: jax.Array, bn_mode: str, train: bool,
               dropout_key: jax.Array | None) -> jax.Array:
    pre = self.act(self.bn1(x, bn_mode))
    # TRADES' WRN feeds the pre-activation to the projection shortcut but keeps
    # the raw input on the identity path.
    skip = x if self.shortcut is None else self.shortcut(pre)
    h = self.act(self.bn2(self.conv1(pre), bn_mode))
    h = layers.dropout(h, self.dropout_rate, dropout_key, train)
    return skip + self.conv2(h)


class WideResNet(nnx.Module):
  """Pre-activation WideResNet-``depth``-``width``."""

  def __init__(self, *, rngs: nnx.Rngs, depth: int = 28, width: int = 10,
               num_classes: int = 10, in_channels: int = 3,
               activation: str = "relu", dropout: float = 0.0,
               mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, dtype: str = "float32",
               conv: str = "auto", remat: bool = False):
    """Builds the network.

    Args:
      rngs: NNX random streams for initialization.
      depth: total depth; ``(depth - 4)`` must be divisible by 6.
      width: widening factor k (group widths 16k, 32k, 64k).
      num_classes: number of logits.
      in_channels: input channels.
      activation: "relu" or "softplus" (LLR uses softplus).
      dropout: dropout rate between the two convs of each block.
      mean: optional per-channel input mean, subtracted inside the model.
      std: optional per-channel input std, divided out inside the model.
      dtype: compute dtype, "float32" or "bfloat16" (see ``layers``).
      conv: "auto", "custom_vjp" or "lax" (see ``layers.resolve_conv``).
      remat: recompute each block in the backward pass (``jax.checkpoint``).
    """
    if depth < 4 or (depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
    blocks_per_group = (depth - 4) // 6
    act = layers.activation(activation)
    self.dtype = layers.compute_dtype(dtype)
    conv = layers.resolve_conv(conv)
    widths = (16, 16 * width, 32 * width, 64 * width)
    self.conv1 = _conv(in_channels, widths[0], 3, 1, rngs=rngs, dtype=dtype,
                       impl=conv)
    self.blocks = nnx.List()
    prev = widths[0]
    for group, group_stride in enumerate((1, 2, 2)):
      for i in range(blocks_per_group):
        self.blocks.append(WideBasicBlock(
            prev, widths[group + 1], group_stride if i == 0 else 1, act=act,
            dropout=dropout, rngs=rngs, dtype=dtype, conv=conv))
        prev = widths[group + 1]
    self.bn = layers.BatchNorm(prev)
    self.fc = nnx.Linear(prev, num_classes,
                         kernel_init=layers.torch_linear_init(),
                         bias_init=nnx.initializers.zeros_init(), rngs=rngs,
                         dtype=jax.numpy.float32)  # float32 classifier
    self.act = act
    self.remat = remat
    self.input_mean = layers.channel_stats(mean)
    self.input_std = layers.channel_stats(std)

  def __call__(self, x: jax.Array, *, train: bool = False,
               bn_mode: str = "running",
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Computes logits.

    Args:
      x: (N, H, W, C) inputs.
      train: enables dropout.
      bn_mode: "batch", "running" or "frozen" (see ``layers.BatchNorm``).
      dropout_key: PRNG key for dropout when ``train``.

    Returns:
      (N, num_classes) logits.
    """
    h = layers.normalize_input(x, self.input_mean, self.input_std)
    h = self.conv1(h.astype(self.dtype))
    for i, block in enumerate(self.blocks):
      key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
      if self.remat:
        h = nnx.remat(lambda b, h, k: b(h, bn_mode, train, k))(block, h, key)
      else:
        h = block(h, bn_mode, train, key)
    h = self.act(self.bn(h, bn_mode))
    # Global mean = TRADES' avg_pool2d(8) on 32x32 inputs, any size otherwise.
    return layers.float32_logits(layers.pooled_logits(h, self.fc))
