"""Where a training step's time goes: components, per-conv costs and the hardware limit.

XLA:CPU runs each convolution as tasks on its thread pool, so
``jax.profiler`` traces show when an op was dispatched, not how long its
arithmetic took. This script profiles by decomposition instead, with the same
SmallCNN weights and batch in both frameworks, each timing the median of
``--repeats`` calls after compiling / warm-up:

1. **Peak**: a square float32 matmul (``--gemm``) in XLA and in PyTorch, the
   most either framework gets out of these cores.
2. **Components** of the LFR and PGD-AT steps: the eval-mode forward pass,
   the input gradient (one PGD inner step), the LFR inner step's core
   d/dx ||dCE/dx||_1 = H sign(g) (reverse over reverse), the PGD-AT outer
   parameter gradient and the LFR outer parameter gradient (double backprop).
   FLOPs come from XLA's cost analysis of the same maths (PyTorch's own
   counters skip the backward convolutions), so each row shows achieved
   GFLOP/s and its share of the GEMM peak.
3. **Per convolution** of SmallCNN: forward, input transpose (gradient with
   respect to the input) and weight transpose, JAX (``fast_conv``) against
   PyTorch (oneDNN), the three operations every order of differentiation is
   made of.
4. **The real steps** (``steps.make_train_step`` and the PyTorch port of
   ``bench/common.py``, timed by ``common.compare``), interleaved, at two K;
   the difference gives the cost of one inner step inside the compiled loop
   and the K-independent rest (outer double backprop, update), with the
   inner loop's achieved GFLOP/s.

Run::

    python bench/breakdown.py                    # batch 128, K = 10 and 40
    python bench/breakdown.py --batch=8 --repeats=1 --ks=1 --gemm=64  # smoke
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

from lfr_jax import cli  # noqa: E402
from lfr_jax import losses  # noqa: E402
from lfr_jax import models  # noqa: E402
from lfr_jax import regularizers  # noqa: E402
from lfr_jax import text  # noqa: E402
from lfr_jax.models import conv as fast_conv  # noqa: E402

FLAGS = flags.FLAGS
PROG = "bench/breakdown.py"
LAM = 0.02
# (input channels, output channels, input side) of SmallCNN's 3x3 VALID convs.
CONV_SHAPES = ((1, 32, 28), (32, 32, 26), (32, 64, 12), (64, 64, 10))


def define_flags() -> None:
  """Defines this script's flags (called only when run as a script)."""
  flags.DEFINE_integer("batch", 128, "Batch size.")
  flags.DEFINE_integer("repeats", 10, "Timed calls per measurement.")
  flags.DEFINE_list("ks", ["10", "40"], "Inner steps K of the real steps "
                    "(two or more give the per-inner-step cost).")
  flags.register_validator(
      "ks", lambda ks: all(k.isdigit() and int(k) > 0 for k in ks),
      message="--ks takes positive integers, e.g. --ks=10,40")
  flags.DEFINE_integer("gemm", 2048, "Side of the peak-rate matmul.")
  flags.DEFINE_integer("threads", 2, "torch.set_num_threads.")
  flags.DEFINE_integer("seed", 0, "Seed of the weights and the batch.")


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall time of ``fn()`` (which must block) over ``repeats`` calls."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jax_flops(jitted, *args) -> float:
  """FLOPs of one call, from XLA's cost analysis of the compiled function."""
  analysis = jitted.lower(*args).compile().cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan")))


# ---------------------------------------------------------------------------
# Components


def jax_components(net: models.Network, x: jax.Array, y: jax.Array
                   ) -> dict[str, tuple[Callable, tuple]]:
  """Jitted JAX components and their arguments, by name."""
  graphdef = net.graphdef

  def logits(params, train=False, key=None):
    return models.Network(graphdef=graphdef, params=params,
                          state=net.state).logits_fn(train=train,
                                                     dropout_key=key)

  def forward(params, x):
    return logits(params)(x)

  def input_grad(params, x, y):
    return regularizers.input_gradients(logits(params), x, y)

  def hvp(params, x, y):
    fn = logits(jax.lax.stop_gradient(params))
    return jax.grad(lambda z: jnp.abs(
        regularizers.input_gradients(fn, z, y)).sum())(x)

  def outer_pgd(params, x, y, key):
    return jax.grad(lambda p: losses.cross_entropy(
        logits(p, True, key)(x), y).mean())(params)

  def outer_lfr(params, x, y, key):
    def loss(p):
      fn = logits(p, True, key)
      ce = losses.cross_entropy(fn(x), y).mean()
      reg = jnp.abs(regularizers.input_gradients(fn, x, y)).sum((1, 2, 3))
      return ce + LAM * reg.mean()
    return jax.grad(loss)(params)

  key = jax.random.key(0)
  p = net.params
  return {"forward": (jax.jit(forward), (p, x)),
          "input gradient": (jax.jit(input_grad), (p, x, y)),
          "H sign(g) (LFR inner)": (jax.jit(hvp), (p, x, y)),
          "PGD-AT outer grad": (jax.jit(outer_pgd), (p, x, y, key)),
          "LFR outer grad": (jax.jit(outer_lfr), (p, x, y, key))}


