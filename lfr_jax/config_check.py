"""Checks a whole training config before anything is written or compiled.

Every mistake a user can make on the command line (a wrong value, a method,
model or dataset that does not exist, a batch that does not split over the
devices) becomes one :class:`ConfigError` whose message is a single line naming
the config field. :func:`validate` needs no devices and runs first;
:func:`validate_runtime` runs once JAX (and ``jax.distributed``) is up and checks
what depends on the devices, the model and the dataset's image shape.

Example::

    from configs import mnist_lfr
    from lfr_jax import config_check
    config = mnist_lfr.get_config("smoke")
    config_check.validate(config)            # raises ConfigError, one line
"""

from __future__ import annotations

import math
import numbers

from lfr_jax import data
from lfr_jax import models
from lfr_jax import objectives
from lfr_jax import text
from lfr_jax import train_state

UNROLL = ("auto", "full", "none")
OPTIMIZERS = ("sgd", "adam")
EVAL_NORMS = ("linf", "l2")
TEST_CHECKPOINTS = ("final", "best")
LINF_RADIUS = "an l_inf radius in [0, 1] (pixels lie in [0, 1])"
SECTIONS = ("method", "seed", "model", "inner", "data", "optim", "train", "eval",
            "checkpoint", "log", "mesh", "distributed")


class ConfigError(ValueError):
  """A config value is missing, of the wrong type, or invalid (one line)."""


def is_number(v) -> bool:
  """A real number that is not a bool (numpy scalars included)."""
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_int(v) -> bool:
  """An integer that is not a bool (numpy integers included)."""
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_number(name: str, v, *, lo=None, lo_open=False, hi=None,
                 hi_open=False, expected: str | None = None) -> None:
  """Raises ConfigError unless ``config.<name>`` is a finite number in range.

  Args:
    name: the field, as written after ``config.`` (e.g. "optim.lr").
    v: its value.
    lo: lower bound (None: unbounded); ``lo_open`` excludes it.
    lo_open: whether ``v == lo`` is refused.
    hi: upper bound (None: unbounded); ``hi_open`` excludes it.
    hi_open: whether ``v == hi`` is refused.
    expected: the valid values in words, e.g. "a number in [0, 1]"; every
      failure then reads "config.<name> must be <expected>, got <v!r>." (one
      message for a whole interval). None names the bound that failed.
  """
  def fail(default: str):
    raise ConfigError(f"config.{name} must be {expected}, got {v!r}."
                      if expected else f"config.{name} must be {default}.")

  if not is_number(v) or not math.isfinite(v):
    fail(f"a finite number, got {v!r}")
  if lo is not None and (v <= lo if lo_open else v < lo):
    fail(f"{'>' if lo_open else '>='} {lo}, got {v}")
  if hi is not None and (v >= hi if hi_open else v > hi):
    fail(f"{'<' if hi_open else '<='} {hi}, got {v}")


def check_integer(name: str, v, *, lo: int | None = None) -> None:
  """Raises ConfigError unless ``config.<name>`` is an integer >= ``lo``."""
  if not is_int(v):
    raise ConfigError(f"config.{name} must be an integer, got {v!r}.")
  if lo is not None and v < lo:
    raise ConfigError(f"config.{name} must be >= {lo}, got {v}.")


def check_choice(name: str, v, valid) -> None:
  """Raises ConfigError unless ``config.<name>`` is one of ``valid`` (listed)."""
  valid = list(valid)
  if v not in valid:
    raise ConfigError(f"config.{name} {v!r} is unknown; valid: "
                      f"{', '.join(map(str, valid))}.")


def _check_sections(config) -> None:
  missing = [s for s in SECTIONS if s not in config]
  if missing:
    raise ConfigError(f"config lacks section(s) {', '.join(missing)}; start "
                      f"from a preset in configs/.")
  extra = [k for k in config if k not in SECTIONS and k != config.method]
  stray = [k for k in extra if k in objectives.names()]
  if stray:
    raise ConfigError(f"config.{stray[0]} holds settings for method {stray[0]!r} "
                      f"but config.method is {config.method!r}; use the "
                      f"{config.method} preset or drop those settings.")
  if extra:
    raise ConfigError(f"config has unknown section(s) {', '.join(extra)}.")


