"""The report of an evaluation: Markdown, CSV, JSON, per-example arrays, the printed summary.

:func:`write_report` writes ``robustness.md`` (:func:`to_markdown`),
``robustness.csv`` (:func:`to_csv`, one line per row of :func:`metrics`),
``robustness.json`` (:func:`to_json`: settings, versions, hardware, rows)
and ``per_example.npz``; :func:`summary_text` is what evaluate.py prints.
Accuracies are shown in percent with two decimals (``text.percent``).

Example::

    from configs import evaluate as eval_configs
    from lfr_jax.evaluation import reports, settings
    cfg = eval_configs.get_config("smoke").eval
    reports.reduced_settings(settings.from_config(cfg))[0]  # 'PGD steps 2 < 40'
    reports.environment()["software"]["python"]             # e.g. '3.11.7'
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import subprocess
import time
from typing import Any

import jax
import numpy as np

from lfr_jax import files
from lfr_jax import text
from lfr_jax.evaluation import columns
from lfr_jax.evaluation import geometry_report
from lfr_jax.evaluation import masking
from lfr_jax.evaluation import results
from lfr_jax.evaluation import settings as settings_lib

# The LFR paper's attack budgets (Sec. 5): below these a table is a smoke test.
PAPER_STEP_COUNTS = {"pgd_steps": 40, "ddn_steps": 20, "apgd_steps": 100,
                     "apgd_targets": 9}
_BUDGET_LABELS = {"pgd_steps": "PGD steps", "ddn_steps": "DDN steps",
                  "apgd_steps": "APGD steps", "apgd_targets": "APGD-T targets"}
# (number, header, format) of the geometry table, in its column order.
_GEOMETRY_COLUMNS = (
    ("jacobian_l1_mean", "Jacobian l1 (mean)", "{:.4g}"),
    ("jacobian_sparsity", "Jacobian sparsity", "{:.3f}"),
    ("hessian_top_abs_mean", "Hessian max abs eigenvalue (mean)", "{:.4g}"),
    ("hessian_ritz_l1_mean", "Hessian Ritz l1 (mean)", "{:.4g}"),
    ("hessian_l1_estimate_mean", "Hessian l1 SLQ estimate", "{:.4g}"),
    ("hessian_zero_share", "Hessian zero share", "{:.3f}"),
    ("gamma_flatness_median", "gamma flatness (median)", "{:.4g}"),
    ("gamma_linearity_median", "gamma linearity (median)", "{:.4g}"))


def environment() -> dict[str, Any]:
  """Software versions and hardware, for the JSON report."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import lfr_jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  commit = None
  try:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__),
        capture_output=True, text=True, timeout=5, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return {
      "software": {"python": platform.python_version(),
                   "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                   "flax": flax.__version__, "numpy": np.__version__,
                   "lfr_jax": lfr_jax.__version__, "git_commit": commit},
      "hardware": {"platform": jax.default_backend(),
                   "device_kind": devices[0].device_kind,
                   "device_count": len(devices),
                   "process_count": jax.process_count(),
                   "host": platform.platform(),
                   "cpu_count": os.cpu_count()},
  }


def reduced_settings(s) -> list[str]:
  """The attack budgets below the LFR paper's (then: not robust accuracy).

  Only the budgets of the selected columns and of the eps sweep count.

  Args:
    s: the :class:`EvalSettings` (or ``config.eval``, checked here).
  """
  s = settings_lib.from_config(s)
  names = set(s.attacks)
  used = {"pgd_steps": bool(names & {"pgd", "mifgsm_lfr", "mifgsm"})
                       or bool(s.eps_sweep),
          "ddn_steps": "ddn_lfr" in names,
          "apgd_steps": bool(names & {"apgd_ce", "apgd_t"})
                        or bool(s.eps_sweep),
          "apgd_targets": "apgd_t" in names}
  return [f"{_BUDGET_LABELS[k]} {getattr(s, k)} < {paper}"
          for k, paper in PAPER_STEP_COUNTS.items()
          if used[k] and getattr(s, k) < paper]


def _shown(key: str, value) -> str:
  if key in ("num_examples", "check_examples", "gamma_examples") and not value:
    return "all"
  if isinstance(value, tuple):
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v)
                    for v in value)
  return f"{value:g}" if isinstance(value, float) else str(value)


