"""The LFR inner step's core, H sign(grad), reverse-over-reverse vs forward-over-reverse.

Each LFR inner step ascends ``sum_i ||d CE_i / d x||_1``, whose input
gradient is the Hessian-vector product ``H sign(g)`` with ``g = d CE / d x``.
Three ways to compute it, jitted, on SmallCNN in eval mode (the inner loop's
mode), batch 128:

- ``rev-rev fast``: ``jax.grad`` of the l1 norm of ``jax.grad`` through our
  model, whose conv is ``models.conv.fast_conv_general_dilated`` (the
  library's default; reverse-mode only, ``jax.jvp`` through it raises);
- ``fwd-rev lax``: forward-over-reverse, ``jax.linearize`` (``jax.jvp`` plus
  partial evaluation, so ``g`` is computed once) of ``jax.grad``, then the
  linear map applied to ``sign(g)``. It needs a model built on plain
  ``lax.conv_general_dilated``: :func:`lax_small_cnn_logits` computes the
  same logits from the same parameters;
- ``rev-rev lax``: reverse-over-reverse through the plain-lax model.

A reference row times ``g`` alone (one backward pass). All variants must give
the same vector (max |difference| / max |value| <= 1e-5); each timing is the
median of ``--repeats`` calls after compiling, with ``block_until_ready``.

Run::

    python bench/hvp_modes.py                        # batch 128, 20 repeats
    python bench/hvp_modes.py --batch=8 --repeats=1  # smoke
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any, Callable

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (first: this checkout's lfr_jax, fast CPU flags)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax import lax  # noqa: E402

from lfr_jax import cli  # noqa: E402
from lfr_jax import models  # noqa: E402
from lfr_jax import regularizers  # noqa: E402
from lfr_jax import text  # noqa: E402
from lfr_jax.models import layers  # noqa: E402

FLAGS = flags.FLAGS
PROG = "bench/hvp_modes.py"
REFERENCE = "rev-rev fast"
TOLERANCE = 1e-5


def define_flags() -> None:
  """Defines this script's flags (called only when run as a script)."""
  flags.DEFINE_integer("batch", 128, "Batch size.")
  flags.DEFINE_integer("repeats", 20, "Timed calls per variant.")
  flags.DEFINE_integer("rounds", 2, "The variants are timed in turn, "
                       "``repeats / rounds`` calls each per round.")
  flags.DEFINE_integer("seed", 0, "Seed of the weights and the batch.")


