"""The LFR paper's Table 1 and figures at a reduced, equal-for-all protocol.

One command trains every row with its preset's ``:repro`` variant (see
``configs/common.py``: the same epochs, K, inner step and seeds for every
method), evaluates each final checkpoint with ``evaluate.py`` (the paper's
four attacks at the authors' settings, APGD-CE, APGD-T, the per-example worst
case, the gradient-masking checks), runs the lambda sweep with
``tools/sweep.py``, copies the small results (JSON, Markdown, chosen figures)
into ``docs/results/`` and writes ``docs/RESULTS.md`` from them. Run it from
the repository root; MNIST comes from ``$LFR_DATA_DIR`` or, when that is
unset, the repository's ``data/mnist/``::

    python tools/reproduce.py --workdir=runs/repro
    python tools/reproduce.py --stages=report   # RESULTS.md from docs/results/
    python tools/reproduce.py --rows=lfr_s0,trades_s0 --stages=train,eval

Every stage skips what is already done (a finished training summary, an
existing evaluation), and training resumes from its checkpoints, so an
interrupted run continues where it stopped. Each step is a subprocess running
the command that RESULTS.md prints, so every number can be rerun by hand.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import sys

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run as ``python tools/reproduce.py``, Python puts tools/ first on the path;
# the repository root must come first so that ``configs``, ``tools`` and this
# checkout's ``lfr_jax`` (not another installed copy) are the ones imported.
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from lfr_jax import cli  # noqa: E402  pylint: disable=g-import-not-at-top
from lfr_jax import files  # noqa: E402  pylint: disable=g-import-not-at-top
from lfr_jax import text  # noqa: E402  pylint: disable=g-import-not-at-top
from tools import subprocesses  # noqa: E402  pylint: disable=g-import-not-at-top
from tools.subprocesses import shown  # noqa: E402  pylint: disable=g-import-not-at-top

RESULTS_DIR = os.path.join(REPO, "docs", "results")
RESULTS_MD = os.path.join(REPO, "docs", "RESULTS.md")


@dataclasses.dataclass(frozen=True)
class Row:
  """One trained model of the table."""
  name: str        # workdir name under --workdir
  preset: str      # configs/<preset>.py
  label: str       # row label in RESULTS.md
  paper: str = ""  # the paper's Table 1 row it corresponds to
  seed: int = 0


ROWS = (
    Row("standard_s0", "mnist_standard", "Standard", "Standard"),
    Row("at_s0", "mnist_at", "AT (PGD-AT)", "AT"),
    Row("trades_s0", "mnist_trades", "TRADES (β=1)", "TRADES"),
    Row("trades_s1", "mnist_trades", "TRADES (β=1)", "TRADES", seed=1),
    Row("llr_s0", "mnist_llr", "LLR (λ=0.42, μ=0.31, ε warm-up)", "LLR"),
    Row("llr_softplus_s0", "mnist_llr_softplus",
        "LLR, softplus SmallCNN (λ=0.42, μ=0.31, ε warm-up)"),
    Row("lfr_s0", "mnist_lfr", "LFR (λ=0.02)", "LFR"),
    Row("lfr_s1", "mnist_lfr", "LFR (λ=0.02)", "LFR", seed=1),
    Row("gradient_norm_s0", "mnist_gradient_norm",
        "Gradient-norm penalty (LFR at ε=0)"),
    Row("decision_jacobian_s0", "mnist_decision_jacobian",
        "Decision-Jacobian penalty (c=500, squared ℓ2, pixel mean)"),
)
ROW_NAMES = tuple(r.name for r in ROWS)
# Rows drawn side by side in the figures (surfaces, gamma histograms).
GEOMETRY_ROWS = ("standard_s0", "lfr_s0")
SWEEP_LAMS = ("0.005", "0.02", "0.08")
STAGES = ("train", "eval", "sweep", "collect", "report")
# Evaluation size: first N test images (APGD-T's 9 x 100 steps dominate; the
# whole test set takes ~30x longer on 2 CPU cores), masking checks on fewer.
EVAL_EXAMPLES, CHECK_EXAMPLES = 300, 200

# LFR paper, Table 1 (MNIST, eps 0.3), accuracy in %.
PAPER = {
    "Standard": {"clean": 99.30, "fgsm_lfr": 33.69, "pgd": 2.04,
                 "mifgsm_lfr": 2.55, "ddn": 14.16},
    "AT": {"clean": 99.52, "fgsm_lfr": 97.26, "pgd": 95.37,
           "mifgsm_lfr": 94.17, "ddn": 94.05},
    "TRADES": {"clean": 99.49, "fgsm_lfr": 97.54, "pgd": 95.71,
               "mifgsm_lfr": 94.79, "ddn": 95.91},
    "LLR": {"clean": 99.62, "fgsm_lfr": 97.94, "pgd": 95.63,
            "mifgsm_lfr": 94.60, "ddn": 93.95},
    "LFR": {"clean": 99.47, "fgsm_lfr": 98.14, "pgd": 96.82,
            "mifgsm_lfr": 96.01, "ddn": 96.89},
}

FLAGS = flags.FLAGS
PROG = "tools/reproduce.py"


def define_flags() -> None:
  """Defines the flags (only when run as a script, so tests can import)."""
  flags.DEFINE_string("workdir", "runs/repro", "Root of the runs.")
  flags.DEFINE_list("stages", list(STAGES), f"Stages, from {STAGES}.")
  flags.DEFINE_list("rows", list(ROW_NAMES), f"Rows, from {ROW_NAMES}.")
  flags.DEFINE_integer("eval_examples", EVAL_EXAMPLES, "First N MNIST test "
                       "images evaluated (0 = all 10,000).")
  flags.DEFINE_integer("check_examples", CHECK_EXAMPLES, "Examples of the "
                       "gradient-masking checks.")
  flags.DEFINE_bool("dry_run", False, "Print the commands, run nothing.")


def train_command(row: Row, root: str) -> list[str]:
  """The train.py command of ``row``."""
  return [sys.executable, "train.py", f"--config=configs/{row.preset}.py:repro",
          f"--workdir={os.path.join(root, row.name)}",
          f"--config.seed={row.seed}", "--config.log.progress=False"]


def eval_command(row: Row, root: str, examples: int, check_examples: int
                 ) -> list[str]:
  """The evaluate.py command of ``row`` (its final checkpoint)."""
  return [sys.executable, "evaluate.py",
          f"--workdir={os.path.join(root, row.name)}", "--checkpoint=final",
          f"--out={os.path.join(root, 'eval', row.name)}",
          f"--config.eval.num_examples={examples}",
          f"--config.eval.check_examples={check_examples}",
          "--config.eval.geometry=False", "--config.eval.progress=False"]


def figures_command(root: str, examples: int) -> list[str]:
  """evaluate.py on Standard and LFR together: side-by-side figures.

  Decision and loss surfaces (Figs. 1 and 2), gamma histograms and the eps
  sweep are drawn with one panel per model of the same call.
  """
  return [sys.executable, "evaluate.py",
          "--workdir=" + ",".join(os.path.join(root, r) for r in GEOMETRY_ROWS),
          "--checkpoint=final",
          f"--out={os.path.join(root, 'eval', 'figures')}",
          f"--config.eval.num_examples={examples}",
          "--config.eval.attacks=pgd", "--config.eval.checks=False",
          "--config.eval.progress=False"]


def sweep_command(root: str, examples: int) -> list[str]:
  """The tools/sweep.py command of the lambda sweep (Fig. 3)."""
  return [sys.executable, "tools/sweep.py",
          "--config=configs/mnist_lfr.py:repro",
          "--config.log.progress=False", f"--lams={','.join(SWEEP_LAMS)}",
          f"--workdir={os.path.join(root, 'sweep')}",
          f"--eval_config.eval.num_examples={examples}",
          "--eval_config.eval.progress=False"]


def _run(command, log_path):
  return subprocesses.run_logged(PROG, command, log_path, FLAGS.dry_run)


def _load_json(path: str):
  with open(path) as f:
    return json.load(f)


def train_done(root: str, row: Row) -> bool:
  path = os.path.join(root, row.name, "summary.json")
  return os.path.isfile(path) and _load_json(path).get("completed", False)


def stage_train(root: str, rows: list[Row]) -> None:
  for row in rows:
    if not train_done(root, row):
      _run(train_command(row, root),
                 os.path.join(root, f"{row.name}.log"))


def _write_command(folder: str, command: list[str], seconds: float) -> None:
  """command.json in ``folder`` (an evaluation's: its latest version)."""
  files.write_json(os.path.join(files.latest(folder) or folder,
                                "command.json"),
                   {"command": shown(command), "seconds": seconds}, indent=None)


def evaluated(folder: str) -> bool:
  """Whether an evaluation's output folder holds a finished report (its
  ``latest`` version, or the flat layout of older runs)."""
  return files.latest_file(folder, "robustness.json") is not None


def stage_eval(root: str, rows: list[Row]) -> None:
  for row in rows:
    out = os.path.join(root, "eval", row.name)
    if evaluated(out):
      continue
    command = eval_command(row, root, FLAGS.eval_examples,
                           FLAGS.check_examples)
    seconds = _run(command,
                         os.path.join(root, "eval", f"{row.name}.log"))
    if not FLAGS.dry_run:
      _write_command(out, command, seconds)
  figures = os.path.join(root, "eval", "figures")
  if (all(r in [row.name for row in rows] for r in GEOMETRY_ROWS)
      and not evaluated(figures)):
    command = figures_command(root, FLAGS.eval_examples)
    seconds = _run(command, os.path.join(root, "eval", "figures.log"))
    if not FLAGS.dry_run:
      _write_command(figures, command, seconds)


def stage_sweep(root: str) -> None:
  """The lambda sweep; lambda 0.02 is the lfr_s0 row itself (same config)."""
  sweep_root = os.path.join(root, "sweep")
  if FLAGS.dry_run:
    print(f"$ {shown(sweep_command(root, FLAGS.eval_examples))}")
    return
  os.makedirs(sweep_root, exist_ok=True)
  link = os.path.join(sweep_root, "lam_0.02")
  if not os.path.exists(link):
    os.symlink(os.path.abspath(os.path.join(root, "lfr_s0")), link)
  if os.path.isfile(os.path.join(sweep_root, "sweep.json")):
    return
  command = sweep_command(root, FLAGS.eval_examples)
  seconds = _run(command, os.path.join(sweep_root, "sweep.log"))
  if not FLAGS.dry_run:
    _write_command(sweep_root, command, seconds)


# Figures copied into docs/results/figures (small PNGs).
FIGURE_PATTERNS = ("surface_random_decision_[01].png",
                   "surface_adversarial_decision_[01].png",
                   "surface_random_loss_[01].png", "gamma_flatness.png",
                   "gamma_linearity.png", "eps_sweep.png")


def small_png(src: str, dest: str, max_side: int = 1400,
              colors: int = 128) -> None:
  """Copies a figure as a smaller PNG (bounded size, adaptive palette)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (matplotlib's)
  with Image.open(src) as img:
    img = img.convert("RGB")
    img.thumbnail((max_side, max_side))
    with files.atomic_file(dest, "wb") as f:
      img.quantize(colors=colors).save(f, format="PNG", optimize=True)


# (metrics.jsonl key, panel title) of the training-curves figure; clean
# accuracy and CE are comparable across methods, the total losses are not.
CURVE_METRICS = (("acc", "train clean accuracy (batch mean)"),
                 ("ce", "train clean cross-entropy"))
TRAINING_CURVES = "training_curves.png"


def _jsonl_records(path: str) -> list[dict]:
  """The parseable records of a JSONL file.

  A run killed mid-write leaves a partial line (and a resumed run appends
  after it); such lines are skipped with a note instead of failing collect.
  """
  records, bad = [], 0
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line) if line.strip() else None
      except ValueError:
        record, bad = None, bad + 1
      if isinstance(record, dict):
        records.append(record)
  if bad:
    print(f"{PROG}: skipped {bad} unreadable line(s) of {path}", flush=True)
  return records


def training_curves(results_dir: str) -> dict:
  """Panel -> row name -> (steps, values) from each row's metrics.jsonl."""
  panels = {title: {} for _, title in CURVE_METRICS}
  for row in ROWS:
    path = os.path.join(results_dir, row.name, "metrics.jsonl")
    if not os.path.isfile(path):
      continue
    records = _jsonl_records(path)
    train = [r for r in records if r.get("split") == "train"]
    for key, title in CURVE_METRICS:
      points = [(r["step"], r[key]) for r in train if key in r]
      if points:
        panels[title][row.name] = tuple(zip(*points))
  return {k: v for k, v in panels.items() if v}


def write_training_curves(results_dir: str) -> str | None:
  """Draws docs/results/figures/training_curves.png; None without metrics."""
  from lfr_jax import plots  # pylint: disable=g-import-not-at-top
  panels = training_curves(results_dir)
  if not panels:
    return None
  path = os.path.join(results_dir, "figures", TRAINING_CURVES)
  plots.plot_training_curves(panels, path=path, dpi=80)
  return path


def _copy_scrubbed(src: str, dest: str) -> None:
  """Copies a text file without this machine's absolute paths."""
  from tools import curve  # pylint: disable=g-import-not-at-top
  with open(src) as f:
    scrubbed = curve.scrub(f.read())
  files.write_atomic(dest, scrubbed)


def stage_collect(root: str, rows: list[Row]) -> None:
  """Copies each row's small results into docs/results/<row>/."""
  for row in rows:
    dest = os.path.join(RESULTS_DIR, row.name)
    os.makedirs(dest, exist_ok=True)
    src_train = os.path.join(root, row.name)
    src_eval = os.path.join(root, "eval", row.name)
    src_eval = files.latest(src_eval) or src_eval
    for src, name in ((src_train, "summary.json"), (src_train, "config.json"),
                      (src_train, "metrics.jsonl"),
                      (src_eval, "robustness.json"),
                      (src_eval, "robustness.md"), (src_eval, "command.json")):
      if os.path.isfile(os.path.join(src, name)):
        out_name = "train_summary.json" if name == "summary.json" else name
        _copy_scrubbed(os.path.join(src, name), os.path.join(dest, out_name))
  write_training_curves(RESULTS_DIR)
  figures = files.latest(os.path.join(root, "eval", "figures"))
  if figures is not None:
    dest = os.path.join(RESULTS_DIR, "figures")
    os.makedirs(dest, exist_ok=True)
    for pattern in FIGURE_PATTERNS:
      for path in glob.glob(os.path.join(figures, "figures", pattern)):
        small_png(path, os.path.join(dest, os.path.basename(path)))
    for name in ("robustness.json", "command.json"):
      if os.path.isfile(os.path.join(figures, name)):
        _copy_scrubbed(os.path.join(figures, name), os.path.join(dest, name))
  sweep_root = os.path.join(root, "sweep")
  if os.path.isfile(os.path.join(sweep_root, "sweep.json")):
    dest = os.path.join(RESULTS_DIR, "sweep")
    os.makedirs(dest, exist_ok=True)
    for name in ("sweep.json", "sweep.md", "command.json"):
      if os.path.isfile(os.path.join(sweep_root, name)):
        _copy_scrubbed(os.path.join(sweep_root, name),
                       os.path.join(dest, name))
    if os.path.isfile(os.path.join(sweep_root, "sweep.png")):
      small_png(os.path.join(sweep_root, "sweep.png"),
                os.path.join(dest, "sweep.png"))


# ---------------------------------------------------------------------------
# RESULTS.md, from docs/results only (so it can be rebuilt without the runs)

# (metric key, column label) of the side-by-side table: the paper's columns.
PAPER_COLUMNS = (("clean", "Clean"), ("fgsm_lfr", "FGSM"), ("pgd", "PGD-40"),
                 ("mifgsm_lfr", "MI-FGSM"), ("ddn", "DDN"))
# Our extra columns.
EXTRA_COLUMNS = (("apgd_ce", "APGD-CE"), ("apgd_t", "APGD-T"),
                 ("worst", "worst case"))
# The authors' DDN quantity: accuracy on the output of advertorch's
# DDNL2Attack(nb_iter=20), i.e. 1 - its success rate over all points.
DDN_KEY = "ddn_lfr"
DDN_BUDGET_KEY = "ddn_lfr_acc_at_l2_2"


def load_results(results_dir: str) -> dict[str, dict]:
  """Row name -> {"eval": robustness.json, "train": summary, "command": ...}."""
  out = {}
  for row in ROWS:
    folder = os.path.join(results_dir, row.name)
    entry = {}
    for key, name in (("eval", "robustness.json"),
                      ("train", "train_summary.json"),
                      ("config", "config.json"), ("command", "command.json")):
      path = os.path.join(folder, name)
      if os.path.isfile(path):
        entry[key] = _load_json(path)
    if "eval" in entry:
      # A run that ended as a constant classifier has no robustness to
      # report: its "robust" accuracy is the majority-class rate.
      entry["collapsed"] = bool(entry.get("train", {}).get("collapsed_at_end"))
      out[row.name] = entry
  return out


def row_metrics(entry: dict) -> dict[str, float]:
  """Accuracies in % of a row's final checkpoint, by our metric key."""
  m = entry["eval"]["rows"][0]["metrics"]
  out = {k: 100 * m[k] for k in ("clean", "fgsm_lfr", "pgd", "mifgsm_lfr",
                                 "fgsm", "mifgsm", "apgd_ce", "apgd_t",
                                 "worst") if m.get(k) is not None}
  if m.get(DDN_KEY) is not None:
    out["ddn"] = 100 * m[DDN_KEY]
  elif m.get("ddn_lfr_success") is not None and m.get("clean") is not None:
    # Evaluations before the DDN column held this quantity: a point survives
    # when it is correct and DDN found nothing, so it is exactly
    # clean x (1 - success over the correct points). Their DDN ran without
    # the 256-level rounding and with the step schedule one step earlier.
    out["ddn"] = 100 * m["clean"] * (1 - m["ddn_lfr_success"])
    out["ddn_unquantized"] = 1.0
  if m.get(DDN_BUDGET_KEY) is not None:
    out["ddn_at_budget"] = 100 * m[DDN_BUDGET_KEY]
  if m.get("ddn_lfr_median_l2") is not None:
    # JSON writes a never-reached median (DDN broke under half) as "inf".
    out["ddn_median_l2"] = float(m["ddn_lfr_median_l2"])
  return out


def _mean_spread(values: list[float]) -> tuple[float, float]:
  mean = sum(values) / len(values)
  return mean, (max(values) - min(values)) / 2


def _mean_spread_cell(values: list[float]) -> str:
  if not values:
    return "–"
  mean, spread = _mean_spread(values)
  return f"{mean:.2f}" + (f" ± {spread:.2f}" if len(values) > 1 else "")


def side_by_side(results: dict, authors: dict | None = None) -> str:
  """The paper's Table 1 and ours, cell by cell (ours − paper).

  Args:
    results: :func:`load_results`.
    authors: :func:`load_authors_model`, drawn below the LFR row.

  Returns:
    The Markdown table.
  """
  header = ["defence", "seeds"] + [
      f"{label}: ours / paper / Δ" for _, label in PAPER_COLUMNS] + [
          f"{label} (ours; not in the paper)" for _, label in EXTRA_COLUMNS]
  rows = []
  for paper_row, paper in PAPER.items():
    runs = [results[r.name] for r in ROWS
            if r.paper == paper_row and r.name in results
            and not results[r.name]["collapsed"]]
    cells = [paper_row, str(len(runs))]
    for key, _ in PAPER_COLUMNS:
      ours = [row_metrics(e)[key] for e in runs if key in row_metrics(e)]
      dagger = "†" if key == "ddn" and any(
          "ddn_unquantized" in row_metrics(e) for e in runs) else ""
      if ours:
        mean, _ = _mean_spread(ours)
        cells.append(f"{_mean_spread_cell(ours)}{dagger} / {paper[key]:.2f} "
                     f"/ {mean - paper[key]:+.2f}")
      else:
        cells.append(f"not run / {paper[key]:.2f} / –")
    for key, _ in EXTRA_COLUMNS:
      cells.append(_mean_spread_cell([row_metrics(e)[key] for e in runs
                                      if key in row_metrics(e)]))
    rows.append(cells)
    if paper_row == "LFR" and authors is not None:
      rows.append(_authors_cells(authors, paper))
  return text.markdown_table(header, rows)


def _authors_cells(entry: dict, paper: dict) -> list[str]:
  """The LFR authors' published model, against the paper's LFR row."""
  metrics = row_metrics(entry)
  cells = ["LFR, authors' 100-epoch model", "1"]
  for key, _ in PAPER_COLUMNS:
    cells.append(f"{metrics[key]:.2f} / {paper[key]:.2f} / "
                 f"{metrics[key] - paper[key]:+.2f}"
                 if key in metrics else "–")
  cells += [_accuracy_cell(metrics, key) for key, _ in EXTRA_COLUMNS]
  return cells


def _accuracy_cell(metrics: dict[str, float], key: str) -> str:
  """An accuracy of :func:`row_metrics` (already in %); – when absent."""
  return f"{metrics[key]:.2f}" if key in metrics else "–"


def load_authors_model(results_dir: str) -> dict | None:
  """The published model's evaluation (docs/results/curve/), or None."""
  from tools import curve  # pylint: disable=g-import-not-at-top
  path = os.path.join(results_dir, "curve", curve.AUTHORS_MODEL,
                      "robustness.json")
  return {"eval": _load_json(path)} if os.path.isfile(path) else None


def full_table(results: dict, results_dir: str) -> str:
  """Every run, every column, with its seed and wall times.

  Args:
    results: :func:`load_results`.
    results_dir: docs/results, for the rows trained but not evaluated.

  Returns:
    The Markdown table: run, defence and seed left-aligned, numbers right.
  """
  columns = PAPER_COLUMNS + (("fgsm", "FGSM (textbook)"),
                             ("mifgsm", "MI-FGSM (textbook)")) + EXTRA_COLUMNS
  header = (["run", "defence", "seed"] + [label for _, label in columns]
            + ["DDN median L2", "DDN acc@L2≤2",
               "train: test clean / PGD-20 (1,000)",
               "train s", "eval s"])
  rows = []
  for row in ROWS:
    labels = [row.name, row.label, str(row.seed)]
    if row.name not in results:
      train = _train_only(results_dir, row)
      rows.append(labels + ["not evaluated"] * (len(columns) + 2) + [
          _training_test_cell(train), _seconds_cell(_train_seconds(train)),
          "–"])
      continue
    entry = results[row.name]
    train = entry.get("train", {})
    eval_seconds = _seconds_cell(entry.get("command", {}).get("seconds"))
    if entry["collapsed"]:
      rows.append(labels + ["constant classifier"] * (len(columns) + 2) + [
          _training_test_cell(train), _seconds_cell(_train_seconds(train)),
          eval_seconds])
      continue
    metrics = row_metrics(entry)
    cells = labels + [_accuracy_cell(metrics, k) for k, _ in columns]
    median = metrics.get("ddn_median_l2")
    cells.append("–" if median is None else "inf" if median == float("inf")
                 else f"{median:.3f}")
    cells.append(_accuracy_cell(metrics, "ddn_at_budget"))
    cells.append(_training_test_cell(train))
    cells.append(_seconds_cell(_train_seconds(train)))
    cells.append(eval_seconds)
    rows.append(cells)
  return text.markdown_table(header, rows, left_columns=3)


def _train_seconds(summary: dict):
  """Training's wall time over every resume (older summaries: "seconds")."""
  return summary.get("seconds_total", summary.get("seconds"))


def _seconds_cell(seconds) -> str:
  """Whole seconds; – when unknown (or zero: a dry run's)."""
  return f"{seconds:.0f}" if seconds else "–"


def _training_test_cell(summary: dict) -> str:
  """Training's own end-of-run test numbers (PGD-20 on 1,000 test images)."""
  if "test_clean_acc" not in summary:
    return "–"
  return (f"{text.percent(summary['test_clean_acc'], digits=1)} / "
          f"{text.percent(summary['test_pgd_acc'], digits=1)}")


def _train_only(results_dir: str, row: Row) -> dict:
  """A row's training summary when it was trained but not evaluated."""
  path = os.path.join(results_dir, row.name, "train_summary.json")
  return _load_json(path) if os.path.isfile(path) else {}


def check_lines(results: dict) -> list[str]:
  """Every WARN of the gradient-masking checks, and a count of the PASSes."""
  out = []
  for row in ROWS:
    if row.name not in results:
      continue
    checks = results[row.name]["eval"]["rows"][0].get("checks", [])
    warns = [c for c in checks if c["status"] == "WARN"]
    passes = sum(c["status"] == "PASS" for c in checks)
    out.append(f"- **{row.name}**: {passes} PASS, {len(warns)} WARN"
               + "".join(f"\n  - WARN {c['name']}: {c['evidence']}"
                         for c in warns))
  return out


def headline(results: dict) -> str:
  """LFR's worst-case robust accuracy against TRADES' and AT's."""
  def worst_cases(paper_row):
    return [row_metrics(results[r.name])["worst"] for r in ROWS
            if r.paper == paper_row and r.name in results
            and not results[r.name]["collapsed"]
            and "worst" in row_metrics(results[r.name])]
  def warn_count(paper_row):
    return sum(c["status"] == "WARN" for r in ROWS
               if r.paper == paper_row and r.name in results
               for c in results[r.name]["eval"]["rows"][0].get("checks", []))
  parts = []
  for name in ("LFR", "TRADES", "AT", "LLR", "Standard"):
    accuracies = worst_cases(name)
    if accuracies:
      warns = warn_count(name)
      parts.append(f"{name} {_mean_spread_cell(accuracies)}%" + (
          f" ({warns} masking WARN{'s' if warns > 1 else ''})"
          if warns else ""))
  return ("Worst-case robust accuracy (ℓ∞, ε = 0.3; mean ± half-range over "
          "seeds): " + ", ".join(parts) + "." if parts else
          "No row has been evaluated yet.")


def _protocol_text(results: dict) -> list[str]:
  """The protocol section: training, evaluation, sample size, machine."""
  from configs import common  # pylint: disable=g-import-not-at-top
  any_entry = next(iter(results.values()), None)
  lines = [
      f"- **Training** (every row, `configs/<preset>.py:repro`): "
      f"{common.REPRO_EPOCHS:g} epoch(s) over the 55,000-image training "
      f"split (5,000 held out for validation), batch 128, inner "
      f"maximization K = {common.REPRO_K} steps of 2.5·ε/K = 0.075 at "
      f"ε = 0.3 (LLR: Adam steps of the same size), SGD momentum 0.9 at lr "
      f"0.05 (5× the paper's 0.01: a short run needs it) with ×0.1 at 90% of "
      f"training; the decision-Jacobian row keeps its preset's Adam 1e-3 "
      f"and model. Seeds as listed. The paper: 100 epochs, K = 40, step "
      f"0.01, lr 0.01.",
  ]
  if any_entry:
    report = any_entry["eval"]
    settings = report["settings"]
    lines.append(
        f"- **Evaluation** (`evaluate.py`, final checkpoints): the first "
        f"{report['rows'][0]['examples']} MNIST test images, "
        f"ε = {settings['eps']:g}; every attack at its full settings: "
        f"PGD-{settings['pgd_steps']} (step {settings['step_size']:g}, "
        f"uniform start), FGSM and MI-FGSM (decay "
        f"{settings['mifgsm_lfr_decay']:g}) as the LFR authors ran them, "
        f"DDN-{settings['ddn_steps']} (advertorch's defaults, no norm "
        f"bound: accuracy on its output; also the median ‖δ‖₂ and accuracy "
        f"at ‖δ‖₂ ≤ {settings['ddn_l2_budget']:g}), APGD-CE and APGD-T "
        f"({settings['apgd_steps']} steps, {settings['apgd_targets']} "
        f"targets), and the per-example worst case over all ℓ∞ attacks. "
        f"Masking checks on the first {settings['check_examples']} images.")
    lines.append(_sample_size_text(results,
                                   report["rows"][0]["examples"]))
    hardware = report.get("hardware", {})
    software = report.get("software", {})
    lines.append(f"- **Hardware and software**: {_flat(hardware)}; "
                 f"{_flat(software)}.")
  return lines


def binomial_halfwidth(accuracy: float, n: int) -> float:
  """Half-width in points of a 95% normal interval of an accuracy (in %)."""
  p = accuracy / 100
  return 100 * 1.96 * math.sqrt(p * (1 - p) / n)


def _sample_size_text(results: dict, n: int) -> str:
  """The paragraph on what ``n`` test images can and cannot tell apart."""
  seconds = [e["command"]["seconds"] for e in results.values()
             if e.get("command", {}).get("seconds")]
  paragraph = (
      f"- **Sample size**: {n} test images, not the full 10,000: an "
      f"accuracy's 95% interval is about ±{binomial_halfwidth(50, n):.1f} "
      f"points at 50%, ±{binomial_halfwidth(80, n):.1f} at 80% and "
      f"±{binomial_halfwidth(95, n):.1f} at 95%, so only differences "
      f"larger than that are findings.")
  if seconds:
    median = sorted(seconds)[len(seconds) // 2]
    paragraph += (
        f" One evaluation took a median {median:.0f} s here; the full "
        f"test set would take about {median * 10_000 / n / 3600:.1f} h "
        f"per row on these 2 CPU cores.")
  return paragraph


def _flat(details) -> str:
  """``{"cpu": "x", "jax": "0.1"}`` -> ``cpu x, jax 0.1``."""
  if isinstance(details, dict):
    return ", ".join(f"{k} {v}" for k, v in details.items())
  return str(details)


def _commands_section(results) -> list[str]:
  out = ["## Protocol (the same for every row)", ""]
  out += _protocol_text(results)
  out += ["", "The full run: `python tools/reproduce.py --workdir=runs/repro`. "
          "Per row, the exact commands:", "", "```"]
  out += [shown(train_command(row, "runs/repro")) for row in ROWS]
  out += [shown(eval_command(row, "runs/repro", EVAL_EXAMPLES, CHECK_EXAMPLES))
          for row in ROWS]
  out.append(shown(figures_command("runs/repro", EVAL_EXAMPLES)))
  out.append(shown(sweep_command("runs/repro", EVAL_EXAMPLES)))
  return out + ["```"]


def _tables_section(results, results_dir: str) -> list[str]:
  out = ["## Headline", "", headline(results), "",
         "## The paper's Table 1 and ours, cell by cell", "",
         "Accuracy in %: ours (mean ± half-range over seeds) / the paper / "
         "ours − paper. DDN is what the authors' evaluation script "
         "measures: accuracy on the output of advertorch's "
         "`DDNL2Attack(nb_iter=20)` with its defaults (init norm 1, γ 0.05, "
         "256 grey levels, no norm bound; 20 steps reach at most "
         "‖δ‖₂ = 1.05²⁰ ≈ 2.65), i.e. 1 − its success rate over all points. "
         "Cells marked † come from evaluations that ran DDN without the "
         "256-level rounding and with its step schedule one step earlier; "
         "their value is clean × (1 − success), exact for that attack.", ""]
  authors = load_authors_model(results_dir)
  out.append(side_by_side(results, authors))
  if authors is not None:
    n = authors["eval"]["rows"][0]["examples"]
    out += ["", f"The authors' model is evaluated on the first {n} test "
            f"images (the other rows on {EVAL_EXAMPLES}); its section below "
            "gives the intervals and masking checks."]
  out += ["", "## Every run, every column", "",
          "Accuracy in %; train s is the wall time of training including its "
          "validation, eval s that of `evaluate.py`.", ""]
  out.append(full_table(results, results_dir))
  out += ["", "## Gradient-masking checks", ""]
  return out + (check_lines(results) or ["(no row evaluated yet)"])


# The figures RESULTS.md shows, in order, with their captions.
FIGURES = (
    ("surface_random_decision_0.png", "Fig. 1: decision surfaces, test "
     "image 0, random plane"),
    ("surface_random_decision_1.png", "Fig. 1: decision surfaces, test "
     "image 1, random plane"),
    ("surface_adversarial_decision_0.png", "decision surfaces along an "
     "adversarial direction, test image 0"),
    ("surface_random_loss_0.png", "Fig. 2: loss surfaces, test image 0"),
    ("surface_random_loss_1.png", "Fig. 2: loss surfaces, test image 1"),
    ("gamma_flatness.png", "local flatness γ(x, ε) histograms"),
    ("gamma_linearity.png", "local linearity γ histograms"),
    ("eps_sweep.png", "accuracy against ε (PGD-40, APGD-CE)"),
    (TRAINING_CURVES, "training curves of every row (logged every 50 "
     "steps)"),
)


def _figures_section(results_dir: str) -> list[str]:
  figs = os.path.join(results_dir, "figures")
  if not os.path.isdir(figs):
    return []
  out = ["## Figures", "",
         "Standard (left) and LFR (right) from one `evaluate.py` call (its "
         "command is in `docs/results/figures/command.json`).", ""]
  for name, caption in FIGURES:
    if os.path.isfile(os.path.join(figs, name)):
      out += [f"**{caption}**", "", f"![{caption}](results/figures/{name})",
              ""]
  return out


def _sweep_section(results_dir: str) -> list[str]:
  sweep = os.path.join(results_dir, "sweep")
  if not os.path.isfile(os.path.join(sweep, "sweep.md")):
    return []
  out = ["## Fig. 3: the λ sweep", "",
         open(os.path.join(sweep, "sweep.md")).read().replace(
             "# Lambda sweep", "").strip(), ""]
  if os.path.isfile(os.path.join(sweep, "sweep.png")):
    out += ["![λ sweep](results/sweep/sweep.png)", ""]
  return out


def render(results_dir: str) -> str:
  """The whole of docs/RESULTS.md."""
  from tools import curve_report  # pylint: disable=g-import-not-at-top
  results = load_results(results_dir)
  reading_path = os.path.join(results_dir, "reading.md")
  reading = (open(reading_path).read().strip() if os.path.isfile(reading_path)
             else "(not written yet)")
  out = ["# LFR Table 1, reproduced at a reduced protocol", "",
         "Generated by `python tools/reproduce.py --stages=report` from the "
         "files in `docs/results/` (which `tools/reproduce.py` copies from the "
         "runs); do not edit by hand: the reading below comes from "
         "`docs/results/reading.md`.", ""]
  out += _commands_section(results) + [""]
  out += _tables_section(results, results_dir)
  out += [""] + curve_report.sections(os.path.join(results_dir, "curve"),
                                      PAPER["LFR"])
  out += ["", "## Reading", "", reading, ""]
  out += _figures_section(results_dir) + _sweep_section(results_dir)
  return "\n".join(out) + "\n"


def run() -> None:
  """Runs the stages of ``--stages`` on the rows of ``--rows``."""
  unknown = sorted(set(FLAGS.stages) - set(STAGES))
  unknown_rows = sorted(set(FLAGS.rows) - set(ROW_NAMES))
  if unknown:
    cli.fail(PROG, f"unknown stages {unknown}; valid: {', '.join(STAGES)}.")
  if unknown_rows:
    cli.fail(PROG, f"unknown rows {unknown_rows}; valid: "
             f"{', '.join(ROW_NAMES)}.")
  root = os.path.abspath(FLAGS.workdir)
  rows = [r for r in ROWS if r.name in FLAGS.rows]
  if "train" in FLAGS.stages:
    stage_train(root, rows)
  if "eval" in FLAGS.stages:
    stage_eval(root, rows)
  if "sweep" in FLAGS.stages:
    stage_sweep(root)
  if "collect" in FLAGS.stages and not FLAGS.dry_run:
    stage_collect(root, rows)
  if "report" in FLAGS.stages and not FLAGS.dry_run:
    markdown = render(RESULTS_DIR)
    files.write_atomic(RESULTS_MD, markdown)
    print(f"wrote {RESULTS_MD}")


if __name__ == "__main__":
  define_flags()
  # Every stage runs the other programs as subprocesses: no jax here.
  cli.main(PROG, run, settings_hint="flags such as --stages=report",
           user_errors=(ValueError,), quiet_logs=False)