def estimate_notice(s, full) -> str:
  """One line saying how settings differ from the full evaluation ('' if not).

  Args:
    s: the :class:`EvalSettings` (or ``config.eval``) used.
    full: the full protocol's (configs/evaluate.py without a variant).

  Returns:
    E.g. "quick estimate, not the full evaluation: num_examples 500 (full:
    all), ...; quote the full evaluation's numbers." Progress and the
    variant's name are not settings of the result and are left out.
  """
  s, full = settings_lib.from_config(s), settings_lib.from_config(full)
  skip = ("progress", "variant")
  diffs = [f"{k} {_shown(k, getattr(s, k))} (full: "
           f"{_shown(k, getattr(full, k))})" for k in settings_lib.SETTINGS
           if k not in skip and getattr(s, k) != getattr(full, k)]
  if not diffs:
    return ""
  kind = {"quick": "quick estimate (configs/evaluate.py:quick)",
          "smoke": "smoke test (configs/evaluate.py:smoke)"}.get(
              s.variant, "reduced evaluation")
  return (f"{kind}, not the full evaluation: {'; '.join(diffs)}. For "
          f"numbers to quote, run the full settings (configs/evaluate.py).")


def metrics(row: results.RowResult, report: results.Report
            ) -> dict[str, float]:
  """A row's numbers, flat: accuracies as fractions, DDN, sweep, geometry."""
  out = {"clean": row.acc("clean")}
  budget = report.eval_settings.ddn_l2_budget
  for attack in report.columns:
    if attack.name in row.robust:
      out[attack.name] = row.acc(attack.name)
      if attack.name in row.subsets:
        out[f"{attack.name}_examples"] = float(row.subsets[attack.name])
    if attack.threat == "l2" and row.ddn_norms is not None:
      ddn = results.ddn_summary(row.ddn_norms, row.clean, budget)
      out.update({f"{attack.name}_success": ddn["success"],
                  f"{attack.name}_median_l2": ddn["median_l2"],
                  f"{attack.name}_acc_at_l2_{budget:g}": ddn["acc_at_budget"]})
  if "worst" in row.robust:
    out["worst"] = row.acc("worst")
  for name, by_eps in row.sweep.items():
    for e, v in sorted(by_eps.items()):
      out[f"{name}_eps_{e:g}"] = float(np.mean(v))
  out.update({f"geometry_{k}": float(v) for k, v in row.geometry.items()})
  return out


def main_table(report: results.Report) -> str:
  """The robustness table (accuracy in %) as Markdown."""
  budget = report.eval_settings.ddn_l2_budget
  header = ["checkpoint", "clean"]
  for attack in report.columns:
    if attack.threat == "l2":
      header += [attack.label, f"{attack.label} success",
                 f"{attack.label} median L2",
                 f"{attack.label} acc@L2<={budget:g}"]
    else:
      header.append(attack.label)
  if report.has_worst:
    header.append("worst case")
  body = []
  for row in report.rows:
    cells = [row.label, text.percent(row.acc("clean"))]
    for attack in report.columns:
      if attack.threat == "l2":
        ddn = results.ddn_summary(row.ddn_norms, row.clean, budget)
        median = ddn["median_l2"]
        cells += [text.percent(row.acc(attack.name)),
                  text.percent(ddn["success"]),
                  "inf" if median == float("inf") else f"{median:.3f}",
                  text.percent(ddn["acc_at_budget"])]
      else:
        subset = row.subsets.get(attack.name)
        cells.append(text.percent(row.acc(attack.name)) +
                     (f" (first {subset})" if subset else ""))
    if report.has_worst:
      cells.append(text.percent(row.acc("worst")) if "worst" in row.robust
                   else "n/a")
    body.append(cells)
  return text.markdown_table(header, body, left_columns=1)


def sweep_table(report: results.Report) -> str:
  """Accuracy (%) per eps of the sweep as Markdown ('' without a sweep)."""
  if not report.rows or not report.rows[0].sweep:
    return ""
  labels = report.labels
  first = report.rows[0].sweep
  radii = sorted(next(iter(first.values())))
  header = ["checkpoint"] + [f"{labels[name]} eps={e:g}"
                             for e in radii for name in first]
  body = [[row.label] + [text.percent(float(np.mean(row.sweep[name][e])))
                         for e in radii for name in first]
          for row in report.rows]
  return text.markdown_table(header, body, left_columns=1)


def check_lines(report: results.Report) -> list[str]:
  """The PASS/WARN/SKIP lines, prefixed by the row label when several."""
  lines = []
  for row in report.rows:
    prefix = f"[{row.label}] " if len(report.rows) > 1 else ""
    lines += [c.line(prefix) for c in row.checks]
  return lines


def geometry_table(report: results.Report) -> str:
  """The geometry numbers of every row as Markdown ('' without any)."""
  present = [k for k in _GEOMETRY_COLUMNS
             if any(k[0] in r.geometry for r in report.rows)]
  if not present:
    return ""
  body = [[row.label] + [fmt.format(row.geometry[k]) if k in row.geometry
                         else "n/a" for k, _, fmt in present]
          for row in report.rows]
  return text.markdown_table(["checkpoint"] + [h for _, h, _ in present], body,
                             left_columns=1)


