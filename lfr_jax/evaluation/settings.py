"""The evaluation settings (``config.eval``), checked and typed once.

:func:`from_config` checks every field of ``config.eval`` (see
configs/evaluate.py) and returns a frozen :class:`EvalSettings`: integers as
``int``, radii and step sizes as ``float``, the attack columns as a tuple of
names and the eps sweep as sorted distinct radii. Everything below takes the
dataclass; nothing else reads the config.

Example::

    from configs import evaluate as eval_configs
    from lfr_jax.evaluation import settings
    cfg = eval_configs.get_config("smoke").eval
    cfg.attacks = "pgd,fgsm,worst"
    s = settings.from_config(cfg)
    s.attacks, s.eps_sweep    # (('pgd', 'fgsm', 'worst'), (0.1, 0.3))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lfr_jax import config_check
from lfr_jax.evaluation import columns


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """``config.eval``, checked; field docs in configs/evaluate.py.

  Attributes:
    attacks: the table's columns in order ("all" expanded; may hold "worst").
    eps_sweep: the sorted, distinct radii of the accuracy-vs-eps table.
    recorded: ``config.eval`` as written (plain JSON-able values), what the
      reports record as the settings.
  """
  num_examples: int
  batch_size: int
  seed: int
  attacks: tuple[str, ...]
  progress: bool
  eps: float
  step_size: float
  pgd_steps: int
  mifgsm_lfr_decay: float
  mifgsm_decay: float
  ddn_steps: int
  ddn_levels: int
  ddn_l2_budget: float
  apgd_steps: int
  apgd_targets: int
  apgd_t_examples: int
  eps_sweep: tuple[float, ...]
  checks: bool
  check_examples: int
  check_steps: int
  check_restarts: int
  large_eps: float
  large_eps_max_acc: float
  random_search_steps: int
  geometry: bool
  geometry_examples: int
  surface_points: int
  surface_resolution: int
  surface_extent: float
  hessian_iters: int
  gamma_examples: int
  gamma_steps: int
  variant: str = ""
  recorded: Mapping[str, Any] = dataclasses.field(
      default_factory=dict, compare=False, hash=False, repr=False)

  @property
  def has_worst(self) -> bool:
    """Whether the table has the per-example worst-case column."""
    return "worst" in self.attacks

  def as_dict(self) -> dict[str, Any]:
    """``config.eval`` as written, as a fresh JSON-able dict."""
    return dict(self.recorded)


# Keys every evaluation config must hold (configs/evaluate.py); "variant"
# (the configs/evaluate.py variant a config came from) is optional.
SETTINGS = tuple(f.name for f in dataclasses.fields(EvalSettings)
                 if f.name not in ("recorded", "variant"))
VARIANTS = ("", "quick", "smoke")
# Integer settings by their least valid value, in the order they are checked
# (the first invalid field is the one reported).
_AT_LEAST_ONE = ("pgd_steps", "ddn_steps", "apgd_steps", "apgd_targets",
                 "check_steps", "check_restarts", "random_search_steps",
                 "surface_resolution", "hessian_iters")
_AT_LEAST_ZERO = ("check_examples", "geometry_examples", "surface_points",
                  "gamma_examples", "gamma_steps", "apgd_t_examples")
_INTERVAL = "a number in [0, 1]"
# How each scalar field's annotation converts a checked config value.
_CONVERT = {"int": int, "float": float, "bool": bool}


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
    return list(columns.ATTACK_NAMES)
  for name in names:
    if name not in columns.ATTACK_NAMES:
      raise config_check.ConfigError(
          f"config.eval.attacks: unknown attack {name!r}; valid: "
          f"{', '.join(columns.ATTACK_NAMES)} or all.")
  if len(set(names)) != len(names):
    raise config_check.ConfigError(
        f"config.eval.attacks names a column twice: {spec!r}.")
  if not names:
    raise config_check.ConfigError("config.eval.attacks names no attack.")
  return names


def _radii(value) -> tuple:
  """``config.eval.eps_sweep`` as a sequence (one number is one radius)."""
  return (value,) if isinstance(value, (int, float)) else tuple(value)


def parse_eps_sweep(value) -> tuple[float, ...]:
  """The sorted, distinct radii of ``config.eval.eps_sweep``.

  Raises:
    config_check.ConfigError: a radius outside [0, 1].
  """
  for e in _radii(value):
    if not config_check.is_number(e) or not 0.0 <= e <= 1.0:
      raise config_check.ConfigError(
          f"config.eval.eps_sweep values must lie in [0, 1], got {e!r}.")
  return tuple(sorted({float(e) for e in _radii(value)}))


def _check_numbers(cfg) -> None:
  """The range of every scalar field, in the order the messages name them."""
  check_integer, check_number = (config_check.check_integer,
                                 config_check.check_number)
  check_number("eval.eps", cfg["eps"], lo=0, hi=1, expected=_INTERVAL)
  check_number("eval.large_eps", cfg["large_eps"], lo=0, hi=1,
               expected=_INTERVAL)
  parse_eps_sweep(cfg["eps_sweep"])
  check_number("eval.step_size", cfg["step_size"], lo=0, lo_open=True)
  for key in _AT_LEAST_ONE:
    check_integer(f"eval.{key}", cfg[key], lo=1)
  for key in _AT_LEAST_ZERO:
    check_integer(f"eval.{key}", cfg[key], lo=0)
  for key in ("mifgsm_lfr_decay", "mifgsm_decay", "ddn_l2_budget"):
    check_number(f"eval.{key}", cfg[key], lo=0)
  check_integer("eval.ddn_levels", cfg["ddn_levels"], lo=0)
  if cfg["ddn_levels"] == 1:
    raise config_check.ConfigError(
        "config.eval.ddn_levels must be 0 (no quantization) or >= 2, got 1.")
  check_number("eval.large_eps_max_acc", cfg["large_eps_max_acc"], lo=0,
               hi=1, expected=_INTERVAL)
  check_number("eval.surface_extent", cfg["surface_extent"], lo=0)
  for key in ("checks", "geometry", "progress"):
    if not isinstance(cfg[key], bool):
      raise config_check.ConfigError(
          f"config.eval.{key} must be True or False, got {cfg[key]!r}.")


def _plain(cfg) -> dict[str, Any]:
  """``config.eval`` as plain JSON-able values."""
  raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in raw.items()}


def from_config(cfg) -> EvalSettings:
  """Checks ``config.eval`` and returns it typed; the only reader of the config.

  Args:
    cfg: ``config.eval`` (a ConfigDict or a dict); an :class:`EvalSettings`
      is returned as it is, so entry points may take either.

  Returns:
    The settings.

  Raises:
    config_check.ConfigError: a missing or invalid field, in one line.
  """
  if isinstance(cfg, EvalSettings):
    return cfg
  missing = [k for k in SETTINGS if k not in cfg]
  if missing:
    raise config_check.ConfigError(
        f"config.eval lacks {', '.join(missing)}; start from "
        f"configs/evaluate.py.")
  config_check.check_integer("eval.num_examples", cfg["num_examples"], lo=0)
  config_check.check_integer("eval.batch_size", cfg["batch_size"], lo=1)
  config_check.check_integer("eval.seed", cfg["seed"], lo=0)
  names = parse_attacks(cfg["attacks"])
  if "worst" in names and not set(names) & set(columns.LINF_COLUMNS):
    raise config_check.ConfigError(
        "config.eval.attacks: worst needs at least one l_inf column.")
  _check_numbers(cfg)
  variant = cfg["variant"] if "variant" in cfg else ""
  if variant not in VARIANTS:
    raise config_check.ConfigError(
        f"config.eval.variant {variant!r} is unknown; valid: "
        f"{', '.join(map(repr, VARIANTS))}.")
  scalars = {f.name: _CONVERT[f.type](cfg[f.name])
             for f in dataclasses.fields(EvalSettings) if f.type in _CONVERT}
  return EvalSettings(**scalars, attacks=tuple(names), variant=variant,
                      eps_sweep=parse_eps_sweep(cfg["eps_sweep"]),
                      recorded=_plain(cfg))


def validate_settings(cfg) -> EvalSettings:
  """Checks ``config.eval`` before anything runs (:func:`from_config`).

  Kept for callers that check a config early and pass the config on.
  """
  return from_config(cfg)
