"""Every attack, iterate by iterate, against an independent reference.

Each test runs one of ``lfr_jax.attacks`` and a reference from the same start
and the same random draws on a tiny float64 model (``tests/references``) and
compares every point at which the two query the model: the trajectory, not
only the result. The references:

- torchattacks 3.5.1 (FGSM, FFGSM, PGD, PGDL2, BIM, MIFGSM, APGD, APGDT),
  fed our random draws (``references.torch_peers.feeding``); these tests
  skip where torch or torchattacks is not installed;
- float64 NumPy restatements of the papers' and reference codes' update
  rules (``references.attacks_np``, ``references.auto_pgd_np``; each
  constant's source is cited there), where torchattacks has no such attack
  or setting. The NumPy APGD is itself checked against torchattacks.

The random draws are taken here with the keys the attacks document: a
restart's or target's key is ``jax.random.split(key, count)[i]``, a uniform
l_inf start ``uniform(key, shape, -1, 1)``, an l_2 start a normal direction
from ``split(key)[0]`` and a radius U^(1/d) from ``split(key)[1]``.
Tolerances are float64 round-off (1e-10 on [0, 1] pixels); sign steps make a
wrong step differ by a whole step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfr_jax import attacks
from lfr_jax.attacks import diagnostics
from references import attacks_np
from references import auto_pgd_np
from references import maths
from references import running
from references import tiny_models

N, SHAPE, CLASSES = 6, (4, 4, 1), 5
ATOL = 1e-10


class Peers:
  """torchattacks and the bridge to it, for the tests that compare with it
  (they skip where torch or torchattacks is not installed)."""

  def __init__(self, monkeypatch):
    pytest.importorskip("torch")
    self.torchattacks = pytest.importorskip("torchattacks")
    from references import torch_peers
    self.monkeypatch = monkeypatch
    self.bridge = torch_peers

  def run(self, name, model, x, y, draws=(), **settings):
    return self.bridge.run(getattr(self.torchattacks, name), model, x, y,
                           self.monkeypatch, draws=draws, **settings)


@pytest.fixture
def peers(monkeypatch):
  return Peers(monkeypatch)


@pytest.fixture(autouse=True)
def x64():
  """float64 for this test only. The process-wide flag, not the
  ``jax.enable_x64`` context: the recording callbacks run on another
  thread, which the thread-local context does not reach (they would get
  float32 copies)."""
  before = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", before)


def problem(model_name="softplus_mlp", seed=0, shape=SHAPE, correct=True,
            wrong=0):
  """A model, a batch with pixels on the box faces, and labels.

  With ``correct`` the labels are the model's predictions (torchattacks'
  APGD only attacks correctly classified points), except for the first
  ``wrong`` examples, labelled with their second most likely class;
  otherwise random.
  """
  model = tiny_models.make(model_name, seed, shape, CLASSES)
  rng = np.random.default_rng(seed + 100)
  x = np.clip(rng.uniform(-0.2, 1.2, (N,) + shape), 0.0, 1.0)
  if not correct:
    return model, x, rng.integers(0, CLASSES, N)
  order = np.argsort(-model.logits(x), axis=1)
  y = order[:, 0].copy()
  y[:wrong] = order[:wrong, 1]
  return model, x, y


def run_ours(attack, model, x, y, key=0, **settings):
  """The attack, jitted, on the model's jax forward: (output, queries)."""
  logits_fn, queries = running.recorded(model)
  out = running.compiled(attack, logits_fn, jnp.asarray(x), jnp.asarray(y),
                         jax.random.key(key), **settings)
  jax.effects_barrier()
  return jax.tree.map(np.asarray, out), queries


def assert_trajectory(ours, ref, atol=ATOL):
  """Same number of queries, and every query equal to float round-off."""
  assert len(ours) == len(ref), (len(ours), len(ref))
  for i, (a, b) in enumerate(zip(ours, ref)):
    np.testing.assert_allclose(a, b, rtol=0, atol=atol,
                               err_msg=f"query {i} of {len(ref)}")


