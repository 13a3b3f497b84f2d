"""Layers shared by the models: convolutions, PyTorch-style inits, BatchNorm modes, dtypes.

Every model takes ``dtype`` ("float32" or "bfloat16"), the dtype its
convolutions, matmuls and activations compute in. Parameters stay float32
(``param_dtype``), BatchNorm normalizes and keeps its statistics in float32,
and the classifier (the last linear layer) computes the logits in float32
from float32 features (:func:`float32_logits` guards the result), so losses
and everything differentiated with respect to the input stay float32.

Every model also takes ``conv``: "custom_vjp" (the grad-of-grad-safe
:func:`~lfr_jax.models.conv.fast_conv_general_dilated`, tuned for XLA:CPU),
"lax" (``lax.conv_general_dilated``) or "auto" (:func:`resolve_conv`: by
platform).

BatchNorm takes one of three modes, so that LLR's rule (Appendix F: statistics
taken at the clean point) is a pure function of the model state:

- ``"batch"``: normalize with this batch's statistics, update the running
  averages and record the statistics in a snapshot;
- ``"running"``: normalize with the running averages (evaluation);
- ``"frozen"``: normalize with the snapshot recorded by the last ``"batch"``
  call, i.e. the clean batch's statistics, without updating anything.

Example::

    import jax.numpy as jnp
    from flax import nnx
    from lfr_jax.models import layers
    conv = layers.conv(3, 16, 3, rngs=nnx.Rngs(0), dtype="bfloat16")
    fc = layers.linear(16, 10, rngs=nnx.Rngs(0), dtype="bfloat16")
    h = conv(jnp.zeros((2, 8, 8, 3)))                   # bfloat16
    logits = layers.float32_logits(layers.pooled_logits(h, fc))  # (2, 10) f32
    layers.resolve_conv("auto", "tpu")                 # "lax"
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from lfr_jax.models.conv import fast_conv_general_dilated

BN_MODES = ("batch", "running", "frozen")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONVS = {"custom_vjp": fast_conv_general_dilated,
         "lax": lax.conv_general_dilated}
# The convolution "auto" picks per platform. CPU: the custom VJP, 3-50x faster
# under grad-of-grad on XLA:CPU (docs/BENCHMARKS.md). TPU: lax, from the
# compiled TPU plans of docs/SCALING.md (the custom VJP's explicit kernel
# flips and transposes buy XLA:TPU nothing). GPU: not measured yet; the custom
# VJP, as before the choice existed (``model.conv=lax`` picks the other).
AUTO_CONV = {"cpu": "custom_vjp", "gpu": "custom_vjp", "tpu": "lax"}


def compute_dtype(name: str):
  """The jnp dtype of a model's ``dtype`` setting ("float32" or "bfloat16")."""
  if name not in DTYPES:
    raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
  return DTYPES[name]


def resolve_conv(name: str, platform: str | None = None) -> str:
  """The convolution a model's ``conv`` setting names on ``platform``.

  Args:
    name: "auto", "custom_vjp" or "lax".
    platform: "cpu", "gpu" or "tpu"; None for the host's default backend.

  Returns:
    "custom_vjp" or "lax" ("auto" resolved by :data:`AUTO_CONV`).
  """
  if name == "auto":
    return AUTO_CONV.get(platform or jax.default_backend(), "custom_vjp")
  if name not in CONVS:
    raise ValueError(f"unknown conv {name!r}; valid: auto, {', '.join(CONVS)}")
  return name


def conv_function(name: str):
  """The ``conv_general_dilated`` function of a ``conv`` setting (see :func:`resolve_conv`)."""
  return CONVS[resolve_conv(name)]


def float32_logits(logits: jax.Array) -> jax.Array:
  """Logits in float32 (at least), whatever the compute dtype."""
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


class BatchSnapshot(nnx.Variable):
  """Batch statistics of the last clean ("batch" mode) forward pass."""


