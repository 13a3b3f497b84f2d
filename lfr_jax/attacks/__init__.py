"""Adversarial attacks as pure functions of a ``logits_fn``.

Every attack has the signature ``attack(logits_fn, x, y, key, **settings)``:
``logits_fn`` is any JAX callable mapping images (N, H, W, C) in [0, 1] to
logits (N, classes) with the model parameters closed over, ``x`` the clean
images, ``y`` the (N,) integer labels and ``key`` a PRNG key (unused by the
deterministic attacks, kept so that all attacks are interchangeable). The
result is under ``jax.lax.stop_gradient`` and always lies in the attack's
eps-ball around ``x`` intersected with [0, 1].

Loops are ``lax.fori_loop``/``lax.scan`` with per-example state, so an attack
never syncs with the host and works inside ``jax.jit`` and ``jax.vmap``.
Settings that shape the computation (``num_steps``, ``norm``, ``loss``,
``restarts``, ``num_targets``, ``random_start``, ``unroll``, ...) must be
static; radii and step sizes (``eps``, ``step_size``) may be traced. Per-example
losses are summed before ``jax.grad`` so each example gets its own gradient;
this assumes examples do not interact inside ``logits_fn`` (evaluation mode or
frozen BatchNorm statistics).

Checks: shapes, dtypes (floating images, integer labels), the PRNG key
(typed or raw) and the static settings raise one-sentence ``ValueError``s
before tracing, under ``jax.jit`` too. A concrete negative eps raises; a
traced one cannot be read without a host sync, so every projection and ball
sample uses max(eps, 0) (:func:`~lfr_jax.attacks.common.nonneg_radius`): the
attack then returns ``x`` itself, never a point outside the ball.

Attacks: :func:`fgsm`, :func:`pgd`, :func:`bim`, :func:`mifgsm`, :func:`ddn`
(returns ``(x_adv, norms)``), :func:`multi_targeted`, :func:`apgd` and
:func:`apgd_targeted` (AutoAttack's APGD-CE/DLR and APGD-T). :func:`worst_case`
chains attacks AutoAttack-style on the still-robust points (host-side).

The package's modules, each with one job: :mod:`~lfr_jax.attacks.common`
(norms, projection, random starts, gradients, the per-example "worst so far"
and the argument checks), :mod:`~lfr_jax.attacks.gradient_sign` (FGSM, PGD,
BIM, MI-FGSM, MultiTargeted), :mod:`~lfr_jax.attacks.minimal_norm` (DDN),
:mod:`~lfr_jax.attacks.auto_pgd` (APGD, APGD-T),
:mod:`~lfr_jax.attacks.diagnostics` (:func:`random_search`,
:func:`pgd_loss_trace`), :mod:`~lfr_jax.attacks.chain` (:func:`worst_case`)
and :mod:`~lfr_jax.attacks.registry` (:func:`names`, :func:`get`). Everything
public is re-exported here: ``attacks.pgd``, ``attacks.project``, ...

Example::

    import functools, jax
    from lfr_jax import attacks, models

    net = models.create("small_cnn", jax.random.key(0))
    logits_fn = net.logits_fn()
    x = jax.numpy.zeros((8, 28, 28, 1)); y = jax.numpy.zeros((8,), "int32")

    pgd = jax.jit(functools.partial(attacks.pgd, logits_fn),
                  static_argnames=("num_steps", "norm", "loss"))
    x_adv = pgd(x, y, jax.random.key(1), eps=0.3, step_size=0.01,
                num_steps=40)

    x_worst, broken_by = attacks.worst_case(
        [("apgd-ce", functools.partial(attacks.apgd, eps=0.3)),
         ("apgd-t", functools.partial(attacks.apgd_targeted, eps=0.3))],
        logits_fn, x, y, jax.random.key(2))
"""

from lfr_jax.attacks.auto_pgd import apgd
from lfr_jax.attacks.auto_pgd import apgd_checkpoints
from lfr_jax.attacks.auto_pgd import apgd_targeted
from lfr_jax.attacks.chain import worst_case
from lfr_jax.attacks.common import LogitsFn
from lfr_jax.attacks.common import NORMS
from lfr_jax.attacks.common import PerExampleLoss
from lfr_jax.attacks.common import l2_norm
from lfr_jax.attacks.common import project
from lfr_jax.attacks.diagnostics import pgd_loss_trace
from lfr_jax.attacks.diagnostics import random_search
from lfr_jax.attacks.gradient_sign import bim
from lfr_jax.attacks.gradient_sign import fgsm
from lfr_jax.attacks.gradient_sign import mifgsm
from lfr_jax.attacks.gradient_sign import multi_targeted
from lfr_jax.attacks.gradient_sign import pgd
from lfr_jax.attacks.minimal_norm import ddn
from lfr_jax.attacks.registry import ATTACKS
from lfr_jax.attacks.registry import get
from lfr_jax.attacks.registry import names

__all__ = [
    "NORMS", "ATTACKS", "names", "get", "l2_norm", "project", "fgsm", "pgd",
    "bim", "mifgsm", "ddn", "multi_targeted", "apgd_checkpoints", "apgd",
    "apgd_targeted", "worst_case", "random_search", "pgd_loss_trace",
    "LogitsFn", "PerExampleLoss",
]