def assert_dlr_well_posed(model, trajectory, y):
  """DLR is constant (1) where the label's logit is the third largest, so
  its gradient is round-off there and no two implementations agree on a
  step: the tests keep their DLR trajectories off that set."""
  for q in trajectory:
    rank = (model.logits(q) > model.logits(q)[np.arange(len(y)), y][:, None]
            ).sum(axis=1)
    assert np.all(rank != 2), "a DLR trajectory reached a flat point"


def moved(trajectory, x):
  """Asserts the trajectory leaves x (so that the test sees the steps)."""
  assert max(np.abs(q - x).max() for q in trajectory) > 0.05


# ------------------------------------------------------------ the draws --


def linf_draw(key, shape):
  return np.asarray(jax.random.uniform(key, shape, jnp.float64, -1.0, 1.0))


def l2_draws(key, shape):
  k_direction, k_radius = jax.random.split(key)
  return (np.asarray(jax.random.normal(k_direction, shape, jnp.float64)),
          np.asarray(jax.random.uniform(k_radius, shape[:1], jnp.float64)))


def keys(key, count):
  return list(jax.random.split(jax.random.key(key), count))


def start_draws(key, norm, shape):
  return linf_draw(key, shape) if norm == "linf" else l2_draws(key, shape)


# ------------------------------------------------------- FGSM and FFGSM --


def test_fgsm_matches_torchattacks(peers):
  """FGSM (Goodfellow et al. 2015): x + eps sign(grad CE), clipped, on the
  ReLU CNN (its convolution against torch's)."""
  model, x, y = problem("relu_cnn", shape=(5, 5, 2))
  eps = 0.2
  ours, queries = run_ours(attacks.fgsm, model, x, y, eps=eps)
  want, ref_queries = peers.run("FGSM", model, x, y, eps=eps)
  assert_trajectory(queries, ref_queries)
  np.testing.assert_allclose(ours, want, atol=ATOL)
  moved([ours], x)


def test_fgsm_random_start_matches_torchattacks_ffgsm(peers):
  """The uniform start, the step alpha and the clip to eps of FFGSM (Wong
  et al. 2020), with start_eps = eps as FFGSM has it."""
  model, x, y = problem()
  eps, step = 0.2, 0.25
  ours, queries = run_ours(attacks.fgsm, model, x, y, key=3, eps=eps,
                           random_start=True, step=step)
  noise = linf_draw(jax.random.key(3), x.shape)
  want, ref_queries = peers.run("FFGSM", model, x, y, draws=[eps * noise],
                                eps=eps, alpha=step)
  assert_trajectory(queries, ref_queries)
  np.testing.assert_allclose(ours, want, atol=ATOL)


@pytest.mark.parametrize("loss", ["ce", "margin", "dlr"])
def test_fgsm_start_radius_step_and_loss_match_reference(loss):
  """start_eps, step and eps all differ; every attack loss."""
  model, x, y = problem(correct=False)
  eps, start_eps, step = 0.2, 0.1, 0.15
  ours, queries = run_ours(attacks.fgsm, model, x, y, key=4, eps=eps,
                           random_start=True, start_eps=start_eps, step=step,
                           loss=loss)
  start = attacks_np.uniform_start(
      x, start_eps, "linf", linf_draw(jax.random.key(4), x.shape))
  assert_trajectory(queries, [start])
  np.testing.assert_allclose(
      ours, attacks_np.fgsm(model, loss, x, y, start, eps, step), atol=ATOL)


# --------------------------------------------------------- PGD and BIM --


def test_pgd_linf_matches_torchattacks(peers):
  """Madry et al.'s PGD: uniform start, sign steps, clip to ball and box."""
  model, x, y = problem("softplus_mlp", shape=(5, 5, 2))
  eps, step, k = 0.15, 0.04, 7
  ours, queries = run_ours(attacks.pgd, model, x, y, key=1, eps=eps,
                           step_size=step, num_steps=k)
  noise = linf_draw(jax.random.key(1), x.shape)
  want, ref_queries = peers.run("PGD", model, x, y, draws=[eps * noise],
                                eps=eps, alpha=step, steps=k,
                                random_start=True)
  assert_trajectory(queries, ref_queries)
  np.testing.assert_allclose(ours, want, atol=ATOL)
  moved(queries, x)