def _markdown_head(report: results.Report, n: int) -> list[str]:
  """The title, what was evaluated on what, and the smoke-test warning."""
  s, d = report.eval_settings, report.data
  total = d.get("total")
  what = (f"{d.get('dataset', 'data')} {d.get('split', '')} set, "
          f"{n}" + (f" of {total}" if total else "") + " examples")
  hardware = report.environment["hardware"]
  out = ["# Robustness evaluation", "",
         f"{what}; seed {s.seed}; batch {s.batch_size}; "
         f"{hardware['device_kind']} x{hardware['device_count']}; "
         f"{report.seconds:.0f} s.", ""]
  reduced = reduced_settings(s)
  if reduced:
    out += [f"**Reduced attack settings ({'; '.join(reduced)}): these numbers "
            f"are a smoke test, not robust accuracies.**", ""]
  out += [f"**{note}**" for note in report.notes] + (
      [""] if report.notes else [])
  return out


def _markdown_columns(report: results.Report) -> list[str]:
  """The accuracy table and what each of its columns is."""
  out = [f"## Accuracy (%) under attack (l_inf eps "
         f"{report.eval_settings.eps:g} unless stated)", "", main_table(report),
         "", "Columns:", "", "- clean: no attack."]
  for a in report.columns:
    out.append(f"- {a.label} [{a.source}]: {a.description}.")
  if report.has_worst:
    out.append(f"- worst case: {columns.worst_description(report.columns)}.")
  if report.columns and any(a.threat == "l2" for a in report.columns):
    out.append("- DDN success rate and median L2 are over the clean-correct "
               "points (a failure counts as an infinite norm); acc@L2 is over "
               "all points.")
  return out


def _markdown_geometry(report: results.Report, n: int) -> list[str]:
  """The geometry table and how its numbers were computed ([] without)."""
  geo = geometry_table(report)
  if not geo:
    return []
  s = report.eval_settings
  return ["", "## Geometry", "", geo, "",
          f"Jacobian and Hessian (Lanczos, {s.hessian_iters} steps) of "
          f"the decision value z_y - max_(i!=y) z_i on the first "
          f"{s.geometry_examples} images; gamma flatness = max over the "
          f"eps {s.eps:g} ball of ||grad CE||_1 ({s.gamma_steps} sign "
          f"steps of {geometry_report.flatness_step(s):g}), gamma linearity "
          f"= LLR's ({s.gamma_steps} Adam steps of 0.1), on the first "
          f"{s.gamma_examples or n} images."] + _zero_hessian_note(report)


def _zero_hessian_note(report: results.Report) -> list[str]:
  """Why a row's Hessian columns read 0 (a ReLU network), when one does."""
  flat = [row.label for row in report.rows
          if abs(row.geometry.get("hessian_top_abs_mean", 1.0)) < 1e-12]
  if not flat:
    return []
  return ["", f"Zero Hessian spectrum ({', '.join(flat)}): a ReLU network is "
          f"piecewise linear in its input, so its input Hessian is exactly 0 "
          f"almost everywhere (only the softmax bends the loss, and the "
          f"decision value has none). This is not flatness: the Hessian "
          f"columns measure curvature only for smooth activations (e.g. the "
          f"softplus presets); the Jacobian and gamma columns apply to every "
          f"model."]


def to_markdown(report: results.Report) -> str:
  """The whole report as Markdown."""
  n = report.data.get("examples", report.rows[0].n if report.rows else 0)
  out = _markdown_head(report, n) + _markdown_columns(report)
  sweep = sweep_table(report)
  if sweep:
    out += ["", "## Accuracy (%) vs eps", "", sweep, "",
            "PGD steps scale with eps (step_size * eps / eps_main); APGD-CE "
            "is step-size free."]
  lines = check_lines(report)
  if lines:
    m = report.rows[0].check_data.get("m", 0)
    out += ["", f"## Gradient-masking checks (table columns on {n} examples, "
            f"extra attacks on the first {m})", "", "```"] + lines + ["```"]
  out += _markdown_geometry(report, n)
  if report.figures:
    out += ["", "Figures: " + ", ".join(
        os.path.basename(p) for p in report.figures) + " (in figures/)."]
  return "\n".join(out) + "\n"