def torch_components(model, x, y) -> dict[str, Callable[[], Any]]:
  """PyTorch components (autograd, as the authors' code), by name."""
  torch = common.import_torch()
  F = torch.nn.functional

  def forward():
    model.eval()
    with torch.no_grad():
      return model(x)

  def input_grad(create_graph=False):
    model.eval()
    z = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(z), y), [z],
                               create_graph=create_graph)
    return z, g

  def hvp():
    z, g = input_grad(create_graph=True)
    (h,) = torch.autograd.grad(torch.abs(g).sum(), [z])
    return h

  def outer_pgd():
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()

  def outer_lfr():
    model.zero_grad(set_to_none=True)
    loss, _, _ = common.torch_lfr_loss(model, x, x, y, LAM)
    loss.backward()

  return {"forward": forward, "input gradient": lambda: input_grad()[1],
          "H sign(g) (LFR inner)": hvp, "PGD-AT outer grad": outer_pgd,
          "LFR outer grad": outer_lfr}


def gemm_rates(n: int, repeats: int) -> tuple[float, float]:
  """GFLOP/s of an n x n float32 matmul in XLA and in PyTorch."""
  torch = common.import_torch()
  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  t_jax = median_seconds(lambda: matmul(a).block_until_ready(), repeats)
  at = torch.ones((n, n))
  t_torch = median_seconds(lambda: at @ at, repeats)
  flops = 2.0 * n ** 3
  return flops / t_jax / 1e9, flops / t_torch / 1e9