def test_pgd_l2_matches_torchattacks(peers):
  """PGDL2's normalized steps and radial projection. Its start radius is
  eps U; ours is eps U^(1/d), uniform in the ball's volume, so the peer is
  fed r = U^(1/d) for its U."""
  model, x, y = problem()
  eps, step, k = 0.8, 0.25, 7
  ours, queries = run_ours(attacks.pgd, model, x, y, key=2, eps=eps,
                           step_size=step, num_steps=k, norm="l2")
  noise, u = l2_draws(jax.random.key(2), x.shape)
  radius = (u ** (1.0 / np.prod(SHAPE))).reshape(N, 1, 1, 1)
  want, ref_queries = peers.run("PGDL2", model, x, y, draws=[noise, radius],
                                eps=eps, alpha=step, steps=k,
                                random_start=True)
  # PGDL2 guards its division with 1e-10 on the gradient of the mean CE;
  # ours with 1e-12 on the per-example gradient: differences near 1e-9.
  assert_trajectory(queries, ref_queries, atol=1e-7)
  np.testing.assert_allclose(ours, want, atol=1e-7)
  moved(queries, x)


@pytest.mark.parametrize("norm,loss", [("linf", "margin"), ("linf", "dlr"),
                                       ("l2", "ce"), ("l2", "margin"),
                                       ("l2", "dlr")])
def test_pgd_losses_and_norms_match_reference(norm, loss):
  model, x, y = problem(correct=loss == "dlr")
  eps, step, k = (0.15, 0.04, 6) if norm == "linf" else (0.8, 0.25, 6)
  if (norm, loss) == ("l2", "dlr"):
    eps, step = 0.4, 0.12  # keeps DLR off its plateau (see above)
  ours, queries = run_ours(attacks.pgd, model, x, y, key=5, eps=eps,
                           step_size=step, num_steps=k, norm=norm, loss=loss)
  start = attacks_np.uniform_start(x, eps, norm,
                                   start_draws(jax.random.key(5), norm,
                                               x.shape))
  iterates = attacks_np.pgd_iterates(
      model, attacks_np.logit_gradient(loss, y), x, start, eps, step, k, norm)
  if loss == "dlr":
    assert_dlr_well_posed(model, iterates, y)
  assert_trajectory(queries, iterates[:-1])
  np.testing.assert_allclose(ours, iterates[-1], atol=ATOL)
  moved(iterates, x)


def test_pgd_restarts_match_reference():
  """Four restarts from split keys; the per-example worst run is kept."""
  model, x, y = problem(correct=False, seed=1)
  norm, eps, step, k, restarts = "linf", 0.06, 0.02, 4, 4
  ours, queries = run_ours(attacks.pgd, model, x, y, key=6, eps=eps,
                           step_size=step, num_steps=k, norm=norm,
                           restarts=restarts)
  starts = [attacks_np.uniform_start(x, eps, norm,
                                     start_draws(kk, norm, x.shape))
            for kk in keys(6, restarts)]
  want, runs = attacks_np.pgd(model, "ce", x, y, starts, eps, step, k, norm)
  # Each run queries its k iterates, then its last point to score it.
  assert_trajectory(queries, [q for run in runs for q in run])
  np.testing.assert_allclose(ours, want, atol=ATOL)
  # The selection matters: the kept run differs between examples.
  chosen = [min(range(restarts), key=lambda r: np.abs(
      runs[r][-1][i] - want[i]).max()) for i in range(N)]
  assert len(set(chosen)) > 1, chosen


def test_bim_matches_torchattacks(peers):
  model, x, y = problem(seed=2)
  eps, step, k = 0.15, 0.04, 7
  ours, queries = run_ours(attacks.bim, model, x, y, eps=eps, step_size=step,
                           num_steps=k)
  want, ref_queries = peers.run("BIM", model, x, y, eps=eps, alpha=step,
                                steps=k)
  assert_trajectory(queries, ref_queries)
  np.testing.assert_allclose(ours, want, atol=ATOL)
  moved(queries, x)


