"""Our JAX LFR / PGD-AT training step against a faithful PyTorch one, side by side.

The PyTorch side (``bench/common.py``) follows the authors' code: the inner
loop runs in ``model.eval()``, starts at ``x + 0.001 * randn`` (LFR) or
uniformly in the ball (PGD-AT, Madry et al.), and takes K sign steps of
``step_size``, projecting onto the eps-ball and [0, 1]. An LFR inner step
differentiates ``loss_grad = mean_i sum_{C,H,W} |d CE / d x_adv|``
(``create_graph=True``) once more with respect to ``x_adv``. The outer LFR
loss, in ``model.train()``, is ``CE(model(x)) + lam * B * mean_i sum |d
CE(model(x_adv)) / d x_adv|`` with ``create_graph=True`` (double backprop);
the authors multiply by the batch size B because their CE is a batch mean,
so the term is the mean of the per-example l1 norms, as in
``objectives.build("lfr")``. PGD-AT's outer loss is the train-mode CE at
``x_adv``. Both end with an SGD-momentum step.

Both frameworks run the same SmallCNN weights (``common.small_cnn_weights``:
the JAX network, and its PyTorch copy from
``lfr_jax.interop.export_torch_state_dict``) on the same batch, in one
process, interleaved (``common.compare``): after warm-up, one JAX step, one
PyTorch step, and so on, ``--repeats`` times; each column is the median
(``--schedule=blocked`` runs all JAX steps first instead). The JAX step is
``lfr_jax.steps.make_train_step`` (the one training uses), timed after
compiling with ``block_until_ready``. PyTorch runs ``--threads`` intra-op
threads (2); on a busy machine its spinning OpenMP threads slow it down
several-fold, which ``--omp_wait_policy=PASSIVE`` avoids.

Targets: JAX LFR >= 1.5x PyTorch's LFR step at each K, and JAX LFR <= 2.2x
the JAX PGD-AT step.

Run::

    python bench/torch_step.py                              # K = 10, 40; batch 128
    python bench/torch_step.py --ks=10 --repeats=5 --threads=2
    python bench/torch_step.py --ks=1 --repeats=1 --warmup=0 --batch=8  # smoke

The PyTorch port and the timing loop live in ``bench/common.py``, which the
other benchmarks share.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Any

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (first: this checkout's lfr_jax, fast CPU flags)

from lfr_jax import cli  # noqa: E402
from lfr_jax import files  # noqa: E402
from lfr_jax import text  # noqa: E402

FLAGS = flags.FLAGS
PROG = "bench/torch_step.py"
METHODS = ("pgd_at", "lfr")


def define_flags() -> None:
  """Defines this script's flags (called only when run as a script)."""
  flags.DEFINE_list("methods", list(METHODS), "Methods: pgd_at, lfr.")
  flags.DEFINE_list("ks", ["10", "40"], "Inner steps K.")
  flags.DEFINE_integer("batch", 128, "Batch size.")
  flags.DEFINE_integer("repeats", 10, "Timed steps per framework and setting.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps per framework after the "
                       "JAX compile.")
  flags.DEFINE_integer("threads", 2, "torch.set_num_threads.")
  flags.DEFINE_string("omp_wait_policy", "", "Sets OMP_WAIT_POLICY before "
                      "torch loads (PASSIVE helps PyTorch on a busy machine, "
                      "where its spinning OpenMP threads slow it down "
                      "several-fold); empty: leave the environment alone.")
  flags.DEFINE_float("eps", 0.3, "l_inf radius.")
  flags.DEFINE_float("step_size", 0.01, "Inner sign-step length.")
  flags.DEFINE_float("lam", 0.02, "LFR weight lambda.")
  flags.DEFINE_float("lr", 0.01, "SGD learning rate.")
  flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
  flags.DEFINE_integer("seed", 0, "Seed of the weights and the batch.")
  flags.DEFINE_enum("schedule", "interleaved", ["interleaved", "blocked"],
                    "interleaved: JAX, PyTorch, JAX, ...; blocked: all JAX "
                    "steps, then all PyTorch steps (to see whether one "
                    "framework's idle threads slow the other).")
  flags.DEFINE_string("json", "", "Also write the results to this JSON file.")


