"""How the JAX LFR training step scales with K, with the batch, and over devices.

Three sweeps of ``lfr_jax.steps.make_train_step`` with
``objectives.build("lfr")`` on SmallCNN (TRADES weights, fc3 made non-zero):

1. K in ``--ks`` at batch ``--k_batch``;
2. batch in ``--batches`` at K = ``--batch_k``;
3. a data-parallel step on a mesh of ``--devices`` simulated CPU devices
   (``--xla_force_host_platform_device_count``, added to the existing
   ``XLA_FLAGS`` so the fast-conv flag stays) against a 1-device mesh in the
   same process, on the same global batch ``--sharded_batch``; the overhead
   ratio is t(N devices) / t(1 device), and the two losses must agree.

Every setting runs in a fresh subprocess, so its memory is its own. Memory:
``jax.devices()[0].memory_stats()`` gives the device peak where the backend
keeps one (GPU); on CPU it is None and that column reads n/a. The process's
peak resident set (VmHWM of /proc/self/status; ``resource.getrusage``
ru_maxrss where /proc is missing) is reported after compiling (compile peak)
and during the steps (step peak: VmHWM is reset through /proc/self/clear_refs
after compiling; where the reset is refused it is the lifetime peak, and the
output says so), and as the step peak minus the RSS just before the steps.
XLA's own buffer plan (``compiled.memory_analysis()``: temporaries plus
arguments plus outputs) is another column. Times are the median of
``--repeats`` steps after compiling and ``--warmup`` steps, with
``block_until_ready``.

Run::

    python bench/scaling.py                                # all three sweeps
    python bench/scaling.py --sweeps=k --ks=1,10 --repeats=3
    python bench/scaling.py --ks=1 --batches=8 --batch_k=1 --sharded_batch=8 \\
        --sharded_k=1 --repeats=1 --warmup=0              # smoke
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (first: this checkout's lfr_jax, fast CPU flags)

import jax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from lfr_jax import cli  # noqa: E402
from lfr_jax import files  # noqa: E402
from lfr_jax import sharding  # noqa: E402
from lfr_jax import text  # noqa: E402

FLAGS = flags.FLAGS
PROG = "bench/scaling.py"
DEVICE_FLAG = "--xla_force_host_platform_device_count"
MiB = 1024 * 1024


def define_flags() -> None:
  """Defines this script's flags (called only when run as a script)."""
  flags.DEFINE_list("sweeps", ["k", "batch", "sharded"],
                    "Which sweeps: k, batch, sharded.")
  flags.DEFINE_list("ks", ["1", "5", "10", "20", "40"], "K values (sweep k).")
  flags.DEFINE_integer("k_batch", 128, "Batch of the K sweep.")
  flags.DEFINE_list("batches", ["32", "64", "128", "256", "512", "1024"],
                    "Batch sizes (sweep batch).")
  flags.DEFINE_integer("batch_k", 10, "K of the batch sweep.")
  flags.DEFINE_integer("devices", 8, "Simulated CPU devices (sweep sharded).")
  flags.DEFINE_integer("sharded_batch", 256, "Global batch of the sharded "
                       "sweep; must divide by --devices.")
  flags.DEFINE_integer("sharded_k", 10, "K of the sharded sweep.")
  flags.DEFINE_integer("repeats", 5, "Timed steps per setting.")
  flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling.")
  flags.DEFINE_float("eps", 0.3, "l_inf radius.")
  flags.DEFINE_float("step_size", 0.01, "Inner sign-step length.")
  flags.DEFINE_float("lam", 0.02, "LFR weight.")
  flags.DEFINE_string("child", "", "Internal: run one setting, print JSON.")
  flags.DEFINE_string("json", "", "Also write the results to this JSON file.")


# ---------------------------------------------------------------------------
# Memory


def _status_kib(field: str) -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def peak_rss_mib() -> float:
  """Peak resident set of this process in MiB (VmHWM, else ru_maxrss)."""
  kib = _status_kib("VmHWM")
  if kib is None:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  return kib / 1024


def current_rss_mib() -> float:
  """Current resident set in MiB (0 where /proc is missing)."""
  return (_status_kib("VmRSS") or 0) / 1024


def reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0); False if refused."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


# ---------------------------------------------------------------------------
# One setting (runs in the child process)


def _setup(num_steps: int, batch: int, mesh, *, eps, step_size, lam):
  """The LFR step, its state and a batch sharded over ``mesh``."""
  net, _ = common.small_cnn_weights(0)
  step, state = common.make_jax_step(
      "lfr", net, common.objective_settings("lfr", num_steps, step_size, lam),
      eps=eps, lr=0.01, momentum=0.9, mesh=mesh)
  x, y = common.random_batch(batch)
  x, y = jax.device_put((x, y), NamedSharding(mesh, P("data")))
  return step, state, x, y


def _time_steps(compiled, state, x, y, repeats: int, warmup: int):
  for _ in range(warmup):
    state, metrics = compiled(state, x, y)
    jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = compiled(state, x, y)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return times