def test_bim_l2_margin_matches_reference():
  model, x, y = problem(correct=False, seed=2)
  eps, step, k = 0.8, 0.25, 6
  ours, queries = run_ours(attacks.bim, model, x, y, eps=eps, step_size=step,
                           num_steps=k, norm="l2", loss="margin")
  iterates = attacks_np.pgd_iterates(
      model, attacks_np.logit_gradient("margin", y), x, x, eps, step, k, "l2")
  assert_trajectory(queries, iterates[:-1])
  np.testing.assert_allclose(ours, iterates[-1], atol=ATOL)


# ------------------------------------------------------------- MI-FGSM --


@pytest.mark.parametrize("decay", [None, 0.6])
def test_mifgsm_matches_torchattacks(decay, peers):
  """Dong et al.'s momentum, at both libraries' default decay (mu = 1, the
  paper's) and at 0.6. torchattacks divides the gradient by its mean |.|
  instead of its l1 norm: the momentum is scaled by d throughout, which
  leaves every sign, hence every iterate, unchanged."""
  model, x, y = problem(seed=3)
  eps, step, k = 0.2, 0.03, 9
  decay_setting = {} if decay is None else {"decay": decay}
  ours, queries = run_ours(attacks.mifgsm, model, x, y, eps=eps,
                           step_size=step, num_steps=k, **decay_setting)
  want, ref_queries = peers.run("MIFGSM", model, x, y, eps=eps, alpha=step,
                                steps=k, **decay_setting)
  assert_trajectory(queries, ref_queries)
  np.testing.assert_allclose(ours, want, atol=ATOL)
  moved(queries, x)


def test_mifgsm_random_start_and_loss_match_reference():
  model, x, y = problem(correct=False, seed=3)
  eps, step, k, decay = 0.2, 0.03, 9, 0.8
  ours, queries = run_ours(attacks.mifgsm, model, x, y, key=7, eps=eps,
                           step_size=step, num_steps=k, decay=decay,
                           random_start=True, loss="dlr")
  start = attacks_np.uniform_start(x, eps, "linf",
                                   linf_draw(jax.random.key(7), x.shape))
  iterates = attacks_np.mifgsm_iterates(model, "dlr", x, y, start, eps, step,
                                        k, decay)
  assert_trajectory(queries, iterates[:-1])
  np.testing.assert_allclose(ours, iterates[-1], atol=ATOL)


# --------------------------------------------------------- MultiTargeted --


def test_multi_targeted_matches_reference():
  """Targets in order of the clean logits (all other classes by default),
  one PGD run on z_t - z_y each, the run with the highest final margin
  kept."""
  model, x, y = problem(correct=False, seed=4)
  norm, eps, step, k = "linf", 0.1, 0.03, 5
  num_targets = CLASSES - 1
  ours, queries = run_ours(attacks.multi_targeted, model, x, y, key=8,
                           eps=eps, step_size=step, num_steps=k, norm=norm)
  starts = [attacks_np.uniform_start(x, eps, norm,
                                     start_draws(kk, norm, x.shape))
            for kk in keys(8, num_targets)]
  want, runs, _ = attacks_np.multi_targeted(model, x, y, starts, eps, step,
                                            k, norm)
  # The clean logits (to rank targets), then per target k iterates and the
  # last point (to score it).
  assert_trajectory(queries, [x] + [q for run in runs for q in run])
  np.testing.assert_allclose(ours, want, atol=ATOL)


# ------------------------------------------------------ APGD and APGD-T --

# (norm, loss, eps, seed, steps, key): radii at which checkpoints halve the
# step of some examples and not of others, and DLR stays off its plateau.
# With 40 steps the checkpoints are 0, 8, 15, 21, 26, 30, 33, 35, 37, 39;
# with 100, 0, 22, 41, 57, 70, 80, 87, 93, 99.
APGD_CASES = [("linf", "ce", 0.3, 5, 40, 9), ("linf", "dlr", 0.1, 7, 40, 9),
              ("l2", "ce", 0.6, 6, 100, 15), ("l2", "dlr", 0.2, 9, 100, 15)]


def apgd_draws(key, norm, shape, count):
  kind = linf_draw if norm == "linf" else (
      lambda k, s: np.asarray(jax.random.normal(k, s, jnp.float64)))
  return [kind(k, shape) for k in keys(key, count)]