def table(results: list[dict[str, Any]], batch: int) -> list[str]:
  """The Markdown table's lines, then the target checks.

  Args:
    results: :func:`common.compare` per (method, K), PGD-AT before LFR.
    batch: batch size, for examples per second.
  """
  medians = {(r["method"], r["k"]): (statistics.median(r["jax_s"]),
                                     statistics.median(r["torch_s"]))
             for r in results}
  header = ["method", "K", "JAX s/step median (min)",
            "PyTorch s/step median (min)", "speed-up PyTorch/JAX", "JAX ex/s",
            "JAX ÷ JAX PGD-AT", "PyTorch ÷ PyTorch PGD-AT", "JAX compile s"]
  rows, checks = [], []
  for r in results:
    jax_median, torch_median = medians[r["method"], r["k"]]
    pgd_at = medians.get(("pgd_at", r["k"]))
    jax_to_pgd_at = torch_to_pgd_at = ""
    if pgd_at and r["method"] != "pgd_at":
      jax_to_pgd_at = f"{jax_median / pgd_at[0]:.2f}"
      torch_to_pgd_at = f"{torch_median / pgd_at[1]:.2f}"
    rows.append([r["method"], r["k"], common.median_and_min(r["jax_s"]),
                 common.median_and_min(r["torch_s"]),
                 f"{torch_median / jax_median:.2f}x",
                 f"{batch / jax_median:.1f}", jax_to_pgd_at, torch_to_pgd_at,
                 f"{r['compile_s']:.1f}"])
    if r["method"] == "lfr":
      speed = torch_median / jax_median
      checks.append(f"- K={r['k']}: JAX LFR speed-up over PyTorch "
                    f"{speed:.2f}x (target >= 1.5x): "
                    f"{'PASS' if speed >= 1.5 else 'FAIL'}")
      if pgd_at:
        ratio = jax_median / pgd_at[0]
        checks.append(f"- K={r['k']}: JAX LFR / JAX PGD-AT {ratio:.2f} "
                      f"(target <= 2.2): {'PASS' if ratio <= 2.2 else 'FAIL'}")
  lines = text.markdown_table(header, rows).split("\n")
  return lines + ([""] + checks if checks else [])


def run() -> None:
  """Times every (K, method) of the flags and prints the table."""
  if FLAGS.omp_wait_policy:
    os.environ["OMP_WAIT_POLICY"] = FLAGS.omp_wait_policy
  torch = common.import_torch()
  torch.set_num_threads(FLAGS.threads)
  ks = [int(k) for k in FLAGS.ks]
  unknown = sorted(set(FLAGS.methods) - set(METHODS))
  if unknown:
    raise app.UsageError(f"unknown --methods {unknown}; valid: {METHODS}")
  # PGD-AT first, so each LFR row can show its ratio to PGD-AT.
  methods = [m for m in METHODS if m in FLAGS.methods]
  print(f"# bench/torch_step.py: SmallCNN, batch {FLAGS.batch}, eps "
        f"{FLAGS.eps}, step {FLAGS.step_size}, lam {FLAGS.lam}; "
        f"{FLAGS.schedule} JAX/PyTorch, "
        f"median of {FLAGS.repeats} after {FLAGS.warmup} warm-up steps")
  print(f"# {common.machine_line(FLAGS.threads)}; OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
  warning = common.load_warning()
  if warning:
    print(warning)
  print(flush=True)
  results = []
  for k in ks:
    for method in methods:
      results.append(common.compare(
          method, k, batch=FLAGS.batch, repeats=FLAGS.repeats,
          warmup=FLAGS.warmup, eps=FLAGS.eps, step_size=FLAGS.step_size,
          lam=FLAGS.lam, lr=FLAGS.lr, momentum=FLAGS.momentum,
          seed=FLAGS.seed, schedule=FLAGS.schedule))
  print("\n".join(table(results, FLAGS.batch)), flush=True)
  if FLAGS.json:
    with files.atomic_file(FLAGS.json) as f:
      json.dump({"machine": common.machine_line(FLAGS.threads),
                 "batch": FLAGS.batch, "results": results}, f, indent=2)


if __name__ == "__main__":
  define_flags()
  cli.main(PROG, run, user_errors=(app.UsageError,),
           settings_hint="flags such as --ks=10")
