"""Runs attacks over a data set: jitted once per attack shape, keyed, batched.

Every attack is jitted once per model function and attack shape: parameters
are arguments of the compiled function, so checkpoints of one architecture
share the executables, and eps and step sizes are traced, so the eps sweep
reuses them too. An attack's key depends on its name (:func:`attack_key`),
not on the column order.

Example::

    import jax, jax.numpy as jnp
    import numpy as np
    from lfr_jax.evaluation import columns, results, runner
    row = results.ModelRow("linear", lambda p, x: x.reshape(len(x), -1) @ p,
                           jnp.ones((4, 3)))
    r = runner.Runner(batch_size=2, progress=False)
    x, y = np.ones((3, 2, 2, 1), np.float32), np.zeros(3, np.int32)
    out = r.run(row, r.place(row.params), columns.CLEAN, x, y,
                runner.attack_key(jax.random.key(0), "clean"))
    out["pred"].shape                        # (3,)
"""

from __future__ import annotations

import functools
import sys
import zlib
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lfr_jax import sharding

if TYPE_CHECKING:
  from lfr_jax.evaluation.columns import Attack
  from lfr_jax.evaluation.results import ModelRow


def _outputs(fn, logits_fn, x, y, key, dynamic) -> dict[str, jax.Array]:
  """Runs an attack; returns predictions at its points plus its extras."""
  out = fn(logits_fn, x, y, key, **dynamic)
  extra = {}
  if isinstance(out, dict):
    extra = {k: v for k, v in out.items() if k != "x_adv"}
    x_adv = out["x_adv"]
  elif isinstance(out, tuple):
    x_adv, extra = out[0], {"norms": out[1]}
  else:
    x_adv = out
  pred = jnp.argmax(logits_fn(x_adv), axis=-1).astype(jnp.int32)
  return {"pred": pred, **extra}


def attack_key(root: jax.Array, name: str) -> jax.Array:
  """The key of an attack: depends on its name, not on the column order."""
  return jax.random.fold_in(root, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class Runner:
  """Runs attacks over a data set in fixed-size batches, compiled once each.

  Executables are cached per (``apply``, attack function, static settings),
  so models sharing ``apply`` and every eps / step size share them. The last
  batch is padded with copies of its first example, so each attack compiles
  for one batch shape. With several devices the batch is sharded over them.
  """

  def __init__(self, batch_size: int, progress: bool = True):
    self.progress = progress
    devices = jax.device_count()
    self.batch_size = -(-batch_size // devices) * devices
    self._cache: dict[Any, Callable[..., Any]] = {}
    self._batch_sharding = self._replicated = None
    if devices > 1:
      mesh = sharding.make_mesh(devices)
      self._batch_sharding = sharding.batch(mesh)
      self._replicated = sharding.replicated(mesh)

  def place(self, params):
    """Replicates parameters over the devices (a no-op on one device)."""
    if self._replicated is None:
      return params
    return jax.device_put(params, self._replicated)

  def compiled(self, apply, attack: Attack) -> Callable[..., Any]:
    """The jitted ``(params, x, y, key, dynamic) -> outputs`` of an attack."""
    key = (apply, attack.fn, attack.static,
           tuple(k for k, _ in attack.dynamic))
    if key not in self._cache:
      fn = functools.partial(attack.fn, **dict(attack.static))

      def run(params, x, y, k, dynamic):
        return _outputs(fn, functools.partial(apply, params), x, y, k, dynamic)

      self._cache[key] = jax.jit(run)
    return self._cache[key]

  def _batch(self, x: np.ndarray, y: np.ndarray, idx: np.ndarray
             ) -> tuple[jax.Array, jax.Array]:
    """One batch on the devices, split over them when there are several."""
    xb, yb = jnp.asarray(x[idx]), jnp.asarray(y[idx])
    if self._batch_sharding is not None:
      xb = jax.device_put(xb, self._batch_sharding)
      yb = jax.device_put(yb, self._batch_sharding)
    return xb, yb

  def run(self, model: ModelRow, params, attack: Attack, x: np.ndarray,
          y: np.ndarray, key: jax.Array, *, desc: str = ""
          ) -> dict[str, np.ndarray]:
    """Per-example outputs of ``attack`` on all of ``x``.

    Args:
      model: gives ``apply``.
      params: ``model.params`` as placed by :meth:`place`.
      attack: the attack.
      x: (N, H, W, C) float32 images.
      y: (N,) int32 labels.
      key: batch i uses ``fold_in(key, i)``.
      desc: progress-bar text.

    Returns:
      numpy outputs with the examples on the last axis: "pred" (N,) and the
      attack's extras (e.g. "norms" (N,), "loss" (T + 1, N)).
    """
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    fn = self.compiled(model.apply, attack)
    dynamic = {k: jnp.asarray(v, jnp.float32) for k, v in attack.dynamic}
    n = x.shape[0]
    devices = jax.device_count()
    # Small inputs: one batch of n rounded up to the device count.
    size = min(self.batch_size, -(-max(n, 1) // devices) * devices)
    outs = []
    with tqdm(total=n, desc=desc or attack.label, unit="ex",
              disable=not self.progress, leave=False, dynamic_ncols=True,
              file=sys.stderr) as bar:
      for i, start in enumerate(range(0, n, size)):
        idx = np.arange(start, min(start + size, n))
        m = idx.size
        idx = np.concatenate([idx, np.full(size - m, idx[0])])
        xb, yb = self._batch(x, y, idx)
        out = jax.device_get(fn(params, xb, yb, jax.random.fold_in(key, i),
                                dynamic))
        outs.append({k: np.asarray(v)[..., :m] for k, v in out.items()})
        bar.update(m)
    if not outs:
      return {"pred": np.zeros((0,), np.int32)}
    return {k: np.concatenate([o[k] for o in outs], axis=-1) for k in outs[0]}
