"""``lfr-plan``: will a preset fit on a TPU slice, and how fast can it run at best?

Compiles the exact training step ``train.py`` runs (``steps.make_train_step``
with the config's objective, optimizer, schedules and mesh) and its robust
evaluation step for a target that need not be attached: a Cloud TPU slice
(``v3-128``, ``v4-128``, ``v5litepod-256``, ``v5p-128``, ``v6e-64``), a
libtpu topology (``v3:8x8``) or a CPU mesh (``cpu:8``); see
:mod:`lfr_jax.topology`. Parameters and optimizer state are abstract
(``jax.eval_shape``): nothing is allocated, so a ResNet-152 pod step compiles
on a laptop. Every backend-dependent choice is made for the target platform:
the inner loop's unrolling (``inner.unroll`` "auto"), the convolution
(``model.conv`` "auto") and the XLA flags (``XLA_FLAGS`` for CPU targets,
``LIBTPU_INIT_ARGS`` for TPU ones, both recorded).

From the compiled executables it reports, per device: memory (arguments +
outputs + temporaries + generated code - aliased buffers) against the chip's
HBM; FLOPs and bytes accessed per step with every loop trip counted
(:mod:`lfr_jax.hlo_cost`); and a roofline lower bound of the step time,
``max(FLOPs / peak FLOP/s, bytes / HBM bandwidth)``, from the chip table of
:mod:`lfr_jax.topology`, with the epoch and whole-run bounds it implies. These
are compiler estimates and lower bounds, not measured times: they leave out
communication between chips, the input pipeline and everything that keeps a
chip below its peak.

Usage::

    python -m lfr_jax.plan --config=configs/imagenet_llr.py --topology=v3-128 \\
        --out=DIR [--config.model.dtype=bfloat16 ...] [--eval=false]
    lfr-plan --config=cifar10_lfr --topology=v5litepod-8 --out=DIR

It prints a table and one verdict line, e.g. ``imagenet_llr on v3-128: fits
(4.2 of 16 GiB per core), >= 0.05 s/step, >= 3.4 h for 100 epochs``, and
writes ``DIR/plan.json`` (keys in docs/SCALING.md). User mistakes exit with
status 2 and one line: an unknown topology (the valid ones listed), no
libtpu (the install line), a batch that does not split over the devices, a
step that does not fit ("does not fit: needs X GiB of Y GiB").

Example::

    from configs import mnist_lfr
    from lfr_jax import plan
    config = mnist_lfr.get_config("smoke")
    plan.train_examples(config), plan.image_shape(config)  # (64, (28, 28, 1))
    plan.steps_per_epoch(config)                           # 4
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform as host_platform
import re
import resource
import sys
import time
from typing import Any

import lfr_jax  # noqa: F401  (fast XLA CPU flags before jax starts)

from lfr_jax import cli
from lfr_jax import config_check
from lfr_jax import text
from lfr_jax import topology

PROG = "lfr-plan"
SCHEMA = 1
# Full training splits (tfds / the IDX files); the config's validation_size
# comes off the end, train_size caps the rest (as lfr_jax.data.load does).
TRAIN_SPLIT = {"mnist": 60000, "cifar10": 50000, "imagenet2012": 1281167}
TEST_SPLIT = {"mnist": 10000, "cifar10": 10000, "imagenet2012": 50000}
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


class PlanError(ValueError):
  """A plan that cannot be made as asked (one line)."""


# ----------------------------------------------------------------------------
# What one epoch and one run hold


def image_shape(config) -> tuple[int, int, int]:
  """(H, W, C) of the training images, as the data pipeline delivers them."""
  from lfr_jax import data  # pylint: disable=g-import-not-at-top
  info = data.DATASETS[config.data.name]
  size = config.data.image_size
  if size:
    return (size, size, info.image_shape[-1] if info.image_shape else 3)
  return tuple(info.image_shape)


def train_examples(config) -> int:
  """Training examples per epoch: the split minus validation, capped by train_size."""
  d = config.data
  return int(d.train_size or TRAIN_SPLIT[d.name] - d.validation_size)


def steps_per_epoch(config) -> int:
  """Full batches per epoch (the remainder is dropped, as in training)."""
  return train_examples(config) // config.data.batch_size


def evaluation_steps(config) -> dict[str, int]:
  """Evaluation batches: per validation pass, per run of validations, at test.

  Returns:
    {"validation": batches per validation pass, "validations": passes over
    the run (every ``eval.every_epochs`` epochs), "test": batches of the
    final test}.
  """
  e = config.eval
  test = e.test_examples or TEST_SPLIT[config.data.name]
  epochs = math.ceil(config.train.num_epochs)
  passes = epochs // e.every_epochs if e.every_epochs else 0
  return {"validation": math.ceil(e.val_examples / e.batch_size),
          "validations": passes,
          "test": math.ceil(test / e.batch_size)}


# ----------------------------------------------------------------------------
# Compiling for the target


def _check_batches(config, target: topology.Target) -> None:
  for name, batch in (("data.batch_size", config.data.batch_size),
                      ("eval.batch_size", config.eval.batch_size)):
    if batch % target.num_devices or batch % target.num_hosts:
      raise PlanError(
          f"config.{name} {batch} is not divisible by the {target.num_devices} "
          f"devices ({target.num_hosts} host(s)) of {target.name}; pick a "
          f"multiple of {math.lcm(target.num_devices, target.num_hosts)}.")


def _gib(n: float) -> str:
  return f"{n / topology.GiB:.2f}"


def _out_of_memory(error: Exception, what: str) -> PlanError | None:
  """"does not fit: needs X GiB of Y GiB" for a compiler's out-of-memory error."""
  message = str(error)
  if "RESOURCE_EXHAUSTED" not in message and "out of memory" not in message.lower():
    return None
  units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
  found = (re.search(r"\(([\d.]+)([KMGT])\)\s*exceeds available \w+ \(([\d.]+)([KMGT])\)",
                     message) or
           re.search(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT])", message))
  if found:
    need = float(found.group(1)) * units[found.group(2)]
    have = float(found.group(3)) * units[found.group(4)]
    return PlanError(f"does not fit: {what} needs {_gib(need)} GiB of "
                     f"{_gib(have)} GiB per device.")
  return PlanError(f"does not fit: {what}: {text.one_line(error)}")


