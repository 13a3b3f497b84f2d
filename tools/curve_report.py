"""The sections of docs/RESULTS.md written from docs/results/curve/.

Reads only the small files ``tools/curve.py --stages=collect`` copies (so the
report can be rebuilt on any machine without the runs) and returns Markdown:
the LFR authors' published model beside the paper's row, the per-epoch log of
LFR at the authors' settings, and robust accuracy against training compute
with its figure. ``tools/reproduce.py --stages=report`` calls
:func:`sections`.

Example::

    from tools import curve_report
    text = "\\n".join(curve_report.sections("docs/results/curve"))
"""

from __future__ import annotations

import json
import math
import os

from lfr_jax import text
from tools import curve

FIGURE = "compute_curve.png"
LOG_FIGURE = "authors_settings_log.png"
# The authors' training log of the published model, quoted as data.
AUTHORS_LOG = "authors_log.json"
# (metric key, label) of the curve tables; accuracies in %.
COLUMNS = (("clean", "clean"), ("fgsm_lfr", "FGSM"), ("pgd", "PGD-40"),
           ("mifgsm_lfr", "MI-FGSM"), ("ddn_lfr", "DDN-20"),
           ("apgd_ce", "APGD-CE"), ("apgd_t", "APGD-T"), ("worst", "worst"))


def _load(path: str):
  """The JSON file at ``path``; a damaged one is a ValueError naming it."""
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); restore it from git "
                       "or rerun the stage that writes it") from e


def _load_if_present(path: str):
  """The JSON file at ``path``, or None when there is none."""
  return _load(path) if os.path.isfile(path) else None


