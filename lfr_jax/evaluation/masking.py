"""Gradient-masking sanity checks: the extra attacks they need, and seven PASS/WARN tests.

The checks follow Carlini et al. (2019), "On Evaluating Adversarial
Robustness", Sec. 5-6, and Athalye et al. (2018). :func:`build_check_attacks`
gives the extra attacks (more steps and restarts, a large radius, unbounded
DDN, :func:`lfr_jax.attacks.random_search` as the gradient-free attack, the
PGD loss trace), :func:`run_check_attacks` runs them on the first
``check_examples`` points, and :data:`CHECKS` holds one function per check,
by name; :func:`masking_checks` gives each one's ``PASS``/``WARN``/``SKIP``
line with its numbers. "Noise" is :func:`noise_tolerance`.

Example::

    import numpy as np
    from lfr_jax.evaluation import masking, results
    row = results.RowResult("synthetic", {}, np.zeros(4, np.int32),
                            np.ones(4, bool),
                            robust={"pgd": np.array([1, 0, 0, 0], bool),
                                    "fgsm": np.array([1, 1, 0, 0], bool)})
    status, evidence = masking.iterative_not_weaker(
        row, None, {"pgd": "PGD-40", "fgsm": "FGSM"})
    status                                   # 'PASS'
    masking.noise_tolerance(0.5, 100)        # 0.11: 1/n + 2 standard errors
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np

from lfr_jax import attacks
from lfr_jax import text
from lfr_jax.evaluation import columns
from lfr_jax.evaluation import results

if TYPE_CHECKING:
  from lfr_jax.evaluation.settings import EvalSettings

Labels = Mapping[str, str]
# A check: (row, settings, column headers) -> (status, evidence).
CheckFn = Callable[[results.RowResult, "EvalSettings", Labels],
                   tuple[str, str]]


def noise_tolerance(p: float, n: int) -> float:
  """How far two accuracies on the same n points may differ by chance.

  One example plus two binomial standard errors: 1/n + 2 sqrt(p (1-p) / n).
  """
  if n <= 0:
    return 0.0
  p = min(max(p, 0.0), 1.0)
  return 1.0 / n + 2.0 * math.sqrt(p * (1.0 - p) / n)


def _pct(value) -> str:
  # The check lines print "12.3%"; text.percent gives the number alone.
  number = text.percent(value, digits=1, missing="")
  return f"{number}%" if number else "n/a"


# ----------------------------------------------------------- the checks --


def iterative_not_weaker(row: results.RowResult, settings: EvalSettings,
                         labels: Labels) -> tuple[str, str]:
  """1. PGD and APGD-CE accuracy at most the lower FGSM accuracy plus noise.

  On the full evaluated set.
  """
  del settings  # the table's columns only
  n = row.n
  single = {k: row.acc(k) for k in ("fgsm_lfr", "fgsm") if k in row.robust}
  multi = {k: row.acc(k) for k in ("pgd", "apgd_ce") if k in row.robust}
  if not (single and multi):
    return "SKIP", "needs pgd or apgd_ce and fgsm or fgsm_lfr columns"
  s_name = min(single, key=single.get)
  i_name = max(multi, key=multi.get)
  tol = noise_tolerance(single[s_name], n)
  ok = multi[i_name] <= single[s_name] + tol
  return ("PASS" if ok else "WARN",
          ", ".join(f"{labels[k]} {_pct(v)}" for k, v in multi.items())
          + (" <= " if ok else " > ") + f"{labels[s_name]} {_pct(single[s_name])}"
          + f" (n={n}, tolerance {_pct(tol)})"
          + ("" if ok else "; a single step beats the iterative attack"))


def falls_with_eps(row: results.RowResult, settings: EvalSettings,
                   labels: Labels) -> tuple[str, str]:
  """2. Along clean, then the eps sweep, no accuracy rises by more than noise.

  PGD and APGD-CE, on the full evaluated set.
  """
  del settings  # the sweep's results only
  if not row.sweep:
    return "SKIP", "config.eval.eps_sweep is empty"
  n = row.n
  bad, shown = [], []
  for name, by_eps in row.sweep.items():
    seq = [(0.0, row.acc("clean"))] + [
        (e, float(np.mean(v))) for e, v in sorted(by_eps.items())]
    shown.append(f"{labels.get(name, name)} " + " -> ".join(
        _pct(a) for _, a in seq))
    for (e0, a0), (e1, a1) in zip(seq, seq[1:]):
      if a1 > a0 + noise_tolerance(a0, n):
        bad.append(f"{labels.get(name, name)} rises from {_pct(a0)} at eps "
                   f"{e0:g} to {_pct(a1)} at eps {e1:g}")
  eps_text = ", ".join(f"{e:g}" for e in [0.0] + sorted(
      next(iter(row.sweep.values()))))
  return ("WARN" if bad else "PASS",
          ("; ".join(bad) if bad else "; ".join(shown))
          + f" (eps {eps_text}, n={n})")


def _on_check_examples(check: CheckFn) -> CheckFn:
  """A check of the extra attacks: SKIP when they ran on no example."""
  @functools.wraps(check)
  def checked(row, settings, labels):
    if not row.check_data.get("m", 0):
      return "SKIP", "no examples for the checks"
    return check(row, settings, labels)
  return checked


@_on_check_examples
def zero_at_large_eps(row: results.RowResult, settings: EvalSettings,
                      labels: Labels) -> tuple[str, str]:
  """3. PGD at ``large_eps`` leaves at most ``large_eps_max_acc``.

  At 0.5 the all-0.5 image lies in every ball, so any classifier can be
  fooled on ~90% of MNIST by one image; its accuracy is shown for scale.
  """
  del labels  # the check attacks carry their own
  d = row.check_data
  m = d["m"]
  large = settings.large_eps
  acc_large = float(np.mean(d["pgd_large"]))
  limit = settings.large_eps_max_acc
  grey = (f"; the constant 0.5 image alone leaves "
          f"{_pct(float(np.mean(d['grey'])))}" if "grey" in d else "")
  return ("PASS" if acc_large <= limit else "WARN",
          f"{d['pgd_large_label']} at eps {large:g}: {_pct(acc_large)} "
          f"({'<=' if acc_large <= limit else '>'} {_pct(limit)}, n={m}){grey}")


@_on_check_examples
def unbounded_ddn_breaks_all(row: results.RowResult, settings: EvalSettings,
                             labels: Labels) -> tuple[str, str]:
  """4. DDN without a norm bound breaks every clean-correct point."""
  del settings, labels
  d = row.check_data
  sub_clean = row.clean[:d["m"]]
  norms = d["ddn_norms"]
  correct = int(sub_clean.sum())
  failed = int(np.sum(sub_clean & ~np.isfinite(norms)))
  on = norms[sub_clean]
  median = float(np.median(on)) if on.size else float("nan")
  return ("PASS" if failed == 0 else "WARN",
          f"{d['ddn_label']} (no norm bound) broke {correct - failed}/{correct} "
          f"correctly classified points"
          + (f" ({_pct((correct - failed) / correct)})" if correct else "")
          + (f", median l2 {median:.3g}" if on.size else ""))


@_on_check_examples
def more_steps_agree(row: results.RowResult, settings: EvalSettings,
                     labels: Labels) -> tuple[str, str]:
  """5. PGD with more steps and restarts is within noise of the table's PGD.

  Higher: the attack is broken; lower: the table's PGD has not converged.
  """
  del settings
  if "pgd" not in row.robust:
    return "SKIP", "needs the pgd column"
  d = row.check_data
  m = d["m"]
  more, more_label = float(np.mean(d["pgd_more"])), d["pgd_more_label"]
  base = float(np.mean(row.robust["pgd"][:m]))
  tol = noise_tolerance(max(base, more), m)
  if more > base + tol:
    status, note = "WARN", ("; the stronger attack scores higher "
                            "(randomness or a bug)")
  elif more < base - tol:
    status, note = "WARN", (f"; {labels['pgd']} has not converged, trust "
                            f"{more_label}")
  else:
    status, note = "PASS", ""
  return status, (f"{labels['pgd']} {_pct(base)} vs {more_label} "
                  f"{_pct(more)} (n={m}, tolerance {_pct(tol)}){note}")


@_on_check_examples
def gradient_free_not_stronger(row: results.RowResult, settings: EvalSettings,
                               labels: Labels) -> tuple[str, str]:
  """6. Random search is not below the white-box worst case by more than noise.

  The white-box worst case takes every l_inf column and check 5's PGD.
  """
  del settings, labels
  d = row.check_data
  m = d["m"]
  rs = d["random_search"]
  white = np.ones(m, bool) & row.clean[:m]
  for name in columns.LINF_COLUMNS:
    if name in row.robust and row.subsets.get(name, m) >= m:
      white &= row.robust[name][:m]  # (a column on fewer images is left out)
  white &= d["pgd_more"]
  acc_rs, acc_wb = float(np.mean(rs)), float(np.mean(white))
  only = int(np.sum(white & ~rs))
  tol = noise_tolerance(acc_wb, m)
  ok = acc_rs >= acc_wb - tol
  return ("PASS" if ok else "WARN",
          f"{d['random_search_label']} {_pct(acc_rs)} vs white-box worst case "
          f"{_pct(acc_wb)} (n={m}, tolerance {_pct(tol)}); it alone broke "
          f"{only} point(s)" + ("" if ok else "; gradients are masked"))


@_on_check_examples
def loss_rises(row: results.RowResult, settings: EvalSettings,
               labels: Labels) -> tuple[str, str]:
  """7. The mean CE along the table's PGD ends above its start.

  And drops (by > 1% of the total rise) in at most 20% of the steps.
  """
  del settings
  trace = np.asarray(row.check_data["trace"], np.float64)
  steps = trace.size - 1
  if steps < 1:
    return "SKIP", "PGD has no steps"
  rise = float(trace[-1] - trace[0])
  drops = int(np.sum(np.diff(trace) < -0.01 * abs(rise)))
  ok = rise > 0 and drops <= 0.2 * steps
  return ("PASS" if ok else "WARN",
          f"mean CE {trace[0]:.4g} -> {trace[-1]:.4g} over {steps} "
          f"{labels.get('pgd', 'PGD')} steps (max {trace.max():.4g}); {drops} "
          f"of {steps} steps decreased"
          + ("" if ok else ("; the loss does not rise" if rise <= 0 else
                            "; the loss falls too often")))


# The checks by name, in the order of the report.
CHECKS: tuple[tuple[str, CheckFn], ...] = (
    ("iterative <= single-step", iterative_not_weaker),
    ("accuracy falls with eps", falls_with_eps),
    ("~0% at large eps", zero_at_large_eps),
    ("unbounded DDN reaches 100%", unbounded_ddn_breaks_all),
    ("more steps/restarts", more_steps_agree),
    ("gradient-free not stronger", gradient_free_not_stronger),
    ("attack loss rises", loss_rises),
)
CHECK_NAMES = tuple(name for name, _ in CHECKS)


def masking_checks(row: results.RowResult, settings: EvalSettings,
                   labels: Labels) -> list[results.Check]:
  """The gradient-masking sanity checks of one row, one per :data:`CHECKS`.

  Checks 1 and 2 use the table (full evaluated set); 3-7 use
  ``row.check_data``, the extra attacks on the first ``m`` points: "m",
  "pgd_more", "pgd_large", "grey", "ddn_norms", "random_search", "trace"
  (mean CE per PGD step), and SKIP when ``m`` is 0.

  Args:
    row: the row's results.
    settings: the evaluation settings (``large_eps``, ``large_eps_max_acc``).
    labels: column name -> header.

  Returns:
    One :class:`Check` per name in :data:`CHECK_NAMES`.
  """
  out = []
  for name, check in CHECKS:
    status, evidence = check(row, settings, labels)
    out.append(results.Check(status, name, evidence))
  return out


# ------------------------------------------------------- check attacks --


def _grey(logits_fn, x, y, key):
  """The constant 0.5 image: in every l_inf ball of radius >= 0.5."""
  del logits_fn, y, key
  return jnp.full_like(x, 0.5)


def build_check_attacks(settings: EvalSettings) -> dict[str, columns.Attack]:
  """The extra attacks behind the masking checks, by role.

  "pgd_more": PGD with ``check_steps`` steps and ``check_restarts`` restarts
  (same step as the table); "pgd_large": PGD at ``large_eps`` with
  ``check_steps`` steps of 2.5 large_eps / check_steps; "grey": the constant
  0.5 image (when large_eps >= 0.5); "ddn_unbounded": DDN with
  ``check_steps`` steps and no norm bound; "random_search":
  :func:`attacks.random_search` with ``random_search_steps`` queries; "trace":
  the table's PGD, recording its loss per step.
  """
  steps, eps = settings.check_steps, settings.eps
  large, queries = settings.large_eps, settings.random_search_steps
  base = columns.pgd_attack(settings)
  out = {
      "pgd_more": columns.pgd_attack(
          settings, num_steps=steps, restarts=settings.check_restarts,
          step_size=settings.step_size, name="pgd_more", source=columns.CHECK),
      "pgd_large": columns.pgd_attack(
          settings, large, num_steps=steps, step_size=2.5 * large / steps,
          name="pgd_large", source=columns.CHECK),
      "ddn_unbounded": columns.Attack(
          "ddn_unbounded", f"DDN-{steps}", attacks.ddn,
          static=(("num_steps", steps),), source=columns.CHECK, threat="l2",
          description=f"l2, {steps} steps, no norm bound"),
      "random_search": columns.Attack(
          "random_search", f"random search ({queries} queries)",
          attacks.random_search, static=(("num_steps", queries),),
          dynamic=(("eps", eps),), source=columns.CHECK,
          description=(f"l_inf eps {eps:g}, Square-Attack-like vertex search, "
                       f"{queries} queries")),
      "trace": columns.Attack(
          "pgd_trace", f"{base.label} loss trace", attacks.pgd_loss_trace,
          static=(("num_steps", settings.pgd_steps),),
          dynamic=base.dynamic[:2], source=columns.CHECK,
          description=base.description + ", loss recorded per step"),
  }
  if large >= 0.5:
    out["grey"] = columns.Attack(
        "grey", "constant 0.5 image", _grey, source=columns.CHECK,
        description="every pixel 0.5 (in the ball)")
  return out


def run_check_attacks(run, settings: EvalSettings, xs: np.ndarray,
                      ys: np.ndarray, clean: np.ndarray) -> dict[str, Any]:
  """Runs :func:`build_check_attacks` on the first m points.

  Args:
    run: ``run(attack, xs, ys, key_name=None)`` -> the attack's outputs.
    settings: the evaluation settings.
    xs: (m, H, W, C) images.
    ys: (m,) labels.
    clean: (m,) bool, correct on clean inputs.

  Returns:
    ``row.check_data`` (see :func:`masking_checks`).
  """
  m = xs.shape[0]
  d: dict[str, Any] = {"m": m}
  if not m:
    return d
  for role, attack in build_check_attacks(settings).items():
    if role == "trace":
      # The table's PGD key: the trace retraces the table's PGD runs.
      d[role] = run(attack, xs, ys, key_name="pgd")["loss"].mean(axis=1)
    elif role == "ddn_unbounded":
      d["ddn_norms"] = run(attack, xs, ys)["norms"]
      d["ddn_label"] = attack.label
    else:
      d[role] = clean & (run(attack, xs, ys)["pred"] == ys)
      d[f"{role}_label"] = attack.label
  return d