def _check_method(config) -> None:
  check_choice("method", config.method, objectives.names())
  method = config.method
  own = dict(config[method]) if method in config else {}
  allowed = [k for k in objectives.valid_settings(method)
             if k not in objectives.INNER_SETTINGS
             and k not in objectives.LOOP_SETTINGS]
  unknown = sorted(set(own) - set(allowed))
  if unknown:
    raise ConfigError(f"config.{method}.{unknown[0]} is not a setting of "
                      f"{method}; valid: {', '.join(allowed) or 'none'}.")
  inner = config.inner
  # The inner maximizations search an l_inf ball of pixels in [0, 1]: a
  # radius above 1 is no constraint at all.
  check_number("inner.eps", inner.eps, lo=0)
  check_number("inner.eps", inner.eps, hi=1, expected=LINF_RADIUS)
  check_number("inner.warmup_epochs", inner.warmup_epochs, lo=0)
  check_choice("inner.unroll", inner.unroll, UNROLL)
  # The values of the method's settings are the objective's to check (one
  # rule each, in objectives); only the message's prefix is added here.
  used_inner = {k: inner[k] for k in objectives.INNER_SETTINGS
                if k in objectives.valid_settings(method)}
  for prefix, settings in ((f"config.{method}: ", own),
                           ("config.inner.", used_inner)):
    try:
      objectives.check_settings(method, settings)
    except ValueError as e:
      raise ConfigError(f"{prefix}{text.one_line(e)}") from None


def _check_data(config) -> None:
  d = config.data
  try:
    data.check_settings(d)
  except data.DataError as e:
    raise ConfigError(f"config.{text.one_line(e)}") from None
  check_choice("data.source", d.source, data.SOURCES)
  check_choice("data.augment", d.augment, data.AUGMENTATIONS)
  check_integer("data.image_size", d.image_size, lo=0)
  if data.DATASETS[d.name].image_shape is None and not d.image_size:
    raise ConfigError(f"config.data.image_size must be > 0 for {d.name} "
                      f"(its images vary in size).")
  if d.augment == "inception" and not d.image_size:
    raise ConfigError("config.data.augment 'inception' needs data.image_size > 0.")
  check_integer("data.batch_size", d.batch_size, lo=1)
  check_integer("data.validation_size", d.validation_size, lo=0)
  check_integer("data.train_size", d.train_size, lo=0)


def _check_optim(config) -> None:
  o = config.optim
  check_choice("optim.name", o.name, OPTIMIZERS)
  check_number("optim.lr", o.lr, lo=0, lo_open=True)
  check_number("optim.momentum", o.momentum, lo=0, hi=1, hi_open=True)
  check_number("optim.weight_decay", o.weight_decay, lo=0)
  check_number("optim.decay_factor", o.decay_factor, lo=0, lo_open=True)
  check_choice("optim.schedule", o.schedule, train_state.SCHEDULES)
  check_number("optim.peak_fraction", o.peak_fraction, lo=0, lo_open=True,
               hi=1, hi_open=True)
  epochs = tuple(o.decay_epochs)
  for e in epochs:
    check_number("optim.decay_epochs", e, lo=0)
  if any(b <= a for a, b in zip(epochs, epochs[1:])):
    raise ConfigError(f"config.optim.decay_epochs must increase, got {epochs}.")
  check_number("train.num_epochs", config.train.num_epochs, lo=0, lo_open=True)
  check_integer("train.max_steps", config.train.max_steps, lo=0)
  check_number("train.max_epochs", config.train.max_epochs, lo=0)


def _check_eval(config) -> None:
  e = config.eval
  check_integer("eval.every_epochs", e.every_epochs, lo=0)
  check_integer("eval.val_examples", e.val_examples, lo=0)
  check_integer("eval.test_examples", e.test_examples, lo=0)
  check_choice("eval.test_checkpoint", e.test_checkpoint, TEST_CHECKPOINTS)
  check_choice("eval.select_on", e.select_on, ("pgd", "clean"))
  check_integer("eval.patience", e.patience, lo=0)
  if e.patience and e.every_epochs != 1:
    raise ConfigError("config.eval.patience counts validated epochs; it needs "
                      "config.eval.every_epochs=1.")
  check_integer("eval.batch_size", e.batch_size, lo=1)
  check_choice("eval.norm", e.norm, EVAL_NORMS)
  check_number("eval.eps", e.eps, lo=0)
  if e.norm == "linf":  # an l2 radius may exceed 1
    check_number("eval.eps", e.eps, hi=1, expected=LINF_RADIUS)
  check_number("eval.step_size", e.step_size, lo=0, lo_open=True)
  check_integer("eval.num_steps", e.num_steps, lo=0)
  check_integer("eval.restarts", e.restarts, lo=1)
  check_choice("eval.unroll", e.unroll, UNROLL)
  if not isinstance(e.epoch_test_clean, bool):
    raise ConfigError(f"config.eval.epoch_test_clean must be True or False, "
                      f"got {e.epoch_test_clean!r}.")
  if e.test_checkpoint == "best" and not config.checkpoint.keep_best:
    raise ConfigError("config.eval.test_checkpoint 'best' needs "
                      "config.checkpoint.keep_best=True.")