def measure(num_steps: int, batch: int, *, repeats: int, warmup: int,
            eps: float = 0.3, step_size: float = 0.01, lam: float = 0.02
            ) -> dict[str, Any]:
  """Compiles and times one LFR step setting on one device.

  Returns:
    {"k", "batch", "compile_s", "times", "compile_peak_mib",
     "step_peak_mib", "step_peak_kind", "rss_before_steps_mib", "xla_mib"}.
  """
  mesh = sharding.make_mesh(1)
  step, state, x, y = _setup(num_steps, batch, mesh, eps=eps,
                             step_size=step_size, lam=lam)
  start = time.perf_counter()
  compiled = step.lower(state, x, y).compile()
  compile_s = time.perf_counter() - start
  stats = compiled.memory_analysis()
  xla_bytes = (stats.temp_size_in_bytes + stats.argument_size_in_bytes
               + stats.output_size_in_bytes - stats.alias_size_in_bytes
               ) if stats is not None else float("nan")
  compile_peak = peak_rss_mib()
  reset = reset_peak_rss()
  before = current_rss_mib()
  times = _time_steps(compiled, state, x, y, repeats, warmup)
  device_stats = jax.devices()[0].memory_stats()  # None on CPU
  device_peak = (device_stats or {}).get("peak_bytes_in_use")
  return {"k": num_steps, "batch": batch, "compile_s": compile_s,
          "times": times, "compile_peak_mib": compile_peak,
          "step_peak_mib": peak_rss_mib(),
          "step_peak_kind": "VmHWM since compile" if reset else "lifetime",
          "rss_before_steps_mib": before, "xla_mib": xla_bytes / MiB,
          "device_peak_mib": None if device_peak is None
                             else device_peak / MiB}


def measure_sharded(num_steps: int, batch: int, *, repeats: int, warmup: int,
                    eps: float = 0.3, step_size: float = 0.01,
                    lam: float = 0.02) -> dict[str, Any]:
  """Times the step on a mesh of all devices and on one, same global batch.

  Returns:
    {"devices", "k", "batch", "times_n", "times_1", "compile_n_s",
     "compile_1_s", "loss_n", "loss_1"} (losses of the first step).
  """
  n = jax.device_count()
  out = {"devices": n, "k": num_steps, "batch": batch}
  for tag, mesh in (("n", sharding.make_mesh(n)), ("1", sharding.make_mesh(1))):
    step, state, x, y = _setup(num_steps, batch, mesh, eps=eps,
                               step_size=step_size, lam=lam)
    start = time.perf_counter()
    compiled = step.lower(state, x, y).compile()
    out[f"compile_{tag}_s"] = time.perf_counter() - start
    state, metrics = compiled(state, x, y)
    out[f"loss_{tag}"] = float(metrics["loss"])
    out[f"times_{tag}"] = _time_steps(compiled, state, x, y, repeats, warmup)
  return out


# ---------------------------------------------------------------------------
# Parent: one subprocess per setting


