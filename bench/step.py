"""Examples/s of one jitted training step per method (SmallCNN, MNIST shapes).

Each step is ``lfr_jax.steps.make_train_step``, the update every training
run uses: objective, double backprop where the method needs it, and the
SGD-momentum update, one jit on a 1-device mesh with the state donated. Timings
are taken after compiling, with ``block_until_ready``, as the median of
``--repeats`` steps, all methods in one process on the same machine.

Run::

    python bench/step.py                      # K = 10 and 40, batch 128
    python bench/step.py --ks=10 --methods=lfr,pgd_at --repeats=5
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (first: this checkout's lfr_jax, fast CPU flags)

import jax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from lfr_jax import cli  # noqa: E402
from lfr_jax import models  # noqa: E402
from lfr_jax import sharding  # noqa: E402
from lfr_jax import text  # noqa: E402

PROG = "bench/step.py"

_METHODS = flags.DEFINE_list(
    "methods", ["standard", "pgd_at", "trades", "llr", "lfr", "gradient_norm",
                "decision_jacobian"], "Methods to time.")
_KS = flags.DEFINE_list("ks", ["10", "40"], "Inner steps K.")
_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps per setting.")
_EPS = flags.DEFINE_float("eps", 0.3, "l_inf radius.")

# Methods whose cost does not depend on K are timed once.
_NO_INNER_LOOP = ("standard", "gradient_norm", "decision_jacobian")


def inner_settings(method: str, num_steps: int) -> dict:
  """Objective settings for ``method`` at ``num_steps`` inner steps."""
  if method in _NO_INNER_LOOP:
    return {}
  # LLR's inner optimizer is Adam with its own step size (0.1).
  step = {} if method == "llr" else {"step_size": 0.01}
  return {"num_steps": num_steps, **step}


def time_step(method: str, num_steps: int) -> tuple[float, float]:
  """Times ``steps.make_train_step``, the step every run uses.

  Returns:
    (seconds of the first call, i.e. compile plus one step; median seconds
    of the timed steps).
  """
  net = models.create("small_cnn", jax.random.key(0))
  mesh = sharding.make_mesh(1)
  # The state comes placed as training places it, so the first call is the
  # only compile.
  step, state = common.make_jax_step(
      method, net, inner_settings(method, num_steps), eps=_EPS.value, lr=0.01,
      momentum=0.9, mesh=mesh)
  key = jax.random.key(2)
  x, y = jax.device_put(
      (jax.random.uniform(key, (_BATCH.value, 28, 28, 1)),
       jax.random.randint(key, (_BATCH.value,), 0, 10)),
      NamedSharding(mesh, P("data")))
  start = time.perf_counter()
  state, metrics = step(state, x, y)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    state, metrics = step(state, x, y)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times)


def run() -> None:
  """Times every (K, method) of the flags; prints the rows as they come."""
  ks = [int(k) for k in _KS.value]
  print(f"# bench/step.py: batch {_BATCH.value}, SmallCNN, median of "
        f"{_REPEATS.value} steps; "
        f"{platform.processor() or platform.machine()}, "
        f"{jax.device_count()}x {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}")
  print(text.markdown_table(["method", "K", "s/step", "examples/s",
                             "× PGD-AT step", "compile s"], []))
  seconds_per_step = {}
  for k in ks:
    for method in _METHODS.value:
      if method in _NO_INNER_LOOP and k != ks[0]:
        continue
      compile_s, seconds = time_step(method, k)
      seconds_per_step[method, k] = seconds
      ratio = ""
      if ("pgd_at", k) in seconds_per_step and method != "pgd_at":
        ratio = f"{seconds / seconds_per_step['pgd_at', k]:.2f}"
      k_label = "-" if method in _NO_INNER_LOOP else str(k)
      print(text.markdown_row([method, k_label, f"{seconds:.3f}",
                               f"{_BATCH.value / seconds:.1f}", ratio,
                               f"{compile_s:.1f}"]), flush=True)


if __name__ == "__main__":
  cli.main(PROG, run, settings_hint="flags such as --ks=10")