def torch_apgd_draw(draw, norm):
  """torchattacks draws 2 rand - 1 (l_inf) or randn (l_2)."""
  return (draw + 1.0) / 2.0 if norm == "linf" else draw


def assert_halvings_differ(run):
  """Some checkpoint halves the step of some examples but not all."""
  final = run["steps"][-1]
  assert final.min() < final.max(), final
  assert any(0 < np.sum(b < a) < len(a)
             for a, b in zip(run["steps"][:-1], run["steps"][1:]))


def test_apgd_cases_exercise_both_conditions():
  """Over the cases below, each of Sec. 3.2's conditions alone decides some
  halving: Condition 1 (few increases) and Condition 2 (no halving and no
  improvement since the last checkpoint)."""
  alone = np.zeros(2, int)
  for norm, loss, eps, seed, steps, key in APGD_CASES:
    model, x, y = problem(seed=seed)
    (draw,) = apgd_draws(key, norm, x.shape, 1)
    run = auto_pgd_np.single_run(model, auto_pgd_np.untargeted_loss(loss, y),
                                 x, y, draw, eps, steps, norm)
    for first, second in run["decided_by"]:
      alone += [first.sum(), second.sum()]
  assert np.all(alone > 0), alone


@pytest.mark.parametrize("norm,loss,eps,seed,steps,key",
                         [APGD_CASES[0], APGD_CASES[3]])
def test_apgd_numpy_reference_matches_torchattacks(norm, loss, eps, seed,
                                                   steps, key, peers):
  """The NumPy APGD, with the first check as the reference code has it, is
  torchattacks' APGD query for query: the reference below is trustworthy."""
  model, x, y = problem(seed=seed)
  (draw,) = apgd_draws(key, norm, x.shape, 1)
  _, ref_queries = peers.run("APGD", model, x, y,
                             draws=[torch_apgd_draw(draw, norm)],
                             norm="L2" if norm == "l2" else "Linf", eps=eps,
                             steps=steps, loss=loss)
  run = auto_pgd_np.single_run(model, auto_pgd_np.untargeted_loss(loss, y),
                               x, y, draw, eps, steps, norm,
                               first_check="zero")
  if loss == "dlr":
    assert_dlr_well_posed(model, run["queries"], y)
  assert_trajectory(ref_queries, [x] + run["queries"])
  assert_halvings_differ(run)


@pytest.mark.parametrize("norm,loss,eps,seed,steps,key", APGD_CASES)
def test_apgd_matches_reference(norm, loss, eps, seed, steps, key):
  """The momentum, every halving and reset, and the returned point."""
  model, x, y = problem(seed=seed)
  ours, queries = run_ours(attacks.apgd, model, x, y, key=key, eps=eps,
                           num_steps=steps, norm=norm, loss=loss)
  draws = apgd_draws(key, norm, x.shape, 1)
  want, (run,) = auto_pgd_np.apgd(model, x, y, draws, eps, steps, norm, loss)
  if loss == "dlr":
    assert_dlr_well_posed(model, run["queries"], y)
  assert_trajectory(queries, [x] + run["queries"])
  np.testing.assert_allclose(ours, want, atol=ATOL)
  assert_halvings_differ(run)


def test_apgd_defaults_are_the_papers():
  """With only eps given: 100 steps (checkpoints 0, 22, 41, 57, 70, 80, 87,
  93, 99), rho 0.75, CE, l_inf and one run, as AutoAttack's APGD-CE."""
  model, x, y = problem(seed=10)
  ours, queries = run_ours(attacks.apgd, model, x, y, key=15, eps=0.3)
  draws = apgd_draws(15, "linf", x.shape, 1)
  want, (run,) = auto_pgd_np.apgd(model, x, y, draws, 0.3, 100, "linf")
  assert_trajectory(queries, [x] + run["queries"])
  np.testing.assert_allclose(ours, want, atol=ATOL)
  assert_halvings_differ(run)


