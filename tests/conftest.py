"""Test setup: fast CPU flags and float64 where a test asks for it."""

import os

os.environ.setdefault("LFR_DATA_DIR", os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "mnist"))

import lfr_jax  # noqa: E402,F401  (sets the fast XLA CPU flags before jax starts)