def _abstract(tree, sharding):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def _compile(jitted, args, what: str) -> tuple[Any, float, float]:
  """(compiled, lowering seconds, compile seconds)."""
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    oom = _out_of_memory(e, what)
    if oom is not None:
      raise oom from None
    raise
  return compiled, t1 - t0, time.perf_counter() - t1


def compile_steps(config, mesh, *, include_eval: bool = True
                  ) -> dict[str, Any]:
  """Compiles the training step (and the evaluation step) on ``mesh``.

  Exactly what ``training.train_and_evaluate`` builds, with the model and
  optimizer state abstract.

  Args:
    config: a checked training config.
    mesh: from ``sharding.make_mesh(devices=...)``.
    include_eval: also compile the robust evaluation step.

  Returns:
    {"train": (compiled, lower s, compile s), "eval": likewise or None,
    "settings": the objective's settings, "model_kwargs": the model's}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lfr_jax import models  # pylint: disable=g-import-not-at-top
  from lfr_jax import objectives  # pylint: disable=g-import-not-at-top
  from lfr_jax import sharding  # pylint: disable=g-import-not-at-top
  from lfr_jax import steps  # pylint: disable=g-import-not-at-top
  from lfr_jax import train_state  # pylint: disable=g-import-not-at-top

  target_platform = sharding.platform(mesh)
  settings = objectives.settings_from_config(config, target_platform)
  objective = objectives.build(config.method, **settings)
  model_kwargs = models.kwargs_from_config(
      config.model, platform=target_platform, remat=config.train.remat)
  spe = max(1, steps_per_epoch(config))
  tx, lr_fn = train_state.make_optimizer(config.optim, spe)

  graphdefs = []

  def fresh_state():
    root = jax.random.key(config.seed)
    net = models.create(config.model.name, jax.random.fold_in(root, 0),
                        **model_kwargs)
    graphdefs.append(net.graphdef)
    return train_state.create_train_state(net, tx, jax.random.fold_in(root, 1))

  try:
    shapes = jax.eval_shape(fresh_state)
  except (TypeError, ValueError) as e:
    raise PlanError(f"model {config.model.name!r} with settings "
                    f"{model_kwargs} does not build: {text.one_line(e)}"
                    ) from None
  graphdef = graphdefs[0]
  replicated, batch = sharding.replicated(mesh), sharding.batch(mesh)
  state = _abstract(shapes, replicated)
  shape = image_shape(config)
  n = config.data.batch_size
  x = jax.ShapeDtypeStruct((n, *shape), jnp.float32, sharding=batch)
  y = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=batch)
  train_step = steps.make_train_step(
      objective, graphdef, tx, lr_fn,
      train_state.eps_schedule(config.inner, spe), mesh, steps_per_epoch=spe)
  out = {"settings": settings, "model_kwargs": model_kwargs,
         "train": _compile(train_step, (state, x, y), "the training step"),
         "eval": None}
  if include_eval:
    m = config.eval.batch_size
    eval_step = steps.make_robust_eval_step(graphdef, config.eval, mesh)
    key = jax.eval_shape(lambda: jax.random.key(0))
    args = (state.params, state.model_state,
            jax.ShapeDtypeStruct((m, *shape), jnp.float32, sharding=batch),
            jax.ShapeDtypeStruct((m,), jnp.int32, sharding=batch),
            jax.ShapeDtypeStruct((m,), jnp.float32, sharding=batch),
            jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated))
    out["eval"] = _compile(eval_step, args, "the evaluation step")
  return out


# ----------------------------------------------------------------------------
# Reading the compiled steps


def memory(compiled) -> dict[str, int]:
  """Per-device bytes of one compiled step (``memory_analysis()``).

  Returns:
    {"arguments", "outputs", "temporaries", "generated_code", "aliased",
    "total"}: total = arguments + outputs + temporaries + generated code -
    aliased (a donated argument and the output that reuses it count once).
  """
  m = compiled.memory_analysis()
  out = {"arguments": int(m.argument_size_in_bytes),
         "outputs": int(m.output_size_in_bytes),
         "temporaries": int(m.temp_size_in_bytes),
         "generated_code": int(m.generated_code_size_in_bytes),
         "aliased": int(m.alias_size_in_bytes)}
  out["total"] = (out["arguments"] + out["outputs"] + out["temporaries"] +
                  out["generated_code"] - out["aliased"])
  return out


def roofline(flops: float, bytes_accessed: float,
             device: dict[str, float] | None) -> dict[str, Any]:
  """``max(FLOPs / peak, bytes / bandwidth)``: no step can run faster.

  Args:
    flops: FLOPs per step per device.
    bytes_accessed: HBM bytes per step per device.
    device: {"peak_flops", "hbm_bandwidth"} of one device, or None (no spec,
      e.g. a CPU): then every figure is None.

  Returns:
    {"compute_seconds", "memory_seconds", "seconds_lower_bound", "bound":
    "compute" or "memory"}.
  """
  if device is None:
    return {"compute_seconds": None, "memory_seconds": None,
            "seconds_lower_bound": None, "bound": None}
  compute = flops / device["peak_flops"]
  traffic = bytes_accessed / device["hbm_bandwidth"]
  return {"compute_seconds": compute, "memory_seconds": traffic,
          "seconds_lower_bound": max(compute, traffic),
          "bound": "compute" if compute >= traffic else "memory"}


def step_report(compiled_step, device: dict[str, float] | None
                ) -> dict[str, Any]:
  """Memory, loop-corrected cost and roofline of one compiled step."""
  from lfr_jax import hlo_cost  # pylint: disable=g-import-not-at-top
  compiled, lower_s, compile_s = compiled_step
  cost = hlo_cost.loop_corrected_cost(compiled)
  mem = memory(compiled)
  report = {"lower_seconds": lower_s, "compile_seconds": compile_s,
            "memory": mem, "flops": cost["flops"], "bytes": cost["bytes"],
            "flops_counted_once": cost["flops_counted_once"],
            "bytes_counted_once": cost["bytes_counted_once"],
            "loops": cost["loops"]}
  report.update(roofline(cost["flops"], cost["bytes"], device))
  if device is not None:
    report["fits"] = mem["total"] <= device["hbm_bytes"]
    report["margin_bytes"] = device["hbm_bytes"] - mem["total"]
  return report


# ----------------------------------------------------------------------------
# The plan


def _versions() -> dict[str, str]:
  out = {}
  for package in ("jax", "jaxlib", "libtpu", "flax"):
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      out[package] = ""
  return out


def _host() -> dict[str, Any]:
  load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {"machine": f"{os.cpu_count()}-core {host_platform.machine()} CPU",
          "load_average_1m": round(load[0], 2),
          "peak_rss_bytes": int(rss) * (1 if sys.platform == "darwin" else 1024)}


def _bounds(plan: dict[str, Any], config) -> None:
  """Adds the epoch and run lower bounds (seconds/hours) to ``plan``."""
  train_s = plan["train_step"]["seconds_lower_bound"]
  evaluation = plan["eval_step"]
  eval_s = evaluation["seconds_lower_bound"] if evaluation else 0.0
  counts = plan["eval_steps"]
  if train_s is None or eval_s is None:
    for key in ("epoch_seconds_lower_bound", "train_hours_lower_bound",
                "run_hours_lower_bound"):
      plan[key] = None
    return
  epoch = plan["steps_per_epoch"] * train_s
  train = plan["total_steps"] * train_s
  validation = counts["validation"] * counts["validations"] * eval_s
  test = counts["test"] * eval_s
  plan["epoch_seconds_lower_bound"] = epoch
  plan["train_hours_lower_bound"] = train / 3600
  plan["run_hours_lower_bound"] = (train + validation + test) / 3600
  plan["eval_hours_lower_bound"] = (validation + test) / 3600 if evaluation \
      else None
  del config


def make_plan(config, topology_name: str, *, config_name: str,
              overrides: list[str] = (), include_eval: bool = True
              ) -> dict[str, Any]:
  """Compiles ``config``'s steps for a target and reads the plan off them.

  Args:
    config: a training config (checked here).
    topology_name: see :func:`lfr_jax.topology.parse`.
    config_name: the preset's name for the report (e.g. "imagenet_llr").
    overrides: the ``--config.*`` flags, recorded.
    include_eval: also compile the robust evaluation step.

  Returns:
    The plan (see docs/SCALING.md for its keys).

  Raises:
    PlanError, topology.TopologyError, config_check.ConfigError: one line.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from lfr_jax import sharding  # pylint: disable=g-import-not-at-top
  config_check.validate(config)
  target = topology.parse(topology_name)
  found = topology.devices(target)
  target = topology.describe(target, found)
  _check_batches(config, target)
  mesh = sharding.make_mesh(devices=found)
  cores = topology.cores_per_device(found)
  device = (topology.per_device(target.chip, cores) if target.chip else None)
  unit = ("core" if target.chip and cores < target.chip.cores else "chip")
  start = _host()
  steps = compile_steps(config, mesh, include_eval=include_eval)
  spe = steps_per_epoch(config)
  plan = {
      "schema": SCHEMA,
      "date": datetime.date.today().isoformat(),
      "config": config_name, "overrides": list(overrides),
      "method": config.method, "model": config.model.name,
      "dataset": config.data.name,
      "topology": topology_name, "platform": target.platform,
      "libtpu_topology": target.libtpu_name, "chip_config": target.chip_config,
      "device_kind": found[0].device_kind, "num_devices": target.num_devices,
      "num_hosts": target.num_hosts, "cores_per_device": cores,
      "memory_unit": unit,
      "global_batch": int(config.data.batch_size),
      "batch_per_device": config.data.batch_size // target.num_devices,
      "eval_batch": int(config.eval.batch_size),
      "train_examples": train_examples(config),
      "steps_per_epoch": spe, "num_epochs": float(config.train.num_epochs),
      "total_steps": max(1, math.ceil(config.train.num_epochs * spe)),
      "eval_steps": evaluation_steps(config),
      "resolved": {
          "unroll": bool(steps["settings"].get("unroll", False)),
          "eval_unroll": _eval_unroll(config, target.platform),
          "conv": steps["model_kwargs"].get("conv", ""),
          "dtype": steps["model_kwargs"].get("dtype", "float32"),
          "remat": config.train.remat,
          "matmul_precision": str(jax.config.jax_default_matmul_precision
                                  or "default"),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "libtpu_init_args": os.environ.get("LIBTPU_INIT_ARGS", ""),
      },
      "chip": (None if target.chip is None else
               {"name": target.chip.name, "peak_flops": target.chip.peak_flops,
                "hbm_bytes": target.chip.hbm_bytes,
                "hbm_bandwidth": target.chip.hbm_bandwidth,
                "source": target.chip.source}),
      "device": device,
      "train_step": step_report(steps["train"], device),
      "eval_step": (step_report(steps["eval"], device) if steps["eval"]
                    else None),
  }
  steps_done = plan["train_step"], plan["eval_step"]
  plan["step_seconds_lower_bound"] = plan["train_step"]["seconds_lower_bound"]
  plan["memory_per_device_bytes"] = max(
      s["memory"]["total"] for s in steps_done if s)
  plan["hbm_per_device_bytes"] = device["hbm_bytes"] if device else None
  plan["fits"] = (all(s["fits"] for s in steps_done if s) if device
                  else None)
  plan["compile_seconds"] = sum(s["compile_seconds"] + s["lower_seconds"]
                                for s in steps_done if s)
  _bounds(plan, config)
  end = _host()
  plan["host"] = {"machine": end["machine"],
                  "load_average_1m": [start["load_average_1m"],
                                      end["load_average_1m"]],
                  "peak_rss_bytes": end["peak_rss_bytes"]}
  plan["versions"] = _versions()
  plan["config_values"] = json.loads(config.to_json())
  plan["verdict"] = verdict(plan)
  return plan