def _check_numerics(config) -> None:
  """Compute dtype, convolution and rematerialization."""
  model = config.model
  check_choice("model.dtype", model.get("dtype", "float32"),
               models.layers.DTYPES)
  check_choice("model.conv", model.get("conv", "auto"),
               ("auto", *models.layers.CONVS))
  remat = config.train.get("remat", "none")
  check_choice("train.remat", remat, models.REMAT)
  if remat == "blocks" and model.name not in models.REMAT_MODELS:
    raise ConfigError(f"config.train.remat 'blocks' needs a model of residual "
                      f"blocks ({', '.join(models.REMAT_MODELS)}); "
                      f"{model.name!r} has none.")


def _check_rest(config) -> None:
  check_integer("seed", config.seed, lo=0)
  check_choice("model.name", config.model.name, models.names())
  _check_numerics(config)
  check_integer("checkpoint.every_steps", config.checkpoint.every_steps, lo=0)
  check_integer("checkpoint.keep", config.checkpoint.keep, lo=1)
  for epoch in tuple(config.checkpoint.keep_epochs):
    check_integer("checkpoint.keep_epochs", epoch, lo=1)
  check_integer("log.every_steps", config.log.every_steps, lo=1)
  check_integer("mesh.num_devices", config.mesh.num_devices, lo=0)
  dist = config.distributed
  check_integer("distributed.num_processes", dist.num_processes, lo=0)
  check_integer("distributed.process_id", dist.process_id, lo=-1)


def validate(config) -> None:
  """Checks every field that needs no devices. Call before creating anything.

  Args:
    config: a training ConfigDict (see configs/common.py).

  Raises:
    ConfigError: with a one-line message naming the field.
  """
  try:
    _check_sections(config)
    _check_method(config)
    _check_data(config)
    _check_optim(config)
    _check_eval(config)
    _check_rest(config)
  except ConfigError:
    raise
  except (AttributeError, KeyError, TypeError) as e:
    raise ConfigError(f"malformed config: {text.one_line(e)}") from None


def num_mesh_devices(config) -> int:
  """Devices the data axis spans: ``mesh.num_devices`` or all of them."""
  import jax  # pylint: disable=g-import-not-at-top
  return config.mesh.num_devices or jax.device_count()


def validate_runtime(config) -> None:
  """Checks what depends on the devices and on the model (after JAX starts).

  Batches must split evenly over the mesh and the hosts, and the model must
  accept the dataset's images and produce one logit per class (checked with
  ``jax.eval_shape``, so nothing is allocated).

  Args:
    config: a config that passed :func:`validate`.

  Raises:
    ConfigError: with a one-line message.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  available, hosts = jax.device_count(), jax.process_count()
  n = num_mesh_devices(config)
  if n > available:
    raise ConfigError(f"config.mesh.num_devices {n} exceeds the {available} "
                      f"available devices.")
  if hosts > 1 and n != available:
    raise ConfigError("config.mesh.num_devices must be 0 (all devices) when "
                      "running on several hosts.")
  for name, batch in (("data.batch_size", config.data.batch_size),
                      ("eval.batch_size", config.eval.batch_size)):
    if batch % n or batch % hosts:
      raise ConfigError(f"config.{name} {batch} is not divisible by the {n} "
                        f"devices of the mesh ({hosts} host(s)).")
  info = data.DATASETS[config.data.name]
  size = config.data.image_size
  shape = (size, size, info.image_shape[-1] if info.image_shape else 3) if size \
      else info.image_shape
  name, kwargs = config.model.name, models.kwargs_from_config(config.model)

  def logits_shape():
    net = models.create(name, jax.random.key(0), **kwargs)
    return net.apply(jnp.zeros((2, *shape)), bn_mode="batch")[0]

  try:
    out = jax.eval_shape(logits_shape)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"model {name!r} with settings {kwargs} does not build "
                      f"for {config.data.name} images {shape}: {text.one_line(e)}"
                      ) from None
  if out.shape != (2, info.num_classes):
    raise ConfigError(f"model {name!r} gives {out.shape[-1]} logits but "
                      f"{config.data.name} has {info.num_classes} classes; set "
                      f"config.model.num_classes.")
