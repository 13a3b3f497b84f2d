"""lfr-plan: target names, loop trip counts, a compile-only TPU plan, one-line errors.

The TPU tests need libtpu (``pip install -e ".[tpu]"``; ``.ci/run`` installs
it) and skip with that install line without it. Nothing here needs a TPU:
libtpu compiles for TPU topologies on any host.
"""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from configs import imagenet_lfr
from lfr_jax import hlo_cost
from lfr_jax import models
from lfr_jax import objectives
from lfr_jax import plan
from lfr_jax import topology

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(
    not topology.libtpu_installed(),
    reason=f"needs libtpu to compile for TPUs: {topology.INSTALL_LINE}")


# --- Target names ------------------------------------------------------------


@pytest.mark.parametrize("name, libtpu, devices, hosts, config", [
    ("v3-128", "v3:8x8", 128, 16, "default"),       # cores: 64 chips
    ("v4-128", "v4:4x4x4", 64, 16, "megacore"),     # cores: 64 chips
    ("v5p-128", "v5:4x4x4", 64, 16, "megacore"),
    ("v5litepod-256", "v5e:16x16", 256, 64, "default"),  # chips
    ("v5e-8", "v5e:2x4", 8, 1, "default"),
    ("v5litepod-1", "v5e:1x1", 1, 1, "default"),
    ("v6e-64", "v6e:8x8", 64, 16, "default"),
])
def test_cloud_names_count_cores_or_chips(name, libtpu, devices, hosts,
                                          config):
  target = topology.parse(name)
  assert (target.libtpu_name, target.num_devices, target.num_hosts,
          target.chip_config) == (libtpu, devices, hosts, config)


def test_cpu_and_libtpu_names():
  assert topology.parse("cpu:8").num_devices == 8
  target = topology.parse("v4:4x4x4")
  assert (target.libtpu_name, target.chip.name) == ("v4:4x4x4", "v4")
  assert topology.parse("v5:2x2x1").chip.name == "v5p"


@pytest.mark.parametrize("name", ["v3-100", "v7-8", "tpu", "cpu:0", "v5e:8"])
def test_unknown_topology_lists_the_valid_ones(name):
  with pytest.raises(topology.TopologyError) as error:
    topology.parse(name)
  message = str(error.value)
  assert "\n" not in message
  assert "v3-128" in message and "v6e-64" in message and "cpu:N" in message


def test_per_device_share_of_a_chip():
  v3 = topology.CHIPS["v3"]
  core = topology.per_device(v3, cores_per_device=1)
  assert core["hbm_bytes"] == 16 * topology.GiB
  assert core["peak_flops"] == pytest.approx(61.5e12)
  assert topology.per_device(topology.CHIPS["v4"], 2)["hbm_bytes"] == \
      32 * topology.GiB


def test_missing_libtpu_gives_the_install_line(monkeypatch):
  monkeypatch.setattr(topology, "libtpu_installed", lambda: False)
  with pytest.raises(topology.TopologyError, match=r'pip install "jax\[tpu\]'):
    topology.devices(topology.parse("v5litepod-8"))


@needs_libtpu
@pytest.mark.parametrize("name, cores", [
    ("v3-128", 1), ("v4-128", 2), ("v5p-128", 2), ("v5litepod-256", 1),
    ("v6e-64", 1), ("v5litepod-8", 1), ("v5litepod-1", 1)])
def test_libtpu_builds_what_the_table_says(name, cores):
  target = topology.parse(name)
  found = topology.devices(target)
  described = topology.describe(target, found)
  assert (described.num_devices, described.num_hosts) == (
      target.num_devices, target.num_hosts)
  assert topology.cores_per_device(found) == cores
  assert {d.platform for d in found} == {"tpu"}


@needs_libtpu
def test_libtpu_name_without_megacore_has_one_device_per_core():
  found = topology.devices(topology.parse("v4:4x4x4"))
  assert len(found) == 128 and topology.cores_per_device(found) == 1


# --- Loop trip counts (host compiles, no libtpu needed) ---------------------


def test_trip_counts_of_nested_loops_multiply():
  n = 64

  def nested(x):
    inner = lambda j, w: jnp.tanh(w @ w)
    return lax.fori_loop(0, 3, lambda i, v: lax.fori_loop(0, 5, inner, v) @ v,
                         x)

  compiled = jax.jit(nested).lower(jnp.ones((n, n))).compile()
  cost = hlo_cost.loop_corrected_cost(compiled)
  matmul_flops = 2 * n ** 3 * (3 * 5 + 3)   # by hand: 15 inner + 3 outer
  assert cost["flops"] == pytest.approx(matmul_flops, rel=0.01)
  assert compiled.cost_analysis()["flops"] < 0.2 * matmul_flops
  assert sorted(l["trips"] for l in cost["loops"]) == [3, 15]


