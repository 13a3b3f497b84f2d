"""The device mesh every step runs on: one ``"data"`` axis, batches split, the rest replicated.

Training and evaluation both shard the batch along ``"data"`` and replicate
parameters, optimizer state and metrics, on one host or across a pod (each
host feeds its own slice of the global batch, see ``data.to_global``).

Example::

    from lfr_jax import sharding
    mesh = sharding.make_mesh(1)
    sharding.batch(mesh).spec                # PartitionSpec('data',)
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D ``("data",)`` mesh over the first ``num_devices`` devices (0 = all).

  Auto axis types: with jax 0.10's default Explicit types, reshapes inside the
  models fail with ShardingTypeError.

  Args:
    num_devices: devices of the data axis; 0 takes every device of every host.

  Returns:
    The mesh.
  """
  devices = jax.devices()
  n = num_devices or len(devices)
  return jax.make_mesh((n,), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, state, metrics)."""
  return NamedSharding(mesh, P())


def batch(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The leading (batch) axis split over the ``"data"`` axis."""
  return NamedSharding(mesh, P(AXIS))
