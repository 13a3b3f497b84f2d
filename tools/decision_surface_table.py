"""The decision-surface paper's Table 1 protocol on trained MNIST workdirs.

Table 1 of the decision-surface paper reports test accuracy under FGSM, BIM
and C&W at l_inf eps 0.1, 0.2 and 0.3, with the iterative attacks run for 10
iterations of step 0.1 (Sec. 8.3) on pixels in [0, 1]. This tool measures the
same cells for the final checkpoint of each ``--workdir`` on the first
``--num_examples`` test images, with our attacks: FGSM (one step of eps),
BIM (``attacks.bim``: PGD from x, no random start) and C&W as PGD on the
Carlini-Wagner margin loss with the same 10 steps of 0.1. The paper's rows are
printed beside ours. These are the paper's attack budgets, weaker than the
evaluation of ``evaluate.py``; its worst-case column is the robust accuracy
to quote.

Usage::

    python tools/decision_surface_table.py \\
        --workdir=runs/repro/decision_jacobian_s0,runs/repro/decision_jacobian_c0_s0 \\
        --labels="c=500,c=0 (natural)" --out=docs/results/decision_surface
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import lfr_jax  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import
from lfr_jax import cli  # noqa: E402  pylint: disable=g-import-not-at-top
from lfr_jax import files  # noqa: E402  pylint: disable=g-import-not-at-top
from lfr_jax import text  # noqa: E402  pylint: disable=g-import-not-at-top

PROG = "tools/decision_surface_table.py"
EPS = (0.1, 0.2, 0.3)
ITERATIONS, STEP = 10, 0.1  # Sec. 8.3, MNIST
# The paper's Table 1 (MNIST), accuracy in %.
PAPER = {
    "Natural Model": {"natural": 99.1, "fgsm": (67.3, 12.9, 4.7),
                      "bim": (22.5, 0.0, 0.0), "cw": (21.6, 0.0, 0.0)},
    "Ours (c=500)": {"natural": 98.4, "fgsm": (91.6, 70.3, 41.6),
                     "bim": (88.1, 64.9, 26.7), "cw": (89.2, 72.6, 37.6)},
}
ATTACK_LABELS = (("fgsm", "FGSM"), ("bim", "BIM"), ("cw", "C&W"))

_WORKDIRS = flags.DEFINE_list("workdir", None, "Training workdirs.")
_LABELS = flags.DEFINE_list("labels", [], "Row labels (default: folder names).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 1000,
                                     "First N MNIST test images.")
_OUT = flags.DEFINE_string("out", None, "Output folder (table.md, table.json).")
flags.mark_flags_as_required(["workdir", "out"])


def attack_accuracies(logits_fn, x, y) -> dict[str, object]:
  """Clean accuracy and accuracy under each attack at each eps.

  Args:
    logits_fn: x -> logits.
    x: (N, 28, 28, 1) images in [0, 1].
    y: (N,) labels.

  Returns:
    {"natural": float, "fgsm"/"bim"/"cw": [float per eps]}, fractions.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lfr_jax import attacks  # pylint: disable=g-import-not-at-top

  def acc(z):
    return float(jnp.mean(jnp.argmax(logits_fn(z), -1) == y))

  runs = {
      "fgsm": jax.jit(lambda x, eps: attacks.fgsm(
          logits_fn, x, y, jax.random.key(0), eps=eps)),
      "bim": jax.jit(lambda x, eps: attacks.bim(
          logits_fn, x, y, jax.random.key(0), eps=eps, step_size=STEP,
          num_steps=ITERATIONS)),
      "cw": jax.jit(lambda x, eps: attacks.bim(
          logits_fn, x, y, jax.random.key(0), eps=eps, step_size=STEP,
          num_steps=ITERATIONS, loss="margin")),
  }
  out = {"natural": acc(x)}
  for name, run in runs.items():
    out[name] = [acc(run(x, jnp.float32(eps))) for eps in EPS]
  return out


def markdown(rows: dict[str, dict], examples: int) -> str:
  """Ours and the paper's rows in one table (accuracy in %)."""
  header = ["model", "natural"] + [f"{label} {eps:g}"
                                   for _, label in ATTACK_LABELS for eps in EPS]
  body = []
  for label, cells in rows.items():
    body.append([label, text.percent(cells["natural"])] + [
        text.percent(v) for name, _ in ATTACK_LABELS for v in cells[name]])
  for label, cells in PAPER.items():
    body.append([f"paper: {label}", f"{cells['natural']:.2f}"] + [
        f"{v:.2f}" for name, _ in ATTACK_LABELS for v in cells[name]])
  return (f"Accuracy (%) on the first {examples} MNIST test images; FGSM one "
          f"step of eps, BIM and C&W (margin loss) {ITERATIONS} iterations of "
          f"{STEP:g} (the paper's Sec. 8.3).\n\n"
          + text.markdown_table(header, body, left_columns=1) + "\n")


def run() -> None:
  """Evaluates each workdir and writes ``table.md`` and ``table.json``."""
  from lfr_jax import evaluation  # pylint: disable=g-import-not-at-top
  labels = list(_LABELS.value) or [os.path.basename(os.path.normpath(w))
                                   for w in _WORKDIRS.value]
  if len(labels) != len(_WORKDIRS.value):
    raise evaluation.EvalError(f"--labels names {len(labels)} rows but "
                               f"--workdir {len(_WORKDIRS.value)}.")
  rows, x, y, info = {}, None, None, None
  for workdir, label in zip(_WORKDIRS.value, labels):
    config, models = evaluation.load_run(workdir)
    if x is None:
      x, y, info = evaluation.load_test_data(config.data, _NUM_EXAMPLES.value)
      print(evaluation.data_line(info, x.shape[0]), flush=True)
    final = models[0]
    rows[label] = dict(attack_accuracies(final.logits_fn(), x, y),
                       checkpoint=final.label, workdir=workdir)
  out = os.path.abspath(_OUT.value)
  os.makedirs(out, exist_ok=True)
  table = markdown(rows, int(x.shape[0]))
  with files.atomic_file(os.path.join(out, "table.md")) as f:
    f.write(table)
  with files.atomic_file(os.path.join(out, "table.json")) as f:
    json.dump({"rows": rows, "paper": PAPER, "eps": EPS, "examples":
               int(x.shape[0]), "iterations": ITERATIONS, "step": STEP,
               "command": " ".join(["python", PROG] + sys.argv[1:])}, f,
              indent=2)
  print(table, flush=True)


def main() -> None:
  from lfr_jax import config_check  # pylint: disable=g-import-not-at-top
  from lfr_jax import data  # pylint: disable=g-import-not-at-top
  from lfr_jax import evaluation  # pylint: disable=g-import-not-at-top
  cli.main(PROG, run, (),
           (config_check.ConfigError, data.DataError, evaluation.EvalError))


if __name__ == "__main__":
  main()