def to_csv(report: results.Report) -> str:
  """One line per row: label plus every number of :func:`metrics`."""
  table = [(row.label, metrics(row, report)) for row in report.rows]
  keys: list[str] = []
  for _, m in table:
    keys += [k for k in m if k not in keys]
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["checkpoint"] + keys)
  for label, m in table:
    writer.writerow([label] + [repr(m[k]) if k in m else "" for k in keys])
  return buf.getvalue()


def _json_number(v):
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # "inf" / "nan": JSON has no such numbers
  return v


def _json_columns(report: results.Report) -> list[dict[str, Any]]:
  """The columns with their exact settings, "clean" first, "worst" last."""
  out = [{"name": "clean", "label": "clean", "source": "no attack"}]
  for a in report.columns:
    out.append({"name": a.name, "label": a.label, "source": a.source,
                "threat": a.threat, "description": a.description,
                "settings": a.settings()})
  if report.has_worst:
    out.append({"name": "worst", "label": "worst case",
                "source": "AutoAttack-style",
                "description": columns.worst_description(report.columns)})
  return out


def to_json(report: results.Report) -> dict[str, Any]:
  """The report as a JSON-able dict (settings, versions, hardware, rows)."""
  s = report.eval_settings
  rows = [{"label": row.label, "info": row.info, "examples": row.n,
           "metrics": {k: _json_number(v)
                       for k, v in metrics(row, report).items()},
           "checks": [dataclasses.asdict(c) for c in row.checks],
           "seconds": row.seconds} for row in report.rows]
  return {
      "data": report.data, "settings": s.as_dict(), "seed": s.seed,
      "columns": _json_columns(report),
      "eps_sweep": {"eps": list(s.eps_sweep), "attacks": [
          columns.pgd_attack(s, e).settings() for e in s.eps_sweep] + [
              columns.apgd_ce_attack(s, e).settings() for e in s.eps_sweep]},
      "check_attacks": ({k: dict(a.settings(), label=a.label,
                                 description=a.description)
                         for k, a in masking.build_check_attacks(s).items()}
                        if s.checks else {}),
      "reduced_settings": reduced_settings(s),
      "notes": list(report.notes),
      "rows": rows, "figures": report.figures,
      "environment": report.environment,
      "software": report.environment["software"],
      "hardware": report.environment["hardware"],
      "seconds": report.seconds,
      "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }


def _per_example(report: results.Report) -> bytes:
  """``per_example.npz``: every row's per-example flags, compressed."""
  arrays = {}
  for i, row in enumerate(report.rows):
    arrays[f"row{i}_clean"] = row.clean
    for k, v in row.robust.items():
      arrays[f"row{i}_{k}"] = v[:row.subsets[k]] if k in row.subsets else v
    if row.ddn_norms is not None:
      arrays[f"row{i}_ddn_norms"] = row.ddn_norms
    for name, by_eps in row.sweep.items():
      for e, v in by_eps.items():
        arrays[f"row{i}_{name}_eps_{e:g}"] = v
  arrays["labels"] = np.asarray([r.label for r in report.rows], dtype=str)
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  return buf.getvalue()


def write_report(report: results.Report, out_dir: str | os.PathLike
                 ) -> dict[str, str]:
  """Writes robustness.{md,csv,json} and per_example.npz into ``out_dir``.

  Each file is written whole (:func:`lfr_jax.files.atomic_file`), so an
  interrupted run leaves the previous file intact. Figures inside
  ``out_dir`` are recorded by their path relative to it, so a report folder
  can be moved or published as a version (see :mod:`lfr_jax.files`).

  Returns:
    name -> path of what was written.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  inside = os.path.abspath(out_dir) + os.sep
  report = dataclasses.replace(report, figures=[
      os.path.relpath(p, out_dir) if os.path.abspath(p).startswith(inside)
      else p for p in report.figures])
  paths = {k: os.path.join(out_dir, f"robustness.{k}")
           for k in ("md", "csv", "json")}
  files.write_atomic(paths["md"], to_markdown(report))
  files.write_atomic(paths["csv"], to_csv(report))
  files.write_json(paths["json"], to_json(report))
  paths["npz"] = os.path.join(out_dir, "per_example.npz")
  files.write_atomic(paths["npz"], _per_example(report))
  return paths


def summary_text(report: results.Report) -> str:
  """What evaluate.py prints: the table, the eps sweep and the checks."""
  out = [main_table(report)]
  reduced = reduced_settings(report.eval_settings)
  if reduced:
    out.append(f"(reduced attack settings: {'; '.join(reduced)} - a smoke "
               f"test, not robust accuracies)")
  sweep = sweep_table(report)
  if sweep:
    out += ["", sweep]
  lines = check_lines(report)
  if lines:
    out += [""] + lines
  return "\n".join(out)