def run_child(spec: dict[str, Any], devices: int = 1) -> dict[str, Any]:
  """Runs one setting in a fresh interpreter and returns its JSON result.

  Args:
    spec: {"kind": "single" | "sharded", "k", "batch", "repeats", "warmup",
      "eps", "step_size", "lam"}.
    devices: simulated CPU devices (added to XLA_FLAGS when > 1).

  Returns:
    The child's result dict.

  Raises:
    RuntimeError: the child failed (its stderr tail is in the message).
  """
  env = dict(os.environ)
  if devices > 1:
    kept = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                    if not f.startswith(DEVICE_FLAG))
    env["XLA_FLAGS"] = f"{kept} {DEVICE_FLAG}={devices}".strip()
  cmd = [sys.executable, os.path.abspath(__file__),
         f"--child={json.dumps(spec)}"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  return json.loads(lines[-1])


def _child_main(spec: dict[str, Any]) -> None:
  kwargs = {k: spec[k] for k in ("repeats", "warmup", "eps", "step_size",
                                 "lam")}
  if spec["kind"] == "sharded":
    result = measure_sharded(spec["k"], spec["batch"], **kwargs)
  else:
    result = measure(spec["k"], spec["batch"], **kwargs)
  result["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  print(json.dumps(result), flush=True)


def _sweep_cells(r: dict[str, Any], first_s: float, first_units: float,
                 units: float) -> list[str]:
  """A K or batch sweep's row; ``units`` is the swept value (K or batch)."""
  median = statistics.median(r["times"])
  return [r["k"], r["batch"], common.median_and_min(r["times"]),
          f"{r['batch'] / median:.1f}", f"{median / first_s:.2f}",
          f"{(median / first_s) / (units / first_units):.2f}",
          f"{r['compile_peak_mib']:.0f}", f"{r['step_peak_mib']:.0f}",
          f"{r['step_peak_mib'] - r['rss_before_steps_mib']:.0f}",
          f"{r['xla_mib']:.1f}", _device_peak(r), f"{r['compile_s']:.1f}"]


def _device_peak(r: dict[str, Any]) -> str:
  peak = r.get("device_peak_mib")
  return "n/a" if peak is None else f"{peak:.0f}"


def _sweep_header(swept: str) -> list[str]:
  """The K or batch sweep's column titles; ``swept`` is "K" or "batch"."""
  return ["K", "batch", "s/step median (min)", "examples/s", "× first row",
          f"(× first row) ÷ ({swept} ÷ first {swept})",
          "compile peak RSS MiB", "step peak RSS MiB",
          "step peak − RSS before steps MiB", "XLA buffers MiB",
          "device peak MiB", "compile s"]


def _print_sweep(title: str, swept: str, key: str,
                 rows: list[dict[str, Any]]) -> None:
  """Prints a K or batch sweep (``key``: the swept field of each row)."""
  first_s = statistics.median(rows[0]["times"])
  print(f"\n## {title}\n")
  print(text.markdown_table(
      _sweep_header(swept),
      [_sweep_cells(r, first_s, rows[0][key], r[key]) for r in rows]))
  kinds = {r["step_peak_kind"] for r in rows}
  print(f"\nstep peak: {', '.join(sorted(kinds))}", flush=True)


def run() -> None:
  """Runs the sweeps of ``--sweeps`` (or, with ``--child``, one setting)."""
  if FLAGS.child:
    _child_main(json.loads(FLAGS.child))
    return
  child_settings = {"repeats": FLAGS.repeats, "warmup": FLAGS.warmup,
                    "eps": FLAGS.eps, "step_size": FLAGS.step_size,
                    "lam": FLAGS.lam}
  print(f"# bench/scaling.py: JAX LFR step (steps.make_train_step), "
        f"SmallCNN, median of {FLAGS.repeats} steps, one subprocess per row")
  print(f"# {common.machine_line()}")
  warning = common.load_warning(with_torch=False)
  if warning:
    print(warning)
  has_stats = jax.devices()[0].memory_stats() is not None
  print(f"# memory: jax.devices()[0].memory_stats() "
        f"{'gives the device peak' if has_stats else 'is None here (n/a)'}; "
        f"peak RSS = VmHWM of /proc/self/status (compile peak; step peak "
        f"after a clear_refs reset, else ru_maxrss), XLA buffers = "
        f"memory_analysis() temp + args + outputs", flush=True)
  results: dict[str, Any] = {"machine": common.machine_line()}
  if "k" in FLAGS.sweeps:
    rows = [run_child({"kind": "single", "k": int(k),
                       "batch": FLAGS.k_batch, **child_settings})
            for k in FLAGS.ks]
    results["k"] = rows
    _print_sweep(f"K sweep (batch {FLAGS.k_batch})", "K", "k", rows)
  if "batch" in FLAGS.sweeps:
    rows = [run_child({"kind": "single", "k": FLAGS.batch_k, "batch": int(b),
                       **child_settings})
            for b in FLAGS.batches]
    results["batch"] = rows
    _print_sweep(f"Batch sweep (K = {FLAGS.batch_k})", "batch", "batch",
                 rows)
  if "sharded" in FLAGS.sweeps:
    if FLAGS.sharded_batch % FLAGS.devices:
      raise app.UsageError(f"--sharded_batch {FLAGS.sharded_batch} does not "
                           f"divide by --devices {FLAGS.devices}.")
    sharded = run_child({"kind": "sharded", "k": FLAGS.sharded_k,
                         "batch": FLAGS.sharded_batch, **child_settings},
                        devices=FLAGS.devices)
    results["sharded"] = sharded
    median_n = statistics.median(sharded["times_n"])
    median_1 = statistics.median(sharded["times_1"])
    print(f"\n## Sharded (K = {FLAGS.sharded_k}, global batch "
          f"{FLAGS.sharded_batch}, {sharded['devices']} simulated CPU devices; "
          f"XLA_FLAGS='{sharded['xla_flags']}')\n")
    rows = []
    for tag, devices in (("1", 1), ("n", sharded["devices"])):
      times = sharded[f"times_{tag}"]
      rows.append([f"{devices} device{'s' if devices > 1 else ''}",
                   FLAGS.sharded_batch // devices,
                   common.median_and_min(times),
                   f"{FLAGS.sharded_batch / statistics.median(times):.1f}",
                   f"{sharded[f'compile_{tag}_s']:.1f}",
                   f"{sharded[f'loss_{tag}']:.6f}"])
    print(text.markdown_table(
        ["mesh", "per-device batch", "s/step median (min)", "examples/s",
         "compile s", "first-step loss"], rows))
    difference = (abs(sharded["loss_n"] - sharded["loss_1"])
                  / max(abs(sharded["loss_1"]), 1e-12))
    print(f"\noverhead ratio t({sharded['devices']} devices) / t(1 device) = "
          f"{median_n / median_1:.2f} (simulated devices share the same "
          f"cores, so this measures partitioning overhead, not a speed-up); "
          f"first-step losses differ by {difference:.1e} (relative)",
          flush=True)
  if FLAGS.json:
    with files.atomic_file(FLAGS.json) as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  define_flags()
  cli.main(PROG, run, user_errors=(app.UsageError,),
           settings_hint="flags such as --sweeps=k")
