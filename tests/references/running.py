"""Running the code under test on a reference model: recorded and compiled.

:func:`recorded` wraps a :mod:`tiny_models` model's ``jax.numpy`` forward so
that every batch it is called with is appended, as a NumPy array, to a list:
the points at which the code under test queries the model, in order.
:func:`compiled` jits a function at XLA's lowest backend optimization level.
On these tiny float64 programs a test pays for compiling, not for running
(a run takes milliseconds; compiling an attack's loop at the default level,
seconds), and the level changes no result beyond round-off.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def recorded(model):
  """(logits_fn, queries): the model's jax forward, recording its inputs.

  The callbacks are ordered, so ``queries`` follows the program's order;
  call ``jax.effects_barrier()`` before reading it.
  """
  queries = []
  forward = model.jax_logits()

  def logits_fn(x):
    jax.debug.callback(lambda v: queries.append(np.asarray(v)), x,
                       ordered=True)
    return forward(x)

  return logits_fn, queries


def compiled(fn, logits_fn, *arrays, **settings):
  """``fn(logits_fn, *arrays, **settings)`` under one ``jax.jit`` at the
  lowest optimization level, ``logits_fn`` and the settings (step counts,
  norms, radii) closed over as constants."""
  return jax.jit(functools.partial(fn, logits_fn, **settings),
                 compiler_options=FAST_COMPILE)(*arrays)
