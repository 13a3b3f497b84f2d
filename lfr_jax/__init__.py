"""lfr_jax: input-space loss-geometry regularizers and attacks in JAX.

Local Flatness Regularization (LFR) and its relatives (gradient-norm, local
linearity, TRADES, decision-Jacobian), the attacks that judge them, models and
a sharded training loop.

Example::

    import jax, jax.numpy as jnp
    import lfr_jax
    from lfr_jax import models, regularizers

    model = models.create("small_cnn", jax.random.key(0))
    logits_fn = model.logits_fn()          # x (N,28,28,1) in [0,1] -> logits
    x = jnp.zeros((8, 28, 28, 1)); y = jnp.zeros((8,), jnp.int32)
    value, x_worst = regularizers.local_flatness(
        logits_fn, x, y, jax.random.key(1), eps=0.3, step_size=0.01,
        num_steps=10)
"""

from lfr_jax import _xla_flags

_xla_flags.add_fast_cpu_flags()
_xla_flags.skip_absent_tpu()

__version__ = "0.1.0"
