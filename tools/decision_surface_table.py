"""The decision-surface paper's Table 1 protocol on trained MNIST workdirs.

Table 1 of the decision-surface paper reports test accuracy under FGSM, BIM
and C&W at l_inf eps 0.1, 0.2 and 0.3, with the iterative attacks run for 10
iterations of step 0.1 (Sec. 8.3) on pixels in [0, 1]. This tool measures the
same cells for each ``--workdir`` (its best checkpoint by default: the
``:converge`` runs keep the epoch with the best validation accuracy) on the
first ``--num_examples`` test images, each with its 95% interval, and beside
them:

- **the worst case** at each eps: per example, misclassified under any of
  the three table attacks, APGD-CE (100 steps) or APGD-T (9 targets x 100
  steps), AutoAttack's settings. These are the robust accuracies to quote;
  the paper's budgets are weak.
- **protocol readings** (``--readings``): the text leaves open how BIM and
  C&W were run. Each reading is one choice, applied to every eps:

  - ``ours``: each step x <- clip_[0,1](clip_ball(x + a sign(g))) (Kurakin et
    al.'s BIM; ``attacks.bim``), C&W on logits (``attacks.bim`` with the
    margin loss);
  - ``no_box``: the same without the [0, 1] clip (CleverHans' BIM clips to
    [0, 1] only when given ``clip_min``/``clip_max``), pixels may leave
    [0, 1];
  - ``box_before_ball``: the [0, 1] clip applied before the ball's (the
    other order of the two clips);
  - ``project_at_end``: no per-step clip; 10 free sign steps, projected onto
    the ball and [0, 1] once at the end;
  - ``cw_probabilities``: C&W's margin on softmax probabilities instead of
    logits (BIM unchanged).

  FGSM (one step of eps from x) is the same under every reading except
  ``no_box``, where it is not clipped to [0, 1] either.

Usage::

    python tools/decision_surface_table.py \\
        --workdir=runs/ds/natural_s0,runs/ds/l2_squared_mean_s0 \\
        --labels="natural,c=500 (l2, squared, pixel mean)" \\
        --readings --out=docs/results/decision_surface
"""

from __future__ import annotations

import json
import math
import os
import sys

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import lfr_jax  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import
from lfr_jax import cli  # noqa: E402  pylint: disable=g-import-not-at-top
from lfr_jax import text  # noqa: E402  pylint: disable=g-import-not-at-top

PROG = "tools/decision_surface_table.py"
EPS = (0.1, 0.2, 0.3)
ITERATIONS, STEP = 10, 0.1  # Sec. 8.3, MNIST
APGD_STEPS, APGD_TARGETS = 100, 9  # AutoAttack's standard settings
BATCH = 500
# The paper's Table 1 (MNIST), accuracy in %.
PAPER = {
    "Natural Model": {"natural": 99.1, "fgsm": (67.3, 12.9, 4.7),
                      "bim": (22.5, 0.0, 0.0), "cw": (21.6, 0.0, 0.0)},
    "Ours (c=500)": {"natural": 98.4, "fgsm": (91.6, 70.3, 41.6),
                     "bim": (88.1, 64.9, 26.7), "cw": (89.2, 72.6, 37.6)},
}
ATTACK_LABELS = (("fgsm", "FGSM"), ("bim", "BIM"), ("cw", "C&W"))
READINGS = ("ours", "no_box", "box_before_ball", "project_at_end",
            "cw_probabilities")

_WORKDIRS = flags.DEFINE_list("workdir", None, "Training workdirs.")
_LABELS = flags.DEFINE_list("labels", [], "Row labels (default: folder names).")
_PAPER_ROWS = flags.DEFINE_list(
    "paper_rows", [], "For each workdir, the paper's row it is set against "
    f"({', '.join(PAPER)}, or '' for none); default: none.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 1000,
                                     "First N MNIST test images.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "final"],
                                "Which checkpoint of each run.")