def jsonl(path: str) -> list[dict]:
  """The parseable records of a JSONL file ([] if it is missing)."""
  if not os.path.isfile(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # a line cut by a killed run
      if isinstance(record, dict):
        out.append(record)
  return out


def halfwidth(p: float, n: int) -> float:
  """Half-width in points of the 95% normal interval of an accuracy p in %."""
  q = p / 100
  return 100 * 1.96 * math.sqrt(max(q * (1 - q), 0.0) / n) if n else math.nan


def metrics(report: dict) -> dict[str, float]:
  """Accuracies in % of a robustness.json's first row, plus "n"."""
  row = report["rows"][0]
  fractions = row["metrics"]
  out = {k: 100 * fractions[k] for k, _ in COLUMNS
         if isinstance(fractions.get(k), (int, float))}
  out["n"] = row["examples"]
  return out


def training_hours(records: list[dict], batch: int, upto_step: int) -> float:
  """Hours the run's own training steps took up to ``upto_step``.

  From the train windows of metrics.jsonl (steps x batch / examples per s),
  the last record of a step winning when a resumed run logged it twice.
  Validation and checkpoint time is not included.
  """
  by_step = {r["step"]: r for r in records
             if r.get("split") == "train" and r.get("examples_per_sec")}
  seconds, previous = 0.0, 0
  for step in sorted(by_step):
    if step > upto_step:
      break
    seconds += (step - previous) * batch / by_step[step]["examples_per_sec"]
    previous = step
  return seconds / 3600


# A validation PGD accuracy this many points below the run's best so far is
# catastrophic overfitting (Wong et al. 2020): cheap single-step training
# whose robustness to iterative attacks collapses within an epoch.
OVERFITTING_DROP = 20.0


def catastrophic_overfitting(records: list[dict]) -> dict | None:
  """The first validation whose PGD accuracy fell OVERFITTING_DROP points.

  Args:
    records: a run's metrics.jsonl records.

  Returns:
    {"epoch", "pgd", "best_before"} in %, or None if it never happened.
  """
  best = -math.inf
  by_step = {r["step"]: r for r in records if r.get("split") == "val"}
  for step in sorted(by_step):
    pgd = 100 * by_step[step]["pgd_acc"]
    if pgd <= best - OVERFITTING_DROP:
      return {"epoch": by_step[step]["epoch"], "pgd": pgd,
              "best_before": best}
    best = max(best, pgd)
  return None


def curve_points(results_dir: str) -> dict[str, list[dict]]:
  """Row name -> one point per evaluated epoch (metrics, epochs, hours, FLOPs)."""
  bench = _load_if_present(os.path.join(results_dir, "step_seconds.json")) or {}
  flops = _load_if_present(os.path.join(results_dir, "step_flops.json")) or {}
  out = {}
  for row in curve.ROWS:
    folder = os.path.join(results_dir, row.name)
    config = _load_if_present(os.path.join(folder, "config.json"))
    records = jsonl(os.path.join(folder, "metrics.jsonl"))
    steps_per_epoch = next((int(round(r["step"] / r["epoch"]))
                            for r in records
                            if r.get("split") == "train_epoch" and r["epoch"]),
                           None)
    points = []
    for epoch in row.epochs:
      report = _load_if_present(
          os.path.join(folder, f"epoch_{epoch}", "robustness.json"))
      if report is None or config is None or steps_per_epoch is None:
        continue
      point = dict(metrics(report), epoch=epoch)
      point["hours_measured"] = training_hours(
          records, config["data"]["batch_size"], epoch * steps_per_epoch)
      step_s = bench.get("rows", {}).get(row.name, {}).get("median_s")
      point["hours_bench"] = (epoch * steps_per_epoch * step_s / 3600
                              if step_s else None)
      step_flops = flops.get("rows", {}).get(row.name, {}).get("flops")
      point["pflops"] = (epoch * steps_per_epoch * step_flops / 1e15
                         if step_flops else None)
      point["checks"] = report["rows"][0].get("checks", [])
      point["written"] = report.get("written", "")
      points.append(point)
    if points:
      out[row.name] = points
  return out


def authors_model(results_dir: str) -> dict | None:
  report = _load_if_present(os.path.join(results_dir, curve.AUTHORS_MODEL,
                               "robustness.json"))
  return None if report is None else dict(
      metrics(report), checks=report["rows"][0].get("checks", []))


def _accuracy_cell(value: float | None) -> str:
  """An accuracy already in % (:func:`metrics`), two decimals; – if missing."""
  return "–" if value is None else f"{value:.2f}"


def _row_cells(accuracies: dict) -> list[str]:
  return [_accuracy_cell(accuracies.get(k)) for k, _ in COLUMNS]


def _table(header: list[str], body: list[list[str]]) -> list[str]:
  """Markdown table lines: the label column left, the numbers right."""
  return text.markdown_table(header, body, left_columns=1).split("\n")


def _check_summary(checks: list[dict]) -> list[str]:
  if not checks:
    return []
  passes = sum(c["status"] == "PASS" for c in checks)
  lines = [f"Masking checks: {passes} PASS, "
           f"{sum(c['status'] == 'WARN' for c in checks)} WARN."]
  lines += [f"- WARN {c['name']}: {c['evidence']}" for c in checks
            if c["status"] == "WARN"]
  return lines


def authors_section(results_dir: str, paper_lfr: dict) -> list[str]:
  """The published model beside the paper's LFR row."""
  model = authors_model(results_dir)
  out = ["## The LFR authors' published model, through our evaluation", ""]
  if model is None:
    return out + ["(not evaluated yet)", ""]
  command = _load_if_present(os.path.join(results_dir, curve.AUTHORS_MODEL,
                                          "command.json")) or {}
  default_command = curve.shown(curve.authors_model_command(
      "runs/curve", "model_best.pth.tar"))
  paper = [f"{paper_lfr[k]:.2f}" if k in paper_lfr else "–"
           for k in ("clean", "fgsm_lfr", "pgd", "mifgsm_lfr", "ddn")]
  out += [
      "`model_best.pth.tar` from the LFR authors' public repository "
      "(`savedModel/MNIST/lr_0.01_lambada_0.02_rs_1000/`): SmallCNN without "
      "dropout, λ = 0.02, K = 40 steps of 0.01, 100 epochs of SGD lr 0.01, "
      "chosen by the authors on test clean accuracy. Evaluated as published "
      f"(a training checkpoint with `module.` keys) on the first "
      f"{model['n']} test images, every attack at full settings; ± is the "
      f"95% interval from the sample size.", "",
      f"`{command.get('command', default_command)}`",
      ""]
  header = ["model"] + [label for _, label in COLUMNS]
  body = [["LFR, authors' 100-epoch model (ours)"] + [
      f"{model[k]:.2f} ± {halfwidth(model[k], model['n']):.2f}"
      if k in model else "–" for k, _ in COLUMNS],
          ["LFR, the paper's Table 1"] + paper + ["–"] * 3]
  out += _table(header, body) + [""] + _check_summary(model["checks"]) + [""]
  return out


def epoch_log(results_dir: str) -> list[dict]:
  """Per-epoch rows of the K = 40 run at the authors' settings."""
  records = jsonl(os.path.join(results_dir, curve.AUTHORS_SETTINGS,
                               "metrics.jsonl"))
  config = _load_if_present(os.path.join(
      results_dir, curve.AUTHORS_SETTINGS, "config.json"))

  def by_step(split):
    # The last record of a step wins: a resumed run logs some twice.
    return {r["step"]: r for r in records if r["split"] == split}

  train, clean, val = by_step("train_epoch"), by_step("test_clean"), by_step(
      "val")
  rows = []
  for step in sorted(train):
    epoch = train[step]
    rows.append({
        "epoch": int(round(epoch["epoch"])), "reg": epoch["reg"],
        "ce": epoch["ce"], "train_acc": 100 * epoch["acc"],
        "test_clean": 100 * clean[step]["clean_acc"] if step in clean else None,
        "val_clean": 100 * val[step]["clean_acc"] if step in val else None,
        "val_pgd": 100 * val[step]["pgd_acc"] if step in val else None,
        "hours": training_hours(records, config["data"]["batch_size"], step)
                 if config else None})
  return rows


def authors_settings_section(results_dir: str) -> list[str]:
  """The per-epoch log of LFR at the authors' settings, with its command."""
  rows = epoch_log(results_dir)
  command = curve.shown(curve.authors_settings_command(
      "runs/curve", max(len(rows), curve.AUTHORS_EPOCHS)))
  out = ["## LFR at the authors' exact settings, in our loop", ""]
  out += [
      "`configs/mnist_lfr.py` without a variant (K = 40 sign steps of 0.01, "
      "ε = 0.3, SGD lr 0.01 momentum 0.9, batch 128, λ = 0.02, no dropout), "
      "the first epochs of its 100-epoch schedule. Per epoch: the mean over "
      "the epoch's training steps of the regularizer ‖∇ₓL(x_worst)‖₁ (train "
      "mode, at the inner maximization's point) and of the clean "
      "cross-entropy, the mean train-batch accuracy, clean accuracy on the "
      "whole 10,000-image test set (monitoring only) and the validation "
      "split's clean and PGD-40 accuracy (1,000 images), as the authors' "
      "training log records them.", "",
      f"`{command}`", ""]
  if not rows:
    return out + ["(not run yet)", ""]
  body = [[str(r["epoch"]), f"{r['reg']:.3f}", f"{r['ce']:.4f}",
           f"{r['train_acc']:.2f}", _accuracy_cell(r["test_clean"]),
           _accuracy_cell(r["val_clean"]), _accuracy_cell(r["val_pgd"]),
           "–" if r["hours"] is None else f"{r['hours']:.2f}"] for r in rows]
  out += _table(["epoch", "mean reg (x_worst)", "mean clean CE",
                 "train acc %", "test clean % (10,000)", "val clean %",
                 "val PGD-40 %", "training h (cumulative)"], body) + [""]
  log = authors_log(results_dir)
  if log:
    theirs = {e["epoch"]: e for e in log["epochs"]}
    body = []
    for r in rows:
      a = theirs.get(r["epoch"])
      if a is None:
        continue
      body.append([str(r["epoch"]), f"{r['reg']:.3f}", f"{a['reg']:.3f}",
                   f"{r['ce']:.4f}", f"{a['ce']:.4f}", f"{r['train_acc']:.2f}",
                   f"{a['train_acc']:.2f}", _accuracy_cell(r["test_clean"]),
                   f"{a['test_clean']:.2f}"])
    out += ["Beside the training log of the authors' published model "
            f"(`docs/results/curve/{AUTHORS_LOG}`, quoted from "
            f"{log['source']}; their seed 1000, ours 0):", ""]
    out += _table(["epoch", "reg, ours", "reg, authors'", "clean CE, ours",
                   "clean CE, authors'", "train acc %, ours",
                   "train acc %, authors'", "test clean %, ours",
                   "test clean %, authors'"], body) + [""]
    if os.path.isfile(os.path.join(results_dir, LOG_FIGURE)):
      out += [f"![the regularizer over the authors' 100 epochs and ours]"
              f"(results/curve/{LOG_FIGURE})", ""]
  return out


def authors_log(results_dir: str) -> dict | None:
  """The authors' per-epoch training log (``authors_log.json``), or None."""
  return _load_if_present(os.path.join(results_dir, AUTHORS_LOG))


def write_log_figure(results_dir: str) -> str | None:
  """The mean regularizer and test clean accuracy per epoch: theirs and ours."""
  log, rows = authors_log(results_dir), epoch_log(results_dir)
  if not log or not rows:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
  theirs = log["epochs"]
  for axis, key, label in ((axes[0], "reg", "mean ‖∇ₓL(x_worst)‖₁ over the "
                            "epoch's training steps"),
                           (axes[1], "test_clean", "test clean accuracy (%), "
                            "10,000 images")):
    axis.plot([e["epoch"] for e in theirs], [e[key] for e in theirs],
              color="0.4", label="the authors' log (published model)")
    axis.plot([r["epoch"] for r in rows if r[key] is not None],
              [r[key] for r in rows if r[key] is not None], "o", color="C3",
              label="ours, same settings")
    axis.set_xlabel("epoch (lr ×0.1 at 90)")
    axis.set_ylabel(label)
    axis.grid(alpha=0.3)
  axes[1].set_ylim(95, 100)
  axes[0].legend(fontsize=8)
  fig.suptitle("LFR at the authors' settings (MNIST SmallCNN, K = 40, "
               "λ = 0.02): our first epochs on the authors' 100")
  fig.tight_layout()
  path = os.path.join(results_dir, LOG_FIGURE)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def gap_fit(points: dict[str, list[dict]], row: str = "lfr_s0",
            baseline: str = "trades_s0") -> dict | None:
  """Least-squares line of the worst-case gap baseline - row in log2(epochs).

  Args:
    points: :func:`curve_points`.
    row: the curve row behind.
    baseline: the curve row ahead.

  Returns:
    {"slope": points per doubling, "intercept": gap at 1 epoch, "cross":
    epochs where the line reaches 0 (None if it does not shrink)}, or None
    without three common epochs.
  """
  worst = {p["epoch"]: p.get("worst") for p in points.get(row, [])}
  worst_baseline = {p["epoch"]: p.get("worst")
                    for p in points.get(baseline, [])}
  common_epochs = sorted(e for e in worst if e in worst_baseline
                         and worst[e] is not None
                         and worst_baseline[e] is not None)
  if len(common_epochs) < 3:
    return None
  xs = [math.log2(e) for e in common_epochs]
  ys = [worst_baseline[e] - worst[e] for e in common_epochs]
  mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
  slope = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
           / sum((x - mean_x) ** 2 for x in xs))
  intercept = mean_y - slope * mean_x
  cross = None
  if slope < 0:
    doublings = -intercept / slope
    # Beyond a million epochs the line says only "not within any budget".
    cross = 2 ** doublings if doublings < math.log2(1e6) else math.inf
  return {"epochs": common_epochs, "gaps": ys, "slope": slope,
          "intercept": intercept, "cross": cross}


