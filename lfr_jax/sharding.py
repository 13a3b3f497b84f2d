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


def make_mesh(num_devices: int = 0, devices=None) -> jax.sharding.Mesh:
  """A 1-D ``("data",)`` mesh over the first ``num_devices`` devices (0 = all).

  Auto axis types: with jax 0.10's default Explicit types, reshapes inside the
  models fail with ShardingTypeError.

  Args:
    num_devices: devices of the data axis; 0 takes every device given.
    devices: the devices to take them from; None for ``jax.devices()`` (every
      device of every host). Compile-only devices of a TPU topology that is
      not attached (see ``lfr_jax.topology``) build the mesh a pod would run.

  Returns:
    The mesh.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = num_devices or len(devices)
  return jax.make_mesh((n,), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def platform(mesh: jax.sharding.Mesh) -> str:
  """The platform of a mesh's devices ("cpu", "gpu", "tpu").

  Backend-dependent choices (loop unrolling, the convolution) are made for
  the devices a step runs on, which need not be the host's default backend
  (a plan compiles for TPU devices on a CPU host).
  """
  return mesh.devices.flat[0].platform


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, state, metrics)."""
  return NamedSharding(mesh, P())


def batch(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The leading (batch) axis split over the ``"data"`` axis."""
  return NamedSharding(mesh, P(AXIS))
