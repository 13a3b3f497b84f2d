"""The robustness table's attack columns: name -> settings -> attack function.

:data:`COLUMNS` maps each column name of ``config.eval.attacks`` to the
builder of its :class:`Attack` (the attack function of :mod:`lfr_jax.attacks`
with its settings bound):

- the LFR paper's attacks at the authors' settings: ``pgd`` (PGD-40, eps 0.3,
  step 0.01, uniform start, CE), ``fgsm_lfr`` (one eps step from a uniform
  start), ``mifgsm_lfr`` (decay 0.1, 40 steps of 0.01, no random start) and
  ``ddn_lfr`` (advertorch's ``DDNL2Attack`` defaults: 20 steps, no norm
  bound, 256 grey levels);
- the textbook versions where they differ: ``fgsm`` (from x) and ``mifgsm``
  (decay 1.0);
- AutoAttack's ``apgd_ce`` (100 steps) and ``apgd_t`` (100 steps, 9 targets).

``worst`` (:data:`ATTACK_NAMES`' last) is no attack: per example, the worst
case over the l_inf columns (:data:`LINF_COLUMNS`).

Example::

    from configs import evaluate as eval_configs
    from lfr_jax.evaluation import columns, settings
    s = settings.from_config(eval_configs.get_config().eval)
    pgd = columns.pgd_attack(s)
    pgd.label, pgd.settings()["step_size"]   # ('PGD-40', 0.01)
    [a.label for a in columns.table_attacks(s)][:3]
    # ['PGD-40', 'FGSM (LFR)', 'MI-FGSM (LFR)']
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Sequence

from lfr_jax import attacks

if TYPE_CHECKING:  # settings imports this module for the column names
  from lfr_jax.evaluation.settings import EvalSettings

# Where an attack's settings come from.
LFR = "LFR paper (authors' settings)"
TEXTBOOK = "textbook"
AUTOATTACK = "AutoAttack"
CHECK = "masking check"


@dataclasses.dataclass(frozen=True)
class Attack:
  """One attack with bound settings.

  Attributes:
    name: config name, e.g. "pgd".
    label: column header, e.g. "PGD-40".
    fn: ``fn(logits_fn, x, y, key, **static, **dynamic)`` returning x_adv,
      ``(x_adv, norms)`` or a dict with "x_adv" and per-example extras.
    static: ((name, value), ...) settings that shape the computation.
    dynamic: ((name, value), ...) scalar settings passed traced (eps, steps).
    source: where the settings come from (LFR, TEXTBOOK, AUTOATTACK, ...).
    threat: "linf" or "l2".
    description: the exact settings in words.
    examples: run on the first this many evaluated images only (0 = all);
      its column's accuracy is over them (``config.eval.apgd_t_examples``).
  """
  name: str
  label: str
  fn: Callable[..., Any]
  static: tuple = ()
  dynamic: tuple = ()
  source: str = ""
  threat: str = "linf"
  description: str = ""
  examples: int = 0

  def settings(self) -> dict[str, Any]:
    """All settings as a JSON-able dict."""
    out = {"attack": getattr(self.fn, "__name__", str(self.fn))}
    out.update({k: (float(v) if isinstance(v, float) else v)
                for k, v in self.static + self.dynamic})
    if self.examples:
      out["examples"] = self.examples
    return out

  def with_dynamic(self, **values) -> "Attack":
    """A copy with some traced settings replaced (same executable)."""
    dyn = dict(self.dynamic)
    unknown = set(values) - set(dyn)
    if unknown:
      raise ValueError(f"{self.name} has no traced setting {sorted(unknown)}.")
    dyn.update({k: float(v) for k, v in values.items()})
    return dataclasses.replace(self, dynamic=tuple(dyn.items()))


def _keep(logits_fn, x, y, key):
  del logits_fn, y, key
  return x


CLEAN = Attack("clean", "clean", _keep, source="no attack")


def pgd_attack(s: EvalSettings, eps: float | None = None, *,
               num_steps: int | None = None, restarts: int = 1,
               step_size: float | None = None, name: str = "pgd",
               source: str = LFR) -> Attack:
  """PGD with CE and a uniform start; the table's PGD-40 by default.

  Off the table's radius the step scales with eps (``step_size * eps /
  config.eval.eps``), so every sweep point takes the same relative steps.
  """
  main_eps = s.eps
  eps = main_eps if eps is None else float(eps)
  steps = s.pgd_steps if num_steps is None else int(num_steps)
  if step_size is None:
    step_size = s.step_size
    if main_eps > 0 and eps != main_eps:
      step_size *= eps / main_eps
  label = f"PGD-{steps}" + (f"x{restarts}" if restarts > 1 else "")
  return Attack(
      name, label, attacks.pgd,
      static=(("num_steps", steps), ("loss", "ce"), ("random_start", True),
              ("restarts", int(restarts)), ("norm", "linf")),
      dynamic=(("eps", eps), ("step_size", float(step_size))),
      source=source,
      description=(f"l_inf eps {eps:g}, {steps} steps of {step_size:g}, "
                   f"uniform random start, cross-entropy"
                   + (f", {restarts} restarts (worst kept)"
                      if restarts > 1 else "")))


def apgd_ce_attack(s: EvalSettings, eps: float | None = None) -> Attack:
  """APGD-CE (AutoAttack) with ``config.eval.apgd_steps`` steps."""
  eps = s.eps if eps is None else float(eps)
  steps = s.apgd_steps
  return Attack(
      "apgd_ce", "APGD-CE", attacks.apgd,
      static=(("num_steps", steps), ("loss", "ce"), ("norm", "linf")),
      dynamic=(("eps", eps),), source=AUTOATTACK,
      description=f"l_inf eps {eps:g}, {steps} steps, rho 0.75, 1 restart")


def _fgsm_lfr(s: EvalSettings) -> Attack:
  """The authors' FGSM: one eps step from a uniform start in the ball."""
  eps = s.eps
  return Attack(
      "fgsm_lfr", "FGSM (LFR)", attacks.fgsm,
      static=(("random_start", True),),
      dynamic=(("eps", eps), ("start_eps", eps), ("step", eps)),
      source=LFR,
      description=(f"one sign step of {eps:g} from a uniform start in the "
                   f"eps {eps:g} ball"))


