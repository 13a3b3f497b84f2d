"""PyTorch interop: load TRADES-style checkpoints into lfr_jax models and back.

Supported models and their PyTorch key layouts:

- ``"small_cnn"``: the TRADES SmallCNN (``feature_extractor.conv1.weight``,
  ..., ``classifier.fc3.bias``);
- ``"wide_resnet"``: the TRADES / standard WideResNet (``conv1.weight``,
  ``block1.layer.0.bn1.weight``, ``block1.layer.0.conv1.weight``,
  ``block2.layer.0.convShortcut.weight``, ..., ``bn1.running_var``,
  ``fc.weight``, ``fc.bias``); the weights of TRADES' unused ``sub_block1``
  are accepted and dropped.

Layouts are converted per layer type: conv weights OIHW <-> HWIO, linear
weights (out, in) <-> (in, out), BatchNorm ``weight``/``bias``/
``running_mean``/``running_var`` <-> ``scale``/``bias``/``mean``/``var`` (the
"frozen"-mode snapshot is set to the running statistics; ``num_batches_tracked``
is accepted and ignored on import, written as 0 on export). SmallCNN flattens
in PyTorch's (C, H, W) order, so ``fc1`` needs no permutation. Inputs stay NHWC
in JAX where PyTorch takes NCHW.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax import interop, models

    net = models.create("small_cnn", jax.random.key(0))
    sd = interop.export_torch_state_dict(net, "small_cnn")  # {key: np.ndarray}
    assert sd["feature_extractor.conv1.weight"].shape == (32, 1, 3, 3)  # OIHW
    net = interop.from_torch("small_cnn", sd)
    logits = net.logits_fn()(jnp.zeros((2, 28, 28, 1)))  # NHWC in [0, 1]

Loading a TRADES WRN-34-10 checkpoint (needs ``pip install torch``)::

    sd = interop.load_torch_state_dict("model-wideres-epoch76.pt")
    net = interop.from_torch("wide_resnet", sd, depth=34, width=10)
    # and back: torch_model.load_state_dict(
    #     {k: torch.from_numpy(v) for k, v in
    #      interop.export_torch_state_dict(net, "wide_resnet").items()},
    #     strict=False)  # strict=False: TRADES' unused sub_block1

Loading uses ``torch.load(..., weights_only=True)``: checkpoints are read as
tensors only, never by unpickling arbitrary objects. torch is an optional
dependency needed only by :func:`load_torch_state_dict`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any, Callable, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lfr_jax import models

# Checkpoint dicts that wrap the state_dict under one of these keys.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes added by nn.DataParallel / DistributedDataParallel and torch.compile.
_STRIP_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5  # keys listed per category in error messages


@dataclasses.dataclass(frozen=True)
class _Field:
  """One PyTorch tensor of a layer and the JAX leaves it fills.

  Attributes:
    torch: PyTorch key suffix, e.g. ``"weight"``.
    jax: JAX leaf names filled with the converted tensor; the first one is
      exported. Empty for tensors with no JAX counterpart.
    perm: axis permutation taking the PyTorch layout to the JAX layout.
    required: whether import fails when the tensor is absent.
  """

  torch: str
  jax: tuple[str, ...]
  perm: tuple[int, ...] | None = None
  required: bool = True


# Generic converters, one per layer type.
_CONV = (_Field("weight", ("kernel",), (2, 3, 1, 0)),  # OIHW -> HWIO
         _Field("bias", ("bias",)))
_LINEAR = (_Field("weight", ("kernel",), (1, 0)),      # (out, in) -> (in, out)
           _Field("bias", ("bias",)))
_BATCHNORM = (_Field("weight", ("scale",)),
              _Field("bias", ("bias",)),
              _Field("running_mean", ("mean", "snap_mean")),
              _Field("running_var", ("var", "snap_var")),
              _Field("num_batches_tracked", (), required=False))


def _layer_fields(leaves: Mapping[str, Any]) -> tuple[_Field, ...]:
  """Picks the converter of a module from its leaves; drops absent fields."""
  if "scale" in leaves:
    fields = _BATCHNORM
  elif "kernel" in leaves and len(leaves["kernel"].shape) == 4:
    fields = _CONV
  elif "kernel" in leaves and len(leaves["kernel"].shape) == 2:
    fields = _LINEAR
  else:
    raise ValueError(
        f"no PyTorch converter for a layer with leaves {sorted(leaves)}.")
  # A field with JAX leaves applies only where the layer has them (e.g. a conv
  # without bias); one with none belongs to the layer type (BatchNorm's count).
  return tuple(f for f in fields if all(n in leaves for n in f.jax))


# Per-model name tables: JAX module path -> PyTorch module prefix.
_SMALL_CNN = {
    **{f"conv{i}": f"feature_extractor.conv{i}" for i in range(1, 5)},
    **{f"fc{i}": f"classifier.fc{i}" for i in range(1, 4)},
}
_WRN_TOP = {"conv1": "conv1", "bn": "bn1", "fc": "fc"}
_WRN_BLOCK = {"bn1": "bn1", "conv1": "conv1", "bn2": "bn2", "conv2": "conv2",
              "shortcut": "convShortcut"}


def _small_cnn_names(paths: Sequence[tuple]) -> dict[tuple, str]:
  return {p: _SMALL_CNN[p[0]] for p in paths}


def _wide_resnet_names(paths: Sequence[tuple]) -> dict[tuple, str]:
  # lfr_jax keeps one flat list of blocks; PyTorch nests them in three groups
  # of n = (depth - 4) / 6: blocks[k] -> block{k // n + 1}.layer.{k % n}.
  per_group = len({p[1] for p in paths if p[0] == "blocks"}) // 3
  names = {}
  for p in paths:
    if p[0] == "blocks":
      group, i = divmod(p[1], per_group)
      names[p] = f"block{group + 1}.layer.{i}.{_WRN_BLOCK[p[2]]}"
    else:
      names[p] = _WRN_TOP[p[0]]
  return names


@dataclasses.dataclass(frozen=True)
class _ModelSpec:
  """How one model's PyTorch keys are named.

  Attributes:
    names: maps the JAX module paths to PyTorch module prefixes.
    unused: key prefixes of PyTorch modules that the forward pass never
      touches; accepted and dropped on import, not exported.
  """

  names: Callable[[Sequence[tuple]], dict[tuple, str]]
  unused: tuple[str, ...] = ()


_MODELS: dict[str, _ModelSpec] = {
    "small_cnn": _ModelSpec(_small_cnn_names),
    # TRADES' WideResNet builds a `sub_block1` that forward() never calls, so
    # its checkpoints (and those of code derived from it) carry dead weights.
    "wide_resnet": _ModelSpec(_wide_resnet_names, unused=("sub_block1.",)),
}


def supported() -> list[str]:
  """Returns the model names with a PyTorch key mapping."""
  return sorted(_MODELS)


def _check_name(name: str) -> None:
  if name not in _MODELS:
    what = "has no PyTorch mapping" if name in models.names() else "is unknown"
    raise ValueError(f"model {name!r} {what}; supported: {supported()}.")


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One PyTorch key: its field and the full paths of the leaves it fills."""

  key: str
  field: _Field
  paths: tuple[tuple, ...]
  torch_shape: tuple[int, ...] | None


