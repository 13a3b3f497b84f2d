"""The evaluation of every row: the table, the eps sweep, masking checks, geometry.

:func:`evaluate` checks the settings and the inputs, then for each row runs
every column of the table (a point counts as robust to an l_inf attack when
it is classified correctly both clean and at the attack's point), the PGD
and APGD-CE eps sweep and the masking checks' extra attacks, and returns a
:class:`lfr_jax.evaluation.results.Report`; the eps-sweep figure and the
geometry follow.

Example::

    import jax.numpy as jnp
    import numpy as np
    from configs import evaluate as eval_configs
    from lfr_jax.evaluation import pipeline, results
    cfg = eval_configs.get_config("smoke").eval
    cfg.attacks, cfg.eps_sweep = "fgsm", ()
    cfg.checks = cfg.geometry = False
    row = results.ModelRow("linear", lambda p, x: x.reshape(len(x), -1) @ p,
                           jnp.eye(4, 3))
    x, y = np.ones((4, 2, 2, 1), np.float32), np.arange(4) % 3
    report = pipeline.evaluate([row], x, y, cfg)
    report.rows[0].acc("clean")              # 0.25
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from lfr_jax import config_check
from lfr_jax import text
from lfr_jax.evaluation import columns
from lfr_jax.evaluation import geometry_report
from lfr_jax.evaluation import masking
from lfr_jax.evaluation import reports
from lfr_jax.evaluation import results
from lfr_jax.evaluation import runner as runner_lib
from lfr_jax.evaluation import settings as settings_lib
from lfr_jax.evaluation.settings import EvalSettings


def _check_model_fits(model: results.ModelRow, x: np.ndarray,
                      s: EvalSettings) -> int:
  """Number of classes; a ConfigError if APGD-T asks for too many targets."""
  out = jax.eval_shape(model.logits_fn(), jax.ShapeDtypeStruct(
      (2,) + x.shape[1:], jnp.float32))
  classes = int(out.shape[-1])
  if "apgd_t" in s.attacks and not 1 <= s.apgd_targets <= classes - 1:
    raise config_check.ConfigError(
        f"config.eval.apgd_targets must lie in [1, {classes - 1}] for "
        f"{classes} classes, got {s.apgd_targets}.")
  return classes


def _check_inputs(model_list: Sequence[results.ModelRow], x: np.ndarray,
                  y: np.ndarray, s: EvalSettings) -> None:
  """Raises EvalError (or ConfigError) before any attack runs."""
  if not model_list:
    raise results.EvalError("nothing to evaluate: no models given.")
  if x.ndim != 4 or y.shape != x.shape[:1] or not x.shape[0]:
    raise results.EvalError(
        f"need images (N, H, W, C) and labels (N,) with N > 0, got {x.shape} "
        f"and {y.shape}.")
  for model in model_list:
    try:
      _check_model_fits(model, x, s)
    except config_check.ConfigError:
      raise
    except (TypeError, ValueError) as e:
      raise results.EvalError(
          f"model {model.label!r} does not take the {x.shape[1:]} images: "
          f"{text.one_line(e, pick='first', limit=200)}") from None


class _RowRun:
  """Runs one row's attacks: its placed parameters, keys and progress text."""

  def __init__(self, model: results.ModelRow, runner: runner_lib.Runner,
               root: jax.Array, x: np.ndarray, y: np.ndarray):
    self.model, self.runner, self.root = model, runner, root
    self.x, self.y = x, y
    self.params = runner.place(model.params)
    self.count = 0

  def __call__(self, attack: columns.Attack, xs=None, ys=None,
               key_name: str | None = None) -> dict[str, np.ndarray]:
    """The attack's outputs on ``xs`` (default: all images), keyed by name."""
    xs = self.x if xs is None else xs
    ys = self.y if ys is None else ys
    t = time.time()
    self.count += 1
    out = self.runner.run(
        self.model, self.params, attack, xs, ys,
        runner_lib.attack_key(self.root, key_name or attack.name),
        desc=f"{self.model.label}: {attack.label}")
    logging.debug("%s: %s done in %.1f s", self.model.label, attack.label,
                  time.time() - t)
    return out


def _table(row: results.RowResult, run: _RowRun,
           table: Sequence[columns.Attack], s: EvalSettings) -> None:
  """Every column's robust flags (and DDN's norms), then the worst case."""
  y, clean = row.y, row.clean
  for attack in table:
    if 0 < attack.examples < len(y):
      # On the first examples only: the others keep their clean flags, so
      # the worst case over the columns still holds for them.
      m = attack.examples
      robust = clean.copy()
      robust[:m] &= run(attack, run.x[:m], y[:m])["pred"] == y[:m]
      row.robust[attack.name], row.subsets[attack.name] = robust, m
      continue
    out = run(attack)
    if attack.threat == "l2":
      row.ddn_norms = out["norms"]
    row.robust[attack.name] = clean & (out["pred"] == y)
  linf = [a.name for a in table if a.threat == "linf"]
  if s.has_worst and linf:
    row.robust["worst"] = np.logical_and.reduce(
        [row.robust[k] for k in linf] + [clean])