def _fgsm(s: EvalSettings) -> Attack:
  """Textbook FGSM: one eps step from x."""
  return Attack(
      "fgsm", "FGSM", attacks.fgsm, static=(("random_start", False),),
      dynamic=(("eps", s.eps),), source=TEXTBOOK,
      description=f"one sign step of {s.eps:g} from x (Goodfellow et al.)")


def _mifgsm(s: EvalSettings, name: str, label: str, decay: float,
            source: str) -> Attack:
  """MI-FGSM with the table's steps and a given momentum decay."""
  eps, step, steps = s.eps, s.step_size, s.pgd_steps
  return Attack(
      name, label, attacks.mifgsm,
      static=(("num_steps", steps), ("random_start", False)),
      dynamic=(("eps", eps), ("step_size", step), ("decay", float(decay))),
      source=source,
      description=(f"l_inf eps {eps:g}, {steps} steps of {step:g}, momentum "
                   f"decay {decay:g}, no random start"))


def _mifgsm_lfr(s: EvalSettings) -> Attack:
  return _mifgsm(s, "mifgsm_lfr", "MI-FGSM (LFR)", s.mifgsm_lfr_decay, LFR)


def _mifgsm_textbook(s: EvalSettings) -> Attack:
  return _mifgsm(s, "mifgsm", "MI-FGSM", s.mifgsm_decay, TEXTBOOK)


def _ddn_lfr(s: EvalSettings) -> Attack:
  """DDN at advertorch's defaults; the column is accuracy on its output."""
  steps, levels = s.ddn_steps, s.ddn_levels or None
  return Attack(
      "ddn_lfr", f"DDN-{steps}", attacks.ddn,
      static=(("num_steps", steps), ("levels", levels)),
      source=LFR, threat="l2",
      description=(f"l2, {steps} steps, gamma 0.05, init norm 1, no norm "
                   f"bound, {levels or 'no'} grey levels (advertorch "
                   f"DDNL2Attack defaults); accuracy on its output, plus "
                   f"accuracy at l2 <= {s.ddn_l2_budget:g}"))


def _apgd_t(s: EvalSettings) -> Attack:
  """APGD-T (AutoAttack): targeted DLR against the top other classes."""
  steps, targets = s.apgd_steps, s.apgd_targets
  subset = (f", on the first {s.apgd_t_examples} evaluated images only (its "
            f"accuracy is over them)" if s.apgd_t_examples else "")
  return Attack(
      "apgd_t", "APGD-T", attacks.apgd_targeted,
      static=(("num_steps", steps), ("num_targets", targets),
              ("norm", "linf")),
      dynamic=(("eps", s.eps),), source=AUTOATTACK,
      description=(f"l_inf eps {s.eps:g}, {steps} steps per target, "
                   f"{targets} targets, targeted DLR{subset}"),
      examples=s.apgd_t_examples)


# Column name -> builder of its attack, in the table's default order.
COLUMNS: dict[str, Callable[[EvalSettings], Attack]] = {
    "pgd": pgd_attack,
    "fgsm_lfr": _fgsm_lfr,
    "mifgsm_lfr": _mifgsm_lfr,
    "ddn_lfr": _ddn_lfr,
    "fgsm": _fgsm,
    "mifgsm": _mifgsm_textbook,
    "apgd_ce": apgd_ce_attack,
    "apgd_t": _apgd_t,
}
ATTACK_NAMES = (*COLUMNS, "worst")
# The l_inf columns, whose per-example minimum is the worst case.
LINF_COLUMNS = ("pgd", "fgsm_lfr", "mifgsm_lfr", "fgsm", "mifgsm", "apgd_ce",
                "apgd_t")


def table_attacks(s: EvalSettings) -> list[Attack]:
  """The selected table columns (``worst`` excluded), in config order.

  Args:
    s: the evaluation settings.

  Returns:
    The attacks with their settings bound.
  """
  return [COLUMNS[name](s) for name in s.attacks if name != "worst"]


def worst_description(table: Sequence[Attack]) -> str:
  """The worst-case column in words: which columns it takes the minimum of."""
  linf = [a.label for a in table if a.threat == "linf"]
  partial = [f"{a.label} on the first {a.examples} only" for a in table
             if a.threat == "linf" and a.examples]
  return ("per example, misclassified under any of " + ", ".join(linf)
          + " (AutoAttack-style worst case" +
          (f"; {', '.join(partial)}: an upper bound on the other images"
           if partial else "") + ")")
