"""The attacks by name, for configs and command lines.

Every attack here has the signature ``attack(logits_fn, x, y, key,
**settings)`` and returns x_adv (:func:`lfr_jax.attacks.ddn`: a tuple whose
first element is x_adv). The diagnostics (random search, loss trace) return
dicts and are not listed.

Example::

    from lfr_jax.attacks import registry

    assert "apgd" in registry.names()
    pgd = registry.get("pgd")
"""

from __future__ import annotations

from typing import Any, Callable

from lfr_jax import _validate
from lfr_jax.attacks import auto_pgd
from lfr_jax.attacks import gradient_sign
from lfr_jax.attacks import minimal_norm

ATTACKS: dict[str, Callable[..., Any]] = {
    "fgsm": gradient_sign.fgsm,
    "pgd": gradient_sign.pgd,
    "bim": gradient_sign.bim,
    "mifgsm": gradient_sign.mifgsm,
    "ddn": minimal_norm.ddn,
    "multi_targeted": gradient_sign.multi_targeted,
    "apgd": auto_pgd.apgd,
    "apgd_targeted": auto_pgd.apgd_targeted,
}


def names() -> list[str]:
  """Returns the names accepted by :func:`get`."""
  return list(ATTACKS)


def get(name: str) -> Callable[..., Any]:
  """Looks up an attack by name.

  Args:
    name: one of :func:`names`.

  Returns:
    The attack function.

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  _validate.choice("attack", name, ATTACKS)
  return ATTACKS[name]
