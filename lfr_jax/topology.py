"""Target hardware by name: Cloud TPU slices, libtpu topologies and CPU meshes, with chip specs.

A plan (see :mod:`lfr_jax.plan`) compiles the training step for devices that
need not be attached: libtpu's compiler runs on any host and builds
compile-only devices of a TPU topology. Three kinds of names are accepted:

- Cloud TPU accelerator types, as ``gcloud`` spells them: ``v3-128``,
  ``v4-128``, ``v5p-128``, ``v5litepod-256`` (also ``v5e-256``), ``v6e-64``.
  The number counts TensorCores for v3, v4 and v5p (two per chip) and chips
  for v5e and v6e (one core per chip). v4 and v5p run as megacore, one JAX
  device per chip; v3 exposes each core as a device.
- libtpu topology names, e.g. ``v3:8x8``, ``v4:4x4x4``, ``v5e:16x16``,
  taken as libtpu builds them (``v4:4x4x4`` gives 128 single-core devices;
  its Cloud name ``v4-128`` gives 64 megacore ones).
- ``cpu:N``: N devices of this host's CPU (``XLA_FLAGS`` gets
  ``--xla_force_host_platform_device_count`` when the plan starts).

Chip specs (:data:`CHIPS`) are the per-chip peak bf16 matmul rate, HBM
capacity and HBM bandwidth from the Cloud TPU system-architecture pages
(cited per chip).

Example::

    from lfr_jax import topology
    target = topology.parse("v3-128")
    target.libtpu_name, target.num_devices, target.num_hosts  # ('v3:8x8', 128, 16)
    topology.per_device(target.chip, cores_per_device=1)["hbm_bytes"] / 2**30  # 16.0
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
import tempfile

GiB = 2 ** 30
INSTALL_LINE = 'pip install "jax[tpu]==0.10.2"  (or pip install -e ".[tpu]")'


class TopologyError(ValueError):
  """An unknown or unusable target name, or no libtpu to compile for it (one line)."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """Peak figures of one accelerator chip, from its vendor page.

  Attributes:
    name: generation as libtpu names it ("v3", "v4", "v5e", "v5p", "v6e").
    cores: TensorCores per chip.
    peak_flops: peak dense bf16 FLOP/s of the chip (float32 matmuls at
      XLA's default precision run as one bf16 pass on the same units).
    hbm_bytes: HBM capacity of the chip in bytes.
    hbm_bandwidth: HBM bandwidth of the chip in bytes/s.
    source: the page the three numbers come from.
  """
  name: str
  cores: int
  peak_flops: float
  hbm_bytes: float
  hbm_bandwidth: float
  source: str


_DOCS = "https://cloud.google.com/tpu/docs/"
# Cloud TPU "System architecture" tables, read 2026-12-03. GB/s there are
# 10^9 bytes/s; capacities as printed (GiB for v3/v4/v5e, GB for v5p/v6e).
CHIPS = {
    "v3": Chip("v3", 2, 123e12, 32 * GiB, 900e9, _DOCS + "v3"),
    "v4": Chip("v4", 2, 275e12, 32 * GiB, 1200e9, _DOCS + "v4"),
    "v5e": Chip("v5e", 1, 197e12, 16 * GiB, 819e9, _DOCS + "v5e"),
    "v5p": Chip("v5p", 2, 459e12, 95e9, 2765e9, _DOCS + "v5p"),
    "v6e": Chip("v6e", 1, 918e12, 32e9, 1638e9, _DOCS + "v6e"),
}

# libtpu's prefix of each generation ("v5" is v5p, "v5e" is v5 lite).
_LIBTPU_PREFIX = {"v3": "v3", "v4": "v4", "v5e": "v5e", "v5p": "v5", "v6e": "v6e"}
_LIBTPU_GENERATION = {v: k for k, v in _LIBTPU_PREFIX.items()}
_LIBTPU_GENERATION["v5p"] = "v5p"


def _grid(shape: str) -> tuple[int, ...]:
  return tuple(int(n) for n in shape.split("x"))


# Cloud accelerator type -> (libtpu topology, chips per host bounds). Slice
# shapes follow the Cloud TPU configuration tables; hosts hold 4 chips
# (2x2x1), except the single-host v5e/v6e slices of 1, 4 and 8 chips.
_SHAPES_2D = {8: "2x2", 32: "4x4", 64: "4x8", 128: "8x8", 256: "8x16",
              512: "16x16", 1024: "16x32", 2048: "32x32"}
_SHAPES_3D = {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4",
              256: "4x4x8", 512: "4x8x8", 1024: "8x8x8", 2048: "8x8x16",
              4096: "8x16x16"}
_SHAPES_LITE = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
                128: "8x16", 256: "16x16"}
_SINGLE_HOST_LITE = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}


@dataclasses.dataclass(frozen=True)
class Target:
  """What a plan compiles for.

  Attributes:
    name: the name as given.
    platform: "tpu" or "cpu".
    chip: the chip's specs (None for CPU).
    libtpu_name: libtpu's topology name, e.g. "v3:8x8" ("" for CPU).
    chip_config: libtpu chip config ("default" or "megacore").
    chips_per_host_bounds: libtpu's chips-per-host shape, or None for its
      default.
    num_devices: JAX devices of the target (the mesh size).
    num_hosts: hosts (JAX processes) of the target.
  """
  name: str
  platform: str
  chip: Chip | None
  libtpu_name: str
  chip_config: str
  chips_per_host_bounds: tuple[int, int, int] | None
  num_devices: int
  num_hosts: int


def _cloud_target(name: str, generation: str, count: int) -> Target | None:
  chip = CHIPS[generation]
  if generation == "v3":
    shape, chips = _SHAPES_2D.get(count), count // 2
    devices, config = count, "default"
  elif generation in ("v4", "v5p"):
    shape, chips = _SHAPES_3D.get(count), count // 2
    devices, config = chips, "megacore"
  else:
    shape, chips = _SHAPES_LITE.get(count), count
    devices, config = count, "default"
  if shape is None:
    return None
  bounds = (_SINGLE_HOST_LITE.get(count, (2, 2, 1))
            if generation in ("v5e", "v6e") else (2, 2, 1))
  hosts = max(1, chips // (bounds[0] * bounds[1] * bounds[2]))
  return Target(name, "tpu", chip, f"{_LIBTPU_PREFIX[generation]}:{shape}",
                config, bounds, devices, hosts)


def cloud_names() -> list[str]:
  """Every Cloud TPU accelerator type :func:`parse` knows."""
  names = [f"v3-{n}" for n in _SHAPES_2D]
  names += [f"{g}-{n}" for g in ("v4", "v5p") for n in _SHAPES_3D]
  names += [f"{g}-{n}" for g in ("v5litepod", "v6e") for n in _SHAPES_LITE]
  return names


def valid_names_hint() -> str:
  """One line listing what :func:`parse` accepts."""
  return ("Cloud TPU types " + ", ".join(cloud_names()) + " (v5e-N = "
          "v5litepod-N); libtpu names such as v3:8x8, v4:4x4x4, v5e:16x16, "
          "v6e:8x8; cpu:N")


def parse(name: str) -> Target:
  """The target a name describes (see the module docstring).

  Args:
    name: a Cloud TPU type, a libtpu topology name or ``cpu:N``.

  Returns:
    The :class:`Target`. For libtpu names, device and host counts are those
    libtpu builds, filled in by :func:`devices`; here they are 0.

  Raises:
    TopologyError: an unknown name; the message lists the valid ones.
  """
  text = name.strip().lower()
  cpu = re.fullmatch(r"cpu:(\d+)", text)
  if cpu and int(cpu.group(1)) > 0:
    n = int(cpu.group(1))
    return Target(name, "cpu", None, "", "default", None, n, 1)
  cloud = re.fullmatch(r"(v3|v4|v5p|v5litepod|v5e|v6e)-(\d+)", text)
  if cloud:
    generation = {"v5litepod": "v5e"}.get(cloud.group(1), cloud.group(1))
    target = _cloud_target(name, generation, int(cloud.group(2)))
    if target is not None:
      return target
  libtpu = re.fullmatch(r"(v3|v4|v5|v5p|v5e|v6e):(\d+(?:x\d+){1,2})", text)
  if libtpu:
    generation = _LIBTPU_GENERATION[libtpu.group(1)]
    return Target(name, "tpu", CHIPS[generation],
                  f"{_LIBTPU_PREFIX[generation]}:{libtpu.group(2)}", "default",
                  None, 0, 0)
  raise TopologyError(f"unknown topology {name!r}; valid: "
                      f"{valid_names_hint()}.")


def libtpu_installed() -> bool:
  """Whether the ``libtpu`` package (TPU compiler and runtime) is importable."""
  return importlib.util.find_spec("libtpu") is not None


@contextlib.contextmanager
def _stderr_to_file():
  """Sends the process's fd 2 to a temporary file while the block runs.

  libtpu prints several lines about the TPU it cannot find on a host without
  one when its plugin starts; a plan's output should not carry them.
  """
  with tempfile.TemporaryFile() as sink:
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def devices(target: Target) -> list:
  """The target's devices: compile-only TPU devices, or this host's CPUs.

  Args:
    target: from :func:`parse`.

  Returns:
    The devices, in libtpu's order.

  Raises:
    TopologyError: no libtpu (the message gives the install line), libtpu
      refuses the topology, or fewer CPU devices than asked for.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if target.platform == "cpu":
    found = jax.devices("cpu")
    if len(found) < target.num_devices:
      raise TopologyError(
          f"{target.name} needs {target.num_devices} CPU devices but JAX "
          f"started with {len(found)}; set XLA_FLAGS=--xla_force_host_"
          f"platform_device_count={target.num_devices} before JAX starts.")
    return found[:target.num_devices]
  if not libtpu_installed():
    raise TopologyError(f"compiling for {target.name} needs libtpu, the TPU "
                        f"compiler: {INSTALL_LINE}.")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from lfr_jax import _xla_flags  # pylint: disable=g-import-not-at-top
  if not _xla_flags.accelerator_attached():
    # Compile-only: no TPU is opened, so another process's libtpu (a second
    # plan, a test) need not hold this one off through /tmp/libtpu_lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  kwargs = {"chip_config_name": target.chip_config}
  if target.chips_per_host_bounds:
    kwargs["chips_per_host_bounds"] = target.chips_per_host_bounds
  try:
    with _stderr_to_file():
      found = topologies.get_topology_desc(
          topology_name=target.libtpu_name, platform="tpu", **kwargs).devices
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise TopologyError(f"libtpu cannot build topology {target.libtpu_name} "
                        f"({first}); valid: {valid_names_hint()}.") from None
  return list(found)


def describe(target: Target, found: list) -> Target:
  """``target`` with its device and host counts read from ``found``."""
  hosts = len({d.process_index for d in found})
  return dataclasses.replace(target, num_devices=len(found), num_hosts=hosts)


def per_device(chip: Chip, cores_per_device: int) -> dict[str, float]:
  """A chip's figures for one JAX device of ``cores_per_device`` cores.

  A v3 core, or a v4 core without megacore, is half a chip: half its peak,
  bandwidth and HBM.

  Returns:
    {"peak_flops", "hbm_bytes", "hbm_bandwidth"} per device.
  """
  share = cores_per_device / chip.cores
  return {"peak_flops": chip.peak_flops * share,
          "hbm_bytes": chip.hbm_bytes * share,
          "hbm_bandwidth": chip.hbm_bandwidth * share}


def cores_per_device(found: list) -> int:
  """TensorCores behind each device (2 on megacore v4/v5p, else 1)."""
  return int(getattr(found[0], "num_cores", 1) or 1)


def memory_unit(chip: Chip | None) -> str:
  """How a plan names one device's share: "core" (v3) or "chip"."""
  return "core" if chip is not None and chip.name == "v3" else "chip"
