"""Robustness evaluation: attack tables, gradient-masking checks, geometry.

:func:`evaluate` runs every selected attack of the robustness table on every
model (checkpoint) and returns a :class:`Report`; :func:`write_report` writes
it as ``robustness.md``, ``robustness.csv``, ``robustness.json`` and
``per_example.npz``. Columns (``config.eval.attacks``, see
``configs/evaluate.py``):

- the LFR paper's attacks at the authors' settings: ``pgd`` (PGD-40, eps 0.3,
  step 0.01, uniform start, CE), ``fgsm_lfr`` (one eps step from a uniform
  start), ``mifgsm_lfr`` (decay 0.1, 40 steps of 0.01, no random start) and
  ``ddn_lfr`` (advertorch's ``DDNL2Attack`` defaults: 20 steps, no norm
  bound, 256 grey levels; the column is accuracy on DDN's output, the
  authors' quantity, with the success rate, the median l2 norm and the
  accuracy at ``ddn_l2_budget`` beside it);
- the textbook versions where they differ: ``fgsm`` (from x) and ``mifgsm``
  (decay 1.0);
- AutoAttack's ``apgd_ce`` (100 steps) and ``apgd_t`` (100 steps, 9 targets);
- ``worst``: per example, misclassified under any l_inf column.

A point counts as robust to an l_inf attack when it is classified correctly
both clean and at the attack's point. Every attack is jitted once per model
function and attack shape: parameters are arguments of the compiled
function, so checkpoints of one architecture share the executables, and eps
and step sizes are traced, so the eps sweep reuses them too.

The gradient-masking checks (:func:`masking_checks`) follow Carlini et al.
(2019) and Athalye et al. (2018); each gives a ``PASS``/``WARN``/``SKIP``
line with its numbers. :func:`lfr_jax.attacks.random_search` (a Square-Attack-like search of
the eps-ball's vertices) is the gradient-free attack they use.

Usage (see evaluate.py)::

    python evaluate.py --workdir=runs/mnist_lfr
    python evaluate.py --workdir=runs/mnist_lfr --config.eval.num_examples=500

or in Python: ``config, models = evaluation.load_run(workdir)``,
``x, y = evaluation.load_test_data(config.data, n)``, ``report =
evaluation.evaluate(models, x, y, eval_cfg, figures_dir=...)``,
``evaluation.write_report(report, out_dir)``.

Example::

    import jax, jax.numpy as jnp
    from lfr_jax import attacks, evaluation, models

    model = evaluation.Model.from_network(
        "init", models.create("small_cnn", jax.random.key(0)))
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    y = jnp.arange(4)
    out = attacks.random_search(model.logits_fn(), x, y, jax.random.key(2),
                                eps=0.3, num_steps=10)
    acc = evaluation.accuracy(model, out["x_adv"], y)   # a float in [0, 1]
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from lfr_jax import _validate
from lfr_jax import attacks
from lfr_jax import config_check
from lfr_jax import losses

LogitsFn = Callable[[jax.Array], jax.Array]

ATTACK_NAMES = ("pgd", "fgsm_lfr", "mifgsm_lfr", "ddn_lfr", "fgsm", "mifgsm",
                "apgd_ce", "apgd_t", "worst")
# The l_inf columns, whose per-example minimum is the worst case.
_LINF = ("pgd", "fgsm_lfr", "mifgsm_lfr", "fgsm", "mifgsm", "apgd_ce",
         "apgd_t")
# The LFR paper's attack budgets (Sec. 5): below these a table is a smoke test.
PAPER_STEPS = {"pgd_steps": 40, "ddn_steps": 20, "apgd_steps": 100,
               "apgd_targets": 9}
LFR = "LFR paper (authors' settings)"
TEXTBOOK = "textbook"
AUTOATTACK = "AutoAttack"
CHECK = "masking check"
CHECK_NAMES = ("iterative <= single-step", "accuracy falls with eps",
               "~0% at large eps", "unbounded DDN reaches 100%",
               "more steps/restarts", "gradient-free not stronger",
               "attack loss rises")
# Keys every evaluation config must hold (configs/evaluate.py).
SETTINGS = (
    "num_examples", "batch_size", "seed", "attacks", "progress", "eps",
    "step_size", "pgd_steps", "mifgsm_lfr_decay", "mifgsm_decay", "ddn_steps",
    "ddn_levels", "ddn_l2_budget", "apgd_steps", "apgd_targets", "eps_sweep", "checks",
    "check_examples", "check_steps", "check_restarts", "large_eps",
    "large_eps_max_acc", "random_search_steps", "geometry",
    "geometry_examples", "surface_points", "surface_resolution",
    "surface_extent", "hessian_iters", "gamma_examples", "gamma_steps")


class EvalError(ValueError):
  """A workdir, checkpoint or data problem the user must fix (one line)."""


# ----------------------------------------------------------------- models --


def network_logits(net, x: jax.Array) -> jax.Array:
  """Logits of a :class:`lfr_jax.models.Network` in evaluation mode."""
  return net.apply(x)[0]


@dataclasses.dataclass(frozen=True)
class Model:
  """One row of the table: a logits function of explicit parameters.

  Attributes:
    label: row label, e.g. "final (step 4000)".
    apply: ``(params, x) -> logits``. Attacks are compiled per ``apply``
      object, so models sharing one (and one parameter structure) share them.
    params: any pytree, passed to the compiled attacks as an argument.
    info: JSON-able description (source, workdir, checkpoint, step).
  """
  label: str
  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any
  info: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def from_network(cls, label: str, net, **info) -> "Model":
    """Wraps a :class:`lfr_jax.models.Network` (BatchNorm running stats)."""
    return cls(label, network_logits, net, dict(info))

  def logits_fn(self) -> LogitsFn:
    """``x -> logits`` with the parameters closed over."""
    return functools.partial(self.apply, self.params)


def accuracy(model: Model, x, y) -> float:
  """Clean accuracy of ``model`` on one batch (eager, for small inputs)."""
  pred = jnp.argmax(model.logits_fn()(jnp.asarray(x)), axis=-1)
  return float(jnp.mean(pred == jnp.asarray(y)))


# ----------------------------------------------------------------- checks --


def _one_line(e: BaseException, limit: int = 200) -> str:
  """The first line of an error message, cut to ``limit`` characters."""
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  line = lines[0] if lines else type(e).__name__
  line = line.split(" See full ")[0]  # TensorStore appends its whole spec
  return line if len(line) <= limit else line[:limit - 3].rstrip() + "..."


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
      v, bool) and math.isfinite(float(v))


def _int(name: str, v, lo: int) -> None:
  if not _is_int(v) or v < lo:
    raise config_check.ConfigError(
        f"config.eval.{name} must be an integer >= {lo}, got {v!r}.")


def _num(name: str, v, lo: float, hi: float | None = None,
         lo_open: bool = False) -> None:
  if not _is_number(v) or (v <= lo if lo_open else v < lo) or (
      hi is not None and v > hi):
    bound = (f"in [{lo:g}, {hi:g}]" if hi is not None else
             f"{'>' if lo_open else '>='} {lo:g}")
    raise config_check.ConfigError(
        f"config.eval.{name} must be a number {bound}, got {v!r}.")


def parse_attacks(spec) -> list[str]:
  """The column names of ``config.eval.attacks`` ("all" = every one).

  Raises:
    config_check.ConfigError: an unknown or repeated name, or none at all.
  """
  if isinstance(spec, (list, tuple)):
    names = [str(s).strip() for s in spec]
  else:
    names = [s.strip() for s in str(spec).split(",")]
  names = [s for s in names if s]
  if names == ["all"]:
    return list(ATTACK_NAMES)
  for name in names:
    if name not in ATTACK_NAMES:
      raise config_check.ConfigError(
          f"config.eval.attacks: unknown attack {name!r}; valid: "
          f"{', '.join(ATTACK_NAMES)} or all.")
  if len(set(names)) != len(names):
    raise config_check.ConfigError(
        f"config.eval.attacks names a column twice: {spec!r}.")
  if not names:
    raise config_check.ConfigError("config.eval.attacks names no attack.")
  return names


def validate_settings(cfg) -> None:
  """Checks an evaluation config (``config.eval``) before anything runs.

  Raises:
    config_check.ConfigError: a missing or invalid field, in one line.
  """
  missing = [k for k in SETTINGS if k not in cfg]
  if missing:
    raise config_check.ConfigError(
        f"config.eval lacks {', '.join(missing)}; start from "
        f"configs/evaluate.py.")
  _int("num_examples", cfg["num_examples"], 0)
  _int("batch_size", cfg["batch_size"], 1)
  _int("seed", cfg["seed"], 0)
  names = parse_attacks(cfg["attacks"])
  if "worst" in names and not set(names) & set(_LINF):
    raise config_check.ConfigError(
        "config.eval.attacks: worst needs at least one l_inf column.")
  _num("eps", cfg["eps"], 0.0, 1.0)
  _num("large_eps", cfg["large_eps"], 0.0, 1.0)
  sweep = cfg["eps_sweep"]
  if isinstance(sweep, (int, float)):
    sweep = (sweep,)
  for e in sweep:
    if not _is_number(e) or not 0.0 <= e <= 1.0:
      raise config_check.ConfigError(
          f"config.eval.eps_sweep values must lie in [0, 1], got {e!r}.")
  _num("step_size", cfg["step_size"], 0.0, lo_open=True)
  for key in ("pgd_steps", "ddn_steps", "apgd_steps", "apgd_targets",
              "check_steps", "check_restarts", "random_search_steps",
              "surface_resolution", "hessian_iters"):
    _int(key, cfg[key], 1)
  for key in ("check_examples", "geometry_examples", "surface_points",
              "gamma_examples", "gamma_steps"):
    _int(key, cfg[key], 0)
  _num("mifgsm_lfr_decay", cfg["mifgsm_lfr_decay"], 0.0)
  _num("mifgsm_decay", cfg["mifgsm_decay"], 0.0)
  _num("ddn_l2_budget", cfg["ddn_l2_budget"], 0.0)
  _int("ddn_levels", cfg["ddn_levels"], 0)
  if cfg["ddn_levels"] == 1:
    raise config_check.ConfigError(
        "config.eval.ddn_levels must be 0 (no quantization) or >= 2, got 1.")
  _num("large_eps_max_acc", cfg["large_eps_max_acc"], 0.0, 1.0)
  _num("surface_extent", cfg["surface_extent"], 0.0)
  for key in ("checks", "geometry", "progress"):
    if not isinstance(cfg[key], bool):
      raise config_check.ConfigError(
          f"config.eval.{key} must be True or False, got {cfg[key]!r}.")


def eps_sweep(cfg) -> list[float]:
  """The sorted, distinct radii of ``config.eval.eps_sweep``."""
  sweep = cfg["eps_sweep"]
  sweep = (sweep,) if isinstance(sweep, (int, float)) else sweep
  return sorted({float(e) for e in sweep})


# ---------------------------------------------------------------- attacks --


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
  """
  name: str
  label: str
  fn: Callable[..., Any]
  static: tuple = ()
  dynamic: tuple = ()
  source: str = ""
  threat: str = "linf"
  description: str = ""

  def settings(self) -> dict[str, Any]:
    """All settings as a JSON-able dict."""
    out = {"attack": getattr(self.fn, "__name__", str(self.fn))}
    out.update({k: (float(v) if isinstance(v, float) else v)
                for k, v in self.static + self.dynamic})
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


