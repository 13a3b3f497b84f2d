"""Examples/s of one jitted training step per method (SmallCNN, MNIST shapes).

Each step is the whole update: objective, double backprop where the method
needs it, and the SGD-momentum update, jitted with donated buffers. Timings
are taken after compiling, with ``block_until_ready``, as the median of
``--repeats`` steps, all methods in one process on the same machine.

Run::

    python bench/step.py                      # K = 10 and 40, batch 128
    python bench/step.py --ks=10 --methods=lfr,pgd_at --repeats=5
"""

from __future__ import annotations

import platform
import statistics
import time

from absl import app
from absl import flags

import lfr_jax  # noqa: F401  (fast CPU flags before jax starts)
import jax
import jax.numpy as jnp
import optax

from lfr_jax import models
from lfr_jax import objectives

_METHODS = flags.DEFINE_list(
    "methods", ["standard", "pgd_at", "trades", "llr", "lfr", "gradient_norm",
                "decision_jacobian"], "Methods to time.")
_KS = flags.DEFINE_list("ks", ["10", "40"], "Inner steps K.")
_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps per setting.")
_EPS = flags.DEFINE_float("eps", 0.3, "l_inf radius.")

# Methods whose cost does not depend on K are timed once.
_NO_INNER_LOOP = ("standard", "gradient_norm", "decision_jacobian")


def make_step(method: str, num_steps: int, net: models.Network):
  """A jitted SGD step of ``method`` with ``num_steps`` inner steps."""
  settings = {}
  if method not in _NO_INNER_LOOP:
    settings["num_steps"] = num_steps
    # LLR's inner optimizer is Adam with its own step size (0.1).
    if method != "llr":
      settings["step_size"] = 0.01
  objective = objectives.build(method, **settings)
  optimizer = optax.sgd(0.01, momentum=0.9)

  def step(params, opt_state, model_state, x, y, key):
    def loss_fn(p):
      return objective(net.replace(params=p, state=model_state), x, y, key,
                       _EPS.value)

    (loss, (metrics, new_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, new_state, loss

  return jax.jit(step, donate_argnums=(0, 1, 2)), optimizer


def time_step(method: str, num_steps: int) -> tuple[float, float]:
  """Returns (compile seconds, median step seconds)."""
  net = models.create("small_cnn", jax.random.key(0))
  # TRADES' zero fc3 makes the very first input gradients zero; a few
  # standard steps would not change the cost, so time from initialization.
  step, optimizer = make_step(method, num_steps, net)
  key = jax.random.key(1)
  x = jax.random.uniform(key, (_BATCH.value, 28, 28, 1))
  y = jax.random.randint(key, (_BATCH.value,), 0, 10)
  params, opt_state, state = net.params, optimizer.init(net.params), net.state
  start = time.perf_counter()
  params, opt_state, state, loss = step(params, opt_state, state, x, y, key)
  jax.block_until_ready(loss)
  compile_s = time.perf_counter() - start
  times = []
  for i in range(_REPEATS.value):
    start = time.perf_counter()
    params, opt_state, state, loss = step(params, opt_state, state, x, y,
                                          jax.random.fold_in(key, i))
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times)


def main(argv):
  del argv
  ks = [int(k) for k in _KS.value]
  print(f"# bench/step.py: batch {_BATCH.value}, SmallCNN, median of "
        f"{_REPEATS.value} steps; {platform.processor() or platform.machine()}, "
        f"{jax.device_count()}x {jax.devices()[0].device_kind}, jax {jax.__version__}")
  print("| method | K | s/step | examples/s | × PGD-AT step | compile s |")
  print("|---|---|---|---|---|---|")
  results = {}
  for k in ks:
    for method in _METHODS.value:
      if method in _NO_INNER_LOOP and k != ks[0]:
        continue
      compile_s, seconds = time_step(method, k)
      results[(method, k)] = seconds
      ratio = ""
      if ("pgd_at", k) in results and method != "pgd_at":
        ratio = f"{seconds / results[('pgd_at', k)]:.2f}"
      k_label = "-" if method in _NO_INNER_LOOP else str(k)
      print(f"| {method} | {k_label} | {seconds:.3f} | "
            f"{_BATCH.value / seconds:.1f} | {ratio} | {compile_s:.1f} |",
            flush=True)


if __name__ == "__main__":
  app.run(main)