def test_apgd_targeted_defaults_are_autoattacks():
  """With only eps given, on 10 classes: 100 steps per target, the 9 other
  classes in order (AutoAttack's n_target_classes = 9), rho 0.75."""
  model = tiny_models.make("softplus_mlp", 12, SHAPE, 10)
  rng = np.random.default_rng(112)
  x = np.clip(rng.uniform(-0.2, 1.2, (N,) + SHAPE), 0.0, 1.0)
  y = model.logits(x).argmax(axis=1)
  ours, queries = run_ours(attacks.apgd_targeted, model, x, y, key=16,
                           eps=0.05)
  draws = apgd_draws(16, "linf", x.shape, 9)
  want, runs, _ = auto_pgd_np.apgd_targeted(model, x, y, draws, 0.05, 100,
                                            "linf")
  assert_trajectory(queries, [x] + [q for r in runs for q in r["queries"]])
  np.testing.assert_allclose(ours, want, atol=ATOL)


def test_apgd_matches_torchattacks_directly(peers):
  """Ours against torchattacks itself (l_inf, CE), on points where the
  first step raises the loss, so that both ways of counting the first step
  at the first checkpoint agree."""
  model, x, y = problem(seed=6)
  eps = 0.1
  ours, queries = run_ours(attacks.apgd, model, x, y, key=10, eps=eps,
                           num_steps=40)
  (draw,) = apgd_draws(10, "linf", x.shape, 1)
  _, ref_queries = peers.run("APGD", model, x, y,
                             draws=[torch_apgd_draw(draw, "linf")],
                             norm="Linf", eps=eps, steps=40)
  ce = lambda q: maths.cross_entropy(model.logits(q), y)
  assert np.all(ce(queries[2]) > ce(queries[1])), "premise: first step rises"
  assert_trajectory(queries, ref_queries)


@pytest.mark.parametrize("norm,eps", [("l2", 0.5)])
def test_apgd_restarts_match_reference(norm, eps):
  """Three restarts; per example a fooled run beats a correct one, else the
  higher best loss; clean-misclassified points come back unchanged."""
  model, x, y = problem(seed=7, wrong=2)
  ours, queries = run_ours(attacks.apgd, model, x, y, key=11, eps=eps,
                           num_steps=12, norm=norm, restarts=3)
  draws = apgd_draws(11, norm, x.shape, 3)
  want, runs = auto_pgd_np.apgd(model, x, y, draws, eps, 12, norm)
  assert_trajectory(queries, [x] + [q for r in runs for q in r["queries"]])
  np.testing.assert_allclose(ours, want, atol=ATOL)
  clean_wrong = model.logits(x).argmax(1) != y
  assert clean_wrong.any() and not clean_wrong.all()


def test_apgd_targeted_numpy_reference_matches_torchattacks(peers):
  """The NumPy APGD-T is torchattacks' APGDT query for query (l_inf; its
  l_2 step uses the first example's step size for all, so not l_2). A
  radius too small to fool any point keeps torchattacks on the whole batch
  for every target."""
  model, x, y = problem(seed=10)
  eps, num_targets = 0.05, 3
  draws = apgd_draws(12, "linf", x.shape, num_targets)
  _, ref_queries = peers.run("APGDT", model, x, y,
                             draws=[torch_apgd_draw(d, "linf") for d in draws],
                             norm="Linf", eps=eps, steps=20,
                             n_classes=num_targets + 1)
  _, runs, _ = auto_pgd_np.apgd_targeted(model, x, y, draws, eps, 20, "linf",
                                         first_check="zero")
  assert not any(r["fooled"].any() for r in runs)
  # torchattacks queries the clean batch once, then again before each run.
  want = [x] + [q for r in runs for q in [x] + r["queries"]]
  assert_trajectory(ref_queries, want)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.6)])