def _grey(logits_fn, x, y, key):
  """The constant 0.5 image: in every l_inf ball of radius >= 0.5."""
  del logits_fn, y, key
  return jnp.full_like(x, 0.5)


CLEAN = Attack("clean", "clean", _keep, source="no attack")


def pgd_attack(cfg, eps: float | None = None, *, num_steps: int | None = None,
               restarts: int = 1, step_size: float | None = None,
               name: str = "pgd", source: str = LFR) -> Attack:
  """PGD with CE and a uniform start; the table's PGD-40 by default.

  Off the table's radius the step scales with eps (``step_size * eps /
  config.eval.eps``), so every sweep point takes the same relative steps.
  """
  main_eps = float(cfg["eps"])
  eps = main_eps if eps is None else float(eps)
  k = int(cfg["pgd_steps"]) if num_steps is None else int(num_steps)
  if step_size is None:
    step_size = float(cfg["step_size"])
    if main_eps > 0 and eps != main_eps:
      step_size *= eps / main_eps
  label = f"PGD-{k}" + (f"x{restarts}" if restarts > 1 else "")
  return Attack(
      name, label, attacks.pgd,
      static=(("num_steps", k), ("loss", "ce"), ("random_start", True),
              ("restarts", int(restarts)), ("norm", "linf")),
      dynamic=(("eps", eps), ("step_size", float(step_size))),
      source=source,
      description=(f"l_inf eps {eps:g}, {k} steps of {step_size:g}, uniform "
                   f"random start, cross-entropy"
                   + (f", {restarts} restarts (worst kept)"
                      if restarts > 1 else "")))


def apgd_ce_attack(cfg, eps: float | None = None) -> Attack:
  """APGD-CE (AutoAttack) with ``config.eval.apgd_steps`` steps."""
  eps = float(cfg["eps"]) if eps is None else float(eps)
  k = int(cfg["apgd_steps"])
  return Attack(
      "apgd_ce", "APGD-CE", attacks.apgd,
      static=(("num_steps", k), ("loss", "ce"), ("norm", "linf")),
      dynamic=(("eps", eps),), source=AUTOATTACK,
      description=f"l_inf eps {eps:g}, {k} steps, rho 0.75, 1 restart")


def table_attacks(cfg) -> list[Attack]:
  """The selected table columns (``worst`` excluded), in config order.

  Args:
    cfg: ``config.eval``.

  Returns:
    The attacks with their settings bound.
  """
  eps, step, k = float(cfg["eps"]), float(cfg["step_size"]), int(
      cfg["pgd_steps"])
  kd, ka, nt = int(cfg["ddn_steps"]), int(cfg["apgd_steps"]), int(
      cfg["apgd_targets"])
  levels = int(cfg["ddn_levels"]) or None

  def mifgsm(name, decay, source):
    label = "MI-FGSM (LFR)" if name == "mifgsm_lfr" else "MI-FGSM"
    return Attack(
        name, label, attacks.mifgsm,
        static=(("num_steps", k), ("random_start", False)),
        dynamic=(("eps", eps), ("step_size", step), ("decay", float(decay))),
        source=source,
        description=(f"l_inf eps {eps:g}, {k} steps of {step:g}, momentum "
                     f"decay {decay:g}, no random start"))

  every = {
      "pgd": pgd_attack(cfg),
      "fgsm_lfr": Attack(
          "fgsm_lfr", "FGSM (LFR)", attacks.fgsm,
          static=(("random_start", True),),
          dynamic=(("eps", eps), ("start_eps", eps), ("step", eps)),
          source=LFR,
          description=(f"one sign step of {eps:g} from a uniform start in the "
                       f"eps {eps:g} ball")),
      "mifgsm_lfr": mifgsm("mifgsm_lfr", cfg["mifgsm_lfr_decay"], LFR),
      "ddn_lfr": Attack(
          "ddn_lfr", f"DDN-{kd}", attacks.ddn,
          static=(("num_steps", kd), ("levels", levels)),
          source=LFR, threat="l2",
          description=(f"l2, {kd} steps, gamma 0.05, init norm 1, no norm "
                       f"bound, {levels or 'no'} grey levels (advertorch "
                       f"DDNL2Attack defaults); accuracy on its output, plus "
                       f"accuracy at l2 <= {cfg['ddn_l2_budget']:g}")),
      "fgsm": Attack(
          "fgsm", "FGSM", attacks.fgsm, static=(("random_start", False),),
          dynamic=(("eps", eps),), source=TEXTBOOK,
          description=f"one sign step of {eps:g} from x (Goodfellow et al.)"),
      "mifgsm": mifgsm("mifgsm", cfg["mifgsm_decay"], TEXTBOOK),
      "apgd_ce": apgd_ce_attack(cfg),
      "apgd_t": Attack(
          "apgd_t", "APGD-T", attacks.apgd_targeted,
          static=(("num_steps", ka), ("num_targets", nt), ("norm", "linf")),
          dynamic=(("eps", eps),), source=AUTOATTACK,
          description=(f"l_inf eps {eps:g}, {ka} steps per target, {nt} "
                       f"targets, targeted DLR")),
  }
  return [every[n] for n in parse_attacks(cfg["attacks"]) if n != "worst"]


