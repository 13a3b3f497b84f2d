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


@pytest.fixture
def platforms_env(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.delenv("LFR_KEEP_XLA_FLAGS", raising=False)
  # skip_absent_tpu also tells an imported jax; keep this process's choice.
  import jax
  monkeypatch.setattr(jax.config, "update", lambda *a, **k: None)
  return monkeypatch


@pytest.mark.parametrize("libtpu, attached, skipped", [
    (True, False, True),     # libtpu on a CPU-only host: CPU, quietly
    (True, True, False),     # a TPU (or GPU) machine: JAX chooses
    (False, False, False),   # no libtpu: nothing to skip
])
def test_absent_tpu_is_skipped_only_without_accelerators(
    platforms_env, libtpu, attached, skipped):
  assert _xla_flags.skip_absent_tpu(libtpu, attached) is skipped
  assert (os.environ.get("JAX_PLATFORMS") == "cpu") is skipped


def test_user_platform_choice_is_kept(platforms_env):
  platforms_env.setenv("JAX_PLATFORMS", "tpu")
  assert not _xla_flags.skip_absent_tpu(True, False)
  assert os.environ["JAX_PLATFORMS"] == "tpu"


def test_accelerator_detection_reads_device_files(tmp_path):
  assert not _xla_flags.accelerator_attached(str(tmp_path))
  (tmp_path / "dev").mkdir()
  (tmp_path / "dev" / "accel0").write_text("")
  assert _xla_flags.accelerator_attached(str(tmp_path))
  pci = tmp_path / "other" / "sys" / "bus" / "pci" / "devices" / "0000:00:04.0"
  pci.mkdir(parents=True)
  (pci / "vendor").write_text("0x1ae0\n")
  assert _xla_flags.accelerator_attached(str(tmp_path / "other"))


@pytest.mark.skipif(_xla_flags.accelerator_attached(),
                    reason="an accelerator is attached: JAX starts on it")
def test_cpu_start_with_libtpu_installed_is_quiet():
  """A fresh process (as CI runs, libtpu installed) prints nothing on stderr."""
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  proc = subprocess.run(
      [sys.executable, "-c", "import lfr_jax, jax; print(jax.devices()[0].platform)"],
      capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip() == "cpu", proc.stderr
  assert proc.stderr == "", proc.stderr
