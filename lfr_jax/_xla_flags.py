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

Example::

    import lfr_jax  # before any jax computation
    import jax
"""

from __future__ import annotations

import importlib.metadata
import os
import re

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
