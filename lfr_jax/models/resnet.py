"""ImageNet ResNets with bottleneck blocks (v1.5, as in torchvision).

The stem is conv7x7/2 (64 channels) - BN - act - maxpool3x3/2; then four stages
of bottleneck blocks (1x1 reduce, 3x3, 1x1 expand by 4, each followed by BN)
with widths 64, 128, 256, 512 and stride 2 at the start of every stage but the
first. As in v1.5 the stride sits on the 3x3 conv, not the first 1x1. Blocks
that change the shape use a 1x1 conv + BN projection shortcut. Global average
pooling and a linear layer give the logits. Convs have no bias and torchvision's
init (Kaiming normal, fan_out); padding is PyTorch's, so torchvision weights map
one to one. ``activation="softplus"`` gives LLR's smooth ImageNet model.
``remat=True`` recomputes each block's activations in the backward pass
(``jax.checkpoint`` around every block) instead of keeping them.

ResNet-50 has 25.56M parameters, ResNet-152 60.19M.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax import models
    net = models.create("resnet50", jax.random.key(0), activation="softplus")
    tiny = models.create("resnet", jax.random.key(0), stage_sizes=(1, 1),
                         width=8, num_classes=10)
    logits, tiny = tiny.apply(jnp.zeros((2, 32, 32, 3)), bn_mode="batch")
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lfr_jax.models import layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, *,
          rngs: nnx.Rngs, dtype: str, impl: str) -> nnx.Conv:
  pad = kernel // 2
  return layers.conv(in_ch, out_ch, kernel, stride=stride,
                     padding=((pad, pad), (pad, pad)), use_bias=False,
                     kernel_init=layers.kaiming_normal_fan_out(), rngs=rngs,
                     dtype=dtype, impl=impl)


class Bottleneck(nnx.Module):
  """conv1x1-BN-act, conv3x3(stride)-BN-act, conv1x1-BN, add shortcut, act."""

  expansion = 4

  def __init__(self, in_ch: int, planes: int, stride: int, *,
               act: Callable[[jax.Array], jax.Array], zero_init_residual: bool,
               rngs: nnx.Rngs, dtype: str = "float32",
               conv: str = "custom_vjp"):
    out_ch = planes * self.expansion
    kinds = dict(rngs=rngs, dtype=dtype, impl=conv)
    self.conv1 = _conv(in_ch, planes, 1, **kinds)
    self.bn1 = layers.BatchNorm(planes)
    self.conv2 = _conv(planes, planes, 3, stride, **kinds)
    self.bn2 = layers.BatchNorm(planes)
    self.conv3 = _conv(planes, out_ch, 1, **kinds)
    self.bn3 = layers.BatchNorm(out_ch)
    if zero_init_residual:
      # Each block starts as the identity (Goyal et al., 2017).
      self.bn3.scale[...] = jnp.zeros_like(self.bn3.scale[...])
    if stride != 1 or in_ch != out_ch:
      self.down_conv = _conv(in_ch, out_ch, 1, stride, **kinds)
      self.down_bn = layers.BatchNorm(out_ch)
    else:
      self.down_conv = None
      self.down_bn = None
    self.act = act

  def __call__(self, x: jax.Array, bn_mode: str) -> jax.Array:
    h = self.act(self.bn1(self.conv1(x), bn_mode))
    h = self.act(self.bn2(self.conv2(h), bn_mode))
    h = self.bn3(self.conv3(h), bn_mode)
    skip = x if self.down_conv is None else self.down_bn(
        self.down_conv(x), bn_mode)
    return self.act(h + skip)


class ResNet(nnx.Module):
  """Bottleneck ResNet with ``stage_sizes[i]`` blocks in stage ``i``."""

  def __init__(self, stage_sizes: Sequence[int], *, rngs: nnx.Rngs,
               num_classes: int = 1000, in_channels: int = 3, width: int = 64,
               activation: str = "relu", zero_init_residual: bool = False,
               mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, dtype: str = "float32",
               conv: str = "auto", remat: bool = False):
    """Builds the network.

    Args:
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
      rngs: NNX random streams for initialization.
      num_classes: number of logits.
      in_channels: input channels.
      width: stem width and bottleneck width of the first stage (doubled per
        stage; the block output is 4x this).
      activation: "relu" or "softplus" (LLR uses softplus).
      zero_init_residual: initialize the last BN scale of each block to zero.
      mean: optional per-channel input mean, subtracted inside the model
        (e.g. ``IMAGENET_MEAN``).
      std: optional per-channel input std (e.g. ``IMAGENET_STD``).
      dtype: compute dtype, "float32" or "bfloat16" (see ``layers``).
      conv: "auto", "custom_vjp" or "lax" (see ``layers.resolve_conv``).
      remat: recompute each block in the backward pass (``jax.checkpoint``).
    """
    if not stage_sizes or any(s < 1 for s in stage_sizes):
      raise ValueError(f"stage_sizes must be positive, got {stage_sizes}")
    act = layers.activation(activation)
    self.dtype = layers.compute_dtype(dtype)
    conv = layers.resolve_conv(conv)
    self.conv1 = _conv(in_channels, width, 7, 2, rngs=rngs, dtype=dtype,
                       impl=conv)
    self.bn1 = layers.BatchNorm(width)
    self.blocks = nnx.List()
    prev = width
    for stage, size in enumerate(stage_sizes):
      planes = width * 2 ** stage
      for i in range(size):
        stride = 2 if stage > 0 and i == 0 else 1
        self.blocks.append(Bottleneck(
            prev, planes, stride, act=act,
            zero_init_residual=zero_init_residual, rngs=rngs, dtype=dtype,
            conv=conv))
        prev = planes * Bottleneck.expansion
    self.fc = layers.linear(prev, num_classes, rngs=rngs)  # float32
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
      train: unused (no dropout), accepted for the common interface.
      bn_mode: "batch", "running" or "frozen" (see ``layers.BatchNorm``).
      dropout_key: unused.

    Returns:
      (N, num_classes) logits.
    """
    del train, dropout_key
    h = layers.normalize_input(x, self.input_mean, self.input_std)
    h = self.conv1(h.astype(self.dtype))
    h = layers.max_pool(self.act(self.bn1(h, bn_mode)), 3, 2, 1)
    for block in self.blocks:
      if self.remat:
        h = nnx.remat(lambda b, h: b(h, bn_mode))(block, h)
      else:
        h = block(h, bn_mode)
    return layers.float32_logits(layers.pooled_logits(h, self.fc))


class ResNet50(ResNet):
  """ResNet-50: stages (3, 4, 6, 3)."""

  def __init__(self, *, rngs: nnx.Rngs, **kwargs):
    """Builds ResNet-50; ``kwargs`` as for :class:`ResNet`."""
    super().__init__((3, 4, 6, 3), rngs=rngs, **kwargs)


class ResNet152(ResNet):
  """ResNet-152: stages (3, 8, 36, 3)."""

  def __init__(self, *, rngs: nnx.Rngs, **kwargs):
    """Builds ResNet-152; ``kwargs`` as for :class:`ResNet`."""
    super().__init__((3, 8, 36, 3), rngs=rngs, **kwargs)