def kaiming_normal_fan_in():
  """PyTorch's ``kaiming_normal_`` (fan_in, ReLU gain): N(0, 2/fan_in)."""
  return nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def kaiming_normal_fan_out():
  """PyTorch's ``kaiming_normal_(mode="fan_out")``: N(0, 2/fan_out).

  The init of torchvision's ResNet and of the TRADES/LLR WideResNet, whose
  ``normal_(0, sqrt(2 / (k * k * out_channels)))`` is the same distribution.
  """
  return nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_init():
  """PyTorch's default Linear/Conv weight init: U(+-1/sqrt(fan_in))."""
  return nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  """PyTorch's default bias init for a layer with ``fan_in`` inputs."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(in_ch: int, out_ch: int, kernel: int, *, rngs: nnx.Rngs,
         stride: int = 1, padding="VALID", use_bias: bool = True,
         kernel_init=None, bias_init=None, dtype: str = "float32",
         impl: str = "custom_vjp") -> nnx.Conv:
  """An ``nnx.Conv`` with float32 parameters and the chosen convolution.

  Args:
    in_ch: input channels.
    out_ch: output channels.
    kernel: square kernel size.
    rngs: NNX random streams for initialization.
    stride: spatial stride.
    padding: "VALID", "SAME" or explicit pairs.
    use_bias: whether to add a bias.
    kernel_init: weight initializer (default: Kaiming normal, fan_in).
    bias_init: bias initializer (default: zeros).
    dtype: compute dtype, "float32" or "bfloat16".
    impl: "custom_vjp" (:func:`fast_conv_general_dilated`), "lax" or "auto"
      (see :func:`resolve_conv`).

  Returns:
    The convolution module.
  """
  return nnx.Conv(
      in_ch, out_ch, (kernel, kernel), strides=stride, padding=padding,
      use_bias=use_bias, kernel_init=kernel_init or kaiming_normal_fan_in(),
      bias_init=bias_init or nnx.initializers.zeros_init(),
      conv_general_dilated=conv_function(impl), dtype=compute_dtype(dtype),
      param_dtype=jnp.float32, rngs=rngs)


def linear(in_f: int, out_f: int, *, rngs: nnx.Rngs, zero: bool = False,
           dtype: str = "float32") -> nnx.Linear:
  """A Linear layer with PyTorch's default init (or all zeros).

  Args:
    in_f: input features.
    out_f: output features.
    rngs: NNX random streams.
    zero: initialize weight and bias to zero (TRADES' fc3).
    dtype: compute dtype, "float32" or "bfloat16"; parameters stay float32.

  Returns:
    The linear module.
  """
  kinds = dict(dtype=compute_dtype(dtype), param_dtype=jnp.float32)
  if zero:
    return nnx.Linear(in_f, out_f, kernel_init=nnx.initializers.zeros_init(),
                      bias_init=nnx.initializers.zeros_init(), rngs=rngs,
                      **kinds)
  return nnx.Linear(in_f, out_f, kernel_init=torch_linear_init(),
                    bias_init=torch_bias_init(in_f), rngs=rngs, **kinds)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2/stride-2 max pool as a reshape-max.

  A reshape-max differentiates to elementwise masks at every order, where
  ``reduce_window``'s ``select_and_scatter`` is slow under grad-of-grad on CPU.
  """
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def max_pool(x: jax.Array, window: int = 3, stride: int = 2,
             padding: int = 1) -> jax.Array:
  """Square max pool over (N, H, W, C) with PyTorch's padding semantics.

  Computed as an elementwise max over the ``window**2`` strided slices of the
  (-inf padded) input, so that, like :func:`max_pool_2x2`, every derivative is
  an elementwise mask rather than ``select_and_scatter``. At ties the gradient
  is shared between the tied inputs (any split is a valid subgradient).

  Args:
    x: (N, H, W, C) activations.
    window: pooling window size.
    stride: spatial stride.
    padding: symmetric padding per side, filled with -inf (never selected).

  Returns:
    (N, (H + 2p - window) // stride + 1, (W + 2p - window) // stride + 1, C).
  """
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                constant_values=-jnp.inf)
  _, h, w, _ = x.shape
  out_h = (h - window) // stride + 1
  out_w = (w - window) // stride + 1
  out = None
  for i in range(window):
    for j in range(window):
      tap = x[:, i:i + stride * (out_h - 1) + 1:stride,
              j:j + stride * (out_w - 1) + 1:stride, :]
      out = tap if out is None else jnp.maximum(out, tap)
  return out


