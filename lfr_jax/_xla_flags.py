"""XLA flags that make the CPU fast path the default.

XLA's YNNPACK convolution fusion is about 8x slower than the plain Eigen
convolution for SmallCNN-sized convs on x86 CPUs (see docs/BENCHMARKS.md). The
flag below turns that fusion off for individual convolutions. It is read once,
when the XLA backend starts, so it must be in ``XLA_FLAGS`` before the first
JAX computation. Importing :mod:`lfr_jax` adds it unless the user already set
the option themselves or set ``LFR_KEEP_XLA_FLAGS=1``.

Example::

    import lfr_jax  # before any jax computation
    import jax
"""

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def add_fast_cpu_flags() -> bool:
  """Adds the fast CPU convolution flag to ``XLA_FLAGS`` if it is absent.

  Returns:
    True if the environment was changed.
  """
  if os.environ.get("LFR_KEEP_XLA_FLAGS"):
    return False
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return False
  os.environ["XLA_FLAGS"] = (flags + " " + YNN_FLAG).strip()
  return True