def lax_small_cnn_logits(params: Any, x: jax.Array) -> jax.Array:
  """SmallCNN's eval-mode logits from its parameters, with plain lax convs.

  Args:
    params: ``net.params`` of ``models.create("small_cnn", ...)`` (an
      ``nnx.State``) or its ``nnx.to_pure_dict``.
    x: (N, 28, 28, 1) images.

  Returns:
    (N, 10) logits, equal to ``net.logits_fn()(x)``; differentiable in
    forward and reverse mode at any order.
  """
  p = params if isinstance(params, dict) else nnx.to_pure_dict(params)

  def conv(h, name):
    out = lax.conv_general_dilated(
        h, p[name]["kernel"], (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(out + p[name]["bias"])

  def dense(h, name):
    return h @ p[name]["kernel"] + p[name]["bias"]

  h = conv(x, "conv1")
  h = layers.max_pool_2x2(conv(h, "conv2"))
  h = conv(h, "conv3")
  h = layers.max_pool_2x2(conv(h, "conv4"))
  h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)  # (C, H, W)
  h = jax.nn.relu(dense(h, "fc1"))
  h = jax.nn.relu(dense(h, "fc2"))
  return dense(h, "fc3")


def rev_over_rev(logits_fn: Callable, x: jax.Array, y: jax.Array
                 ) -> jax.Array:
  """d/dx sum_i ||d CE_i / d x_i||_1 by jax.grad of jax.grad."""

  def total_l1(z):
    return jnp.abs(regularizers.input_gradients(logits_fn, z, y)).sum()

  return jax.grad(total_l1)(x)


def fwd_over_rev(logits_fn: Callable, x: jax.Array, y: jax.Array
                 ) -> jax.Array:
  """H sign(g) by jax.linearize (forward mode) of jax.grad."""
  g, hvp = jax.linearize(
      lambda z: regularizers.input_gradients(logits_fn, z, y), x)
  return hvp(jnp.sign(g))


def gradient_only(logits_fn: Callable, x: jax.Array, y: jax.Array
                  ) -> jax.Array:
  """g = d CE / d x alone: the cost of one backward pass, for reference."""
  return regularizers.input_gradients(logits_fn, x, y)


def variants(graphdef: Any) -> dict[str, Callable]:
  """Jitted ``(params, x, y) -> vector`` per variant name."""

  def fast(params):
    return models.Network(graphdef=graphdef, params=params,
                          state=nnx.State({})).logits_fn()

  def plain(params):
    return lambda z: lax_small_cnn_logits(params, z)

  return {
      "rev-rev fast": jax.jit(lambda p, x, y: rev_over_rev(fast(p), x, y)),
      "fwd-rev lax": jax.jit(lambda p, x, y: fwd_over_rev(plain(p), x, y)),
      "rev-rev lax": jax.jit(lambda p, x, y: rev_over_rev(plain(p), x, y)),
      "grad only (fast, reference)": jax.jit(
          lambda p, x, y: gradient_only(fast(p), x, y)),
  }


def setup(batch: int, seed: int = 0):
  """SmallCNN weights (``common.small_cnn_weights``: fc3 non-zero) and a
  batch of uniform images.

  Returns:
    (network, x, y).
  """
  net, _ = common.small_cnn_weights(seed)
  x, y = common.random_batch(batch, seed)
  return net, jnp.asarray(x), jnp.asarray(y)


def relative_difference(a: jax.Array, b: jax.Array) -> float:
  """max |a - b| / max |b|."""
  a, b = np.asarray(a), np.asarray(b)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def time_variants(batch: int, repeats: int, rounds: int = 1, seed: int = 0
                  ) -> dict[str, dict[str, Any]]:
  """Compiles and times every variant.

  Args:
    batch: batch size.
    repeats: timed calls per variant.
    rounds: the variants take turns, ``repeats / rounds`` calls per turn, so
      that a change in machine load spreads over all of them.
    seed: seed of the weights and batch.

  Returns:
    {name: {"compile_s", "times" (seconds), "rel_diff" (to the reference)}}.
  """
  net, x, y = setup(batch, seed)
  fns = variants(net.graphdef)
  out, values = {}, {}
  for name, fn in fns.items():
    start = time.perf_counter()
    values[name] = jax.block_until_ready(fn(net.params, x, y))
    out[name] = {"compile_s": time.perf_counter() - start, "times": []}
  for name in fns:
    ref = values["grad only (fast, reference)" if name.startswith("grad")
                 else REFERENCE]
    out[name]["rel_diff"] = (0.0 if name.startswith("grad")
                             else relative_difference(values[name], ref))
  rounds = max(1, min(rounds, repeats))
  per_round = [repeats // rounds + (i < repeats % rounds)
               for i in range(rounds)]
  for count in per_round:
    for name, fn in fns.items():
      for _ in range(count):
        start = time.perf_counter()
        jax.block_until_ready(fn(net.params, x, y))
        out[name]["times"].append(time.perf_counter() - start)
  return out


def run() -> None:
  """Times the variants and prints the table and the verdicts."""
  print(f"# bench/hvp_modes.py: H sign(grad) of SmallCNN (eval mode), batch "
        f"{FLAGS.batch}, median of {FLAGS.repeats} jitted calls")
  print(f"# {common.machine_line()}")
  warning = common.load_warning(with_torch=False)
  if warning:
    print(warning)
  print()
  results = time_variants(FLAGS.batch, FLAGS.repeats, FLAGS.rounds,
                          FLAGS.seed)
  medians = {n: statistics.median(r["times"]) for n, r in results.items()}
  hvps = [n for n in results if not n.startswith("grad")]
  fastest = min(hvps, key=medians.get)
  grad_s = medians["grad only (fast, reference)"]
  rows = []
  for name, r in results.items():
    ratio = (f"{medians[name] / medians[fastest]:.2f}" if name in hvps
             else "")
    rows.append([name, common.median_and_min(r["times"], digits=4), ratio,
                 f"{medians[name] / grad_s:.2f}", f"{r['rel_diff']:.1e}",
                 f"{r['compile_s']:.1f}"])
  print(text.markdown_table(
      ["variant", "s/call median (min)", "× fastest", "÷ grad only",
       "max abs Δ / max abs v, vs rev-rev fast", "compile s"], rows))
  print()
  others = ", ".join(f"{n} takes {medians[n] / medians[fastest]:.2f}x as long"
                     for n in hvps if n != fastest)
  print(f"Fastest: {fastest} ({medians[fastest]:.4f} s); {others}.")
  spread = max(medians[n] for n in hvps) / medians[fastest]
  if spread < 1.05:
    print(f"All variants lie within {100 * (spread - 1):.0f}% of each other: "
          f"no meaningful difference at this timing precision.")
  worst = max(results[n]["rel_diff"] for n in hvps)
  agree = "agree" if worst <= TOLERANCE else "DISAGREE"
  print(f"The variants {agree}: largest relative difference {worst:.1e} "
        f"(tolerance {TOLERANCE:.0e}).")


if __name__ == "__main__":
  define_flags()
  cli.main(PROG, run, settings_hint="flags such as --batch=128")