def worst_description(columns: Sequence[Attack]) -> str:
  linf = [a.label for a in columns if a.threat == "linf"]
  return ("per example, misclassified under any of " + ", ".join(linf)
          + " (AutoAttack-style worst case)")


# ----------------------------------------------------------------- runner --


def _outputs(fn, logits_fn, x, y, key, dynamic) -> dict[str, jax.Array]:
  """Runs an attack; returns predictions at its points plus its extras."""
  out = fn(logits_fn, x, y, key, **dynamic)
  extra = {}
  if isinstance(out, dict):
    extra = {k: v for k, v in out.items() if k != "x_adv"}
    x_adv = out["x_adv"]
  elif isinstance(out, tuple):
    x_adv, extra = out[0], {"norms": out[1]}
  else:
    x_adv = out
  pred = jnp.argmax(logits_fn(x_adv), axis=-1).astype(jnp.int32)
  return {"pred": pred, **extra}


def attack_key(root: jax.Array, name: str) -> jax.Array:
  """The key of an attack: depends on its name, not on the column order."""
  return jax.random.fold_in(root, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class Runner:
  """Runs attacks over a data set in fixed-size batches, compiled once each.

  Executables are cached per (``apply``, attack function, static settings),
  so models sharing ``apply`` and every eps / step size share them. The last
  batch is padded with copies of its first example, so each attack compiles
  for one batch shape. With several devices the batch is sharded over them.
  """

  def __init__(self, batch_size: int, progress: bool = True):
    self.progress = progress
    devices = jax.device_count()
    self.batch_size = -(-batch_size // devices) * devices
    self._cache: dict[Any, Callable[..., Any]] = {}
    self._batch_sharding = self._replicated = None
    if devices > 1:
      from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
      from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
      mesh = jax.make_mesh((devices,), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))
      self._batch_sharding = NamedSharding(mesh, P("data"))
      self._replicated = NamedSharding(mesh, P())

  def place(self, params):
    """Replicates parameters over the devices (a no-op on one device)."""
    if self._replicated is None:
      return params
    return jax.device_put(params, self._replicated)

  def compiled(self, apply, attack: Attack) -> Callable[..., Any]:
    """The jitted ``(params, x, y, key, dynamic) -> outputs`` of an attack."""
    key = (apply, attack.fn, attack.static,
           tuple(k for k, _ in attack.dynamic))
    if key not in self._cache:
      fn = functools.partial(attack.fn, **dict(attack.static))

      def run(params, x, y, k, dynamic):
        return _outputs(fn, functools.partial(apply, params), x, y, k, dynamic)

      self._cache[key] = jax.jit(run)
    return self._cache[key]

  def run(self, model: Model, params, attack: Attack, x: np.ndarray,
          y: np.ndarray, key: jax.Array, *, desc: str = ""
          ) -> dict[str, np.ndarray]:
    """Per-example outputs of ``attack`` on all of ``x``.

    Args:
      model: gives ``apply``.
      params: ``model.params`` as placed by :meth:`place`.
      attack: the attack.
      x: (N, H, W, C) float32 images.
      y: (N,) int32 labels.
      key: batch i uses ``fold_in(key, i)``.
      desc: progress-bar text.

    Returns:
      numpy outputs with the examples on the last axis: "pred" (N,) and the
      attack's extras (e.g. "norms" (N,), "loss" (T + 1, N)).
    """
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    fn = self.compiled(model.apply, attack)
    dynamic = {k: jnp.asarray(v, jnp.float32) for k, v in attack.dynamic}
    n = x.shape[0]
    devices = jax.device_count()
    # Small inputs: one batch of n rounded up to the device count.
    b = min(self.batch_size, -(-max(n, 1) // devices) * devices)
    outs = []
    with tqdm(total=n, desc=desc or attack.label, unit="ex",
              disable=not self.progress, leave=False, dynamic_ncols=True,
              file=sys.stderr) as bar:
      for i, start in enumerate(range(0, n, b)):
        idx = np.arange(start, min(start + b, n))
        m = idx.size
        idx = np.concatenate([idx, np.full(b - m, idx[0])])
        xb, yb = jnp.asarray(x[idx]), jnp.asarray(y[idx])
        if self._batch_sharding is not None:
          xb = jax.device_put(xb, self._batch_sharding)
          yb = jax.device_put(yb, self._batch_sharding)
        out = jax.device_get(fn(params, xb, yb, jax.random.fold_in(key, i),
                                dynamic))
        outs.append({k: np.asarray(v)[..., :m] for k, v in out.items()})
        bar.update(m)
    if not outs:
      return {"pred": np.zeros((0,), np.int32)}
    return {k: np.concatenate([o[k] for o in outs], axis=-1) for k in outs[0]}


# ---------------------------------------------------------------- results --


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

  @property
  def n(self) -> int:
    return int(self.y.shape[0])

  def acc(self, name: str) -> float:
    """Accuracy of a column ("clean", an l_inf column or "worst")."""
    v = self.clean if name == "clean" else self.robust[name]
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


def noise_tolerance(p: float, n: int) -> float:
  """How far two accuracies on the same n points may differ by chance.

  One example plus two binomial standard errors: 1/n + 2 sqrt(p (1-p) / n).
  """
  if n <= 0:
    return 0.0
  p = min(max(p, 0.0), 1.0)
  return 1.0 / n + 2.0 * math.sqrt(p * (1.0 - p) / n)


def _pct(v: float) -> str:
  return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def masking_checks(row: RowResult, cfg, labels: Mapping[str, str]
                   ) -> list[Check]:
  """The gradient-masking sanity checks of one row.

  Carlini et al. (2019), "On Evaluating Adversarial Robustness", Sec. 5-6,
  and Athalye et al. (2018). "Noise" below is :func:`noise_tolerance`.

  1. iterative <= single-step: PGD and APGD-CE accuracy at most the lower
     FGSM accuracy plus noise (full evaluated set).
  2. accuracy falls with eps: along clean, then the eps sweep, neither
     PGD nor APGD-CE accuracy rises by more than noise (full set).
  3. ~0% at large eps: PGD (``check_steps`` steps of 2.5 eps / steps) at
     ``large_eps`` (0.5: the all-0.5 image lies in every ball, so any
     classifier can be fooled on ~90% of MNIST by one image) leaves at most
     ``large_eps_max_acc``; the constant-image accuracy is shown for scale.
  4. unbounded DDN reaches 100%: DDN with ``check_steps`` steps and no
     norm bound breaks every clean-correct point.
  5. more steps/restarts: PGD with ``check_steps`` steps and
     ``check_restarts`` restarts is within noise of the table's PGD (higher:
     the attack is broken; lower: the table's PGD has not converged).
  6. gradient-free not stronger: :func:`attacks.random_search` accuracy is not
     below the white-box worst case (all l_inf columns and check 5's PGD)
     by more than noise.
  7. attack loss rises: the mean CE along the table's PGD iterations ends
     above its start and drops (by > 1% of the total rise) in at most 20%
     of the steps.

  Uses the table (full evaluated set) and ``row.check_data`` (the extra
  attacks on the first ``m`` points): "m", "pgd_more", "pgd_large",
  "grey", "ddn_norms", "random_search", "trace" (mean CE per PGD step).

  Args:
    row: the row's results.
    cfg: ``config.eval``.
    labels: column name -> header.

  Returns:
    One :class:`Check` per name in :data:`CHECK_NAMES`.
  """
  d, n = row.check_data, row.n
  m = d.get("m", 0)
  out = []

  # 1. Iterative attacks at least as strong as single-step ones.
  single = {k: row.acc(k) for k in ("fgsm_lfr", "fgsm") if k in row.robust}
  multi = {k: row.acc(k) for k in ("pgd", "apgd_ce") if k in row.robust}
  if single and multi:
    s_name = min(single, key=single.get)
    i_name = max(multi, key=multi.get)
    tol = noise_tolerance(single[s_name], n)
    ok = multi[i_name] <= single[s_name] + tol
    out.append(Check(
        "PASS" if ok else "WARN", CHECK_NAMES[0],
        ", ".join(f"{labels[k]} {_pct(v)}" for k, v in multi.items())
        + (" <= " if ok else " > ") + f"{labels[s_name]} {_pct(single[s_name])}"
        + f" (n={n}, tolerance {_pct(tol)})"
        + ("" if ok else "; a single step beats the iterative attack")))
  else:
    out.append(Check("SKIP", CHECK_NAMES[0],
                     "needs pgd or apgd_ce and fgsm or fgsm_lfr columns"))

  # 2. Accuracy falls as eps grows.
  if row.sweep:
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
    out.append(Check(
        "WARN" if bad else "PASS", CHECK_NAMES[1],
        ("; ".join(bad) if bad else "; ".join(shown))
        + f" (eps {eps_text}, n={n})"))
  else:
    out.append(Check("SKIP", CHECK_NAMES[1], "config.eval.eps_sweep is empty"))

  if not m:
    for name in CHECK_NAMES[2:]:
      out.append(Check("SKIP", name, "no examples for the checks"))
    return out
  sub_clean = row.clean[:m]

  # 3. ~0% at a large eps.
  large = float(cfg["large_eps"])
  acc_large = float(np.mean(d["pgd_large"]))
  limit = float(cfg["large_eps_max_acc"])
  grey = (f"; the constant 0.5 image alone leaves "
          f"{_pct(float(np.mean(d['grey'])))}" if "grey" in d else "")
  out.append(Check(
      "PASS" if acc_large <= limit else "WARN", CHECK_NAMES[2],
      f"{d['pgd_large_label']} at eps {large:g}: {_pct(acc_large)} "
      f"({'<=' if acc_large <= limit else '>'} {_pct(limit)}, n={m}){grey}"))

  # 4. Unbounded DDN breaks every correctly classified point.
  norms = d["ddn_norms"]
  correct = int(sub_clean.sum())
  failed = int(np.sum(sub_clean & ~np.isfinite(norms)))
  on = norms[sub_clean]
  median = float(np.median(on)) if on.size else float("nan")
  out.append(Check(
      "PASS" if failed == 0 else "WARN", CHECK_NAMES[3],
      f"{d['ddn_label']} (no norm bound) broke {correct - failed}/{correct} "
      f"correctly classified points"
      + (f" ({_pct((correct - failed) / correct)})" if correct else "")
      + (f", median l2 {median:.3g}" if on.size else "")))

  # 5. More steps and restarts do not change the accuracy beyond noise.
  more, more_label = float(np.mean(d["pgd_more"])), d["pgd_more_label"]
  if "pgd" in row.robust:
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
    out.append(Check(status, CHECK_NAMES[4],
                     f"{labels['pgd']} {_pct(base)} vs {more_label} "
                     f"{_pct(more)} (n={m}, tolerance {_pct(tol)}){note}"))
  else:
    out.append(Check("SKIP", CHECK_NAMES[4], "needs the pgd column"))

  # 6. A gradient-free attack is not stronger than the white-box ones.
  rs = d["random_search"]
  white = np.ones(m, bool) & sub_clean
  for name in _LINF:
    if name in row.robust:
      white &= row.robust[name][:m]
  white &= d["pgd_more"]
  acc_rs, acc_wb = float(np.mean(rs)), float(np.mean(white))
  only = int(np.sum(white & ~rs))
  tol = noise_tolerance(acc_wb, m)
  ok = acc_rs >= acc_wb - tol
  out.append(Check(
      "PASS" if ok else "WARN", CHECK_NAMES[5],
      f"{d['random_search_label']} {_pct(acc_rs)} vs white-box worst case "
      f"{_pct(acc_wb)} (n={m}, tolerance {_pct(tol)}); it alone broke {only} "
      f"point(s)" + ("" if ok else "; gradients are masked")))

  # 7. The attack loss rises along the PGD iterations.
  trace = np.asarray(d["trace"], np.float64)
  steps = trace.size - 1
  if steps < 1:
    out.append(Check("SKIP", CHECK_NAMES[6], "PGD has no steps"))
  else:
    rise = float(trace[-1] - trace[0])
    drops = int(np.sum(np.diff(trace) < -0.01 * abs(rise)))
    ok = rise > 0 and drops <= 0.2 * steps
    out.append(Check(
        "PASS" if ok else "WARN", CHECK_NAMES[6],
        f"mean CE {trace[0]:.4g} -> {trace[-1]:.4g} over {steps} "
        f"{labels.get('pgd', 'PGD')} steps (max {trace.max():.4g}); {drops} of "
        f"{steps} steps decreased"
        + ("" if ok else ("; the loss does not rise" if rise <= 0 else
                          "; the loss falls too often"))))
  return out


# -------------------------------------------------------------- evaluation --


def _check_model_fits(model: Model, x: np.ndarray, cfg) -> int:
  """Number of classes; a ConfigError if APGD-T asks for too many targets."""
  out = jax.eval_shape(model.logits_fn(), jax.ShapeDtypeStruct(
      (2,) + x.shape[1:], jnp.float32))
  classes = int(out.shape[-1])
  names = parse_attacks(cfg["attacks"])
  if "apgd_t" in names and not 1 <= cfg["apgd_targets"] <= classes - 1:
    raise config_check.ConfigError(
        f"config.eval.apgd_targets must lie in [1, {classes - 1}] for "
        f"{classes} classes, got {cfg['apgd_targets']}.")
  return classes


def _evaluate_row(model: Model, x: np.ndarray, y: np.ndarray, cfg,
                  runner: Runner, root: jax.Array,
                  columns: Sequence[Attack]) -> RowResult:
  t0 = time.time()
  params = runner.place(model.params)
  runs = []

  def run(attack, xs=x, ys=y, key_name=None):
    t = time.time()
    runs.append(attack.label)
    out = runner.run(model, params, attack, xs, ys,
                     attack_key(root, key_name or attack.name),
                     desc=f"{model.label}: {attack.label}")
    logging.debug("%s: %s done in %.1f s", model.label, attack.label,
                  time.time() - t)
    return out

  clean = run(CLEAN)["pred"] == y
  row = RowResult(model.label, dict(model.info), y, clean)
  for attack in columns:
    out = run(attack)
    if attack.threat == "l2":
      row.ddn_norms = out["norms"]
    row.robust[attack.name] = clean & (out["pred"] == y)
  linf = [a.name for a in columns if a.threat == "linf"]
  if "worst" in parse_attacks(cfg["attacks"]) and linf:
    row.robust["worst"] = np.logical_and.reduce(
        [row.robust[k] for k in linf] + [clean])

  main_eps = float(cfg["eps"])
  for name, build in (("pgd", functools.partial(pgd_attack, cfg)),
                      ("apgd_ce", functools.partial(apgd_ce_attack, cfg))):
    by_eps = {}
    for e in eps_sweep(cfg):
      if name in row.robust and abs(e - main_eps) < 1e-12:
        by_eps[e] = row.robust[name]
      else:
        by_eps[e] = clean & (run(build(e), key_name=name)["pred"] == y)
    if by_eps:
      row.sweep[name] = by_eps

  if cfg["checks"]:
    m = x.shape[0] if not cfg["check_examples"] else min(
        int(cfg["check_examples"]), x.shape[0])
    row.check_data = _check_attacks(run, cfg, x[:m], y[:m], clean[:m])
  row.seconds = time.time() - t0
  logging.info("%s: clean %.2f%%, %d attack runs in %.0f s", model.label,
               100 * row.acc("clean"), len(runs), row.seconds)
  return row


def check_attacks(cfg) -> dict[str, Attack]:
  """The extra attacks behind the masking checks, by role.

  "pgd_more": PGD with ``check_steps`` steps and ``check_restarts`` restarts
  (same step as the table); "pgd_large": PGD at ``large_eps`` with
  ``check_steps`` steps of 2.5 large_eps / check_steps; "grey": the constant
  0.5 image (when large_eps >= 0.5); "ddn_unbounded": DDN with
  ``check_steps`` steps and no norm bound; "random_search":
  :func:`attacks.random_search` with ``random_search_steps`` queries; "trace": the
  table's PGD, recording its loss per step.
  """
  ks, eps = int(cfg["check_steps"]), float(cfg["eps"])
  large, kr = float(cfg["large_eps"]), int(cfg["random_search_steps"])
  base = pgd_attack(cfg)
  out = {
      "pgd_more": pgd_attack(cfg, num_steps=ks,
                             restarts=int(cfg["check_restarts"]),
                             step_size=float(cfg["step_size"]),
                             name="pgd_more", source=CHECK),
      "pgd_large": pgd_attack(cfg, large, num_steps=ks,
                              step_size=2.5 * large / ks, name="pgd_large",
                              source=CHECK),
      "ddn_unbounded": Attack(
          "ddn_unbounded", f"DDN-{ks}", attacks.ddn,
          static=(("num_steps", ks),), source=CHECK, threat="l2",
          description=f"l2, {ks} steps, no norm bound"),
      "random_search": Attack(
          "random_search", f"random search ({kr} queries)", attacks.random_search,
          static=(("num_steps", kr),), dynamic=(("eps", eps),), source=CHECK,
          description=(f"l_inf eps {eps:g}, Square-Attack-like vertex search, "
                       f"{kr} queries")),
      "trace": Attack(
          "pgd_trace", f"{base.label} loss trace", attacks.pgd_loss_trace,
          static=(("num_steps", int(cfg["pgd_steps"])),),
          dynamic=base.dynamic[:2], source=CHECK,
          description=base.description + ", loss recorded per step"),
  }
  if large >= 0.5:
    out["grey"] = Attack("grey", "constant 0.5 image", _grey, source=CHECK,
                         description="every pixel 0.5 (in the ball)")
  return out


def _check_attacks(run, cfg, xs, ys, clean) -> dict[str, Any]:
  """Runs :func:`check_attacks` on the first m points."""
  m = xs.shape[0]
  d: dict[str, Any] = {"m": m}
  if not m:
    return d
  for role, attack in check_attacks(cfg).items():
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


@dataclasses.dataclass
class Report:
  """Everything :func:`write_report` writes.

  Attributes:
    rows: one :class:`RowResult` per model.
    columns: the table's attacks (``worst`` excluded).
    settings: ``config.eval`` as a dict.
    data: what was evaluated (dataset, split, examples, total).
    environment: software versions and hardware, see :func:`environment`.
    figures: paths of the figures written.
    seconds: wall time.
  """
  rows: list[RowResult]
  columns: list[Attack]
  settings: dict[str, Any]
  data: dict[str, Any]
  environment: dict[str, Any]
  figures: list[str] = dataclasses.field(default_factory=list)
  seconds: float = 0.0

  @property
  def labels(self) -> dict[str, str]:
    out = {"clean": "clean", "worst": "worst case"}
    out.update({a.name: a.label for a in self.columns})
    out.setdefault("pgd", pgd_attack(self.settings).label)
    out.setdefault("apgd_ce", "APGD-CE")
    return out

  @property
  def has_worst(self) -> bool:
    return "worst" in parse_attacks(self.settings["attacks"])


def evaluate(model_list: Sequence[Model], x, y, cfg, *,
             figures_dir: str | os.PathLike | None = None,
             data_info: Mapping[str, Any] | None = None) -> Report:
  """Evaluates models: the table, the eps sweep, masking checks, geometry.

  Args:
    model_list: the rows, e.g. from :func:`load_run`.
    x: (N, H, W, C) float32 images in [0, 1].
    y: (N,) integer labels.
    cfg: ``config.eval`` (see configs/evaluate.py).
    figures_dir: where the eps-sweep plot and the geometry figures go;
      None writes no figures (the geometry numbers are still computed).
    data_info: description of the data for the report.

  Returns:
    The :class:`Report`.

  Raises:
    config_check.ConfigError: invalid settings.
  """
  t0 = time.time()
  validate_settings(cfg)
  if not model_list:
    raise EvalError("nothing to evaluate: no models given.")
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.int32)
  if x.ndim != 4 or y.shape != x.shape[:1] or not x.shape[0]:
    raise EvalError(f"need images (N, H, W, C) and labels (N,) with N > 0, "
                    f"got {x.shape} and {y.shape}.")
  for model in model_list:
    try:
      _check_model_fits(model, x, cfg)
    except config_check.ConfigError:
      raise
    except (TypeError, ValueError) as e:
      raise EvalError(f"model {model.label!r} does not take the "
                      f"{x.shape[1:]} images: {_one_line(e)}") from None
  settings = _plain(cfg)
  columns = table_attacks(cfg)
  runner = Runner(int(cfg["batch_size"]), bool(cfg["progress"]))
  root = jax.random.key(int(cfg["seed"]))
  report = Report([], columns, settings,
                  dict(data_info or {}, examples=int(x.shape[0])),
                  environment())
  labels = report.labels
  for model in model_list:
    row = _evaluate_row(model, x, y, cfg, runner, root, columns)
    if cfg["checks"]:
      row.checks = masking_checks(row, cfg, labels)
    report.rows.append(row)
  if figures_dir is not None and report.rows[0].sweep:
    report.figures.append(_plot_eps_sweep(report, figures_dir))
  if cfg["geometry"]:
    report.figures += geometry_outputs(model_list, report.rows, x, y, cfg,
                                       figures_dir, jax.random.fold_in(root, 7))
  report.seconds = time.time() - t0
  return report


def _plot_eps_sweep(report: Report, figures_dir) -> str:
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


# --------------------------------------------------------------- geometry --


def flatness_step(cfg) -> float:
  """Sign-ascent step of the flatness gamma: the table's step if
  ``gamma_steps`` of it reach eps, else 2.5 eps / gamma_steps."""
  eps, steps = float(cfg["eps"]), int(cfg["gamma_steps"])
  step = float(cfg["step_size"])
  return step if steps * step >= eps else 2.5 * eps / max(steps, 1)


def geometry_outputs(model_list: Sequence[Model], rows: Sequence[RowResult],
                     x: np.ndarray, y: np.ndarray, cfg,
                     figures_dir: str | os.PathLike | None,
                     key: jax.Array) -> list[str]:
  """Surfaces, the Jacobian/Hessian indicator and gamma histograms.

  Decision and loss surfaces around the first ``surface_points`` images on a
  random x random plane (the same for every model) and on an adversarial
  (sign of grad CE, per model) x random plane, all models side by side; the
  Jacobian l1 norm / sparsity and the Lanczos Hessian spectrum of the
  decision value over the first ``geometry_examples`` images; and the local
  flatness (LFR) and local linearity (LLR) gammas over the first
  ``gamma_examples`` (0 = all) images. Numbers go into ``rows[i].geometry``.

  Returns:
    The figure paths written (none when ``figures_dir`` is None).
  """
  from lfr_jax import geometry, plots  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  n = x.shape[0]
  shape = x.shape[1:]
  eps = float(cfg["eps"])
  k_u, k_v, k_h, k_g = jax.random.split(key, 4)
  rnd_u = geometry.random_direction(k_u, shape)
  rnd_v = geometry.orthogonalize(geometry.random_direction(k_v, shape), rnd_u)
  points = min(int(cfg["surface_points"]), n)
  ng = min(int(cfg["geometry_examples"]), n)
  nh = n if not cfg["gamma_examples"] else min(int(cfg["gamma_examples"]), n)
  extent, res = float(cfg["surface_extent"]), int(cfg["surface_resolution"])
  steps, step = int(cfg["gamma_steps"]), flatness_step(cfg)
  grids: dict[tuple, dict[str, tuple]] = {}
  jac_maps, flat, lin = {}, {}, {}
  tasks = len(model_list) * (points * 4 + 4)
  bar = tqdm(total=tasks, desc="geometry", disable=not cfg["progress"],
             leave=False, file=sys.stderr)
  for model, row in zip(model_list, rows):
    lf = model.logits_fn()
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    if points:
      adv = geometry.adversarial_direction(lf, xs[:points], ys[:points],
                                           kind="ce")
    for i in range(points):
      rnd_i = geometry.orthogonalize(rnd_u, adv[i])
      for plane, (du, dv) in (("random", (rnd_u, rnd_v)),
                              ("adversarial", (rnd_i, adv[i]))):
        for quantity in ("decision", "loss"):
          grid = geometry.surface(lf, xs[i], ys[i], du, dv, extent=extent,
                                  resolution=res, quantity=quantity)
          grids.setdefault((plane, quantity, i), {})[model.label] = tuple(
              np.asarray(g) for g in grid)
          bar.update(1)
    g = row.geometry
    if ng:
      jac = geometry.jacobian_stats(lf, xs[:ng], ys[:ng])
      g.update(jacobian_l1_mean=float(jnp.mean(jac.l1)),
               jacobian_l1_median=float(jnp.median(jac.l1)),
               jacobian_sparsity=float(jnp.mean(jac.sparsity)))
      jac_maps[model.label] = np.asarray(jac.jacobian[:8])
      bar.update(1)
      hes = geometry.hessian_eigs(lf, xs[:ng], ys[:ng], key=k_h,
                                  num_iters=int(cfg["hessian_iters"]))
      g.update(hessian_top_abs_mean=float(jnp.mean(jnp.abs(hes.top))),
               hessian_ritz_l1_mean=float(jnp.mean(hes.ritz_l1)),
               hessian_l1_estimate_mean=float(jnp.mean(hes.l1_estimate)),
               hessian_zero_share=float(jnp.mean(hes.zero_share)))
      bar.update(1)
    else:
      bar.update(2)
    f = np.asarray(geometry.flatness_values(
        lf, xs[:nh], ys[:nh], k_g, eps=eps, step_size=step, num_steps=steps))
    bar.update(1)
    li = np.asarray(geometry.linearity_values(
        lf, xs[:nh], ys[:nh], k_g, eps=eps, num_steps=steps))
    bar.update(1)
    flat[model.label], lin[model.label] = f, li
    g.update(gamma_flatness_mean=float(np.mean(f)),
             gamma_flatness_median=float(np.median(f)),
             gamma_linearity_mean=float(np.mean(li)),
             gamma_linearity_median=float(np.median(li)))
  bar.close()
  if figures_dir is None:
    return []
  out_dir = os.fspath(figures_dir)
  paths = []
  axes = {"random": ("random direction 1", "random direction 2"),
          "adversarial": ("random direction", "adversarial direction")}
  for (plane, quantity, i), by_model in sorted(grids.items()):
    path = os.path.join(out_dir, f"surface_{plane}_{quantity}_{i}.png")
    plots.plot_surfaces(
        by_model, path=path, xlabel=axes[plane][0], ylabel=axes[plane][1],
        zlabel="decision value" if quantity == "decision" else "cross-entropy",
        title=f"test image {i} (label {int(y[i])}), {plane} x random plane")
    paths.append(path)
  if jac_maps:
    path = os.path.join(out_dir, "jacobian_maps.png")
    plots.plot_jacobian_maps(x[:min(8, ng)], jac_maps,
                             labels=[int(v) for v in y[:min(8, ng)]],
                             path=path, title="decision Jacobians")
    paths.append(path)
  for name, values, xlabel in (
      ("gamma_flatness", flat, f"local flatness gamma(x, {eps:g}) (l1)"),
      ("gamma_linearity", lin, f"local linearity gamma({eps:g}, x)")):
    if any(np.isfinite(v).any() for v in values.values()):
      path = os.path.join(out_dir, f"{name}.png")
      plots.plot_histograms(values, xlabel, path=path,
                            title=f"{nh} test images")
      paths.append(path)
  return paths


# ---------------------------------------------------------------- loading --


def _steps_in(folder: str) -> list[int]:
  if not os.path.isdir(folder):
    return []
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def load_run_config(workdir: str):
  """The training config a workdir was written with (``config.json``).

  Raises:
    EvalError: no such workdir or no readable config.json.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(path):
    raise EvalError(f"workdir {path} does not exist.")
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise EvalError(f"{path} has no config.json: not a workdir written by "
                    f"train.py.")
  try:
    with open(cfg_path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise EvalError(f"cannot read {cfg_path}: {_one_line(e)}.") from None


def resolve_checkpoint(workdir: str, at: tuple[str, int]) -> int:
  """The saved step that ``("epoch", N)`` or ``("step", N)`` names.

  Epoch N is the checkpoint written at the end of epoch N (step N times the
  run's steps per epoch); runs keep chosen epoch ends with
  ``config.checkpoint.keep_epochs``.

  Raises:
    EvalError: no such saved checkpoint (the message lists those there are).
  """
  from lfr_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(workdir))
  steps, spe = workdir_lib.checkpoint_steps(path)
  kind, n = at
  step = n * spe if kind == "epoch" and spe else n
  if step not in steps:
    have = ", ".join(f"step {s}" + (f" (epoch {s // spe})" if spe and
                                   s % spe == 0 else "") for s in steps)
    raise EvalError(f"{path}/checkpoints holds no checkpoint for {kind} {n}"
                    f"; it holds: {have or 'none'}.")
  return step


def load_run(workdir: str, *, prefix: str = "",
             at: tuple[str, int] | None = None) -> tuple[Any, list[Model]]:
  """The final checkpoint of a run, and its best one if it differs.

  Args:
    workdir: a workdir written by ``training.train_and_evaluate``.
    prefix: prepended to the row labels (to tell several runs apart).
    at: ``("epoch", N)`` or ``("step", N)``: that saved checkpoint alone
      instead (see :func:`resolve_checkpoint`).

  Returns:
    (training config, models): "final (step S)" and, when the best
    checkpoint (by validation PGD accuracy) is another step,
    "best (step S)"; with ``at``, one row "epoch N (step S)" or "step S".

  Raises:
    EvalError: no workdir, config, or checkpoint, or one that cannot be read.
  """
  from lfr_jax import models  # pylint: disable=g-import-not-at-top
  from lfr_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(workdir))
  config = load_run_config(path)
  final_steps = _steps_in(os.path.join(path, "checkpoints"))
  if not final_steps:
    raise EvalError(f"no checkpoint in {path}/checkpoints; train first "
                    f"(python train.py --workdir={path} ...).")
  try:
    net = jax.eval_shape(lambda k: models.create(
        config.model.name, k, **models.kwargs_from_config(config.model)), jax.random.key(0))
  except Exception as e:  # pylint: disable=broad-except
    raise EvalError(f"{path}/config.json describes no model this code can "
                    f"build: {_one_line(e)}") from None
  if at is not None:
    step = resolve_checkpoint(path, at)
    try:
      state, _ = workdir_lib.load_checkpoint(config, path, step=step)
    except Exception as e:  # pylint: disable=broad-except
      raise EvalError(f"cannot read step {step} in {path}/checkpoints "
                      f"(corrupt or written by another config): "
                      f"{type(e).__name__}: {_one_line(e)}") from None
    label = f"{at[0]} {at[1]} (step {step})" if at[0] == "epoch" else (
        f"step {step}")
    network = models.Network(graphdef=net.graphdef, params=state.params,
                             state=state.model_state)
    return config, [Model.from_network(
        f"{prefix}{label}", network, source="workdir", workdir=path,
        checkpoint=label, step=step, method=str(config.get("method", "")),
        model=str(config.model.name))]
  out = []
  final_step = None
  for best in (False, True):
    kind = "best" if best else "final"
    if best and not _steps_in(os.path.join(path, "best_checkpoint")):
      continue
    try:
      state, meta = workdir_lib.load_checkpoint(config, path, best=best)
    except FileNotFoundError:
      continue
    except Exception as e:  # pylint: disable=broad-except
      folder = "best_checkpoint" if best else "checkpoints"
      raise EvalError(f"cannot read the {kind} checkpoint in "
                      f"{os.path.join(path, folder)} (corrupt or written by "
                      f"another config): {type(e).__name__}: {_one_line(e)}"
                      ) from None
    step = int(meta.get("step", -1))
    if best and step == final_step:
      out[0] = dataclasses.replace(
          out[0], label=f"{prefix}final = best (step {step})",
          info=dict(out[0].info, checkpoint="final = best"))
      continue
    final_step = step if not best else final_step
    network = models.Network(graphdef=net.graphdef, params=state.params,
                             state=state.model_state)
    out.append(Model.from_network(
        f"{prefix}{kind} (step {step})", network, source="workdir",
        workdir=path, checkpoint=kind, step=step,
        method=str(config.get("method", "")),
        model=str(config.model.name)))
  return config, out


def load_torch(path: str, model_name: str, *, label: str | None = None,
               **model_kwargs) -> Model:
  """A PyTorch state_dict as a row (label: the file name).

  Raises:
    EvalError: missing or unreadable file, torch absent, or a state_dict
      that does not match the model.
  """
  from lfr_jax import interop  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(path))
  try:
    state_dict = interop.load_torch_state_dict(path)
    net = interop.from_torch(model_name, state_dict, **model_kwargs)
  except (ValueError, ImportError) as e:
    raise EvalError(_one_line(e)) from None
  return Model.from_network(label or os.path.basename(path), net,
                            source="torch", checkpoint=path,
                            model=model_name, model_kwargs=dict(model_kwargs))


def load_test_data(data_cfg, num_examples: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """The first ``num_examples`` (0 = all) test images of a dataset.

  Args:
    data_cfg: a training config's ``data`` section (or a dict with "name").

  Returns:
    (x float32 (N, H, W, C) in [0, 1], y int32 (N,), description).

  Raises:
    lfr_jax.data.DataError: missing or corrupt data.
  """
  from lfr_jax import data  # pylint: disable=g-import-not-at-top
  dataset = data.load(data_cfg)
  total = len(dataset.test)
  n = total if num_examples <= 0 else min(int(num_examples), total)
  images, labels = dataset.test.read(np.arange(n))
  try:
    size = int(data_cfg["image_size"] or 0)
  except (KeyError, AttributeError, TypeError):
    size = 0
  x = data.preprocess(images, train=False, image_size=size)
  info = {"dataset": dataset.info.name, "split": "test",
          "source": dataset.source, "total": total}
  return np.asarray(x, np.float32), np.asarray(labels, np.int32), info


# ---------------------------------------------------------------- reports --


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


def _plain(cfg) -> dict[str, Any]:
  """``config.eval`` as plain JSON-able values."""
  raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in raw.items()}


def reduced_settings(settings: Mapping[str, Any]) -> list[str]:
  """The attack budgets below the LFR paper's (then: not robust accuracy).

  Only the budgets of the selected columns and of the eps sweep count.
  """
  names = set(parse_attacks(settings["attacks"]))
  used = {"pgd_steps": bool(names & {"pgd", "mifgsm_lfr", "mifgsm"})
                       or bool(eps_sweep(settings)),
          "ddn_steps": "ddn_lfr" in names,
          "apgd_steps": bool(names & {"apgd_ce", "apgd_t"})
                        or bool(eps_sweep(settings)),
          "apgd_targets": "apgd_t" in names}
  labels = {"pgd_steps": "PGD steps", "ddn_steps": "DDN steps",
            "apgd_steps": "APGD steps", "apgd_targets": "APGD-T targets"}
  return [f"{labels[k]} {settings[k]} < {paper}"
          for k, paper in PAPER_STEPS.items()
          if used[k] and int(settings[k]) < paper]


def metrics(row: RowResult, report: Report) -> dict[str, float]:
  """A row's numbers, flat: accuracies as fractions, DDN, sweep, geometry."""
  out = {"clean": row.acc("clean")}
  budget = float(report.settings["ddn_l2_budget"])
  for attack in report.columns:
    if attack.name in row.robust:
      out[attack.name] = row.acc(attack.name)
    if attack.threat == "l2":
      if row.ddn_norms is not None:
        s = ddn_summary(row.ddn_norms, row.clean, budget)
        out.update({f"{attack.name}_success": s["success"],
                    f"{attack.name}_median_l2": s["median_l2"],
                    f"{attack.name}_acc_at_l2_{budget:g}": s["acc_at_budget"]})
  if "worst" in row.robust:
    out["worst"] = row.acc("worst")
  for name, by_eps in row.sweep.items():
    for e, v in sorted(by_eps.items()):
      out[f"{name}_eps_{e:g}"] = float(np.mean(v))
  out.update({f"geometry_{k}": float(v) for k, v in row.geometry.items()})
  return out


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in body]
  return "\n".join(lines)


def _fmt_pct(v: float) -> str:
  return "n/a" if not math.isfinite(v) else f"{100 * v:.2f}"


def main_table(report: Report) -> str:
  """The robustness table (accuracy in %) as Markdown."""
  budget = float(report.settings["ddn_l2_budget"])
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
    cells = [row.label, _fmt_pct(row.acc("clean"))]
    for attack in report.columns:
      if attack.threat == "l2":
        s = ddn_summary(row.ddn_norms, row.clean, budget)
        median = s["median_l2"]
        cells += [_fmt_pct(row.acc(attack.name)), _fmt_pct(s["success"]),
                  "inf" if median == float("inf") else f"{median:.3f}",
                  _fmt_pct(s["acc_at_budget"])]
      else:
        cells.append(_fmt_pct(row.acc(attack.name)))
    if report.has_worst:
      cells.append(_fmt_pct(row.acc("worst")) if "worst" in row.robust
                   else "n/a")
    body.append(cells)
  return _md_table(header, body)


def sweep_table(report: Report) -> str:
  """Accuracy (%) per eps of the sweep as Markdown ('' without a sweep)."""
  if not report.rows or not report.rows[0].sweep:
    return ""
  labels = report.labels
  first = report.rows[0].sweep
  header = ["checkpoint"] + [f"{labels[name]} eps={e:g}"
                             for e in sorted(next(iter(first.values())))
                             for name in first]
  body = []
  for row in report.rows:
    cells = [row.label]
    for e in sorted(next(iter(first.values()))):
      for name in first:
        cells.append(_fmt_pct(float(np.mean(row.sweep[name][e]))))
    body.append(cells)
  return _md_table(header, body)


def check_lines(report: Report) -> list[str]:
  """The PASS/WARN/SKIP lines, prefixed by the row label when several."""
  lines = []
  for row in report.rows:
    prefix = f"[{row.label}] " if len(report.rows) > 1 else ""
    lines += [c.line(prefix) for c in row.checks]
  return lines


def geometry_table(report: Report) -> str:
  keys = [("jacobian_l1_mean", "Jacobian l1 (mean)", "{:.4g}"),
          ("jacobian_sparsity", "Jacobian sparsity", "{:.3f}"),
          ("hessian_top_abs_mean", "Hessian max abs eigenvalue (mean)", "{:.4g}"),
          ("hessian_ritz_l1_mean", "Hessian Ritz l1 (mean)", "{:.4g}"),
          ("hessian_l1_estimate_mean", "Hessian l1 SLQ estimate", "{:.4g}"),
          ("hessian_zero_share", "Hessian zero share", "{:.3f}"),
          ("gamma_flatness_median", "gamma flatness (median)", "{:.4g}"),
          ("gamma_linearity_median", "gamma linearity (median)", "{:.4g}")]
  present = [k for k in keys if any(k[0] in r.geometry for r in report.rows)]
  if not present:
    return ""
  body = [[row.label] + [fmt.format(row.geometry[k]) if k in row.geometry
                         else "n/a" for k, _, fmt in present]
          for row in report.rows]
  return _md_table(["checkpoint"] + [h for _, h, _ in present], body)


def to_markdown(report: Report) -> str:
  """The whole report as Markdown."""
  s = report.settings
  d = report.data
  n = d.get("examples", report.rows[0].n if report.rows else 0)
  total = d.get("total")
  what = (f"{d.get('dataset', 'data')} {d.get('split', '')} set, "
          f"{n}" + (f" of {total}" if total else "") + " examples")
  out = ["# Robustness evaluation", "",
         f"{what}; seed {s['seed']}; batch {s['batch_size']}; "
         f"{report.environment['hardware']['device_kind']} x"
         f"{report.environment['hardware']['device_count']}; "
         f"{report.seconds:.0f} s.", ""]
  reduced = reduced_settings(s)
  if reduced:
    out += [f"**Reduced attack settings ({'; '.join(reduced)}): these numbers "
            f"are a smoke test, not robust accuracies.**", ""]
  out += [f"## Accuracy (%) under attack (l_inf eps {s['eps']:g} unless "
          f"stated)", "", main_table(report), "", "Columns:", ""]
  out.append("- clean: no attack.")
  for a in report.columns:
    out.append(f"- {a.label} [{a.source}]: {a.description}.")
  if report.has_worst:
    out.append(f"- worst case: {worst_description(report.columns)}.")
  if report.columns and any(a.threat == "l2" for a in report.columns):
    out.append("- DDN success rate and median L2 are over the clean-correct "
               "points (a failure counts as an infinite norm); acc@L2 is over "
               "all points.")
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
  geo = geometry_table(report)
  if geo:
    out += ["", "## Geometry", "", geo, "",
            f"Jacobian and Hessian (Lanczos, {s['hessian_iters']} steps) of "
            f"the decision value z_y - max_(i!=y) z_i on the first "
            f"{s['geometry_examples']} images; gamma flatness = max over the "
            f"eps {s['eps']:g} ball of ||grad CE||_1 ({s['gamma_steps']} sign "
            f"steps of {flatness_step(s):g}), gamma linearity = LLR's "
            f"({s['gamma_steps']} Adam steps of 0.1), on the first "
            f"{s['gamma_examples'] or n} images."]
  if report.figures:
    out += ["", "Figures: " + ", ".join(
        os.path.basename(p) for p in report.figures) + " (in figures/)."]
  return "\n".join(out) + "\n"


def to_csv(report: Report) -> str:
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


def to_json(report: Report) -> dict[str, Any]:
  """The report as a JSON-able dict (settings, versions, hardware, rows)."""
  columns = [{"name": "clean", "label": "clean", "source": "no attack"}]
  for a in report.columns:
    columns.append({"name": a.name, "label": a.label, "source": a.source,
                    "threat": a.threat, "description": a.description,
                    "settings": a.settings()})
  if report.has_worst:
    columns.append({"name": "worst", "label": "worst case",
                    "source": "AutoAttack-style",
                    "description": worst_description(report.columns)})
  rows = []
  for row in report.rows:
    rows.append({
        "label": row.label, "info": row.info, "examples": row.n,
        "metrics": {k: _json_number(v) for k, v in metrics(row, report).items()},
        "checks": [dataclasses.asdict(c) for c in row.checks],
        "seconds": row.seconds})
  s = report.settings
  return {
      "data": report.data, "settings": s, "seed": s["seed"],
      "columns": columns,
      "eps_sweep": {"eps": eps_sweep(s), "attacks": [
          pgd_attack(s, e).settings() for e in eps_sweep(s)] + [
              apgd_ce_attack(s, e).settings() for e in eps_sweep(s)]},
      "check_attacks": ({k: dict(a.settings(), label=a.label,
                                 description=a.description)
                         for k, a in check_attacks(s).items()}
                        if s["checks"] else {}),
      "reduced_settings": reduced_settings(s),
      "rows": rows, "figures": report.figures,
      "environment": report.environment,
      "software": report.environment["software"],
      "hardware": report.environment["hardware"],
      "seconds": report.seconds,
      "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }


def _write_atomic(path: str, text: str | bytes) -> None:
  folder = os.path.dirname(path)
  mode = "wb" if isinstance(text, bytes) else "w"
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_")
  try:
    with os.fdopen(fd, mode) as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_report(report: Report, out_dir: str | os.PathLike) -> dict[str, str]:
  """Writes robustness.{md,csv,json} and per_example.npz into ``out_dir``.

  Each file is written to a temporary name and renamed, so an interrupted
  run leaves the previous report intact.

  Returns:
    name -> path of what was written.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f"robustness.{k}")
           for k in ("md", "csv", "json")}
  _write_atomic(paths["md"], to_markdown(report))
  _write_atomic(paths["csv"], to_csv(report))
  _write_atomic(paths["json"], json.dumps(to_json(report), indent=2) + "\n")
  arrays = {}
  for i, row in enumerate(report.rows):
    arrays[f"row{i}_clean"] = row.clean
    for k, v in row.robust.items():
      arrays[f"row{i}_{k}"] = v
    if row.ddn_norms is not None:
      arrays[f"row{i}_ddn_norms"] = row.ddn_norms
    for name, by_eps in row.sweep.items():
      for e, v in by_eps.items():
        arrays[f"row{i}_{name}_eps_{e:g}"] = v
  arrays["labels"] = np.asarray([r.label for r in report.rows], dtype=str)
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  paths["npz"] = os.path.join(out_dir, "per_example.npz")
  _write_atomic(paths["npz"], buf.getvalue())
  return paths


def summary_text(report: Report) -> str:
  """What evaluate.py prints: the table, the eps sweep and the checks."""
  out = [main_table(report)]
  reduced = reduced_settings(report.settings)
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


__all__ = [
    "ATTACK_NAMES", "CHECK_NAMES", "EvalError", "Model", "Attack", "Runner",
    "Check", "RowResult", "Report", "accuracy", "parse_attacks",
    "validate_settings", "eps_sweep", "table_attacks", "pgd_attack",
    "apgd_ce_attack", "noise_tolerance",
    "ddn_summary", "masking_checks", "evaluate", "geometry_outputs",
    "load_run", "load_run_config", "load_torch", "load_test_data",
    "environment", "metrics", "main_table", "sweep_table", "check_lines",
    "to_markdown", "to_csv", "to_json", "write_report", "summary_text",
    "attack_key", "network_logits",
]
