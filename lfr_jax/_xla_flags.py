"""XLA flags that make the CPU fast path the default, where they were measured.

XLA's YNNPACK convolution fusion is about 8x slower than the plain Eigen
convolution for SmallCNN-sized convs on x86 CPUs (see docs/BENCHMARKS.md). The
flag below turns that fusion off for individual convolutions. It is read once,
when the XLA backend starts, so it must be in ``XLA_FLAGS`` before the first
JAX computation. Importing :mod:`lfr_jax` adds it unless the user already set
the option themselves or set ``LFR_KEEP_XLA_FLAGS=1``.

XLA aborts the whole process at backend start on a flag it does not know, and
experimental flags get renamed between releases. So the flag is added only
for the jaxlib releases it was measured on (:data:`MEASURED_JAXLIB`); any
other jaxlib (a GPU machine's newer one, say) starts with XLA's defaults.

With libtpu installed (the ``[tpu]`` extra, which ``lfr-plan`` uses to
compile for TPUs) on a machine without a TPU, JAX still tries its TPU
backend first, and libtpu prints several lines about the TPU it cannot find
before JAX falls back to the CPU. :func:`skip_absent_tpu` sets
``JAX_PLATFORMS=cpu`` on such a machine, when no accelerator at all is
attached and the user has not chosen platforms: JAX would end up on the CPU
anyway, now without the noise. Compiling for TPU topologies is not affected.

Example::

    import lfr_jax  # before any jax computation
    import jax
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import re
import sys

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# [lowest, highest) jaxlib version on which YNN_FLAG was measured and known.
MEASURED_JAXLIB = ((0, 10, 2), (0, 11, 0))


def jaxlib_version() -> tuple[int, ...] | None:
  """The installed jaxlib's (major, minor, patch), or None if unknown.

  Read from the package metadata, so jax itself is not imported.
  """
  try:
    text = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None
  match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
  return tuple(int(p) for p in match.groups()) if match else None


def flag_is_known(version: tuple[int, ...] | None) -> bool:
  """Whether YNN_FLAG was measured on this jaxlib version."""
  lo, hi = MEASURED_JAXLIB
  return version is not None and lo <= version < hi


_INSTALLED = object()


def add_fast_cpu_flags(version=_INSTALLED) -> bool:
  """Adds the fast CPU convolution flag to ``XLA_FLAGS`` where it is safe.

  Args:
    version: the jaxlib version (major, minor, patch) to decide for, or None
      for an unknown one; by default the installed jaxlib's.

  Returns:
    True if the environment was changed.
  """
  if os.environ.get("LFR_KEEP_XLA_FLAGS"):
    return False
  if version is _INSTALLED:
    version = jaxlib_version()
  if not flag_is_known(version):
    return False
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return False
  os.environ["XLA_FLAGS"] = (flags + " " + YNN_FLAG).strip()
  return True


# Device files and PCI vendors of attached accelerators: TPU VMs expose
# /dev/accel* (v2-v4) or /dev/vfio/N (v5e and later) and Google's PCI vendor
# id; NVIDIA and AMD GPUs their driver nodes.
_ACCELERATOR_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*",
                      "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
_GOOGLE_PCI_VENDOR = "0x1ae0"


def accelerator_attached(root: str = "/") -> bool:
  """Whether this machine shows a TPU or GPU (device files or PCI vendor)."""
  for pattern in _ACCELERATOR_FILES:
    if glob.glob(os.path.join(root, pattern.lstrip("/"))):
      return True
  for vendor in glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor")):
    try:
      with open(vendor) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def skip_absent_tpu(libtpu_installed: bool | None = None,
                    attached: bool | None = None) -> bool:
  """Sets ``JAX_PLATFORMS=cpu`` where libtpu is installed but nothing is attached.

  Args:
    libtpu_installed: whether the libtpu package is importable; found out
      when None.
    attached: whether a TPU or GPU is attached (:func:`accelerator_attached`);
      found out when None.

  Returns:
    True if the environment was changed. Nothing changes when the user set
    ``JAX_PLATFORMS`` or ``LFR_KEEP_XLA_FLAGS``.
  """
  if os.environ.get("LFR_KEEP_XLA_FLAGS") or "JAX_PLATFORMS" in os.environ:
    return False
  if libtpu_installed is None:
    libtpu_installed = importlib.util.find_spec("libtpu") is not None
  if not libtpu_installed:
    return False
  if attached is None:
    attached = accelerator_attached()
  if attached:
    return False
  os.environ["JAX_PLATFORMS"] = "cpu"
  if "jax" in sys.modules:
    # jax reads JAX_PLATFORMS when it is imported: tell an imported jax too
    # (it takes effect if no computation has started the backends yet).
    sys.modules["jax"].config.update("jax_platforms", "cpu")
  return True
