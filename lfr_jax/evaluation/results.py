"""What an evaluation takes and gives: table rows, per-example results, the report.

A :class:`ModelRow` is one row of the table (a logits function of explicit
parameters); evaluating it gives a :class:`RowResult` (per-example
correctness under every column, the eps sweep, the masking checks' numbers
and :class:`Check` lines, geometry numbers); a :class:`Report` holds every
row's result with the columns and settings, and is what the report writers
of :mod:`lfr_jax.evaluation.reports` take.

Example::

    import jax, jax.numpy as jnp
    import numpy as np
    from lfr_jax import models
    from lfr_jax.evaluation import results
    row = results.ModelRow.from_network(
        "init", models.create("small_cnn", jax.random.key(0)))
    results.accuracy(row, jnp.zeros((2, 28, 28, 1)), jnp.zeros(2, jnp.int32))
    results.ddn_summary(np.array([0.5, np.inf]), np.array([True, True]), 1.0)
    # {'success': 0.5, 'median_l2': inf, 'acc_at_budget': 0.5}
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lfr_jax.evaluation import columns as columns_lib
from lfr_jax.evaluation import settings as settings_lib

LogitsFn = Callable[[jax.Array], jax.Array]


class EvalError(ValueError):
  """A workdir, checkpoint or data problem the user must fix (one line)."""


def network_logits(net, x: jax.Array) -> jax.Array:
  """Logits of a :class:`lfr_jax.models.Network` in evaluation mode."""
  return net.apply(x)[0]


@dataclasses.dataclass(frozen=True)
class ModelRow:
  """One row of the table: a logits function of explicit parameters.

  Attributes:
    label: row label, e.g. "final (step 4000)".
    apply: ``(params, x) -> logits``. Attacks are compiled per ``apply``
      object, so rows sharing one (and one parameter structure) share them.
    params: any pytree, passed to the compiled attacks as an argument.
    info: JSON-able description (source, workdir, checkpoint, step).
  """
  label: str
  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any
  info: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def from_network(cls, label: str, net, **info) -> "ModelRow":
    """Wraps a :class:`lfr_jax.models.Network` (BatchNorm running stats)."""
    return cls(label, network_logits, net, dict(info))

  def logits_fn(self) -> LogitsFn:
    """``x -> logits`` with the parameters closed over."""
    return functools.partial(self.apply, self.params)


def accuracy(model: ModelRow, x, y) -> float:
  """Clean accuracy of ``model`` on one batch (eager, for small inputs)."""
  pred = jnp.argmax(model.logits_fn()(jnp.asarray(x)), axis=-1)
  return float(jnp.mean(pred == jnp.asarray(y)))


@dataclasses.dataclass
class Check:
  """One gradient-masking check: "PASS", "WARN" or "SKIP" and its numbers."""
  status: str
  name: str
  evidence: str

  def line(self, prefix: str = "") -> str:
    return f"{self.status} {prefix}{self.name}: {self.evidence}"


@dataclasses.dataclass
class RowResult:
  """Per-example results of one model.

  Attributes:
    label: row label.
    info: the model's description.
    y: (N,) labels.
    clean: (N,) bool, correct on clean inputs.
    robust: column name -> (N,) bool, correct clean and under the attack
      (every column and "worst"; for DDN, correct on its output).
    ddn_norms: (N,) l2 norms found by DDN (inf: none found), or None.
    sweep: attack name ("pgd", "apgd_ce") -> {eps: (N,) bool robust}.
    checks: the masking checks.
    check_data: the numbers behind them.
    geometry: geometry summary numbers.
    seconds: time spent on this row's attacks.
    subsets: column name -> the number of leading examples it ran on, for
      columns run on a subset (their flags past it are the clean ones).
  """
  label: str
  info: dict
  y: np.ndarray
  clean: np.ndarray
  robust: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  ddn_norms: np.ndarray | None = None
  sweep: dict[str, dict[float, np.ndarray]] = dataclasses.field(
      default_factory=dict)
  checks: list[Check] = dataclasses.field(default_factory=list)
  check_data: dict[str, Any] = dataclasses.field(default_factory=dict)
  geometry: dict[str, float] = dataclasses.field(default_factory=dict)
  seconds: float = 0.0
  subsets: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def n(self) -> int:
    return int(self.y.shape[0])

  def acc(self, name: str) -> float:
    """Accuracy of a column ("clean", an l_inf column or "worst"); a column
    run on a subset is judged on that subset."""
    v = self.clean if name == "clean" else self.robust[name]
    v = v[:self.subsets[name]] if name in self.subsets else v
    return float(np.mean(v)) if v.size else float("nan")


def ddn_summary(norms: np.ndarray, clean: np.ndarray, budget: float
                ) -> dict[str, float]:
  """DDN's success rate, median norm and accuracy at an l2 budget.

  Success rate and median are over the clean-correct points (a failure
  counts as an infinite norm, so the median is inf below 50% success);
  accuracy at the budget is over all points (correct and no adversarial
  point within ``budget``).
  """
  correct = clean.astype(bool)
  on = norms[correct]
  return {
      "success": float(np.mean(np.isfinite(on))) if on.size else float("nan"),
      "median_l2": float(np.median(on)) if on.size else float("nan"),
      "acc_at_budget": float(np.mean(correct & (norms > budget)))
                       if norms.size else float("nan"),
  }


@dataclasses.dataclass
class Report:
  """Everything :func:`lfr_jax.evaluation.write_report` writes.

  Attributes:
    rows: one :class:`RowResult` per model.
    columns: the table's attacks (``worst`` excluded).
    eval_settings: the settings it ran with.
    data: what was evaluated (dataset, split, source, folder, examples,
      total).
    environment: software versions and hardware, see
      :func:`lfr_jax.evaluation.environment`.
    figures: paths of the figures written.
    seconds: wall time.
    notes: lines the report shows first (e.g. that it is a quick estimate).
  """
  rows: list[RowResult]
  columns: list[columns_lib.Attack]
  eval_settings: settings_lib.EvalSettings
  data: dict[str, Any]
  environment: dict[str, Any]
  figures: list[str] = dataclasses.field(default_factory=list)
  seconds: float = 0.0
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def settings(self) -> dict[str, Any]:
    """``config.eval`` as written (JSON-able), what the reports record."""
    return self.eval_settings.as_dict()

  @property
  def labels(self) -> dict[str, str]:
    """Column name -> header, "pgd" and "apgd_ce" included (the sweep's)."""
    out = {"clean": "clean", "worst": "worst case"}
    out.update({a.name: a.label for a in self.columns})
    out.setdefault("pgd", columns_lib.pgd_attack(self.eval_settings).label)
    out.setdefault("apgd_ce", "APGD-CE")
    return out

  @property
  def has_worst(self) -> bool:
    return self.eval_settings.has_worst