def pooled_logits(features: jax.Array, classifier: nnx.Linear) -> jax.Array:
  """Global average pooling over H and W, then the linear classifier.

  Averaging over every spatial position (rather than a fixed pooling window)
  makes the head work for any input size; on the reference input sizes it
  equals the references' final average pool.

  Args:
    features: (N, H, W, C) activations of the last block.
    classifier: the linear layer from C features to the logits.

  Returns:
    (N, classes) logits.
  """
  # Averaged in float32 (whatever the compute dtype): the classifier is
  # float32, so the logits are computed, not just stored, in float32.
  features = features.astype(jnp.promote_types(features.dtype, jnp.float32))
  return classifier(features.mean(axis=(1, 2)))


def normalize_input(x: jax.Array, mean, std) -> jax.Array:
  """Per-channel ``(x - mean) / std``, or ``x`` unchanged when both are None.

  Keeping the normalization inside the model lets attacks and regularizers
  work on [0, 1] inputs, where the epsilon balls are defined.

  Args:
    x: (N, H, W, C) inputs.
    mean: per-channel means (length C) or None.
    std: per-channel standard deviations (length C) or None.

  Returns:
    The normalized inputs.
  """
  if mean is None and std is None:
    return x
  if mean is not None:
    x = x - jnp.asarray(mean, x.dtype)
  if std is not None:
    x = x / jnp.asarray(std, x.dtype)
  return x


def dropout(x: jax.Array, rate: float, key: jax.Array | None,
            train: bool) -> jax.Array:
  """Inverted dropout; the identity unless ``train`` and ``rate > 0``.

  Args:
    x: activations.
    rate: drop probability.
    key: PRNG key, required when the mask is applied.
    train: whether to apply the mask.

  Returns:
    Activations with dropout applied.
  """
  if not train or rate <= 0.0:
    return x
  if key is None:
    raise ValueError("dropout in train mode needs a dropout_key.")
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


class BatchNorm(nnx.Module):
  """BatchNorm over all but the last axis, with batch/running/frozen modes."""

  def __init__(self, num_features: int, *, momentum: float = 0.9,
               epsilon: float = 1e-5):
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.snap_mean = BatchSnapshot(jnp.zeros((num_features,), jnp.float32))
    self.snap_var = BatchSnapshot(jnp.ones((num_features,), jnp.float32))
    self.momentum = momentum
    self.epsilon = epsilon

  def __call__(self, x: jax.Array, mode: str) -> jax.Array:
    # Statistics and normalization in float32 whatever the compute dtype; the
    # result goes back to it.
    dtype = x.dtype
    x = x.astype(jnp.promote_types(dtype, jnp.float32))
    axes = tuple(range(x.ndim - 1))
    if mode == "batch":
      mean = x.mean(axes)
      var = jnp.square(x - mean).mean(axes)
      momentum = self.momentum
      self.mean[...] = (momentum * self.mean[...]
                        + (1 - momentum) * jax.lax.stop_gradient(mean))
      self.var[...] = (momentum * self.var[...]
                       + (1 - momentum) * jax.lax.stop_gradient(var))
      self.snap_mean[...] = mean
      self.snap_var[...] = var
    elif mode == "running":
      mean, var = self.mean[...], self.var[...]
    elif mode == "frozen":
      mean, var = self.snap_mean[...], self.snap_var[...]
    else:
      raise ValueError(f"unknown BatchNorm mode {mode!r}; valid: {BN_MODES}")
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * self.scale[...] + self.bias[...]).astype(dtype)


def channel_stats(values) -> tuple[float, ...] | None:
  """Per-channel input mean/std as a hashable tuple (static module data), or None.

  None and the empty tuple both mean "no such normalization" (configs hold
  plain values, so they write ``()``).
  """
  if values is None or len(values) == 0:
    return None
  return tuple(float(v) for v in values)


ACTIVATIONS = {"relu": jax.nn.relu, "softplus": jax.nn.softplus}


def activation(name: str):
  """Looks up an activation by name ("relu" or "softplus").

  Args:
    name: activation name. LLR uses softplus so the loss is smooth.

  Returns:
    The elementwise function.
  """
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]