_WORST_CASE = flags.DEFINE_bool("worst_case", True, "Add the worst case "
                                "(table attacks, APGD-CE, APGD-T) per eps.")
_READINGS = flags.DEFINE_bool("readings", False, "Also run every protocol "
                              f"reading ({', '.join(READINGS)}).")
_OUT = flags.DEFINE_string("out", None, "Output folder (table.md, table.json).")
flags.mark_flags_as_required(["workdir", "out"])


def halfwidth(p: float, n: int) -> float:
  """Half-width of the 95% normal interval of a fraction p over n, in points."""
  return 100 * 1.96 * math.sqrt(max(p * (1 - p), 0.0) / n) if n else math.nan


def sign_iterations(logits_fn, loss_fn, x, y, *, eps, step, num_steps,
                    reading: str = "ours"):
  """Iterated sign steps on ``loss_fn`` from x under one protocol reading.

  Args:
    logits_fn: x -> logits.
    loss_fn: (logits, y) -> (N,) loss to ascend.
    x: (N, H, W, C) images in [0, 1].
    y: (N,) labels.
    eps: l_inf radius.
    step: sign-step length.
    num_steps: iterations (1 with step = eps is FGSM).
    reading: how the iterate is clipped (see the module docstring).

  Returns:
    The last iterate.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def ball(z):
    return jnp.clip(z, x - eps, x + eps)

  def box(z):
    return jnp.clip(z, 0.0, 1.0)

  clip = {"ours": lambda z: box(ball(z)), "cw_probabilities":
          lambda z: box(ball(z)), "no_box": ball,
          "box_before_ball": lambda z: ball(box(z)),
          "project_at_end": lambda z: z}[reading]
  grad = jax.grad(lambda z: loss_fn(logits_fn(z), y).sum())
  x_adv = jax.lax.fori_loop(
      0, num_steps, lambda _, z: clip(z + step * jnp.sign(grad(z))), x)
  if reading == "project_at_end":
    x_adv = box(ball(x_adv))
  return jax.lax.stop_gradient(x_adv)


def _probability_margin(logits, y):
  import jax  # pylint: disable=g-import-not-at-top
  from lfr_jax import losses  # pylint: disable=g-import-not-at-top
  return losses.margin(jax.nn.softmax(logits), y)


def attack_runs(logits_fn, *, reading: str = "ours", worst_case: bool = False,
                key=None) -> dict:
  """Jitted ``(x, y, eps) -> x_adv`` of each attack under one reading.

  Args:
    logits_fn: x -> logits.
    reading: the protocol reading of the table attacks.
    worst_case: also APGD-CE and APGD-T.
    key: PRNG key of the APGD starts.

  Returns:
    {"fgsm", "bim", "cw" (and "apgd_ce", "apgd_t"): function}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from lfr_jax import attacks  # pylint: disable=g-import-not-at-top
  from lfr_jax import losses  # pylint: disable=g-import-not-at-top
  cw_loss = (_probability_margin if reading == "cw_probabilities"
             else losses.margin)
  table_reading = "ours" if reading == "cw_probabilities" else reading
  runs = {
      "fgsm": lambda x, y, eps: sign_iterations(
          logits_fn, losses.cross_entropy, x, y, eps=eps, step=eps,
          num_steps=1, reading=table_reading),
      "bim": lambda x, y, eps: sign_iterations(
          logits_fn, losses.cross_entropy, x, y, eps=eps, step=STEP,
          num_steps=ITERATIONS, reading=table_reading),
      "cw": lambda x, y, eps: sign_iterations(
          logits_fn, cw_loss, x, y, eps=eps, step=STEP, num_steps=ITERATIONS,
          reading=table_reading),
  }
  if worst_case:
    key = jax.random.key(0) if key is None else key
    runs["apgd_ce"] = lambda x, y, eps: attacks.apgd(
        logits_fn, x, y, key, eps=eps, num_steps=APGD_STEPS)
    runs["apgd_t"] = lambda x, y, eps: attacks.apgd_targeted(
        logits_fn, x, y, key, eps=eps, num_steps=APGD_STEPS,
        num_targets=APGD_TARGETS)
  return {name: jax.jit(run) for name, run in runs.items()}