def _sweep(row: results.RowResult, run: _RowRun, s: EvalSettings) -> None:
  """PGD and APGD-CE robust flags at every radius of the eps sweep."""
  y, clean = row.y, row.clean
  for name, build in (("pgd", functools.partial(columns.pgd_attack, s)),
                      ("apgd_ce", functools.partial(columns.apgd_ce_attack,
                                                    s))):
    by_eps = {}
    for e in s.eps_sweep:
      if name in row.robust and abs(e - s.eps) < 1e-12:
        by_eps[e] = row.robust[name]  # the table's column at this radius
      else:
        by_eps[e] = clean & (run(build(e), key_name=name)["pred"] == y)
    if by_eps:
      row.sweep[name] = by_eps


def _evaluate_row(model: results.ModelRow, x: np.ndarray, y: np.ndarray,
                  s: EvalSettings, runner: runner_lib.Runner, root: jax.Array,
                  table: Sequence[columns.Attack]) -> results.RowResult:
  """One row's table, sweep and check attacks (the checks' inputs)."""
  t0 = time.time()
  run = _RowRun(model, runner, root, x, y)
  clean = run(columns.CLEAN)["pred"] == y
  row = results.RowResult(model.label, dict(model.info), y, clean)
  _table(row, run, table, s)
  _sweep(row, run, s)
  if s.checks:
    m = x.shape[0] if not s.check_examples else min(s.check_examples,
                                                    x.shape[0])
    row.check_data = masking.run_check_attacks(run, s, x[:m], y[:m], clean[:m])
  row.seconds = time.time() - t0
  logging.info("%s: clean %.2f%%, %d attack runs in %.0f s", model.label,
               100 * row.acc("clean"), run.count, row.seconds)
  return row


def _plot_eps_sweep(report: results.Report, figures_dir) -> str:
  """The accuracy-vs-eps figure of every row; returns its path."""
  from lfr_jax import plots  # pylint: disable=g-import-not-at-top
  labels = report.labels
  first = report.rows[0]
  eps = [0.0] + sorted(next(iter(first.sweep.values())))
  acc = {}
  for row in report.rows:
    for name, by_eps in row.sweep.items():
      acc[f"{row.label}: {labels[name]}"] = [100 * row.acc("clean")] + [
          100 * float(np.mean(by_eps[e])) for e in eps[1:]]
  path = os.path.join(os.fspath(figures_dir), "eps_sweep.png")
  plots.plot_eps_sweep(eps, acc, path=path,
                       title=f"accuracy vs l_inf eps (n={first.n})")
  return path


def evaluate(model_list: Sequence[results.ModelRow], x, y, cfg, *,
             figures_dir: str | os.PathLike | None = None,
             data_info: Mapping[str, Any] | None = None) -> results.Report:
  """Evaluates models: the table, the eps sweep, masking checks, geometry.

  Args:
    model_list: the rows, e.g. from :func:`lfr_jax.evaluation.load_run`.
    x: (N, H, W, C) float32 images in [0, 1].
    y: (N,) integer labels.
    cfg: the :class:`EvalSettings`, or ``config.eval`` (see
      configs/evaluate.py), checked here.
    figures_dir: where the eps-sweep plot and the geometry figures go;
      None writes no figures (the geometry numbers are still computed).
    data_info: description of the data for the report.

  Returns:
    The :class:`lfr_jax.evaluation.results.Report`.

  Raises:
    config_check.ConfigError: invalid settings.
  """
  t0 = time.time()
  s = settings_lib.from_config(cfg)
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.int32)
  _check_inputs(model_list, x, y, s)
  table = columns.table_attacks(s)
  runner = runner_lib.Runner(s.batch_size, s.progress)
  root = jax.random.key(s.seed)
  report = results.Report([], table, s,
                          dict(data_info or {}, examples=int(x.shape[0])),
                          reports.environment())
  labels = report.labels
  for model in model_list:
    row = _evaluate_row(model, x, y, s, runner, root, table)
    if s.checks:
      row.checks = masking.masking_checks(row, s, labels)
    report.rows.append(row)
  if figures_dir is not None and report.rows[0].sweep:
    report.figures.append(_plot_eps_sweep(report, figures_dir))
  if s.geometry:
    report.figures += geometry_report.geometry_outputs(
        model_list, report.rows, x, y, s, figures_dir,
        jax.random.fold_in(root, 7))
  report.seconds = time.time() - t0
  return report
