"""Models as pure functions of pytrees (Flax NNX, split/merge).

``create(name, key, **kwargs)`` builds a :class:`Network`: a pytree holding the
NNX graph definition (static), the parameters, and the other state (BatchNorm
running averages and clean-batch snapshots). ``Network.apply`` is a pure
function; ``Network.logits_fn`` closes over the parameters, so ``jax.grad``
with respect to them flows through any attack or regularizer that calls it.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax import models, regularizers

    net = models.create("small_cnn", jax.random.key(0))
    x = jnp.zeros((4, 28, 28, 1)); y = jnp.zeros((4,), jnp.int32)

    def penalty(params):
      logits_fn = net.replace(params=params).logits_fn()
      value, _ = regularizers.local_flatness(
          logits_fn, x, y, jax.random.key(1), eps=0.3, step_size=0.01,
          num_steps=5)
      return value.mean()

    grads = jax.grad(penalty)(net.params)   # double backprop
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx
from flax import struct

from lfr_jax.models import layers
from lfr_jax.models.ds_cnn import DSCifarConvNet, DSMnistCNN
from lfr_jax.models.layers import BN_MODES
from lfr_jax.models.resnet import ResNet, ResNet50, ResNet152
from lfr_jax.models.small_cnn import SmallCNN
from lfr_jax.models.wide_resnet import WideResNet

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {
    "small_cnn": SmallCNN,
    "ds_mnist_cnn": DSMnistCNN,
    "ds_cifar_convnet": DSCifarConvNet,
    "wide_resnet": WideResNet,
    "resnet": ResNet,
    "resnet50": ResNet50,
    "resnet152": ResNet152,
}


def register(name: str, constructor: Callable[..., nnx.Module]) -> None:
  """Registers a model constructor ``constructor(*, rngs, **kwargs)`` by name."""
  _REGISTRY[name] = constructor


def names() -> list[str]:
  """Returns the registered model names."""
  return sorted(_REGISTRY)


# Models made of residual blocks: ``remat=True`` checkpoints each block.
REMAT_MODELS = ("resnet", "resnet50", "resnet152", "wide_resnet")
# config.train.remat: "none", "blocks" (the model checkpoints each residual
# block) or "inner" (the objectives checkpoint the inner maximization's step).
REMAT = ("none", "blocks", "inner")


def kwargs_from_config(model_cfg, *, platform: str | None = None,
                       remat: str = "none") -> dict[str, Any]:
  """Keyword arguments of :func:`create`: a config's ``model`` section minus its name.

  Args:
    model_cfg: the ``model`` section.
    platform: the platform the model will run on; its "auto" convolution is
      resolved for it (``layers.resolve_conv``). None: the host's backend.
    remat: ``config.train.remat``; "blocks" adds ``remat=True`` (models of
      :data:`REMAT_MODELS` only).

  Returns:
    The keyword arguments.
  """
  kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
  if "conv" in kwargs:
    kwargs["conv"] = layers.resolve_conv(kwargs["conv"], platform)
  if remat == "blocks":
    kwargs["remat"] = True
  return kwargs


@struct.dataclass
class Network:
  """A model as data: static graph definition plus parameter and state pytrees.

  Attributes:
    graphdef: the NNX graph definition (static, hashable).
    params: ``nnx.State`` of ``nnx.Param`` leaves.
    state: ``nnx.State`` of everything else (BatchNorm statistics).
  """

  graphdef: Any = struct.field(pytree_node=False)
  params: Any
  state: Any

  def apply(self, x: jax.Array, *, train: bool = False,
            bn_mode: str = "running", dropout_key: jax.Array | None = None
            ) -> tuple[jax.Array, "Network"]:
    """Runs the model.

    Args:
      x: (N, H, W, C) inputs in [0, 1].
      train: enables dropout.
      bn_mode: "batch", "running" or "frozen" (see ``layers.BatchNorm``).
      dropout_key: PRNG key for dropout when ``train``.

    Returns:
      (logits of shape (N, classes), network with updated state).
    """
    if bn_mode not in BN_MODES:
      raise ValueError(f"unknown bn_mode {bn_mode!r}; valid: {list(BN_MODES)}")
    # copy=True: merge would otherwise share (and mutate) the input arrays.
    module = nnx.merge(self.graphdef, self.params, self.state, copy=True)
    logits = module(x, train=train, bn_mode=bn_mode, dropout_key=dropout_key)
    _, _, new_state = nnx.split(module, nnx.Param, ...)
    return logits, self.replace(state=new_state)

  def logits_fn(self, *, train: bool = False, bn_mode: str = "running",
                dropout_key: jax.Array | None = None
                ) -> Callable[[jax.Array], jax.Array]:
    """A ``x -> logits`` function for attacks and regularizers.

    State updates are discarded, so use ``bn_mode="running"`` (evaluation) or
    ``"frozen"`` (statistics of the last clean batch, LLR Appendix F).

    Args:
      train: enables dropout (same mask for every call of the returned fn).
      bn_mode: "running" or "frozen"; "batch" would make examples interact.
      dropout_key: PRNG key for dropout when ``train``.

    Returns:
      The logits function.
    """
    return lambda x: self.apply(x, train=train, bn_mode=bn_mode,
                                dropout_key=dropout_key)[0]


def create(name: str, key: jax.Array, **kwargs) -> Network:
  """Builds a registered model with fresh parameters.

  Args:
    name: registered model name, see :func:`names`.
    key: PRNG key for initialization.
    **kwargs: model-specific settings (e.g. ``dropout``, ``depth``).

  Returns:
    The :class:`Network`.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid: {names()}")
  module = _REGISTRY[name](rngs=nnx.Rngs(params=key), **kwargs)
  graphdef, params, state = nnx.split(module, nnx.Param, ...)
  return Network(graphdef=graphdef, params=params, state=state)