def _eval_unroll(config, target_platform: str) -> bool:
  from lfr_jax import objectives  # pylint: disable=g-import-not-at-top
  return objectives.resolve_unroll(config.eval.unroll, target_platform)


# ----------------------------------------------------------------------------
# Reporting


def _seconds(value: float | None) -> str:
  if value is None:
    return "n/a"
  return f"{value:.3g} s"


def verdict(plan: dict[str, Any]) -> str:
  """The plan's one-line verdict: fit, step and run lower bounds."""
  unit = plan["memory_unit"]
  head = f"{plan['config']} on {plan['topology']}"
  used = plan["memory_per_device_bytes"] / topology.GiB
  if plan["hbm_per_device_bytes"] is None:
    return (f"{head}: {used:.2f} GiB per device (no HBM or peak figures for "
            f"{plan['platform']}, so no fit or time bounds)")
  hbm = plan["hbm_per_device_bytes"] / topology.GiB
  fit = "fits" if plan["fits"] else "DOES NOT FIT"
  epochs = plan["num_epochs"]
  epochs_text = f"{epochs:g} epoch{'s' if epochs != 1 else ''}"
  return (f"{head}: {fit} ({used:.1f} of {hbm:.0f} GiB per {unit}), "
          f">= {plan['step_seconds_lower_bound']:.3g} s/step, "
          f">= {plan['train_hours_lower_bound']:.3g} h for {epochs_text}")