def attack_correct(logits_fn, x, y, runs: dict) -> dict[str, object]:
  """Per-example correctness, clean and under each of ``runs`` at each eps.

  Args:
    logits_fn: x -> logits.
    x: (N, 28, 28, 1) images in [0, 1].
    y: (N,) labels.
    runs: :func:`attack_runs`.

  Returns:
    {"natural": (N,) bool, name: [(N,) bool per eps] for each run, and with
    APGD among them "worst": the per-example AND over clean and every run}.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  def correct(z):
    return np.asarray(jnp.argmax(logits_fn(z), -1) == y)

  out = {"natural": correct(x)}
  for name, run in runs.items():
    out[name] = [correct(run(x, y, jnp.float32(eps))) for eps in EPS]
  if "apgd_ce" in runs:
    out["worst"] = [np.logical_and.reduce([out["natural"]] + [
        out[name][i] for name in runs]) for i in range(len(EPS))]
  return out


def attack_accuracies(logits_fn, x, y, batch: int = BATCH, **kwargs
                      ) -> dict[str, object]:
  """Accuracies (fractions), clean and under each attack at each eps.

  Args:
    logits_fn: x -> logits.
    x: (N, 28, 28, 1) images in [0, 1].
    y: (N,) labels.
    batch: images per jitted call.
    **kwargs: :func:`attack_runs`' reading, worst_case, key.

  Returns:
    {"natural": float, "fgsm"/"bim"/"cw" (and "apgd_ce", "apgd_t",
    "worst"): [float per eps]}.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  runs = attack_runs(logits_fn, **kwargs)
  parts = [attack_correct(logits_fn, jnp.asarray(x[i:i + batch]),
                          jnp.asarray(y[i:i + batch]), runs)
           for i in range(0, len(x), batch)]
  return {k: (float(np.concatenate([p[k] for p in parts]).mean())
              if k == "natural" else
              [float(np.concatenate([p[k][i] for p in parts]).mean())
               for i in range(len(EPS))]) for k in parts[0]}


def within_interval(ours: float, paper: float, n: int) -> bool:
  """Whether the paper's cell (in %) lies in our cell's 95% interval."""
  return abs(100 * ours - paper) <= max(halfwidth(ours, n), 0.5)


def markdown(rows: dict[str, dict], examples: int) -> str:
  """Ours (with 95% intervals) and the paper's rows in one table, in %."""
  columns = [("natural", None)] + [(name, i) for name, _ in ATTACK_LABELS
                                   for i in range(len(EPS))]
  worst = any("worst" in cells for cells in rows.values())
  if worst:
    columns += [("worst", i) for i in range(len(EPS))]
  header = ["model", "natural"] + [
      f"{label} {eps:g}" for _, label in ATTACK_LABELS for eps in EPS] + (
          [f"worst case {eps:g}" for eps in EPS] if worst else [])

  def cell(cells, name, i):
    if name not in cells:
      return "–"
    value = cells[name] if i is None else cells[name][i]
    return f"{100 * value:.1f} ± {halfwidth(value, examples):.1f}"

  body = [[label] + [cell(cells, name, i) for name, i in columns]
          for label, cells in rows.items()]
  for label, cells in PAPER.items():
    body.append([f"paper: {label}", f"{cells['natural']:.1f}"] + [
        f"{v:.1f}" for name, _ in ATTACK_LABELS for v in cells[name]] +
                (["–"] * len(EPS) if worst else []))
  return (f"Accuracy (%) on the first {examples} MNIST test images, ± the "
          f"95% interval; FGSM one step of eps, BIM and C&W (margin loss) "
          f"{ITERATIONS} iterations of {STEP:g} (the paper's Sec. 8.3); worst "
          f"case: per example, any of those, APGD-CE ({APGD_STEPS} steps) and "
          f"APGD-T ({APGD_TARGETS} targets x {APGD_STEPS} steps).\n\n"
          + text.markdown_table(header, body, left_columns=1) + "\n")


