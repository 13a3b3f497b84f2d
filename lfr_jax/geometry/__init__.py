"""Input-space geometry of a classifier: decision surfaces and curvature.

Pure functions of a ``logits_fn`` (images (N, H, W, C) -> logits (N, classes),
parameters closed over), arrays in and arrays out; plotting lives in
:mod:`lfr_jax.plots`. Each public function runs as one jitted computation
(compiled per call, because ``logits_fn`` is a fresh closure) and can also be
called inside your own ``jax.jit``.

- :func:`surface` - the decision surface L(x + i u + j v) (decision-surface
  paper, Eq. 1 and 2; LFR Fig. 1) or the loss surface (LFR Fig. 2) of one
  image over an (i, j) grid.
- :func:`random_direction`, :func:`adversarial_direction`,
  :func:`orthogonalize` - the projection axes (unit l_inf, so that the grid
  step is in pixel units).
- :func:`jacobian_stats` - l1 norm and sparsity of dL/dx (decision-surface
  paper, Sec. 4.3).
- :func:`hessian_eigs` - Lanczos estimate of the spectrum of the Hessian of
  L with respect to the input, from Hessian-vector products only.
- :func:`flatness_values`, :func:`linearity_values` - per-example LFR and LLR
  gamma over a data set, for histograms (LLR Fig. 7).

The package's modules: :mod:`~lfr_jax.geometry.surfaces` (surfaces and their
axes), :mod:`~lfr_jax.geometry.curvature` (Jacobian and Hessian),
:mod:`~lfr_jax.geometry.gamma` (the regularizers' gamma values) and
:mod:`~lfr_jax.geometry.chunks` (chunked evaluation they share). Everything
public is re-exported here.

Here L(x) = z_y - max_{i != y} z_i is :func:`lfr_jax.losses.decision_value`,
positive iff x is classified correctly.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax import geometry, models

    net = models.create("small_cnn", jax.random.key(0))
    logits_fn = net.logits_fn()
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    y = jnp.array([3, 7])

    adv = geometry.adversarial_direction(logits_fn, x[0], y[0], kind="ce")
    rnd = geometry.orthogonalize(
        geometry.random_direction(jax.random.key(2), x[0].shape), adv)
    i, j, z = geometry.surface(logits_fn, x[0], y[0], rnd, adv, extent=0.3,
                               resolution=5)          # z: (5, 5)
    stats = geometry.jacobian_stats(logits_fn, x, y)  # stats.l1: (2,)
    eigs = geometry.hessian_eigs(logits_fn, x, y, num_iters=4,
                                 key=jax.random.key(3))
"""

from lfr_jax.geometry.curvature import HESSIAN_ZERO
from lfr_jax.geometry.curvature import HessianEigs
from lfr_jax.geometry.curvature import JACOBIAN_ZERO
from lfr_jax.geometry.curvature import JacobianStats
from lfr_jax.geometry.curvature import decision_jacobian
from lfr_jax.geometry.curvature import hessian_eigs
from lfr_jax.geometry.curvature import hvp
from lfr_jax.geometry.curvature import jacobian_stats
from lfr_jax.geometry.curvature import lanczos
from lfr_jax.geometry.curvature import tridiagonal_eigh
from lfr_jax.geometry.gamma import flatness_values
from lfr_jax.geometry.gamma import linearity_values
from lfr_jax.geometry.surfaces import ADVERSARIAL_KINDS
from lfr_jax.geometry.surfaces import DIRECTION_NORMS
from lfr_jax.geometry.surfaces import LogitsFn
from lfr_jax.geometry.surfaces import QUANTITIES
from lfr_jax.geometry.surfaces import adversarial_direction
from lfr_jax.geometry.surfaces import grid_coordinates
from lfr_jax.geometry.surfaces import orthogonalize
from lfr_jax.geometry.surfaces import random_direction
from lfr_jax.geometry.surfaces import surface

__all__ = [
    "QUANTITIES", "DIRECTION_NORMS", "ADVERSARIAL_KINDS", "JACOBIAN_ZERO",
    "HESSIAN_ZERO", "random_direction", "orthogonalize",
    "adversarial_direction", "grid_coordinates", "surface", "JacobianStats",
    "decision_jacobian", "jacobian_stats", "HessianEigs", "hvp", "lanczos",
    "tridiagonal_eigh", "hessian_eigs", "flatness_values",
    "linearity_values",
]