def curve_section(results_dir: str) -> list[str]:
  """Robust accuracy against training epochs and hours, table and figure."""
  points = curve_points(results_dir)
  out = ["## Robust accuracy against training compute", ""]
  out += [
      "Every row trains with its preset's `:curve` variant: the `:repro` "
      "protocol (K = 10 inner steps of 0.075, SGD lr 0.05 ×0.1 at 90%, batch "
      "128, seed 0) run for 5 epochs, keeping the checkpoints after epochs "
      "1, 2 and 5 (the epoch-1 point is therefore not the `:repro` model, "
      "whose learning rate decays within its one epoch). Each checkpoint is "
      f"evaluated on the first {curve.EVAL_EXAMPLES} test images with every "
      "attack at full settings; masking checks and geometry on epoch 5 only. "
      "Training hours are the steps' count times one step's median time, "
      "measured for every row's config in one interleaved run "
      "(`tools/curve.py --stages=bench`); \"measured h\" is what the runs "
      "themselves logged, on a machine that other jobs sometimes shared.", ""]
  # Only the rows that were run get their commands; the others are named, so
  # a reader sees what is defined but has no evidence yet.
  run_rows = [r for r in curve.ROWS if points.get(r.name)] or list(curve.ROWS)
  out += ["```"] + [curve.shown(curve.train_command(r, "runs/curve"))
                    for r in run_rows] + [
      curve.shown(curve.eval_command(run_rows[0], "runs/curve", e))
      for e in run_rows[0].epochs] + ["```", ""]
  not_run = [r for r in curve.ROWS if r not in run_rows]
  if not_run:
    out += ["Defined in `tools/curve.py` but not run yet: "
            + ", ".join(f"{r.label} (`--rows={r.name}`)" for r in not_run)
            + ".", ""]
  if not points:
    return out + ["(no checkpoint evaluated yet)", ""]
  body = []
  for row in curve.ROWS:
    for point in points.get(row.name, []):
      worst = point.get("worst")
      body.append([row.label, str(point["epoch"])] + _row_cells(point)[:-1] + [
          "–" if worst is None
          else f"{worst:.2f} ± {halfwidth(worst, point['n']):.2f}",
          "–" if point.get("pflops") is None else f"{point['pflops']:.1f}",
          "–" if point["hours_bench"] is None
          else f"{point['hours_bench']:.2f}",
          f"{point['hours_measured']:.2f}"])
  out += _table(["method", "epochs"] + [label for _, label in COLUMNS[:-1]]
                + ["worst case", "training PFLOP", "training h",
                   "measured h"], body) + [""]
  overfit = []
  for row in curve.ROWS:
    found = catastrophic_overfitting(jsonl(os.path.join(
        results_dir, row.name, "metrics.jsonl")))
    if points.get(row.name) and found:
      overfit.append(f"{row.label}: validation PGD-20 fell to "
                     f"{found['pgd']:.1f}% at epoch {found['epoch']:g} after "
                     f"{found['best_before']:.1f}%")
  if any(points.get(r.name) for r in curve.ROWS):
    out += ["Catastrophic overfitting (validation PGD accuracy falling "
            f"{OVERFITTING_DROP:g} points below the run's best so far, checked "
            "every epoch): " + ("; ".join(overfit) if overfit else
                                "none in any row") + ".", ""]
  if os.path.isfile(os.path.join(results_dir, FIGURE)):
    out += [f"![worst-case robust accuracy against training compute]"
            f"(results/curve/{FIGURE})", ""]
  fit = gap_fit(points)
  if fit:
    gaps = ", ".join(f"{gap:.1f} at epoch {epoch}" for epoch, gap in
                     zip(fit["epochs"], fit["gaps"]))
    out += [f"TRADES − LFR, worst case, in points: {gaps}; a least-squares "
            f"line in log₂(epochs) changes it by {fit['slope']:+.1f} points "
            f"per doubling of training."]
    if fit["cross"] == math.inf:
      out[-1] += " At that rate it would not close within a million epochs."
    elif fit["cross"] is not None:
      out[-1] += (f" If that trend held, the gap would close after about "
                  f"{fit['cross']:.0f} epochs.")
    out.append("")
  for row in curve.ROWS:
    row_points = points.get(row.name, [])
    if row_points and row_points[-1]["checks"]:
      summary = _check_summary(row_points[-1]["checks"])
      out += [f"**{row.label}, epoch {row_points[-1]['epoch']}.** "
              + summary[0], ""] + summary[1:] + [""]
  reading = os.path.join(results_dir, "reading.md")
  out += ["", "### Reading", "", open(reading).read().strip()
          if os.path.isfile(reading) else "(not written yet)", ""]
  return out