def readings_markdown(readings: dict[str, dict[str, dict]], paper_rows,
                      examples: int) -> str:
  """Each reading's BIM and C&W cells, and how many lie in the interval."""
  header = ["model", "reading"] + [f"{label} {eps:g}" for name, label in
                                   ATTACK_LABELS for eps in EPS] + [
      "cells matching the paper"]
  body = []
  for label, by_reading in readings.items():
    paper = PAPER.get(paper_rows.get(label, ""))
    for reading, cells in by_reading.items():
      matched, total = 0, 0
      row = [label, reading]
      for name, _ in ATTACK_LABELS:
        for i in range(len(EPS)):
          row.append(f"{100 * cells[name][i]:.1f}")
          if paper:
            total += 1
            matched += within_interval(cells[name][i], paper[name][i],
                                       examples)
      row.append(f"{matched} of {total}" if paper else "–")
      body.append(row)
  return ("Protocol readings (see the tool's docstring); a cell matches when "
          "the paper's value lies in our 95% interval (at least ±0.5 "
          "points).\n\n" + text.markdown_table(header, body, left_columns=2)
          + "\n")


def run() -> None:
  """Evaluates each workdir and writes ``table.md`` and ``table.json``."""
  from lfr_jax import evaluation  # pylint: disable=g-import-not-at-top
  workdirs = list(_WORKDIRS.value)
  labels = list(_LABELS.value) or [os.path.basename(os.path.normpath(w))
                                   for w in workdirs]
  if len(labels) != len(workdirs):
    raise evaluation.EvalError(f"--labels names {len(labels)} rows but "
                               f"--workdir {len(workdirs)}.")
  paper_rows = list(_PAPER_ROWS.value) or [""] * len(workdirs)
  if len(paper_rows) != len(workdirs):
    raise evaluation.EvalError(f"--paper_rows names {len(paper_rows)} rows "
                               f"but --workdir {len(workdirs)}.")
  unknown = [r for r in paper_rows if r and r not in PAPER]
  if unknown:
    raise evaluation.EvalError(f"unknown --paper_rows {unknown}; valid: "
                               f"{', '.join(PAPER)}.")
  rows, readings, x, y = {}, {}, None, None
  for workdir, label in zip(workdirs, labels):
    config, models = evaluation.load_run(workdir)
    if x is None:
      x, y, info = evaluation.load_test_data(config.data, _NUM_EXAMPLES.value)
      print(evaluation.data_line(info, x.shape[0]), flush=True)
    wanted = [m for m in models if m.label.startswith(_CHECKPOINT.value)]
    model = (wanted or models)[0]
    logits_fn = model.logits_fn()
    print(f"{label}: {model.label}", flush=True)
    rows[label] = dict(attack_accuracies(logits_fn, x, y,
                                          worst_case=_WORST_CASE.value),
                       checkpoint=model.label, workdir=workdir)
    if _READINGS.value:
      readings[label] = {
          reading: attack_accuracies(logits_fn, x, y, reading=reading)
          for reading in READINGS}
  examples = int(x.shape[0])
  out = os.path.abspath(_OUT.value)
  os.makedirs(out, exist_ok=True)
  table = markdown(rows, examples)
  if readings:
    table += "\n" + readings_markdown(readings, dict(zip(labels, paper_rows)),
                                      examples)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(out, "table.json"), "w") as f:
    json.dump({"rows": rows, "readings": readings, "paper": PAPER,
               "paper_rows": dict(zip(labels, paper_rows)), "eps": EPS,
               "examples": examples, "iterations": ITERATIONS, "step": STEP,
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
