"""The CPU XLA flag is set only on the jaxlib releases it was measured on."""

import os

import pytest

from lfr_jax import _xla_flags


@pytest.fixture
def env(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv("LFR_KEEP_XLA_FLAGS", raising=False)
  return monkeypatch


@pytest.mark.parametrize("version, added", [
    ((0, 10, 2), True), ((0, 10, 9), True),
    ((0, 10, 1), False),            # before it was measured
    ((0, 11, 0), False), ((0, 11, 2), False), ((1, 0, 0), False),
    (None, False),                  # jaxlib metadata unreadable
])
def test_flag_only_on_measured_jaxlib(env, version, added):
  assert _xla_flags.add_fast_cpu_flags(version) is added
  assert (_xla_flags.YNN_FLAG in os.environ.get("XLA_FLAGS", "")) is added


def test_user_flags_are_kept(env):
  env.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
  assert not _xla_flags.add_fast_cpu_flags((0, 10, 2))
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
  env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert _xla_flags.add_fast_cpu_flags((0, 10, 2))
  assert os.environ["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=8", _xla_flags.YNN_FLAG]
  env.setenv("LFR_KEEP_XLA_FLAGS", "1")
  env.delenv("XLA_FLAGS")
  assert not _xla_flags.add_fast_cpu_flags((0, 10, 2))
  assert "XLA_FLAGS" not in os.environ


def test_installed_version_is_read_without_jax():
  version = _xla_flags.jaxlib_version()
  assert version is not None and len(version) == 3
  # The pinned range in requirements.txt is the measured one.
  assert _xla_flags.flag_is_known(version)
