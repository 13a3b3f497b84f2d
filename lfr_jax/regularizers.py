"""Input-space loss-geometry regularizers as pure functions of a ``logits_fn``.

Each function takes ``logits_fn`` (any JAX callable mapping images (N,H,W,C) in
[0, 1] to logits (N, classes)) with the model parameters closed over, so that
``jax.grad`` with respect to those parameters differentiates through the
regularizer by double backprop. Values are per example; average them yourself.

- :func:`local_flatness` - LFR (Xu et al. 2020, Eq. 1/3/4): the worst gradient
  norm max_{x' in B_inf(x, eps)} ||d CE(x')/dx'||_1, found by sign-PGD. Its
  first-order variants replace each second derivative by a finite difference
  of first derivatives (Finlay & Oberman 2019): the inner ascent direction
  H s by (g(x' + h s) - g(x')) / h and the outer penalty ||g(x')||_1 = g . s
  by (CE(x' + h s) - CE(x')) / h, with s = sign(g(x')) held fixed; both tend
  to the exact ones as h -> 0 (:func:`dual_direction`,
  :func:`finite_difference_penalty`).
- :func:`input_gradient_norm` - the first-order penalty ||d CE(x)/dx|| (LFR at
  eps = 0, Theorem 2; Simon-Gabriel et al. 2019).
- :func:`local_linearity` - LLR (Qin et al. 2019, Eq. 6/8): gamma(eps, x) and
  |delta^T grad l(x)|, with delta found by Adam ascent (Appendix E).
- :func:`decision_jacobian_norm` - the norm of d(z_y - max_{i!=y} z_i)/dx
  (decision-surface paper, Eq. 11).
- :func:`trades_kl` - TRADES' KL(p(x) || p(x')) with its own inner max.

BatchNorm and dropout. The regularizers take every example's input gradient
in one backward pass of the summed per-example losses; that is each example's
own gradient only when examples do not interact inside ``logits_fn``. Dropout
is fine (train mode, for the returned value). BatchNorm must use *fixed*
statistics in every ``logits_fn`` passed here: the running averages (linen
``use_running_average=True``, i.e. eval mode) or the statistics of the clean
batch computed beforehand (what :mod:`lfr_jax.objectives` does with its
models' "frozen" BatchNorm). Statistics of the batch being differentiated
(linen train mode) couple the examples and silently mix their gradients.

Checks. Shapes, dtypes (floating images, integer labels), PRNG keys and
static settings raise one-sentence ``ValueError``s before tracing, also
under ``jax.jit``. Values (eps >= 0, pixels in [0, 1]) are checked when
concrete; a traced eps (e.g. a warm-up schedule) cannot be, so the
projections use max(eps, 0): a negative traced eps gives x itself, and no
point ever leaves the ball.

Example, differentiating LFR through your own Flax model::

    import jax, jax.numpy as jnp
    from flax import nnx
    from lfr_jax import regularizers

    class MLP(nnx.Module):
      def __init__(self, rngs):
        self.l1 = nnx.Linear(784, 64, rngs=rngs)
        self.l2 = nnx.Linear(64, 10, rngs=rngs)
      def __call__(self, x):
        return self.l2(jax.nn.softplus(self.l1(x.reshape(x.shape[0], -1))))

    graphdef, params = nnx.split(MLP(nnx.Rngs(0)))
    x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
    y = jnp.arange(8) % 10

    def penalty(params):
      logits_fn = lambda x: nnx.merge(graphdef, params)(x)
      value, x_worst = regularizers.local_flatness(
          logits_fn, x, y, jax.random.key(1), eps=0.3, step_size=0.01,
          num_steps=10)
      return value.mean()

    grads = jax.jit(jax.grad(penalty))(params)

Example, a linen model with BatchNorm (``batch_stats``)::

    import jax, jax.numpy as jnp
    import flax.linen as nn
    from lfr_jax import losses, regularizers

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x, train: bool):
        h = nn.Dense(32)(x.reshape(x.shape[0], -1))
        h = nn.BatchNorm(use_running_average=not train)(h)
        return nn.Dense(10)(jax.nn.softplus(h))

    net = Net()
    x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
    y = jnp.arange(8) % 10
    variables = net.init(jax.random.key(1), x, train=False)

    def loss(params, batch_stats, key):
      # Clean forward in train mode: batch statistics, running ones updated.
      logits, updates = net.apply(
          {"params": params, "batch_stats": batch_stats}, x, train=True,
          mutable=["batch_stats"])
      # The regularizer's forwards use fixed (running) statistics.
      logits_fn = lambda z: net.apply({"params": params, **updates}, z,
                                      train=False)
      flatness, _ = regularizers.local_flatness(
          logits_fn, x, y, key, eps=0.3, step_size=0.1, num_steps=3)
      ce = losses.cross_entropy(logits, y)
      return ce.mean() + 0.02 * flatness.mean(), updates["batch_stats"]

    grads, batch_stats = jax.jit(jax.grad(loss, has_aux=True))(
        variables["params"], variables["batch_stats"], jax.random.key(2))
    # With fixed statistics each example's value is its own:
    fixed = lambda z: net.apply(variables, z, train=False)
    alone = regularizers.input_gradient_norm(fixed, x[:1], y[:1])
    together = regularizers.input_gradient_norm(fixed, x, y)
    assert jnp.allclose(alone[0], together[0], rtol=1e-5)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from lfr_jax import _validate
from lfr_jax import losses
from lfr_jax import precision

LogitsFn = Callable[[jax.Array], jax.Array]
NORMS = ("l1", "l2", "linf")
# How LFR's inner ascent and outer penalty are computed: by double backprop
# ("exact") or by a finite difference of first-order gradients.
DERIVATIVES = ("exact", "finite_difference")
# Where the inner ascent starts: x + init_std N(0, 1) (the authors' code) or
# uniformly in the eps-ball (Wong et al. 2020's FGSM-RS start).
STARTS = ("gaussian", "uniform")

# Authors' LFR code: x' starts at x + 0.001 * N(0, 1), TRADES does the same.
INIT_STD = 1e-3


def per_example_norm(v: jax.Array, norm: str) -> jax.Array:
  """Norm of each example's slice of ``v`` (N, ...).

  Args:
    v: batch of arrays.
    norm: "l1", "l2" or "linf".

  Returns:
    (N,) norms. The l2 norm has a zero (not NaN) gradient at v = 0.
  """
  flat = v.reshape(v.shape[0], -1)
  if norm == "l1":
    return jnp.abs(flat).sum(axis=1)
  if norm == "l2":
    sq = jnp.square(flat).sum(axis=1)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)
  if norm == "linf":
    return jnp.abs(flat).max(axis=1)
  raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}.")


def dual_direction(g: jax.Array, norm: str) -> jax.Array:
  """The unit direction s along which g's directional derivative is ||g||.

  ``sum(g * s) == per_example_norm(g, norm)`` per example, with s in the unit
  ball of the dual norm: sign(g) for "l1", g / ||g||_2 for "l2" (0 at g = 0)
  and, for "linf", sign(g_i) at the first largest |g_i| and 0 elsewhere.

  Args:
    g: (N, ...) per-example gradients.
    norm: "l1", "l2" or "linf".

  Returns:
    s, shaped like ``g``.
  """
  if norm == "l1":
    return jnp.sign(g)
  flat = g.reshape(g.shape[0], -1)
  if norm == "l2":
    size = per_example_norm(g, "l2")[:, None]
    return (flat / jnp.where(size > 0, size, 1.0)).reshape(g.shape)
  if norm == "linf":
    hot = jax.nn.one_hot(jnp.argmax(jnp.abs(flat), axis=1), flat.shape[1],
                         dtype=g.dtype)
    return (hot * jnp.sign(flat)).reshape(g.shape)
  raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}.")


def project_linf(x_adv: jax.Array, x: jax.Array, eps) -> jax.Array:
  """Projects onto the l_inf ball B(x, eps) intersected with [0, 1].

  A negative (traced) ``eps`` counts as 0, so no point ever leaves the ball.
  """
  eps = jnp.maximum(eps, 0.0)  # a traced eps cannot be checked under jit
  return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)


@precision.float32_inputs
def input_gradients(logits_fn: LogitsFn, x: jax.Array, y: jax.Array
                    ) -> jax.Array:
  """Per-example gradients d CE_i / d x_i, as a batch shaped like ``x``.

  Summing per-example losses before ``jax.grad`` gives every example its own
  gradient in one backward pass, provided examples do not interact in
  ``logits_fn``: dropout may be on, BatchNorm must use fixed statistics
  (running or frozen, never the batch's own; see the module docstring).
  """
  return jax.grad(lambda z: losses.cross_entropy(logits_fn(z), y).sum())(x)


def _fori(num_steps: int, body, init, unroll: bool):
  """``lax.fori_loop`` that is really unrolled when asked, even for one step.

  jax turns ``unroll=True`` into an unroll factor equal to the trip count, so
  a one-step loop stays a ``while`` loop, which on CPU is the slow case the
  unrolling is meant to avoid; a single step is applied directly instead.
  """
  if unroll and num_steps == 1:
    return body(0, init)
  return lax.fori_loop(0, num_steps, body, init,
                       unroll=bool(unroll) and num_steps > 0)


def _check_common(x, y, norm):
  _validate.batch(x, y)
  _validate.choice("norm", norm, NORMS)


def _check_key(key, hint: str = ""):
  _validate.key("key", key, hint)


def _check_inner(eps, step_size, num_steps):
  _validate.nonneg("eps", eps)
  _validate.positive("step_size", step_size)
  _validate.steps("num_steps", num_steps)


@precision.float32_inputs
def input_gradient_norm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *,
                        norm: str = "l1") -> jax.Array:
  """First-order penalty ||d CE(x)/dx|| per example (LFR Theorem 2, eps = 0).

  Args:
    logits_fn: x -> logits, parameters closed over.
    x: (N, H, W, C) images in [0, 1].
    y: (N,) integer labels.
    norm: "l1" (LFR), "l2" or "linf".

  Returns:
    (N,) gradient norms, differentiable with respect to the closed-over
    parameters.
  """
  _check_common(x, y, norm)
  return per_example_norm(input_gradients(logits_fn, x, y), norm)


@precision.float32_inputs
def flatness_ascent_direction(logits_fn: LogitsFn, x_adv: jax.Array,
                              y: jax.Array, *, norm: str = "l1",
                              ascent: str = "exact", fd_step: float = 0.01
                              ) -> jax.Array:
  """The gradient of ||d CE(x')/dx'|| with respect to x', exact or by differences.

  "exact" differentiates the gradient norm (a Hessian-vector product H s,
  s = :func:`dual_direction` of the gradient g, by double backprop).
  "finite_difference" uses (g(x' + h s) - g(x')) / h, two first-order
  gradients, which tends to H s as h -> 0.

  Args:
    logits_fn: x -> logits.
    x_adv: (N, H, W, C) current iterates.
    y: (N,) labels.
    norm: the gradient norm to ascend.
    ascent: "exact" or "finite_difference".
    fd_step: the difference step h (input units along s).

  Returns:
    (N, H, W, C) ascent directions (scale matters only for the exact one).
  """
  if ascent == "exact":
    def total_norm(z):
      return per_example_norm(input_gradients(logits_fn, z, y), norm).sum()
    return jax.grad(total_norm)(x_adv)
  g = input_gradients(logits_fn, x_adv, y)
  s = lax.stop_gradient(dual_direction(g, norm))
  return (input_gradients(logits_fn, x_adv + fd_step * s, y) - g) / fd_step


def _flatness_start(key, x, eps, start, init_std):
  if start == "uniform":
    return project_linf(
        x + eps * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0), x, eps)
  return project_linf(x + init_std * jax.random.normal(key, x.shape, x.dtype),
                      x, eps)


@precision.float32_inputs
def flatness_ascent(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                    key: jax.Array, *, eps, step_size, num_steps: int,
                    norm: str = "l1", init_std: float = INIT_STD,
                    unroll: bool = True, ascent: str = "exact",
                    fd_step: float = 0.01, start: str = "gaussian"
                    ) -> jax.Array:
  """Sign-PGD on the input-gradient norm (LFR Eq. 3), the inner maximization.

  Each step ascends ``||d CE(x')/dx'||`` along the sign of
  :func:`flatness_ascent_direction` (for l1 a Hessian-vector product
  H sign(grad), exact or by finite differences), then projects onto
  B_inf(x, eps) intersected with [0, 1].

  Args:
    logits_fn: x -> logits. Pass one whose parameters are under
      ``stop_gradient`` when you differentiate the caller, so no tangents are
      carried through the loop.
    x: clean images in [0, 1].
    y: labels.
    key: PRNG key for the start.
    eps: l_inf radius (may be traced, e.g. during warm-up).
    step_size: sign-step length.
    num_steps: number of steps K (static).
    norm: the gradient norm to maximize.
    init_std: std of the Gaussian start, projected into the ball.
    unroll: unroll the loop. On CPU, the second-order convolutions of this
      loop run about 3x slower inside a rolled ``while`` loop (measured with
      SmallCNN, batch 128); unrolling costs compile time (seconds at K=40)
      and nothing at run time.
    ascent: "exact" (double backprop) or "finite_difference".
    fd_step: the finite-difference step h of the "finite_difference" ascent.
    start: "gaussian" (x + init_std N(0, 1), the authors' code) or
      "uniform" (uniform in the eps-ball).

  Returns:
    x_worst under ``stop_gradient``.
  """
  first = _flatness_start(key, x, eps, start, init_std)

  def step(_, x_adv):
    direction = flatness_ascent_direction(logits_fn, x_adv, y, norm=norm,
                                          ascent=ascent, fd_step=fd_step)
    return project_linf(x_adv + step_size * jnp.sign(direction), x, eps)

  x_worst = _fori(num_steps, step, first, unroll)
  return lax.stop_gradient(x_worst)


@precision.float32_inputs
def finite_difference_penalty(logits_fn: LogitsFn, x_point: jax.Array,
                              y: jax.Array, *, norm: str = "l1",
                              fd_step: float = 0.01,
                              direction_logits_fn: LogitsFn | None = None
                              ) -> jax.Array:
  """||d CE(x')/dx'|| by a first-order difference (Finlay & Oberman 2019).

  The norm is the directional derivative along s = :func:`dual_direction` of
  the gradient at x'; with s held fixed,
  (CE(x' + h s) - CE(x')) / h tends to it, and its parameter gradient to the
  double-backprop one, as h -> 0, using only first-order derivatives.

  Args:
    logits_fn: x -> logits whose parameters the caller differentiates.
    x_point: (N, H, W, C) the points x'.
    y: (N,) labels.
    norm: "l1", "l2" or "linf".
    fd_step: the step h along s.
    direction_logits_fn: logits function for the direction s (e.g. with
      parameters under stop_gradient); defaults to ``logits_fn``.

  Returns:
    (N,) values.
  """
  g = input_gradients(direction_logits_fn or logits_fn, x_point, y)
  s = lax.stop_gradient(dual_direction(g, norm))
  x_point = lax.stop_gradient(x_point)
  shifted = losses.cross_entropy(logits_fn(x_point + fd_step * s), y)
  return (shifted - losses.cross_entropy(logits_fn(x_point), y)) / fd_step


@precision.float32_inputs
def local_flatness(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                   key: jax.Array, *, eps, step_size, num_steps: int,
                   norm: str = "l1", init_std: float = INIT_STD,
                   unroll: bool = True,
                   inner_logits_fn: LogitsFn | None = None,
                   ascent: str = "exact", penalty: str = "exact",
                   fd_step: float = 0.01, start: str = "gaussian"
                   ) -> tuple[jax.Array, jax.Array]:
  """Local flatness gamma(x, eps) = max_{x' in B_inf(x, eps)} ||d CE(x')/dx'||.

  LFR (Xu et al. 2020) Eq. 1, solved by Eq. 3 (sign-PGD, the authors' code:
  start at x + 0.001 N(0, 1), project onto the ball and [0, 1] after each
  step). The returned value is Eq. 4's penalty, differentiable with respect to
  the parameters closed over in ``logits_fn`` (double backprop); ``x_worst`` is
  held under ``stop_gradient``. The LFR objective is
  ``CE(x).mean() + lam * value.mean()``.

  Args:
    logits_fn: x -> logits used for the returned value: dropout may be on
      (train mode), BatchNorm must use fixed statistics (running averages,
      or the clean batch's computed beforehand), as the per-example input
      gradients assume examples do not interact (see the module docstring).
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) integer labels.
    key: PRNG key.
    eps: l_inf radius, >= 0. At eps = 0 the value equals
      :func:`input_gradient_norm` (Theorem 2).
    step_size: sign-step length, > 0.
    num_steps: PGD steps K, a static int >= 0.
    norm: "l1" (the paper), "l2" or "linf".
    init_std: std of the Gaussian start.
    unroll: unroll the PGD loop (see :func:`flatness_ascent`).
    inner_logits_fn: logits function for the inner maximization (e.g. eval
      mode, parameters under stop_gradient); defaults to ``logits_fn``.
    ascent: the inner ascent's direction, "exact" (double backprop) or
      "finite_difference" (see :func:`flatness_ascent_direction`).
    penalty: the returned value, "exact" (double backprop through the
      gradient norm) or "finite_difference"
      (:func:`finite_difference_penalty`, first-order only).
    fd_step: the step h of the finite differences.
    start: the inner ascent's start, "gaussian" or "uniform".

  Returns:
    (value (N,), x_worst (N, H, W, C)).
  """
  _check_common(x, y, norm)
  _check_key(key)
  _check_inner(eps, step_size, num_steps)
  _validate.choice("ascent", ascent, DERIVATIVES)
  _validate.choice("penalty", penalty, DERIVATIVES)
  _validate.choice("start", start, STARTS)
  _validate.positive("fd_step", fd_step)
  inner = inner_logits_fn or logits_fn
  x_worst = flatness_ascent(inner, x, y, key, eps=eps, step_size=step_size,
                            num_steps=num_steps, norm=norm, init_std=init_std,
                            unroll=unroll, ascent=ascent, fd_step=fd_step,
                            start=start)
  if penalty == "finite_difference":
    value = finite_difference_penalty(logits_fn, x_worst, y, norm=norm,
                                      fd_step=fd_step,
                                      direction_logits_fn=inner)
  else:
    value = per_example_norm(input_gradients(logits_fn, x_worst, y), norm)
  return value, x_worst


@precision.float32_inputs
def linearity_gap(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                  delta: jax.Array, clean_loss: jax.Array,
                  clean_grad: jax.Array) -> tuple[jax.Array, jax.Array]:
  """g(delta; x) = |l(x+delta) - l(x) - delta^T grad l(x)| and delta^T grad l(x).

  Args:
    logits_fn: x -> logits.
    x: clean images.
    y: labels.
    delta: perturbations.
    clean_loss: (N,) l(x).
    clean_grad: per-example grad l(x), shaped like x.

  Returns:
    ((N,) gap, (N,) first-order term delta^T grad l(x)).
  """
  first_order = (delta * clean_grad).reshape(x.shape[0], -1).sum(axis=1)
  adv_loss = losses.cross_entropy(logits_fn(x + delta), y)
  return jnp.abs(adv_loss - clean_loss - first_order), first_order


@precision.float32_inputs
def linearity_ascent(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                     key: jax.Array, *, eps, step_size, num_steps: int,
                     unroll: bool = True) -> jax.Array:
  """Adam ascent on g(delta; x) over B_inf(eps) (LLR Appendix E/F.1).

  Args:
    logits_fn: x -> logits, parameters preferably under stop_gradient.
    x: clean images.
    y: labels.
    key: PRNG key for the uniform start in [-eps, eps].
    eps: l_inf radius.
    step_size: Adam learning rate (LLR: 0.1).
    num_steps: Adam steps (static).
    unroll: unroll the loop (CPU layout trap, see :func:`flatness_ascent`).

  Returns:
    delta under ``stop_gradient``, with x + delta in [0, 1].
  """
  clean_loss, vjp = jax.vjp(lambda z: losses.cross_entropy(logits_fn(z), y), x)
  (clean_grad,) = vjp(jnp.ones_like(clean_loss))
  clean_loss, clean_grad = lax.stop_gradient((clean_loss, clean_grad))

  def project(delta):
    return project_linf(x + delta, x, eps) - x

  delta0 = project(jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps)
  adam = optax.adam(step_size)

  def objective(delta):
    gap, _ = linearity_gap(logits_fn, x, y, delta, clean_loss, clean_grad)
    return -gap.sum()  # optax minimizes

  def step(_, carry):
    delta, opt_state = carry
    grad = jax.grad(objective)(delta)
    updates, opt_state = adam.update(grad, opt_state, delta)
    return project(delta + updates), opt_state

  delta, _ = _fori(num_steps, step, (delta0, adam.init(delta0)), unroll)
  return lax.stop_gradient(delta)


@precision.float32_inputs
def local_linearity(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                    key: jax.Array, *, eps, step_size=0.1, num_steps: int = 10,
                    unroll: bool = True,
                    inner_logits_fn: LogitsFn | None = None
                    ) -> tuple[jax.Array, jax.Array]:
  """LLR's local linearity gamma(eps, x) and |delta^T grad l(x)| (Qin et al. 2019).

  gamma(eps, x) = max_{delta in B(eps)} |l(x+delta) - l(x) - delta^T grad l(x)|
  (Eq. 6), the max found by Adam ascent (Appendix E). The LLR objective (Eq. 8)
  is ``w * l(x) + lam * gamma + mu * |delta^T grad l(x)|``.

  Args:
    logits_fn: x -> logits used for the returned values.
    x: (N, H, W, C) clean images in [0, 1].
    y: (N,) labels.
    key: PRNG key.
    eps: l_inf radius >= 0.
    step_size: Adam step size (LLR: 0.1).
    num_steps: Adam steps, static int >= 0.
    unroll: unroll the ascent loop.
    inner_logits_fn: logits function for the ascent; defaults to logits_fn.

  Returns:
    (gamma (N,), first-order term |delta^T grad l(x)| (N,)), both
    differentiable with respect to the closed-over parameters.
  """
  _check_common(x, y, "l1")
  _check_key(key)
  _check_inner(eps, step_size, num_steps)
  delta = linearity_ascent(inner_logits_fn or logits_fn, x, y, key, eps=eps,
                           step_size=step_size, num_steps=num_steps,
                           unroll=unroll)
  clean_loss, vjp = jax.vjp(lambda z: losses.cross_entropy(logits_fn(z), y), x)
  (clean_grad,) = vjp(jnp.ones_like(clean_loss))
  gap, first_order = linearity_gap(logits_fn, x, y, delta, clean_loss,
                                   clean_grad)
  return gap, jnp.abs(first_order)


@precision.float32_inputs
def decision_jacobian_norm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *,
                           norm: str = "l1", squared: bool = False,
                           pixel_mean: bool = False) -> jax.Array:
  """Norm of the decision value's input gradient (decision-surface paper, Eq. 11).

  The decision value is L(x) = z_y - max_{i != y} z_i; its gradient J is a
  (sub)gradient at ties of the max. Eq. 11 leaves the normalization of its
  ``L_norm`` open, and the weight it calls for depends on it: scaling the
  logits by s scales ||J|| by s, so an unsquared norm of weight c makes the
  constant classifier optimal unless the mean logit gap exceeds c ||J||,
  whereas a squared norm has zero slope at s = 0 and never does.

  Args:
    logits_fn: x -> logits.
    x: (N, H, W, C) images in [0, 1].
    y: (N,) labels.
    norm: "l1", "l2" or "linf".
    squared: return ||J||^2 (double backpropagation's squared penalty,
      Drucker & Le Cun 1991) instead of ||J||.
    pixel_mean: divide by the number of input entries d = H * W * C, so that
      "l1" is the mean |J| and squared "l2" the mean J^2 over pixels (what
      ``.mean()`` over a gradient tensor gives in PyTorch); scales a weight
      by 1/d.

  Returns:
    (N,) values, differentiable with respect to the closed-over parameters.
  """
  _check_common(x, y, norm)
  jac = jax.grad(lambda z: losses.decision_value(logits_fn(z), y).sum())(x)
  value = per_example_norm(jac, norm)
  if squared:
    value = jnp.square(value)
  if pixel_mean:
    value = value / (jac.size // jac.shape[0])
  return value


@precision.float32_inputs
def trades_ascent(logits_fn: LogitsFn, x: jax.Array, key: jax.Array, *, eps,
                  step_size, num_steps: int, init_std: float = INIT_STD,
                  unroll: bool = True) -> jax.Array:
  """TRADES' inner max: sign-PGD on KL(p(x) || p(x')) from x + 0.001 N(0, 1).

  Args:
    logits_fn: x -> logits, parameters preferably under stop_gradient.
    x: clean images.
    key: PRNG key.
    eps: l_inf radius.
    step_size: sign-step length.
    num_steps: steps (static).
    init_std: std of the Gaussian start.
    unroll: unroll the loop.

  Returns:
    x_adv under ``stop_gradient``.
  """
  clean_logits = lax.stop_gradient(logits_fn(x))
  start = project_linf(x + init_std * jax.random.normal(key, x.shape, x.dtype),
                       x, eps)

  def total_kl(z):
    return losses.kl_divergence(clean_logits, logits_fn(z)).sum()

  def step(_, x_adv):
    return project_linf(x_adv + step_size * jnp.sign(jax.grad(total_kl)(x_adv)),
                        x, eps)

  x_adv = _fori(num_steps, step, start, unroll)
  return lax.stop_gradient(x_adv)


@precision.float32_inputs
def trades_kl(logits_fn: LogitsFn, x: jax.Array, key: jax.Array, *, eps,
              step_size, num_steps: int, init_std: float = INIT_STD,
              unroll: bool = True, inner_logits_fn: LogitsFn | None = None
              ) -> tuple[jax.Array, jax.Array]:
  """TRADES' robust term KL(p(x) || p(x_adv)) per example (Zhang et al. 2019).

  Args:
    logits_fn: x -> logits for the returned value; gradients flow through
      both p(x) and p(x_adv), as in the reference implementation.
    x: (N, H, W, C) clean images in [0, 1].
    key: PRNG key.
    eps: l_inf radius >= 0.
    step_size: sign-step length > 0.
    num_steps: steps, static int >= 0.
    init_std: std of the Gaussian start.
    unroll: unroll the loop.
    inner_logits_fn: logits function for the inner max; defaults to logits_fn.

  Returns:
    (kl (N,), x_adv).
  """
  _validate.batch(x)
  # The common slip: trades_kl(logits_fn, x, y, key) puts the labels here.
  _check_key(key, " (trades_kl takes no labels: trades_kl(logits_fn, x, key, "
             "eps=..., step_size=..., num_steps=...))")
  _check_inner(eps, step_size, num_steps)
  x_adv = trades_ascent(inner_logits_fn or logits_fn, x, key, eps=eps,
                        step_size=step_size, num_steps=num_steps,
                        init_std=init_std, unroll=unroll)
  return losses.kl_divergence(logits_fn(x), logits_fn(x_adv)), x_adv


__all__ = [
    "NORMS", "DERIVATIVES", "STARTS", "per_example_norm", "dual_direction",
    "project_linf", "input_gradients", "input_gradient_norm",
    "flatness_ascent_direction", "flatness_ascent",
    "finite_difference_penalty", "local_flatness",
    "linearity_gap", "linearity_ascent", "local_linearity",
    "decision_jacobian_norm", "trades_ascent", "trades_kl",
]
