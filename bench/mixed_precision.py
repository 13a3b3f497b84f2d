"""How far bfloat16 compute moves each regularizer's value and parameter gradient.

A SmallCNN is trained in float32 on MNIST (``--train_steps`` SGD steps of 64
images from the first 2,048); then, with those parameters, every regularizer
is computed by the float32 model and by its bfloat16-compute twin
(``dtype="bfloat16"``: float32 parameters, logits and losses) on the first
``--batch`` images, in two ways:

- *same inner points*: the inner maximization (LFR's, LLR's, TRADES') runs
  on the float32 model for both, so only the arithmetic of the outer term
  differs (what ``tests/test_mixed_precision.py`` bounds);
- *bf16 end to end*: the bfloat16 model also runs its own inner
  maximization, as a bf16 training run would; where a search follows signs
  of small gradients it can land elsewhere.

Columns: both values, their relative difference, the gradient's relative l2
error ``||g16 - g32|| / ||g32||`` and the cosine between the two gradients.

Run::

    python bench/mixed_precision.py
    python bench/mixed_precision.py --train_steps=2 --batch=8 --num_steps=1  # smoke
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (first: this checkout's lfr_jax, fast CPU flags)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from lfr_jax import cli  # noqa: E402
from lfr_jax import data  # noqa: E402
from lfr_jax import losses  # noqa: E402
from lfr_jax import models  # noqa: E402
from lfr_jax import regularizers  # noqa: E402
from lfr_jax import text  # noqa: E402

FLAGS = flags.FLAGS
PROG = "bench/mixed_precision.py"
EPS = 0.3


def define_flags() -> None:
  """Defines this script's flags (called only when run as a script)."""
  flags.DEFINE_integer("train_steps", 100, "SGD steps before comparing.")
  flags.DEFINE_integer("batch", 64, "Images the regularizers see.")
  flags.DEFINE_integer("num_steps", 10, "Inner steps K (LFR, LLR, TRADES).")
  flags.DEFINE_string("json", "", "Also write the results to this JSON file.")


def train_small_cnn(steps: int):
  """float32 SmallCNN parameters after ``steps`` SGD steps, and MNIST."""
  x, y = (jnp.asarray(a[:2048]) for a in data.load_mnist_idx("train"))
  net = models.create("small_cnn", jax.random.key(0), dropout=0.0)
  tx = optax.sgd(0.05, momentum=0.9)

  @jax.jit
  def step(params, opt, xb, yb):
    grads = jax.grad(lambda p: losses.cross_entropy(
        net.replace(params=p).logits_fn()(xb), yb).mean())(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  params, opt = net.params, tx.init(net.params)
  for i in range(steps):
    j = (i * 64) % 2048
    params, opt = step(params, opt, x[j:j + 64], y[j:j + 64])
  return params, x, y


def regularizer_fns(inner, key, x, y, num_steps):
  """name -> fn(logits_fn) giving per-example values (inner fn or None)."""
  # Rolled inner loops: the same maths as unrolled, compiled much faster.
  k = dict(eps=EPS, num_steps=num_steps, inner_logits_fn=inner, unroll=False)
  return {
      "lfr": lambda lf: regularizers.local_flatness(lf, x, y, key,
                                                    step_size=0.01, **k)[0],
      "gradient_norm": lambda lf: regularizers.input_gradient_norm(lf, x, y),
      "llr": lambda lf: regularizers.local_linearity(lf, x, y, key,
                                                     step_size=0.1, **k)[0],
      "trades": lambda lf: regularizers.trades_kl(lf, x, key, step_size=0.01,
                                                  **k)[0],
      "decision_jacobian": lambda lf: regularizers.decision_jacobian_norm(
          lf, x, y, norm="l2", squared=True),
  }


def value_and_grad(params, dtype, name, x, y, num_steps, shared_inner):
  """(value, flat float64 gradient) of one regularizer's batch mean."""
  net32 = models.create("small_cnn", jax.random.key(0), dropout=0.0)
  net = models.create("small_cnn", jax.random.key(0), dropout=0.0,
                      dtype=dtype)
  frozen = net32 if shared_inner else net

  def mean_value(p, x, y):
    # x and y are arguments, not closed-over constants XLA would fold.
    inner = frozen.replace(params=jax.lax.stop_gradient(p)).logits_fn()
    fn = regularizer_fns(inner, jax.random.key(3), x, y, num_steps)[name]
    return fn(net.replace(params=p).logits_fn()).mean()

  value, grads = jax.jit(jax.value_and_grad(mean_value))(params, x, y)
  flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
  return float(value), flat.astype(np.float64)


def run() -> None:
  """Prints the comparison table."""
  print(f"Machine: {common.machine_line()}")
  warning = common.load_warning(with_torch=False)
  if warning:
    print(warning)
  params, x, y = train_small_cnn(FLAGS.train_steps)
  xb, yb = x[:FLAGS.batch], y[:FLAGS.batch]
  rows, results = [], []
  for shared in (True, False):
    for name in regularizer_fns(None, None, xb, yb, 1):
      v32, g32 = value_and_grad(params, "float32", name, xb, yb,
                                FLAGS.num_steps, shared)
      v16, g16 = value_and_grad(params, "bfloat16", name, xb, yb,
                                FLAGS.num_steps, shared)
      result = {
          "regularizer": name,
          "inner": "same inner points" if shared else "bf16 end to end",
          "value_f32": v32, "value_bf16": v16,
          "value_rel_diff": abs(v16 - v32) / abs(v32),
          "grad_rel_l2_error": float(np.linalg.norm(g16 - g32) /
                                     np.linalg.norm(g32)),
          "grad_cosine": float(g16 @ g32 / (np.linalg.norm(g16) *
                                            np.linalg.norm(g32)))}
      results.append(result)
      rows.append([name, result["inner"], f"{v32:.5g}", f"{v16:.5g}",
                   f"{result['value_rel_diff']:.2e}",
                   f"{result['grad_rel_l2_error']:.3f}",
                   f"{result['grad_cosine']:.4f}"])
  print(f"\nSmallCNN after {FLAGS.train_steps} SGD steps; {FLAGS.batch} MNIST "
        f"images, eps {EPS}, K = {FLAGS.num_steps}.\n")
  print(text.markdown_table(
      ["regularizer", "inner maximization", "value f32", "value bf16",
       "value rel. diff", "grad rel. l2 error", "grad cosine"], rows))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump({"machine": common.machine_line(),
                 "settings": {"train_steps": FLAGS.train_steps,
                              "batch": FLAGS.batch, "eps": EPS,
                              "num_steps": FLAGS.num_steps},
                 "results": results}, f, indent=1)
      f.write("\n")


if __name__ == "__main__":
  define_flags()
  cli.main(PROG, run, settings_hint="flags such as --batch=64")