def test_loop_with_unknown_trip_count_is_counted_once_and_flagged():
  def until_small(x):
    return lax.while_loop(lambda v: jnp.sum(v) > 1.0, lambda v: v @ v * 0.5, x)

  compiled = jax.jit(until_small).lower(jnp.ones((16, 16))).compile()
  cost = hlo_cost.loop_corrected_cost(compiled)
  assert [l["trips"] for l in cost["loops"]] == [None]
  assert cost["flops"] == cost["flops_counted_once"]


def _lfr_grad_cost(unroll: bool) -> dict:
  net = models.create("small_cnn", jax.random.key(0), dropout=0.0)
  objective = objectives.build("lfr", num_steps=3, unroll=unroll)
  x = jnp.full((2, 28, 28, 1), 0.5)
  y = jnp.arange(2)

  def loss(params, x, y):  # x, y as arguments: no constant folding
    return objective(net.replace(params=params), x, y, jax.random.key(1),
                     0.03)[0]

  compiled = jax.jit(jax.grad(loss)).lower(net.params, x, y).compile()
  return hlo_cost.loop_corrected_cost(compiled)


def test_rolled_loop_counts_like_the_unrolled_step():
  """The same LFR gradient, rolled (counted K times) and unrolled (XLA's own)."""
  rolled, unrolled = _lfr_grad_cost(False), _lfr_grad_cost(True)
  # XLA:CPU also keeps threefry's 5-round loops rolled, in both.
  assert sorted(l["trips"] for l in rolled["loops"]) == [3, 5, 5]
  assert sorted(l["trips"] for l in unrolled["loops"]) == [5, 5]
  # Counted once, the rolled step misses two of the three inner steps (38% of
  # its FLOPs). Corrected, it matches the unrolled program's FLOPs (measured
  # 2026-12-03 at K = 2, 3, 4: 0.05% fewer; the programs differ a little, as
  # XLA hoists loop-invariant work out of the rolled body) and comes within
  # 3-4% on bytes (a body's bytes are scaled, an approximation).
  assert rolled["flops_counted_once"] < 0.7 * unrolled["flops"]
  assert rolled["flops"] == pytest.approx(unrolled["flops"], rel=0.01)
  assert rolled["bytes"] == pytest.approx(unrolled["bytes"], rel=0.1)


# --- Reports and errors -----------------------------------------------------


def test_roofline_is_the_slower_of_compute_and_memory():
  device = {"peak_flops": 100e12, "hbm_bandwidth": 1e12}
  compute_bound = plan.roofline(5e12, 1e10, device)
  assert compute_bound["seconds_lower_bound"] == pytest.approx(0.05)
  assert compute_bound["bound"] == "compute"
  assert plan.roofline(1e12, 1e11, device)["bound"] == "memory"
  assert plan.roofline(1e12, 1e11, None)["seconds_lower_bound"] is None


def test_compile_out_of_memory_becomes_one_line():
  # XLA:TPU's message, as libtpu 0.0.42.1 prints it.
  error = RuntimeError(
      "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
      "required for HLO temporaries (26.84G) exceeds available HBM (15.75G).")
  message = str(plan._out_of_memory(error, "the training step"))
  assert message == ("does not fit: the training step needs 26.84 GiB of "
                     "15.75 GiB per device.")
  assert plan._out_of_memory(RuntimeError("INTERNAL: other"), "x") is None


def test_epoch_and_evaluation_counts():
  config = imagenet_lfr.get_config()
  assert plan.train_examples(config) == 1281167 - 10000
  assert plan.steps_per_epoch(config) == (1281167 - 10000) // 512
  assert plan.evaluation_steps(config) == {"validation": 2,
                                           "validations": 100, "test": 2}


def _run_plan(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "lfr_jax.plan", *args],
                        cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


def test_cli_unknown_topology_is_one_line(tmp_path):
  proc = _run_plan("--config=configs/mnist_lfr.py", "--topology=v9-8",
                   f"--out={tmp_path}")
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "unknown topology 'v9-8'; valid:" in lines[0]
  assert not (tmp_path / "plan.json").exists()


def test_cli_batch_that_does_not_split_is_named(tmp_path):
  proc = _run_plan("--config=configs/mnist_lfr.py:smoke", "--topology=cpu:3",
                   f"--out={tmp_path}")
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert lines == ["lfr-plan: error: config.data.batch_size 16 is not "
                   "divisible by the 3 devices (1 host(s)) of cpu:3; pick a "
                   "multiple of 3."], proc.stderr


# Small enough to compile for a TPU in well under a minute: a one-block,
# width-4 ResNet on 16x16 images, batch 8, K = 2.
TINY = ["--config=configs/imagenet_lfr.py:smoke", "--config.model.stage_sizes=(1,)",
        "--config.model.width=4", "--config.data.image_size=16",
        "--config.data.batch_size=8", "--config.eval.batch_size=8",
        "--eval=false"]


