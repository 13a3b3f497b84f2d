"""AutoAttack-style chains: each attack runs on the points still robust.

:func:`worst_case` is an evaluation tool that runs on the host between
attacks; the attacks themselves are jitted once per ``logits_fn`` and per
padded batch size (:func:`padded_batch_size`), and cached.

Example::

    import functools, jax, jax.numpy as jnp
    from lfr_jax.attacks import chain, gradient_sign

    w = jax.random.normal(jax.random.key(0), (16, 10))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
    x = jnp.full((4, 4, 4, 1), 0.5); y = jnp.array([0, 1, 2, 3])
    x_worst, broken_by = chain.worst_case(
        [("fgsm", functools.partial(gradient_sign.fgsm, eps=0.1)),
         ("pgd", functools.partial(gradient_sign.pgd, eps=0.1,
                                   step_size=0.02, num_steps=10))],
        logits_fn, x, y, jax.random.key(1))
    sizes = [chain.padded_batch_size(m, 200) for m in (3, 150)]  # [4, 200]
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lfr_jax.attacks import common

# Compiled per logits_fn, weakly: an entry (and the executables holding the
# closed-over parameters) goes away with its logits_fn.
_COMPILED: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _predict_labels(fn: common.LogitsFn, x: jax.Array) -> jax.Array:
  return jnp.argmax(fn(x), axis=1)


def _compiled(attack: Callable[..., Any] | None, logits_fn: common.LogitsFn
              ) -> Callable[..., Any]:
  """A jitted ``attack(logits_fn, x, y, key)`` (or prediction for None)."""
  try:
    per_fn = _COMPILED.setdefault(logits_fn, {})
    ref = weakref.ref(logits_fn)
  except TypeError:  # not weak-referenceable: compile without caching
    per_fn, ref = {}, (lambda: logits_fn)
  if attack not in per_fn:
    # Through the weak reference, the cached executables do not keep
    # logits_fn (and its parameters) alive.
    if attack is None:
      per_fn[attack] = jax.jit(lambda x: _predict_labels(ref(), x))
    else:
      per_fn[attack] = jax.jit(lambda x, y, k: attack(ref(), x, y, k))
  return per_fn[attack]


def padded_batch_size(num_points: int, batch_size: int) -> int:
  """Padded subset size: the next power of two, at most the full batch.

  Args:
    num_points: points still to attack, >= 1.
    batch_size: size of the full batch.

  Returns:
    The size the subset is padded to before it goes to a jitted attack.
  """
  return min(1 << max(num_points - 1, 0).bit_length(), batch_size)


def _check_attack_list(attacks) -> None:
  for entry in attacks:
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2
            and callable(entry[1])):
      raise ValueError(f"attacks must be (name, callable) pairs, got "
                       f"{entry!r}.")


def worst_case(attacks: Sequence[tuple[str, Callable[..., Any]]],
               logits_fn: common.LogitsFn, x: jax.Array, y: jax.Array,
               key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Runs attacks in order, each on the points still robust (AutoAttack-style).

  An evaluation tool that runs on the host between attacks: after each attack
  the still-correct points are gathered, padded (by repeating one of them) to
  a power-of-two size or the full batch so that at most log2(N) + 1 shapes are
  compiled per attack, and passed to the next attack. The jitted attacks are
  cached per ``logits_fn`` object, so pass the same ``logits_fn`` for every
  batch to compile once.

  Args:
    attacks: (name, attack) pairs; ``attack(logits_fn, x, y, key)`` returns
      x_adv or a tuple whose first element is x_adv (e.g.
      :func:`lfr_jax.attacks.ddn`). It is run under ``jax.jit``, so bind its
      settings (``functools.partial``).
    logits_fn: x -> logits.
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) integer labels.
    key: PRNG key; attack i gets ``jax.random.fold_in(key, i)``.

  Returns:
    (x_adv, broken_by): x_adv holds the first successful adversarial point per
    example (``x`` where clean-misclassified or never broken); broken_by (N,)
    int32 holds the index into ``attacks`` of the first attack that broke the
    point, -1 for points no attack broke (robust) and -2 for points
    misclassified when clean.
  """
  common.check_batch(x, y)
  common.check_key(key)
  _check_attack_list(attacks)
  n = x.shape[0]
  x_clean, y_np = np.asarray(x), np.asarray(y)
  x_adv = x_clean.copy()
  predict = _compiled(None, logits_fn)
  broken_by = np.where(np.asarray(predict(x)) != y_np, -2, -1).astype(np.int32)
  for i, (_, attack) in enumerate(attacks):
    robust = np.flatnonzero(broken_by == -1)
    if robust.size == 0:
      break
    padded = np.concatenate([robust, np.full(
        padded_batch_size(robust.size, n) - robust.size, robust[0],
        robust.dtype)])
    out = _compiled(attack, logits_fn)(
        jnp.asarray(x_clean[padded]), jnp.asarray(y_np[padded]),
        jax.random.fold_in(key, i))
    if isinstance(out, (tuple, list)):
      out = out[0]
    hit = (np.asarray(predict(out)) != y_np[padded])[:robust.size]
    x_adv[robust[hit]] = np.asarray(out)[:robust.size][hit]
    broken_by[robust[hit]] = i
  return jnp.asarray(x_adv), jnp.asarray(broken_by)