def report_lines(plan: dict[str, Any]) -> list[str]:
  """The printed table: the target, then per step memory, cost and bounds."""
  gib = topology.GiB
  lines = [f"{plan['config']} ({plan['method']}, {plan['model']}, "
           f"{plan['dataset']}) on {plan['topology']}: {plan['num_devices']} "
           f"x {plan['device_kind']} ({plan['cores_per_device']} core(s) per "
           f"device), {plan['num_hosts']} host(s)",
           f"  batch {plan['global_batch']} ({plan['batch_per_device']} per "
           f"device), {plan['steps_per_epoch']} steps/epoch, "
           f"{plan['num_epochs']:g} epochs; resolved for "
           f"{plan['platform']}: " + ", ".join(
               f"{k}={v}" for k, v in plan["resolved"].items()
               if k in ("unroll", "eval_unroll", "conv", "dtype", "remat",
                        "matmul_precision"))]
  for name in ("train_step", "eval_step"):
    step = plan[name]
    if step is None:
      continue
    m = step["memory"]
    lines.append(
        f"  {name}: memory {m['total'] / gib:.2f} GiB per device "
        f"(arguments {m['arguments'] / gib:.2f}, outputs "
        f"{m['outputs'] / gib:.2f}, temporaries {m['temporaries'] / gib:.2f},"
        f" code {m['generated_code'] / gib:.2f}, aliased "
        f"{m['aliased'] / gib:.2f})" + (
            f" of {plan['hbm_per_device_bytes'] / gib:.2f} GiB HBM: "
            f"{'fits' if step['fits'] else 'DOES NOT FIT'}, margin "
            f"{step['margin_bytes'] / gib:.2f} GiB"
            if plan["hbm_per_device_bytes"] else ""))
    loops = "; ".join(f"{l['trips']} trips of {l['body_flops']:.3g} FLOPs"
                      for l in step["loops"]) or "no loops"
    lines.append(
        f"    {step['flops']:.3g} FLOPs and {step['bytes']:.3g} bytes per "
        f"step per device (counted once by XLA: {step['flops_counted_once']:.3g}"
        f" / {step['bytes_counted_once']:.3g}; {loops})")
    lines.append(
        f"    roofline: compute {_seconds(step['compute_seconds'])}, memory "
        f"{_seconds(step['memory_seconds'])} -> >= "
        f"{_seconds(step['seconds_lower_bound'])} per step; compiled in "
        f"{step['compile_seconds']:.0f} s (+{step['lower_seconds']:.0f} s "
        f"lowering)")
  if plan.get("run_hours_lower_bound") is not None:
    lines.append(
        f"  lower bounds: epoch {plan['epoch_seconds_lower_bound'] / 60:.3g} "
        f"min, training {plan['train_hours_lower_bound']:.3g} h, run with "
        f"evaluation {plan['run_hours_lower_bound']:.3g} h (compiler "
        f"estimates: no communication, input pipeline or stalls)")
  lines.append(plan["verdict"])
  return lines