def conv_rows(batch: int, repeats: int) -> list[tuple]:
  """(layer, op, JAX s, PyTorch s, GFLOP) per SmallCNN conv and operation."""
  torch = common.import_torch()
  rng = np.random.default_rng(0)
  rows = []
  for i, (c_in, c_out, side) in enumerate(CONV_SHAPES):
    out_side = side - 2
    x = rng.normal(size=(batch, side, side, c_in)).astype(np.float32)
    w = rng.normal(size=(3, 3, c_in, c_out)).astype(np.float32)
    g = rng.normal(size=(batch, out_side, out_side, c_out)).astype(np.float32)
    conv = lambda a, b: fast_conv.fast_conv_general_dilated(  # noqa: E731
        a, b, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    forward = jax.jit(conv)
    input_transpose = jax.jit(
        lambda gg, b: jax.vjp(lambda a: conv(a, b), x)[1](gg)[0])
    weight_transpose = jax.jit(
        lambda a, gg: jax.vjp(lambda b: conv(a, b), w)[1](gg)[0])
    x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    w_torch = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
    g_torch = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()
    torch_conv = torch.nn.functional.conv2d
    grad = torch.nn.grad
    gflop = 2.0 * batch * out_side ** 2 * c_out * c_in * 9 / 1e9
    cases = (
        ("forward", lambda: forward(x, w).block_until_ready(),
         lambda: torch_conv(x_torch, w_torch)),
        ("input transpose", lambda: input_transpose(g, w).block_until_ready(),
         lambda: grad.conv2d_input(x_torch.shape, w_torch, g_torch)),
        ("weight transpose", lambda: weight_transpose(x, g).block_until_ready(),
         lambda: grad.conv2d_weight(x_torch, w_torch.shape, g_torch)),
    )
    for op, run_jax, run_torch in cases:
      rows.append((f"conv{i + 1} {c_in}->{c_out} @{side}x{side}", op,
                   median_seconds(run_jax, repeats),
                   median_seconds(run_torch, repeats), gflop))
  return rows


def run() -> None:
  """Prints the four sections: peak, components, convolutions, real steps."""
  torch = common.import_torch()
  torch.set_num_threads(FLAGS.threads)
  batch, repeats = FLAGS.batch, FLAGS.repeats
  print(f"# bench/breakdown.py: SmallCNN, batch {batch}, median of {repeats}")
  print(f"# {common.machine_line(FLAGS.threads)}")
  warning = common.load_warning()
  if warning:
    print(warning)

  peak_jax, peak_torch = gemm_rates(FLAGS.gemm, repeats)
  peak = max(peak_jax, peak_torch)
  print(f"\n## Peak: {FLAGS.gemm}^3 float32 matmul\n")
  print(text.markdown_table(["framework", "GFLOP/s"],
                            [["XLA", f"{peak_jax:.1f}"],
                             ["PyTorch", f"{peak_torch:.1f}"]]))

  net, state_dict = common.small_cnn_weights(FLAGS.seed)
  x_np, y_np = common.random_batch(batch, FLAGS.seed)
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  model = common.torch_small_cnn(state_dict)
  x_torch, y_torch = common.to_torch(x_np, y_np)

  # Each table's rows print as they are measured (minutes in all), under
  # the head that markdown_table gives for no rows.
  print("\n## Components (same weights and batch)\n")
  print("Standalone jitted calls (JAX) and eager autograd calls (PyTorch). "
        "GFLOP is XLA's count of the maths, used for both columns.\n")
  print(text.markdown_table(
      ["component", "GFLOP", "JAX s", "JAX GFLOP/s (% of peak)", "PyTorch s",
       "PyTorch GFLOP/s (% of peak)", "PyTorch ÷ JAX time"], []))
  flops = {}
  torch_calls = torch_components(model, x_torch, y_torch)
  for name, (fn, args) in jax_components(net, x, y).items():
    jax_flops_count = jax_flops(fn, *args)
    jax_s = median_seconds(lambda: jax.block_until_ready(fn(*args)), repeats)
    torch_s = median_seconds(torch_calls[name], repeats)
    flops[name] = jax_flops_count
    print(text.markdown_row([
        name, f"{jax_flops_count / 1e9:.2f}", f"{jax_s:.4f}",
        f"{jax_flops_count / jax_s / 1e9:.0f} "
        f"({100 * jax_flops_count / jax_s / 1e9 / peak:.0f}%)",
        f"{torch_s:.4f}", f"{jax_flops_count / torch_s / 1e9:.0f} "
        f"({100 * jax_flops_count / torch_s / 1e9 / peak:.0f}%)",
        f"{torch_s / jax_s:.2f}x"]), flush=True)

  print(f"\n## Per convolution (batch {batch})\n")
  print(text.markdown_table(
      ["conv", "operation", "GFLOP", "JAX ms", "JAX GFLOP/s", "PyTorch ms",
       "PyTorch GFLOP/s", "PyTorch ÷ JAX time"], []))
  for layer, op, jax_s, torch_s, gflop in conv_rows(batch, repeats):
    print(text.markdown_row([
        layer, op, f"{gflop:.3f}", f"{1e3 * jax_s:.2f}", f"{gflop / jax_s:.0f}",
        f"{1e3 * torch_s:.2f}", f"{gflop / torch_s:.0f}",
        f"{torch_s / jax_s:.2f}x"]), flush=True)

  ks = sorted(int(v) for v in FLAGS.ks)
  print(f"\n## The real steps, interleaved (steps.make_train_step vs the "
        f"PyTorch port; median of {repeats})\n")
  print(text.markdown_table(["method", "K", "JAX s", "PyTorch s",
                             "PyTorch ÷ JAX"], []))
  medians = {}
  for k in ks:
    for method in ("pgd_at", "lfr"):
      timings = common.compare(method, k, batch=batch, repeats=repeats,
                               warmup=1, eps=0.3, step_size=0.01, lam=LAM,
                               lr=0.01, momentum=0.9, seed=FLAGS.seed)
      medians[method, k] = (statistics.median(timings["jax_s"]),
                            statistics.median(timings["torch_s"]))
      jax_s, torch_s = medians[method, k]
      print(text.markdown_row([method, k, f"{jax_s:.3f}", f"{torch_s:.3f}",
                               f"{torch_s / jax_s:.2f}x"]), flush=True)
  if len(ks) < 2:
    return
  k_low, k_high = ks[0], ks[-1]
  flops_inner = {"pgd_at": flops["input gradient"],
                 "lfr": flops["H sign(g) (LFR inner)"]}
  print(f"\n## Per inner step and the rest, from K = {k_low} and "
        f"K = {k_high}\n")
  print("t(K) = K x inner + rest. Useful GFLOP per inner step is XLA's count "
        "of the same maths (input gradient; H sign(g)), for both "
        "frameworks.\n")
  print(text.markdown_table(
      ["method", "framework", "inner s/step", "inner GFLOP/s (% of peak)",
       "rest s", f"inner share at K={k_high}"], []))
  for method in ("pgd_at", "lfr"):
    for index, framework in ((0, "JAX"), (1, "PyTorch")):
      high, low = medians[method, k_high][index], medians[method, k_low][index]
      inner = (high - low) / (k_high - k_low)
      rest = low - k_low * inner
      rate = flops_inner[method] / inner / 1e9
      print(text.markdown_row([
          method, framework, f"{inner:.4f}",
          f"{rate:.0f} ({100 * rate / peak:.0f}%)", f"{rest:.3f}",
          f"{100 * k_high * inner / high:.0f}%"]), flush=True)


if __name__ == "__main__":
  define_flags()
  cli.main(PROG, run, settings_hint="flags such as --ks=10,40")