def test_apgd_targeted_matches_reference(norm, eps):
  model, x, y = problem(seed=8, wrong=2)
  num_targets = 3
  ours, queries = run_ours(attacks.apgd_targeted, model, x, y, key=12,
                           eps=eps, num_steps=20, norm=norm,
                           num_targets=num_targets)
  draws = apgd_draws(12, norm, x.shape, num_targets)
  correct = model.logits(x).argmax(1) == y
  want, runs, _ = auto_pgd_np.apgd_targeted(model, x, y, draws, eps, 20, norm)
  # The reference's targets (2nd, 3rd, ... largest logit) are ours (the
  # largest non-true logits) on correctly classified points; elsewhere
  # compare only the returned point, which is x there.
  for i, run in enumerate(runs):
    mine = queries[1 + i * 21:1 + (i + 1) * 21]
    assert_trajectory([q[correct] for q in mine],
                      [q[correct] for q in run["queries"]])
  assert len(queries) == 1 + num_targets * 21
  np.testing.assert_allclose(ours, want, atol=ATOL)
  assert any(r["fooled"][correct].any() for r in runs)


# ---------------------------------------------------------------- DDN --
# DDN's reference is advertorch's DDNL2Attack (tests/test_ddn_reference.py
# compares with a PyTorch restatement of it); here the NumPy restatement
# adds our budget cap and the max_norm projection.


@pytest.mark.parametrize("levels,init_norm", [(None, 1.0), (256, 6.0)])
def test_ddn_matches_reference(levels, init_norm):
  """Without and with 256 grey levels; init_norm 6 exceeds the largest l2
  norm the box allows (at most 4 for 16 pixels), so the budget's cap
  binds."""
  model, x, y = problem(seed=9)
  ours, queries = run_ours(attacks.ddn, model, x, y, num_steps=12,
                           levels=levels, init_norm=init_norm, gamma=0.1)
  want, norms, ref_queries = attacks_np.ddn(model, x, y, 12, gamma=0.1,
                                            init_norm=init_norm, levels=levels)
  assert_trajectory(queries, ref_queries)
  np.testing.assert_allclose(ours[0], want, atol=ATOL)
  np.testing.assert_allclose(ours[1], norms, rtol=1e-12)
  assert np.isfinite(norms).any()


def test_ddn_zero_gradient_steps_along_the_noise():
  """Where the gradient vanishes (two black images under a ReLU CNN whose
  units are all off there), DDN steps along N(0, I) drawn from
  fold_in(key, i), unnormalized, as advertorch's randn does."""
  shape = (5, 5, 2)
  model = tiny_models.make("relu_cnn", 13, shape, CLASSES)
  model.bias = -np.abs(model.bias) - 0.3
  rng = np.random.default_rng(113)
  x = rng.uniform(0.3, 1.0, (N,) + shape)
  x[:2] = 0.0
  y = model.logits(x).argmax(axis=1)
  assert np.all(attacks_np.l2(model.vjp(x, np.ones((N, CLASSES)))[:2]) == 0)
  ours, queries = run_ours(attacks.ddn, model, x, y, key=17, num_steps=6)

  def noise(i):
    return np.asarray(jax.random.normal(
        jax.random.fold_in(jax.random.key(17), i), x.shape, jnp.float64))

  want, norms, ref_queries = attacks_np.ddn(model, x, y, 6, noise=noise)
  assert_trajectory(queries, ref_queries)
  np.testing.assert_allclose(ours[0], want, atol=ATOL)


def test_ddn_max_norm_matches_reference():
  model, x, y = problem(seed=9)
  ours, _ = run_ours(attacks.ddn, model, x, y, num_steps=12, max_norm=0.3)
  want, norms, _ = attacks_np.ddn(model, x, y, 12, max_norm=0.3)
  np.testing.assert_allclose(ours[0], want, atol=ATOL)
  np.testing.assert_allclose(ours[1], norms, rtol=1e-12)
  assert np.any(attacks_np.l2(want - x) > 0.3 - 1e-9)


# ------------------------------------------------------ the diagnostics --


def test_pgd_loss_trace_matches_reference():
  model, x, y = problem(correct=False, seed=10)
  eps, step, k = 0.15, 0.04, 6
  ours, queries = run_ours(attacks.pgd_loss_trace, model, x, y, key=13,
                           eps=eps, step_size=step, num_steps=k)
  start = attacks_np.uniform_start(x, eps, "linf",
                                   linf_draw(jax.random.key(13), x.shape))
  iterates, ce = attacks_np.loss_trace(model, x, y, start, eps, step, k)
  assert_trajectory(queries, iterates)
  np.testing.assert_allclose(ours["x_adv"], iterates[-1], atol=ATOL)
  np.testing.assert_allclose(ours["loss"], ce, rtol=1e-12)