def write_figure(results_dir: str) -> str | None:
  """Worst-case accuracy against epochs and hours; the published model as a line."""
  points = curve_points(results_dir)
  if not points:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  flops = any(p.get("pflops") for pts in points.values() for p in pts)
  panels = [("epoch", "training epochs")] + (
      [("pflops", "training compute, PFLOP (XLA cost analysis of the "
        "compiled step × steps)")] if flops else [])
  benched = any(p.get("hours_bench") for pts in points.values() for p in pts)
  panels.append(("hours_bench", "training hours, 2-core x86_64 CPU "
                 "(benchmarked step time × steps)") if benched else (
                     "hours_measured", "training hours, 2-core x86_64 CPU "
                     "(as the runs logged them)"))
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2),
                           sharey=True)
  reference = authors_model(results_dir)
  for axis, (key, title) in zip(axes, panels):
    for row in curve.ROWS:
      pts = [p for p in points.get(row.name, [])
             if p.get(key) is not None and p.get("worst") is not None]
      if not pts:
        continue
      axis.errorbar([p[key] for p in pts], [p["worst"] for p in pts],
                    yerr=[halfwidth(p["worst"], p["n"]) for p in pts],
                    marker="o", capsize=3, label=row.label)
    if reference and "worst" in reference:
      axis.axhline(reference["worst"], color="k", ls="--", lw=1,
                   label="LFR authors' 100-epoch model")
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    if key == "epoch":
      axis.set_xticks(sorted({e for r in curve.ROWS if points.get(r.name)
                              for e in r.epochs}))
    axis.set_xlabel(title)
    axis.grid(alpha=0.3)
  axes[0].set_ylabel("worst-case robust accuracy (%), ε = 0.3")
  axes[0].legend(fontsize=8)
  dates = sorted({p["written"][:10] for pts in points.values() for p in pts
                  if p.get("written")})
  when = f"; {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else "") \
      if dates else ""
  fig.suptitle("Robust accuracy against training compute (MNIST SmallCNN, "
               f"first {curve.EVAL_EXAMPLES} test images, 95% intervals"
               f"{when})")
  fig.tight_layout()
  path = os.path.join(results_dir, FIGURE)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def sections(results_dir: str, paper_lfr: dict) -> list[str]:
  """Every section, in order, as Markdown lines."""
  return (authors_section(results_dir, paper_lfr)
          + authors_settings_section(results_dir)
          + curve_section(results_dir))