def write_plan(plan: dict[str, Any], out_dir: str, overwrite: bool) -> str:
  """Writes ``out_dir/plan.json``; refuses to replace one unless ``overwrite``."""
  path = os.path.join(out_dir, "plan.json")
  if os.path.exists(path) and not overwrite:
    raise PlanError(f"{path} exists; pass --overwrite to replace it.")
  os.makedirs(out_dir, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(plan, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
  return path


# ----------------------------------------------------------------------------
# The program


def config_name(config_path: str) -> str:
  """``configs/imagenet_llr.py:quick`` -> "imagenet_llr:quick"."""
  path, _, variant = config_path.partition(":")
  base = os.path.splitext(os.path.basename(path))[0]
  return f"{base}:{variant}" if variant else base


def _force_cpu_devices(name: str) -> None:
  """For ``cpu:N``, asks XLA for N host devices (before JAX starts)."""
  match = re.fullmatch(r"\s*cpu:(\d+)\s*", name.lower())
  if not match:
    return
  flags = os.environ.get("XLA_FLAGS", "")
  if DEVICE_COUNT_FLAG not in flags:
    os.environ["XLA_FLAGS"] = (
        f"{flags} {DEVICE_COUNT_FLAG}={int(match.group(1))}").strip()


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config = config_flags.DEFINE_config_file(
      "config", None, "Config preset, e.g. configs/imagenet_llr.py (or a "
      "preset name); override fields with --config.a.b=value.",
      lock_config=True)
  flags.DEFINE_string("topology", None, "Target: a Cloud TPU type (v3-128, "
                      "v4-128, v5litepod-256, v5p-128, v6e-64), a libtpu "
                      "topology (v3:8x8) or cpu:N.")
  flags.DEFINE_string("out", None, "Folder for plan.json.")
  flags.DEFINE_bool("eval", True, "Also compile the evaluation step.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing plan.json.")
  flags.mark_flags_as_required(["config", "topology", "out"])
  return config


def entry() -> None:
  """The program: ``python -m lfr_jax.plan`` and the ``lfr-plan`` script."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  config_flag = _define_flags()
  argv = list(sys.argv)
  for arg in argv:
    if arg.startswith("--topology="):
      _force_cpu_devices(arg.split("=", 1)[1])

  def run(config) -> None:
    values = flags.FLAGS
    _force_cpu_devices(values.topology)
    if os.path.exists(os.path.join(values.out, "plan.json")) and \
        not values.overwrite:
      raise PlanError(f"{os.path.join(values.out, 'plan.json')} exists; "
                      f"pass --overwrite to replace it.")
    name = config_name(next((a.split("=", 1)[1] for a in sys.argv
                             if a.startswith("--config=")), "config"))
    overrides = [a for a in argv if a.startswith("--config.")]
    plan = make_plan(config, values.topology, config_name=name,
                     overrides=overrides, include_eval=values.eval)
    path = write_plan(plan, values.out, values.overwrite)
    for line in report_lines(plan)[:-1]:
      print(line)
    print(f"  wrote {path}")
    print(plan["verdict"], flush=True)

  cli.main(PROG, run, [config_flag],
           (PlanError, topology.TopologyError, config_check.ConfigError))


if __name__ == "__main__":
  entry()