def _leaves(net: models.Network) -> dict[tuple, nnx.Variable]:
  """All leaves of the network (params and state) by full path."""
  out = {}
  for collection in (net.params, net.state):
    out.update({tuple(p): v for p, v in nnx.to_flat_state(collection)})
  return out


def _layout(net: models.Network, name: str) -> list[_Entry]:
  """The PyTorch keys of ``net`` and where each one goes.

  Raises ValueError if the network does not fit the model's name table or some
  JAX leaf would be left unfilled.
  """
  leaves = _leaves(net)
  modules: dict[tuple, dict[str, Any]] = {}
  for path, var in leaves.items():
    modules.setdefault(path[:-1], {})[path[-1]] = var.get_value()
  try:
    prefixes = _MODELS[name].names(list(modules))
  except (KeyError, IndexError, TypeError, ZeroDivisionError) as e:
    raise ValueError(f"the network's modules do not match the {name!r} layout; "
                     f"was it built by models.create({name!r}, ...)?") from e
  entries, covered = [], set()
  for module_path, module_leaves in modules.items():
    for field in _layer_fields(module_leaves):
      paths = tuple(module_path + (n,) for n in field.jax)
      shape = None
      if paths:
        jax_shape = module_leaves[field.jax[0]].shape
        perm = field.perm or tuple(range(len(jax_shape)))
        shape = tuple(jax_shape[perm.index(a)] for a in range(len(jax_shape)))
      entries.append(_Entry(f"{prefixes[module_path]}.{field.torch}", field,
                            paths, shape))
      covered.update(paths)
  unfilled = sorted(set(leaves) - covered, key=str)
  if unfilled:
    raise ValueError(f"no PyTorch key fills these {name!r} leaves: "
                     f"{_first(unfilled)}.")
  return entries