@needs_libtpu
def test_tiny_lfr_step_compiles_for_a_tpu_slice(tmp_path):
  """The CLI end to end: compile-only TPU devices, the verdict, plan.json."""
  proc = _run_plan(*TINY, "--topology=v5litepod-4", f"--out={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  verdict = proc.stdout.strip().splitlines()[-1]
  assert verdict.startswith("imagenet_lfr:smoke on v5litepod-4: fits (")
  assert " GiB per chip), >= " in verdict and " h for 2 epochs" in verdict
  result = json.loads((tmp_path / "plan.json").read_text())
  for key, kind in (("global_batch", int), ("num_hosts", int),
                    ("step_seconds_lower_bound", float),
                    ("steps_per_epoch", int)):
    assert isinstance(result[key], kind), key
  assert (result["num_devices"], result["num_hosts"]) == (4, 1)
  assert result["device_kind"].startswith("TPU v5")
  # Resolved for the TPU target, not for this CPU host.
  assert result["resolved"]["unroll"] is False
  assert result["resolved"]["conv"] == "lax"
  step = result["train_step"]
  memory = step["memory"]
  assert memory["arguments"] > 0 and memory["generated_code"] > 0
  assert memory["total"] == (memory["arguments"] + memory["outputs"] +
                             memory["temporaries"] + memory["generated_code"]
                             - memory["aliased"])
  assert step["fits"] and 0 < memory["total"] < 16 * topology.GiB
  assert step["flops"] > step["flops_counted_once"] > 0
  assert [l["trips"] for l in step["loops"]] == [2]
  assert result["step_seconds_lower_bound"] == max(step["compute_seconds"],
                                                   step["memory_seconds"]) > 0
  # Refuses to overwrite what it wrote.
  again = _run_plan(*TINY, "--topology=v5litepod-4", f"--out={tmp_path}")
  assert again.returncode == 2 and "--overwrite" in again.stderr


@needs_libtpu
def test_step_that_does_not_fit_is_one_line(tmp_path):
  """XLA:TPU's compile-time out-of-memory, as a user sees it (about 10 s)."""
  proc = _run_plan(*TINY, "--config.data.batch_size=1048576",
                   "--topology=v5litepod-1", f"--out={tmp_path}")
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert re.fullmatch(r"lfr-plan: error: does not fit: the training step "
                      r"needs [\d.]+ GiB of [\d.]+ GiB per device\.", lines[0])
  assert not (tmp_path / "plan.json").exists()


@pytest.mark.slow
@needs_libtpu
def test_tpu_rolled_inner_loop_counts_like_the_unrolled_one(tmp_path):
  """On a TPU compile too, the corrected rolled count matches unrolling."""
  rolled = _run_plan(*TINY, "--topology=v5litepod-1", f"--out={tmp_path}/r")
  unrolled = _run_plan(*TINY, "--topology=v5litepod-1", f"--out={tmp_path}/u",
                       "--config.inner.unroll=full")
  assert rolled.returncode == unrolled.returncode == 0, rolled.stderr[-2000:]
  r = json.loads((tmp_path / "r" / "plan.json").read_text())["train_step"]
  u = json.loads((tmp_path / "u" / "plan.json").read_text())["train_step"]
  assert u["loops"] == []
  assert r["flops"] == pytest.approx(u["flops"], rel=0.03)
  assert r["bytes"] == pytest.approx(u["bytes"], rel=0.3)


def test_scaling_page_is_built_from_the_committed_plans():
  """docs/SCALING.md is what tools/scaling_report.py makes of docs/scaling/."""
  from tools import scaling_report
  plans = scaling_report.load_plans(os.path.join(REPO, scaling_report.PLANS))
  assert plans, "no committed plans under docs/scaling/"
  for name, result in plans.items():
    for key, kind in (("global_batch", int), ("num_hosts", int),
                      ("steps_per_epoch", int)):
      assert isinstance(result[key], kind), (name, key)
    assert name.startswith(f"{result['config']}__{result['topology']}")
  with open(os.path.join(REPO, "docs", "SCALING.md")) as f:
    assert f.read() == scaling_report.build(), (
        "docs/SCALING.md is stale: run python tools/scaling_report.py")


def test_scaling_page_lists_rows_without_a_plan_with_their_command():
  """A wanted row with no committed plan shows as not compiled, with the
  command that makes it (the evaluation step only on the main v3-128 rows)."""
  from tools import scaling_report
  todo = dict(scaling_report.missing({}))
  assert len(todo) == len(scaling_report.EXPECTED)
  assert todo["imagenet_lfr__v3-128"] == (
      "python -m lfr_jax.plan --config=configs/imagenet_lfr.py "
      "--topology=v3-128 --out=docs/scaling/imagenet_lfr__v3-128 --overwrite")
  assert todo["imagenet_llr__v3-128__bf16"].endswith(
      "--overwrite --config.model.dtype=bfloat16 --eval=false")
  assert todo["imagenet_lfr__v6e-64"].endswith("--eval=false")
  present = {"imagenet_lfr__v3-128": {}}
  assert "imagenet_lfr__v3-128" not in dict(scaling_report.missing(present))
  page = scaling_report.main_table({})
  assert page.count(scaling_report.NOT_COMPILED) == sum(
      1 for _, _, variant, _, _ in scaling_report.EXPECTED if not variant)