def random_search_draws(key, n, shape, num_steps, p_init=0.8):
  """The draws of ``attacks.random_search`` for ``key``, all steps at once.

  Step i's window side comes from the reference's schedule; ``draw(i,
  side)`` checks that the reference asks for that side.
  """
  height, width, channels = shape
  key_init, key_loop = jax.random.split(jax.random.key(key))
  signs = jnp.array([-1.0, 1.0], jnp.float64)
  stripes = np.asarray(jax.random.choice(key_init, signs,
                                         (n, 1, width, channels)))
  sides = np.array([attacks_np.square_side(
      attacks_np.window_fraction(i, num_steps, p_init), height, width)
                    for i in range(num_steps)])

  def one_step(i, side):
    key_position, key_sign = jax.random.split(jax.random.fold_in(key_loop, i))
    key_top, key_left = jax.random.split(key_position)
    top = jax.random.randint(key_top, (n,), 0, height - side + 1)
    left = jax.random.randint(key_left, (n,), 0, width - side + 1)
    vertex = jax.random.choice(key_sign, signs, (n, 1, 1, channels))
    return top, left, vertex

  if num_steps:
    tops, lefts, vertices = (np.asarray(a) for a in jax.jit(jax.vmap(one_step))(
        jnp.arange(num_steps), jnp.asarray(sides)))

  def draw(i, side):
    assert side == sides[i]
    return tops[i], lefts[i], vertices[i]

  return stripes, draw


def test_random_search_matches_reference():
  """Stripes, the window schedule (rescaled to num_steps), the vertex
  windows and the acceptance rule, query by query, with the default
  p_init 0.8. On 6x4 images its first window, round(sqrt(0.8 * 24)) = 4
  pixels wide, is clipped to min(h, w) - 1 = 3; later ones shrink to 2
  and 1 (so the side is computed from h w, without channels)."""
  shape = (6, 4, 2)
  model, x, y = problem(correct=True, seed=11, shape=shape)
  eps, num_steps = 0.1, 40
  ours, queries = run_ours(attacks.random_search, model, x, y, key=14,
                           eps=eps, num_steps=num_steps)
  stripes, draw = random_search_draws(14, N, shape, num_steps)
  sides = []

  def recording_draw(i, side):
    sides.append(side)
    return draw(i, side)

  want, decision, ref_queries = attacks_np.random_search(
      model, x, y, eps, num_steps, stripes, recording_draw)
  assert_trajectory(queries, ref_queries)
  np.testing.assert_allclose(ours["x_adv"], want, atol=ATOL)
  np.testing.assert_allclose(ours["decision"], decision, rtol=1e-10,
                             atol=1e-12)
  assert set(sides) == {3, 2, 1}, sorted(set(sides))
  assert round(np.sqrt(0.8 * 24)) == 4 and sides[0] == 3
  assert 0 < np.mean(decision < 0) < 1


@pytest.mark.parametrize("num_steps", [10000, 999, 40])
def test_random_search_window_schedule_is_square_attacks(num_steps):
  """Square Attack's window fraction at every step: p_init halved after
  each of 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of its 10,000
  queries (auto-attack ``square.py``, ``p_selection``), rescaled to
  num_steps. A full budget puts each threshold at its own step, so every
  constant is pinned; every value from 0.8 down to 0.8 / 2^9 occurs."""
  fraction = jax.jit(functools.partial(
      diagnostics._window_fraction, num_steps=num_steps, p_init=0.8,
      dtype=jnp.float64))(jnp.arange(num_steps))
  want = [attacks_np.window_fraction(i, num_steps, 0.8)
          for i in range(num_steps)]
  np.testing.assert_allclose(fraction, want, rtol=1e-15)
  if num_steps == 10000:
    assert len(set(want)) == 10
    # The step after each threshold is the first with the next fraction.
    changes = [i for i in range(1, num_steps) if want[i] != want[i - 1]]
    assert changes == [11, 51, 201, 501, 1001, 2001, 4001, 6001, 8001]