def _first(items: Sequence[Any]) -> str:
  """Formats the first few items of a list for an error message."""
  shown = ", ".join(str(i) for i in items[:_SHOW])
  more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
  return f"[{shown}]{more}"


def _strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drops DataParallel ``module.`` (and torch.compile) key prefixes."""
  out = {}
  for key, value in state_dict.items():
    stripped = key
    while stripped.startswith(_STRIP_PREFIXES):
      stripped = stripped.split(".", 1)[1]
    if stripped in out:
      raise ValueError(f"state_dict has both {stripped!r} and a prefixed "
                       f"copy {key!r}.")
    out[stripped] = value
  return out


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint into a ``{key: numpy array}`` state_dict.

  Uses ``torch.load(path, map_location="cpu", weights_only=True)``, so only
  tensors and plain containers are read, never arbitrary pickled objects.
  Accepts a raw state_dict or a dict holding it under ``"state_dict"``,
  ``"model"`` or ``"model_state_dict"``; a DataParallel ``module.`` prefix is
  stripped. bfloat16 tensors are widened to float32.

  Args:
    path: the ``.pt`` / ``.pth`` file written by ``torch.save``.

  Returns:
    The state_dict as numpy arrays, ready for :func:`from_torch`.

  Raises:
    ValueError: the file is missing, unreadable or holds no state_dict.
    ImportError: torch is not installed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(
        f"PyTorch checkpoint {path!r} does not exist or is not a file.")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "importing PyTorch checkpoints needs torch: pip install torch "
        "--index-url https://download.pytorch.org/whl/cpu (the CPU wheel; a "
        "plain pip install torch pulls a multi-GB CUDA build).") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:  # garbage, or objects beyond tensors
    raise ValueError(f"could not read PyTorch checkpoint {path!r}: it is "
                     "corrupt or pickles objects other than tensors and "
                     "containers (save model.state_dict() instead).") from e
  except Exception as e:  # e.g. a truncated zip archive
    first_line = (str(e).strip().splitlines() or [""])[0]
    raise ValueError(f"could not read PyTorch checkpoint {path!r} "
                     f"({type(e).__name__}: {first_line}).") from e
  state = obj
  if isinstance(state, Mapping):
    for key in _WRAPPER_KEYS:
      if isinstance(state.get(key), Mapping):
        state = state[key]
        break
  if not isinstance(state, Mapping) or not state:
    raise ValueError(f"PyTorch checkpoint {path!r} holds no state_dict "
                     f"(found {type(obj).__name__}).")
  arrays = {}
  for key, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"PyTorch checkpoint {path!r}: entry {key!r} is a "
                       f"{type(value).__name__}, not a tensor.")
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16
      value = value.float()
    arrays[str(key)] = value.detach().cpu().numpy()
  return _strip_prefixes(arrays)


def from_torch(name: str, state_dict: Mapping[str, Any],
               **model_kwargs) -> models.Network:
  """Builds an lfr_jax model from a PyTorch state_dict.

  The model is ``models.create(name, jax.random.key(0), **model_kwargs)``
  (built abstractly, so nothing is initialized) with every parameter and
  BatchNorm statistic taken from ``state_dict``. The match must be exact:
  every key consumed, every JAX leaf filled, every shape right. The only
  exception is the weights of modules the PyTorch forward never uses
  (``sub_block1.*`` of TRADES' WideResNet), which are dropped.

  Args:
    name: a model from :func:`supported` ("small_cnn" or "wide_resnet").
    state_dict: ``{key: array}``, numpy arrays (as from
      :func:`load_torch_state_dict`) or CPU torch tensors
      (``torch_model.state_dict()``); ``module.`` prefixes are stripped.
    **model_kwargs: architecture settings for ``models.create``, e.g.
      ``depth=34, width=10`` for a WRN-34-10 (and ``mean``/``std`` if the
      PyTorch model normalized its inputs outside the network).

  Returns:
    The :class:`~lfr_jax.models.Network`; BatchNorm snapshots equal the
    running statistics, so "running" and "frozen" modes agree until the next
    "batch" call.

  Raises:
    ValueError: unknown or unsupported model, or keys missing, unexpected or
      of the wrong shape (the first few of each are listed).
  """
  _check_name(name)
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"state_dict must be a mapping of names to arrays, got "
                     f"{type(state_dict).__name__}.")
  net = jax.eval_shape(lambda k: models.create(name, k, **model_kwargs),
                       jax.random.key(0))
  entries = _layout(net, name)
  state_dict = _strip_prefixes(state_dict)
  values: dict[tuple, np.ndarray] = {}
  missing, mismatched = [], []
  for entry in entries:
    if entry.key not in state_dict:
      if entry.field.required:
        missing.append(entry.key)
      continue
    if not entry.paths:
      continue  # consumed, nothing to fill (num_batches_tracked)
    try:
      array = np.asarray(state_dict[entry.key])
    except (TypeError, RuntimeError) as e:
      raise ValueError(f"state_dict entry {entry.key!r} is not convertible to "
                       "a numpy array; pass CPU float32 tensors or numpy "
                       "arrays.") from e
    if array.shape != entry.torch_shape:
      mismatched.append(f"{entry.key}: got {array.shape}, "
                        f"expected {entry.torch_shape}")
      continue
    if entry.field.perm is not None:
      array = array.transpose(entry.field.perm)
    for path in entry.paths:
      values[path] = array
  known = {e.key for e in entries}
  unexpected = sorted(k for k in state_dict if k not in known
                      and not k.startswith(_MODELS[name].unused))
  if missing or unexpected or mismatched:
    problems = [f"{label} {_first(items)}" for label, items in (
        ("missing keys", missing), ("unexpected keys", unexpected),
        ("shape mismatches", mismatched)) if items]
    kwargs = ", ".join(f"{k}={v!r}" for k, v in model_kwargs.items())
    raise ValueError(f"state_dict does not match {name}({kwargs}): "
                     f"{'; '.join(problems)}; check the model kwargs.")

  def fill(collection):
    return nnx.from_flat_state([
        (path, var.replace(jnp.asarray(values[tuple(path)],
                                       var.get_value().dtype)))
        for path, var in nnx.to_flat_state(collection)])

  imported = net.replace(params=fill(net.params), state=fill(net.state))
  # The import must give the model exactly its own pytree: same leaves,
  # shapes and dtypes as the freshly built (abstract) network.
  chex.assert_trees_all_equal_shapes_and_dtypes(imported.params, net.params)
  chex.assert_trees_all_equal_shapes_and_dtypes(imported.state, net.state)
  return imported


def export_torch_state_dict(net: models.Network,
                            name: str) -> dict[str, np.ndarray]:
  """The inverse of :func:`from_torch`: a PyTorch-layout state_dict.

  Args:
    net: a network built by ``models.create(name, ...)`` (or ``from_torch``).
    name: its model name, from :func:`supported`.

  Returns:
    ``{key: numpy array}`` in PyTorch layouts (OIHW convs, (out, in) linear
    weights, BatchNorm running statistics, ``num_batches_tracked`` = 0); load
    it with ``model.load_state_dict({k: torch.from_numpy(v) ...})``, with
    ``strict=False`` for TRADES' WideResNet, whose unused ``sub_block1`` is
    not exported.
  """
  _check_name(name)
  leaves = _leaves(net)
  out = {}
  for entry in _layout(net, name):
    if not entry.paths:
      out[entry.key] = np.zeros((), np.int64)
      continue
    array = np.asarray(leaves[entry.paths[0]].get_value())
    if entry.field.perm is not None:
      array = array.transpose(np.argsort(entry.field.perm))
    out[entry.key] = np.array(array, order="C")  # contiguous, writable
  return out
