"""Mutation check of the core maths: is every one-line bug caught by a test?

Each entry of :data:`MUTANTS` names a file, an exact text in it, its one-line
replacement and the test node ids that should catch it. The script copies the
repository to a temporary folder, runs those tests once unmutated (they must
pass), then applies each mutant alone to the copy, runs its tests with
``pytest -x`` and prints a table of which mutant was caught and by which
test. The working tree is never modified.

A mutant whose original text is no longer found exactly once (the code moved
or changed) is reported "stale"; update its entry. Any outcome other than
"caught" (or "equivalent", for the second set) makes the script exit with
status 1, and fails the slow tests of ``tests/test_mutants.py``.

The second set, :data:`REFERENCE_MUTANTS`, changes every numeric constant
and normalization of the attacks' and regularizers' update rules, one at a
time; it was written after the reference tests and not tuned to them. Each
of its mutants runs the default-suite test files that target its module
(:data:`SUITES`), after a first try of the tests most likely to catch it.
A mutant that cannot change a computed value says why in its
``equivalent`` field and is reported "equivalent" when it survives.
``--old_suite`` runs the second set against the old suite instead: the same
modules' test files as they were at :data:`OLD_SUITE_COMMIT`, before the
reference tests; ``--record`` saves the outcome, and the default run prints
the old suite's recorded rate beside the current one.

All test runs of one check share XLA's persistent compilation cache in the
copy, so a run compiles only what its mutant changed. The unmutated
baseline records every test's time; the suite files then run each file's
tests fastest first (``tools/mutants_plugin.py``), so that ``-x`` stops at
the cheapest test that fails, and the baseline is run in that order too.

Usage::

    python tools/mutants.py                       # both sets
    python tools/mutants.py --set first           # the first set only
    python tools/mutants.py --only apgd_no_halving,lfr_eps_half
    python tools/mutants.py --list                # the table, nothing run
    python tools/mutants.py --old_suite --record old_suite.json
    python tools/mutants.py --set reference --sample 20 --seed 1  # 20 drawn
    python tools/mutants.py --report docs/results/mutants/default_suite.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from tools import mutants_plugin  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Mutant:
  """One one-line bug: ``original`` (exact, found once) -> ``replacement``.

  ``tests`` are run first; a mutant of the second set then runs ``suite``,
  the default-suite test files of its module, if those did not catch it.
  ``equivalent`` explains why a mutant cannot change a computed value.
  """
  name: str
  path: str
  original: str
  replacement: str
  tests: tuple[str, ...]
  what: str
  suite: tuple[str, ...] = ()
  equivalent: str = ""


_OBJ = "tests/test_objectives.py::"
_VALUE = _OBJ + "test_objective_value_matches_float64_reference"
_REG = "tests/test_regularizers.py::"
_ATT = "tests/test_attacks.py::"
_EVAL = "tests/test_evaluation.py::"
_JIT = "tests/test_jit_checks.py::"
_LFR_BINDING = (_REG + "test_lfr_inner_max_at_a_binding_radius_matches_"
                "reference_sign_pgd")
_THRESHOLDS = _EVAL + "test_masking_check_thresholds"

# ------------------------------------------------------------------------
# The table. Keep each original to the one line (or distinctive part of it)
# that the bug changes, and its tests to the few that target it.
MUTANTS: tuple[Mutant, ...] = (
    # The bugs that once passed the suite.
    Mutant("lfr_eps_half", "lfr_jax/regularizers.py",
           "return project_linf(x_adv + step_size * jnp.sign(direction), x, eps)",
           "return project_linf(x_adv + step_size * jnp.sign(direction), x, "
           "eps / 2)",
           (_LFR_BINDING, _VALUE + "[lfr]"),
           "LFR's inner max projects onto eps/2"),
    Mutant("lfr_penalty_at_clean_x", "lfr_jax/regularizers.py",
           "value = per_example_norm(input_gradients(logits_fn, x_worst, y), "
           "norm)",
           "value = per_example_norm(input_gradients(logits_fn, x, y), norm)",
           (_OBJ + "test_lfr_penalty_is_taken_at_the_worst_point",
            _VALUE + "[lfr]"),
           "LFR's penalty taken at the clean x, not x_worst"),
    Mutant("apgd_no_halving", "lfr_jax/attacks/auto_pgd.py",
           "step=jnp.where(halve, 0.5 * state.step, state.step),",
           "step=state.step,",
           (_ATT + "test_apgd_step_halving_reaches_an_interior_optimum",),
           "APGD without its step-size halving"),
    Mutant("inner_dropout_on", "lfr_jax/objectives.py",
           'self.inner = frozen.logits_fn(train=False, bn_mode="frozen")',
           'self.inner = frozen.logits_fn(train=True, bn_mode="frozen", '
           "dropout_key=self.k_outer)",
           (_VALUE + "[pgd_at]", _VALUE + "[lfr]"),
           "dropout left on in the inner maximization"),
    Mutant("outer_bn_batch", "lfr_jax/objectives.py",
           'self.outer = updated.logits_fn(train=True, bn_mode="frozen",',
           'self.outer = updated.logits_fn(train=True, bn_mode="batch",',
           (_VALUE + "[gradient_norm]", _VALUE + "[lfr]",
            _OBJ + "test_batchnorm_inside_objectives_on_a_tiny_wide_resnet"),
           "BatchNorm in batch mode at perturbed points (outer terms)"),
    Mutant("lfr_ascent_sign", "lfr_jax/regularizers.py",
           "return project_linf(x_adv + step_size * jnp.sign(direction), x, eps)",
           "return project_linf(x_adv - step_size * jnp.sign(direction), x, eps)",
           (_LFR_BINDING,),
           "LFR's ascent descends"),
    # Projections.
    Mutant("lfr_projection_box_only", "lfr_jax/regularizers.py",
           "return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)",
           "return jnp.clip(x_adv, 0.0, 1.0)",
           (_LFR_BINDING,),
           "regularizers' projection forgets the eps-ball"),
    Mutant("attack_projection_no_box", "lfr_jax/attacks/common.py",
           "return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)",
           "return jnp.clip(x_adv, x - eps, x + eps)",
           (_ATT + "test_pgd_linf_reaches_closed_form_optimum[ce]",),
           "attacks' l_inf projection forgets [0, 1]"),
    # A traced negative eps must not reach the projections (checked only
    # when concrete).
    Mutant("attack_negative_eps_unclamped", "lfr_jax/attacks/common.py",
           "eps = nonneg_radius(eps)  # the ball of a negative radius is its "
           "centre",
           "eps = eps",
           (_JIT + "test_a_traced_negative_eps_never_leaves_the_ball["
            "pgd_no_random_start]",),
           "attacks' projection takes a traced negative eps as it is"),
    Mutant("lfr_negative_eps_unclamped", "lfr_jax/regularizers.py",
           "eps = jnp.maximum(eps, 0.0)  # a traced eps cannot be checked "
           "under jit",
           "eps = eps",
           (_JIT + "test_a_traced_negative_eps_never_leaves_the_ball["
            "local_flatness]",),
           "regularizers' projection takes a traced negative eps as it is"),
    # Norms.
    Mutant("l1_norm_squared", "lfr_jax/regularizers.py",
           "return jnp.abs(flat).sum(axis=1)",
           "return jnp.square(flat).sum(axis=1)",
           (_REG + "test_per_example_norms", _VALUE + "[gradient_norm]"),
           "the l1 penalty norm squares instead"),
    Mutant("attack_l2_norm_is_l1", "lfr_jax/attacks/common.py",
           "return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), "
           "axis=1))",
           "return jnp.sum(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)",
           (_ATT + "test_pgd_l2_reaches_closed_form_optimum",),
           "attacks' l2 norm is an l1 norm"),
    # Reductions.
    Mutant("input_gradient_of_mean", "lfr_jax/regularizers.py",
           "losses.cross_entropy(logits_fn(z), y).sum())(x)",
           "losses.cross_entropy(logits_fn(z), y).mean())(x)",
           (_VALUE + "[gradient_norm]",),
           "per-example input gradients of the mean CE (scaled by 1/N)"),
    Mutant("penalty_summed", "lfr_jax/objectives.py",
           "loss = nominal_weight * ce + weight * penalty.mean() + extra",
           "loss = nominal_weight * ce + weight * penalty.sum() + extra",
           (_VALUE + "[gradient_norm]",),
           "penalty summed over the batch, not averaged"),
    Mutant("pixel_mean_over_batch", "lfr_jax/regularizers.py",
           "value = value / (jac.size // jac.shape[0])",
           "value = value / jac.size",
           (_VALUE + "[decision_jacobian-squared-pixel_mean]",),
           "decision Jacobian's pixel mean also divides by the batch size"),
    Mutant("llr_first_order_summed", "lfr_jax/objectives.py",
           "extra=mu * first_order.mean())",
           "extra=mu * first_order.sum())",
           (_VALUE + "[llr]",),
           "LLR's mu term summed over the batch"),
    # Keys.
    Mutant("outer_reuses_clean_dropout_key", "lfr_jax/objectives.py",
           "dropout_key=self.k_outer)",
           "dropout_key=k_clean)",
           (_VALUE + "[gradient_norm]",),
           "outer terms reuse the clean forward's dropout mask"),
    Mutant("pgd_restarts_ignore_key", "lfr_jax/attacks/gradient_sign.py",
           "      common.no_worst_yet(x), jax.random.split(key, restarts), "
           "restarts)",
           "      common.no_worst_yet(x), jax.random.split(jax.random.key(0), "
           "restarts), restarts)",
           (_ATT + "test_pgd_restarts_keep_per_example_worst",),
           "PGD restarts draw their starts from a fixed key"),
    # Losses and inner points.
    Mutant("cross_entropy_max", "lfr_jax/losses.py",
           "return jax.nn.logsumexp(logits, axis=1) - _label_logit(logits, y)",
           "return jnp.max(logits, axis=1) - _label_logit(logits, y)",
           (_VALUE + "[standard]",),
           "cross-entropy with max instead of logsumexp"),
    Mutant("pgd_at_outer_at_clean_x", "lfr_jax/objectives.py",
           "adv_ce = losses.cross_entropy(views.outer(x_adv), y).mean()",
           "adv_ce = losses.cross_entropy(views.outer(x), y).mean()",
           (_VALUE + "[pgd_at]",),
           "PGD-AT trains on the clean x"),
    Mutant("trades_kl_reversed", "lfr_jax/regularizers.py",
           "return losses.kl_divergence(logits_fn(x), logits_fn(x_adv)), x_adv",
           "return losses.kl_divergence(logits_fn(x_adv), logits_fn(x)), x_adv",
           (_REG + "test_trades_inner_max_ascends_kl_from_clean_to_"
            "adversarial", _VALUE + "[trades]"),
           "TRADES' KL(p(x_adv) || p(x)) instead of KL(p(x) || p(x_adv))"),
    Mutant("trades_inner_kl_reversed", "lfr_jax/regularizers.py",
           "return losses.kl_divergence(clean_logits, logits_fn(z)).sum()",
           "return losses.kl_divergence(logits_fn(z), clean_logits).sum()",
           (_REG + "test_trades_inner_max_ascends_kl_from_clean_to_"
            "adversarial", _VALUE + "[trades]"),
           "TRADES' inner max ascends the reversed KL"),
    Mutant("llr_gap_sign", "lfr_jax/regularizers.py",
           "return jnp.abs(adv_loss - clean_loss - first_order), first_order",
           "return jnp.abs(adv_loss - clean_loss + first_order), first_order",
           (_VALUE + "[llr]",),
           "LLR's linearity gap adds the first-order term"),
    Mutant("inner_bn_batch", "lfr_jax/objectives.py",
           'self.inner = frozen.logits_fn(train=False, bn_mode="frozen")',
           'self.inner = frozen.logits_fn(train=False, bn_mode="batch")',
           (_VALUE + "[lfr]", _VALUE + "[trades]"),
           "BatchNorm in batch mode at perturbed points (inner max)"),
    Mutant("bn_variance_uncentred", "lfr_jax/models/layers.py",
           "var = jnp.square(x - mean).mean(axes)",
           "var = jnp.square(x).mean(axes)",
           ("tests/test_models.py::test_batchnorm_layer_statistics_by_hand",),
           "BatchNorm's variance without centring"),
    # DDN's budget.
    Mutant("ddn_budget_reversed", "lfr_jax/attacks/minimal_norm.py",
           "jnp.where(is_adv, 1.0 - gamma, 1.0 + gamma)",
           "jnp.where(is_adv, 1.0 + gamma, 1.0 - gamma)",
           (_ATT + "test_ddn_finds_the_closed_form_minimal_l2_distance",),
           "DDN grows its budget when adversarial"),
    # The masking checks' thresholds.
    Mutant("check_iterative_tolerance", "lfr_jax/evaluation/masking.py",
           "ok = multi[i_name] <= single[s_name] + tol",
           "ok = multi[i_name] <= single[s_name] + 2 * tol",
           (_THRESHOLDS,),
           "iterative-vs-single-step check with twice the noise band"),
    Mutant("check_more_steps_tolerance", "lfr_jax/evaluation/masking.py",
           "if more > base + tol:",
           "if more > base + 2 * tol:",
           (_THRESHOLDS,),
           "more-steps check with twice the noise band"),
    Mutant("check_gradient_free_tolerance", "lfr_jax/evaluation/masking.py",
           "ok = acc_rs >= acc_wb - tol",
           "ok = acc_rs >= acc_wb - 2 * tol",
           (_THRESHOLDS,),
           "gradient-free check with twice the noise band"),
    Mutant("check_loss_drops", "lfr_jax/evaluation/masking.py",
           "drops <= 0.2 * steps",
           "drops <= 0.5 * steps",
           (_THRESHOLDS,),
           "loss-rise check allows drops in half the steps"),
    Mutant("noise_tolerance_three_sigma", "lfr_jax/evaluation/masking.py",
           "return 1.0 / n + 2.0 * math.sqrt(p * (1.0 - p) / n)",
           "return 1.0 / n + 3.0 * math.sqrt(p * (1.0 - p) / n)",
           (_EVAL + "test_noise_tolerance_and_ddn_summary", _THRESHOLDS),
           "noise band of three standard errors"),
)


# ------------------------------------------------------------------------
# The second set: every numeric constant and normalization of the attacks'
# and regularizers' update rules, one at a time, written after the reference
# tests (tests/test_attack_trajectories.py, tests/test_regularizer_references.py)
# and not tuned to them. Each runs its module's default-suite test files
# (``suite``, new reference tests first); ``tests`` only orders the search.
# The old suite is the same modules' test files at OLD_SUITE_COMMIT: main
# when the reference tests were merged into it, i.e. the tests before them.

OLD_SUITE_COMMIT = "2b436d110888a8ba0e9a3f60f4e9a8970f6e9407"
# The old suite's outcome on the second set, written by
# ``python tools/mutants.py --old_suite --record
# docs/results/mutants/old_suite.json``.
OLD_SUITE_RECORD = os.path.join(REPO, "docs", "results", "mutants",
                                "old_suite.json")
_TRAJ = "tests/test_attack_trajectories.py"
_REFS = "tests/test_regularizer_references.py"
_VARIANTS = "tests/test_lfr_variants.py"
# Module prefix -> (test files of the current default suite, new first;
# the old suite's files).
SUITES = {
    "lfr_jax/attacks/": (
        (_TRAJ, "tests/test_ddn_reference.py", "tests/test_attacks.py"),
        ("tests/test_ddn_reference.py", "tests/test_attacks.py")),
    "lfr_jax/losses.py": (
        (_TRAJ, _REFS, "tests/test_losses.py", "tests/test_attacks.py",
         "tests/test_regularizers.py", "tests/test_objectives.py"),
        ("tests/test_losses.py", "tests/test_attacks.py",
         "tests/test_regularizers.py", "tests/test_objectives.py")),
    "lfr_jax/regularizers.py": (
        (_REFS, _VARIANTS, "tests/test_regularizers.py",
         "tests/test_objectives.py"),
        (_VARIANTS, "tests/test_regularizers.py", "tests/test_objectives.py")),
    "lfr_jax/objectives.py": (
        (_REFS, _VARIANTS, "tests/test_objectives.py"),
        (_VARIANTS, "tests/test_objectives.py")),
}


def suite_files(path: str, old: bool = False) -> tuple[str, ...]:
  """The test files that cover ``path``: the current default suite's, or
  (``old``) the old suite's."""
  for prefix, (new_files, old_files) in SUITES.items():
    if path.startswith(prefix):
      return old_files if old else new_files
  raise KeyError(path)


def _ref(name, path, original, replacement, what, hints=(), equivalent=""):
  hints = tuple(h if "::" in h or h.startswith("tests/") else
                (_REFS if path.startswith(("lfr_jax/regularizers",
                                           "lfr_jax/objectives"))
                 else _TRAJ) + "::" + h for h in hints)
  return Mutant(name, path, original, replacement, hints, what,
                suite=suite_files(path), equivalent=equivalent)


_COMMON = "lfr_jax/attacks/common.py"
_SIGN = "lfr_jax/attacks/gradient_sign.py"
_APGD = "lfr_jax/attacks/auto_pgd.py"
_DDN = "lfr_jax/attacks/minimal_norm.py"
_DIAG = "lfr_jax/attacks/diagnostics.py"
_LOSS = "lfr_jax/losses.py"
_REG = "lfr_jax/regularizers.py"
_OBJ = "lfr_jax/objectives.py"
_SQUARE = "_SQUARE_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)"


def _square(i, new):
  old = _SQUARE[_SQUARE.index("(") + 1:-1].split(", ")
  bumped = list(old)
  bumped[i] = str(new)
  return _ref(f"square_threshold_{old[i]}", _DIAG, _SQUARE,
              _SQUARE.replace(", ".join(old), ", ".join(bumped)),
              f"random search halves p after query {new}, not {old[i]}",
              ("test_random_search_window_schedule_is_square_attacks",))


REFERENCE_MUTANTS: tuple[Mutant, ...] = (
    # attacks/common.py: norms, projections, starts, the worst-so-far.
    _ref("tiny_guard", _COMMON, "TINY = 1e-12", "TINY = 1e-6",
         "normalization guard 1e-6 instead of 1e-12",
         ("test_pgd_l2_matches_torchattacks",)),
    _ref("l2_norm_squared", _COMMON,
         "return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), "
         "axis=1))",
         "return jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1)",
         "attacks' l2 norm without the square root"),
    _ref("linf_norm_is_l1", _COMMON,
         "return jnp.max(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)",
         "return jnp.sum(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)",
         "attacks' l_inf norm sums (APGD's start normalization)",
         ("test_apgd_matches_reference",)),
    _ref("l1_norm_mean", _COMMON,
         "return jnp.sum(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)",
         "return jnp.mean(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)",
         "MI-FGSM's gradient divided by mean |g| instead of ||g||_1",
         equivalent="l1_norm is used only by MI-FGSM, whose momentum then "
         "is d times larger at every step (d = pixels per example, the "
         "same for all): every sign(momentum), hence every iterate, is "
         "unchanged (torchattacks' MIFGSM divides by the mean)"),
    _ref("l1_norm_is_l2", _COMMON,
         "return jnp.sum(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)",
         "return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), "
         "axis=1))",
         "MI-FGSM's gradient normalized by its l2 norm",
         ("test_mifgsm_matches_torchattacks",)),
    _ref("unit_l2_by_l1", _COMMON,
         "return scale_per_example(1.0 / (l2_norm(v) + TINY), v)",
         "return scale_per_example(1.0 / (l1_norm(v) + TINY), v)",
         "l2 steps and starts normalized by the l1 norm",
         ("test_pgd_l2_matches_torchattacks",)),
    _ref("linf_ball_half", _COMMON,
         "return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)",
         "return jnp.clip(jnp.clip(x_adv, x - eps / 2, x + eps / 2), 0.0, "
         "1.0)",
         "attacks' l_inf projection onto eps/2",
         ("test_pgd_linf_matches_torchattacks",)),
    _ref("l2_projection_to_sphere", _COMMON,
         "x + scale_per_example(jnp.minimum(eps, size) / (size + TINY), "
         "delta),",
         "x + scale_per_example(eps / (size + TINY), delta),",
         "l2 projection moves every point onto the sphere",
         ("test_pgd_l2_matches_torchattacks",)),
    _ref("linf_direction_raw_gradient", _COMMON,
         "    return jnp.sign(grad)",
         "    return grad",
         "l_inf steps along the raw gradient, not its sign",
         ("test_pgd_linf_matches_torchattacks",)),
    _ref("uniform_start_one_sided", _COMMON,
         "noise = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)",
         "noise = jax.random.uniform(key, x.shape, x.dtype, 0.0, 1.0)",
         "uniform l_inf start in [0, eps] instead of [-eps, eps]",
         ("test_pgd_linf_matches_torchattacks",)),
    _ref("uniform_start_half_radius", _COMMON,
         "return jnp.clip(x + eps * noise, 0.0, 1.0)",
         "return jnp.clip(x + 0.5 * eps * noise, 0.0, 1.0)",
         "uniform l_inf start in half the ball",
         ("test_pgd_linf_matches_torchattacks",)),
    _ref("l2_start_unnormalized", _COMMON,
         "direction = unit_l2(jax.random.normal(key_direction, x.shape, "
         "x.dtype))",
         "direction = jax.random.normal(key_direction, x.shape, x.dtype)",
         "l2 start direction not normalized",
         ("test_pgd_l2_matches_torchattacks",)),
    _ref("l2_start_radius_linear", _COMMON,
         "x.dtype) ** (1.0 / dim)",
         "x.dtype) ** 1.0",
         "l2 start radius eps U (uniform in radius, not in volume)",
         ("test_pgd_l2_matches_torchattacks",)),
    _ref("worst_lower_score_wins", _COMMON,
         "(candidate.fooled == best.fooled) & (candidate.score > "
         "best.score))",
         "(candidate.fooled == best.fooled) & (candidate.score < "
         "best.score))",
         "restarts and targets keep the lower score",
         ("test_pgd_restarts_match_reference",)),
    _ref("worst_fooled_no_priority", _COMMON,
         "take = (candidate.fooled & ~best.fooled) | (",
         "take = (candidate.fooled & best.fooled) | (",
         "a fooled run no longer beats a correct one",
         ("test_apgd_restarts_match_reference",)),
    _ref("worst_initial_score_zero", _COMMON,
         "return WorstSoFar(x, jnp.zeros((n,), bool),",
         "return WorstSoFar(x, jnp.ones((n,), bool),",
         "the fold starts from x counted as fooled",
         ("test_pgd_restarts_match_reference",)),
    # attacks/gradient_sign.py
    _ref("fgsm_step_default_half", _SIGN,
         "step = eps if step is None else step",
         "step = 0.5 * eps if step is None else step",
         "FGSM's default step eps/2", ("test_fgsm_matches_torchattacks",)),
    _ref("fgsm_start_eps_default_half", _SIGN,
         "start_eps = eps if start_eps is None else start_eps",
         "start_eps = 0.5 * eps if start_eps is None else start_eps",
         "FGSM's default start radius eps/2",
         ("test_fgsm_random_start_matches_torchattacks_ffgsm",)),
    _ref("fgsm_steps_from_x", _SIGN,
         "return lax.stop_gradient(common.project(x0 + step * "
         "jnp.sign(grad), x, eps))",
         "return lax.stop_gradient(common.project(x + step * "
         "jnp.sign(grad), x, eps))",
         "FGSM steps from x instead of its start",
         ("test_fgsm_random_start_matches_torchattacks_ffgsm",)),
    _ref("pgd_step_double", _SIGN,
         "x_adv + step_size * common.ascent_direction(grad, norm), x, eps, "
         "norm)",
         "x_adv + 2 * step_size * common.ascent_direction(grad, norm), x, "
         "eps, norm)",
         "PGD steps twice the step size",
         ("test_pgd_linf_matches_torchattacks",)),
    _ref("mifgsm_decay_default", _SIGN,
         "eps, step_size, num_steps: int, decay=1.0,",
         "eps, step_size, num_steps: int, decay=0.5,",
         "MI-FGSM's default decay 0.5 instead of the paper's 1",
         ("test_mifgsm_matches_torchattacks",)),
    _ref("mifgsm_decay_ignored", _SIGN,
         "momentum = decay * momentum + common.scale_per_example(",
         "momentum = momentum + common.scale_per_example(",
         "MI-FGSM ignores its decay", ("test_mifgsm_matches_torchattacks",)),
    _ref("mifgsm_zero_gradient_guard", _SIGN,
         "1.0 / jnp.where(grad_l1 > 0, grad_l1, 1.0), grad)",
         "1.0 / jnp.where(grad_l1 > 0, grad_l1, 2.0), grad)",
         "MI-FGSM's zero-gradient guard divides by 2",
         equivalent="the guard's value is used only where ||g||_1 = 0, i.e. "
         "g = 0, and 0 / 1 = 0 / 2: the momentum is unchanged"),
    _ref("mifgsm_steps_along_gradient", _SIGN,
         "return (common.project(x_adv + step_size * jnp.sign(momentum), x, "
         "eps),",
         "return (common.project(x_adv + step_size * jnp.sign(grad), x, "
         "eps),",
         "MI-FGSM steps along the gradient, not the momentum",
         ("test_mifgsm_matches_torchattacks",)),
    _ref("multi_targeted_default_targets", _SIGN,
         "num_targets = num_classes - 1 if num_targets is None else "
         "num_targets",
         "num_targets = num_classes - 2 if num_targets is None else "
         "num_targets",
         "MultiTargeted's default leaves one class out",
         ("test_multi_targeted_matches_reference",)),
    _ref("multi_targeted_adds_true_logit", _SIGN,
         "- common.label_logit(logits, y))",
         "+ common.label_logit(logits, y))",
         "MultiTargeted ascends z_t + z_y",
         ("test_multi_targeted_matches_reference",)),
    _ref("multi_targeted_lowest_margin", _SIGN,
         "return common.WorstSoFar(x_target, margin > 0, margin)",
         "return common.WorstSoFar(x_target, margin > 0, -margin)",
         "MultiTargeted keeps the run with the lowest margin",
         ("test_multi_targeted_matches_reference",)),
    # attacks/auto_pgd.py
    _ref("apgd_first_window", _APGD,
         "interval = max(int(0.22 * num_steps), 1)",
         "interval = max(int(0.25 * num_steps), 1)",
         "APGD's first window 0.25 N", ("test_apgd_matches_reference",)),
    _ref("apgd_shortest_window", _APGD,
         "shortest = max(int(0.06 * num_steps), 1)",
         "shortest = max(int(0.08 * num_steps), 1)",
         "APGD's shortest window 0.08 N", ("test_apgd_matches_reference",)),
    _ref("apgd_window_shrink", _APGD,
         "shrink = max(int(0.03 * num_steps), 1)",
         "shrink = max(int(0.05 * num_steps), 1)",
         "APGD's windows shrink by 0.05 N", ("test_apgd_matches_reference",)),
    _ref("apgd_last_checkpoint", _APGD,
         "while points[-1] + interval <= num_steps:",
         "while points[-1] + interval < num_steps:",
         "APGD drops a checkpoint at the last step",
         ("test_apgd_matches_reference",
          "tests/test_attacks.py::test_apgd_checkpoints_match_paper_formula")),
    _ref("apgd_window_length", _APGD,
         "window[point - 1] = point - prev",
         "window[point - 1] = point - prev + 1",
         "APGD's Condition 1 counts a window one step long",
         ("test_apgd_matches_reference",)),
    _ref("apgd_start_one_sided", _APGD,
         "direction = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)",
         "direction = jax.random.uniform(key, x.shape, x.dtype, 0.0, 1.0)",
         "APGD's l_inf start direction in [0, 1]",
         ("test_apgd_matches_reference",)),
    _ref("apgd_start_l2_normalized", _APGD,
         "1.0 / (common.linf_norm(direction) + common.TINY), direction)",
         "1.0 / (common.l2_norm(direction) + common.TINY), direction)",
         "APGD's l_inf start normalized by its l2 norm",
         ("test_apgd_matches_reference",)),
    _ref("apgd_l2_start_unnormalized", _APGD,
         "direction = common.unit_l2(jax.random.normal(key, x.shape, "
         "x.dtype))",
         "direction = jax.random.normal(key, x.shape, x.dtype)",
         "APGD's l2 start direction not normalized",
         ("test_apgd_matches_reference",)),
    _ref("apgd_start_half_radius", _APGD,
         "return jnp.clip(x + eps * direction, 0.0, 1.0)",
         "return jnp.clip(x + 0.5 * eps * direction, 0.0, 1.0)",
         "APGD starts halfway to the boundary",
         ("test_apgd_matches_reference",)),
    _ref("apgd_gradient_term_scaled", _APGD,
         "return common.project(x_adv + momentum * (z - x_adv)",
         "return common.project(x_adv + 0.9 * momentum * (z - x_adv)",
         "APGD's gradient term scaled by 0.9",
         ("test_apgd_matches_reference",)),
    _ref("apgd_heavy_ball_coefficient", _APGD,
         "+ (1.0 - momentum) * (x_adv - x_prev), x, eps, norm)",
         "+ (0.5 - momentum) * (x_adv - x_prev), x, eps, norm)",
         "APGD's heavy-ball term with 0.5 - alpha",
         ("test_apgd_matches_reference",)),
    _ref("apgd_momentum_080", _APGD,
         "momentum = jnp.where(i > 0, 0.75, 1.0).astype(x.dtype)",
         "momentum = jnp.where(i > 0, 0.8, 1.0).astype(x.dtype)",
         "APGD's alpha 0.8 instead of 0.75",
         ("test_apgd_matches_reference",)),
    _ref("apgd_first_step_momentum", _APGD,
         "momentum = jnp.where(i > 0, 0.75, 1.0).astype(x.dtype)",
         "momentum = jnp.where(i > 0, 0.75, 0.75).astype(x.dtype)",
         "APGD's first step with alpha 0.75",
         ("test_apgd_matches_reference",)),
    _ref("apgd_initial_step", _APGD,
         "step=jnp.full((n,), 2.0, x.dtype) * eps,",
         "step=jnp.full((n,), 1.0, x.dtype) * eps,",
         "APGD's first step size eps instead of 2 eps",
         ("test_apgd_matches_reference",)),
    _ref("apgd_best_against_previous", _APGD,
         "improved = loss > state.loss_best",
         "improved = loss > state.loss_prev",
         "APGD's best point is any point better than the previous",
         ("test_apgd_matches_reference",)),
    _ref("apgd_increase_against_best", _APGD,
         "increases = state.increases + (loss > state.loss_prev)"
         ".astype(jnp.int32)",
         "increases = state.increases + (loss > state.loss_best)"
         ".astype(jnp.int32)",
         "Condition 1 counts new bests, not increases",
         ("test_apgd_matches_reference",)),
    _ref("apgd_condition1_strict", _APGD,
         "oscillating = increases <= window[i] * rho",
         "oscillating = increases < window[i] * rho",
         "Condition 1 with < (the paper's) instead of the code's <=",
         ("test_apgd_matches_reference",)),
    _ref("apgd_condition2_strict", _APGD,
         "stalled = ~state.reduced_last & (state.loss_best_last >= "
         "loss_best)",
         "stalled = ~state.reduced_last & (state.loss_best_last > "
         "loss_best)",
         "Condition 2 never holds (> instead of >=)",
         ("test_apgd_matches_reference",)),
    _ref("apgd_condition2_ignores_last_halving", _APGD,
         "stalled = ~state.reduced_last & (state.loss_best_last >= "
         "loss_best)",
         "stalled = (state.loss_best_last >= loss_best)",
         "Condition 2 without 'not halved at the last checkpoint'",
         ("test_apgd_matches_reference",)),
    _ref("apgd_halving_factor", _APGD,
         "step=jnp.where(halve, 0.5 * state.step, state.step),",
         "step=jnp.where(halve, 0.6 * state.step, state.step),",
         "APGD's step multiplied by 0.6 instead of halved",
         ("test_apgd_matches_reference",)),
    _ref("apgd_no_reset_to_best", _APGD,
         "x_adv=common.select_per_example(halve, x_best, x_new),",
         "x_adv=x_new,",
         "APGD does not restart from the best point",
         ("test_apgd_matches_reference",)),
    _ref("apgd_no_best_gradient", _APGD,
         "grad=common.select_per_example(halve, grad_best, grad),",
         "grad=grad,",
         "APGD restarts without the best point's gradient",
         ("test_apgd_matches_reference",)),
    _ref("apgd_previous_is_new", _APGD,
         "x_prev=state.x_adv,", "x_prev=x_new,",
         "APGD's heavy-ball term measured from the new point",
         ("test_apgd_matches_reference",)),
    _ref("apgd_reduced_initially_false", _APGD,
         "reduced_last=jnp.ones((n,), bool))",
         "reduced_last=jnp.zeros((n,), bool))",
         "APGD's first Condition 2 sees no earlier halving",
         ("test_apgd_matches_reference",)),
    _ref("apgd_increases_not_reset", _APGD,
         "increases=jnp.where(check, 0, increases),",
         "increases=increases,",
         "Condition 1's count not reset at checkpoints",
         ("test_apgd_matches_reference",)),
    _ref("apgd_best_last_not_updated", _APGD,
         "loss_best_last=jnp.where(check, loss_best, state.loss_best_last),",
         "loss_best_last=state.loss_best_last,",
         "Condition 2 compares with the starting loss",
         ("test_apgd_matches_reference",)),
    _ref("apgd_reduced_from_condition1_only", _APGD,
         "reduced_last=jnp.where(check, oscillating | stalled,",
         "reduced_last=jnp.where(check, oscillating,",
         "'halved at the last checkpoint' forgets Condition 2",
         ("test_apgd_matches_reference",)),
    _ref("apgd_adversarial_point_not_kept", _APGD,
         "x_best_adv=common.select_per_example(wrong, x_new, "
         "state.x_best_adv),",
         "x_best_adv=state.x_best_adv,",
         "APGD returns the start for fooled points",
         ("test_apgd_restarts_match_reference",)),
    _ref("apgd_returns_best_loss_when_fooled", _APGD,
         "common.select_per_example(final.fooled, final.x_best_adv, "
         "final.x_best),",
         "common.select_per_example(final.fooled, final.x_best, "
         "final.x_best_adv),",
         "APGD returns the highest-loss point where it fooled",
         ("test_apgd_restarts_match_reference",)),
    _ref("apgd_rho_default", _APGD,
         "rho=0.75, restarts: int = 1, unroll: bool | int = False",
         "rho=0.5, restarts: int = 1, unroll: bool | int = False",
         "APGD's default rho 0.5", ("test_apgd_defaults_are_the_papers",)),
    _ref("apgd_steps_default", _APGD,
         "eps, num_steps: int = 100, norm: str = \"linf\", loss: str = "
         "\"ce\",",
         "eps, num_steps: int = 50, norm: str = \"linf\", loss: str = "
         "\"ce\",",
         "APGD's default 50 steps", ("test_apgd_defaults_are_the_papers",)),
    _ref("apgd_targeted_defaults", _APGD,
         "norm: str = \"linf\", num_targets: int = 9, rho=0.75,",
         "norm: str = \"linf\", num_targets: int = 8, rho=0.75,",
         "APGD-T's default 8 targets",
         ("test_apgd_targeted_defaults_are_autoattacks",)),
    _ref("apgd_targeted_rho_default", _APGD,
         "norm: str = \"linf\", num_targets: int = 9, rho=0.75,",
         "norm: str = \"linf\", num_targets: int = 9, rho=0.5,",
         "APGD-T's default rho 0.5",
         ("test_apgd_targeted_defaults_are_autoattacks",)),
    _ref("apgd_clean_wrong_attacked", _APGD,
         "out = common.select_per_example(common.misclassified(clean_logits, "
         "y), x,",
         "out = common.select_per_example(common.misclassified(clean_logits, "
         "y) & False, x,",
         "APGD attacks points misclassified when clean",
         ("test_apgd_restarts_match_reference",)),
    # losses.py
    _ref("dlr_guard", _LOSS, "DLR_EPS = 1e-12", "DLR_EPS = 1e-6",
         "DLR's denominator guard 1e-6", ("test_apgd_matches_reference",)),
    _ref("dlr_second_logit", _LOSS,
         "return margin(logits, y) / (top[:, 0] - top[:, 2] + DLR_EPS)",
         "return margin(logits, y) / (top[:, 0] - top[:, 1] + DLR_EPS)",
         "DLR's denominator z_pi1 - z_pi2",
         ("test_apgd_matches_reference",)),
    _ref("dlr_targeted_weight", _LOSS,
         "scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_EPS",
         "scale = top[:, 0] - 0.4 * (top[:, 2] + top[:, 3]) + DLR_EPS",
         "targeted DLR's denominator weight 0.4",
         ("test_apgd_targeted_matches_reference",)),
    _ref("dlr_targeted_logits", _LOSS,
         "scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_EPS",
         "scale = top[:, 0] - 0.5 * (top[:, 1] + top[:, 3]) + DLR_EPS",
         "targeted DLR's denominator with z_pi2",
         ("test_apgd_targeted_matches_reference",)),
    _ref("kl_weighted_by_q", _LOSS,
         "return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=1)",
         "return jnp.sum(jnp.exp(log_q) * (log_p - log_q), axis=1)",
         "KL's terms weighted by q instead of p",
         (_REFS + "::test_trades_kl_matches_reference",)),
    # attacks/minimal_norm.py
    _ref("ddn_eta_min", _DDN,
         "return 0.01 + 0.99 * 0.5 * (1.0 + jnp.cos(jnp.pi * i / num_steps))",
         "return 0.02 + 0.99 * 0.5 * (1.0 + jnp.cos(jnp.pi * i / num_steps))",
         "DDN's schedule floor 0.02", ("test_ddn_matches_reference",)),
    _ref("ddn_cosine_period", _DDN,
         "return 0.01 + 0.99 * 0.5 * (1.0 + jnp.cos(jnp.pi * i / num_steps))",
         "return 0.01 + 0.99 * 0.5 * (1.0 + jnp.cos(jnp.pi * i / (num_steps "
         "+ 1)))",
         "DDN's cosine over num_steps + 1", ("test_ddn_matches_reference",)),
    _ref("ddn_schedule_offset", _DDN,
         "delta = delta + _ddn_learning_rate(i + 1, num_steps) * direction",
         "delta = delta + _ddn_learning_rate(i, num_steps) * direction",
         "DDN's step i uses the schedule at i", ("test_ddn_matches_reference",)),
    _ref("ddn_gamma_default", _DDN,
         "key: jax.Array, *, num_steps: int, gamma=0.05, init_norm=1.0,",
         "key: jax.Array, *, num_steps: int, gamma=0.1, init_norm=1.0,",
         "DDN's default gamma 0.1",
         ("tests/test_ddn_reference.py::test_ddn_trajectory_matches_"
          "advertorch_reference_in_float64",)),
    _ref("ddn_init_norm_default", _DDN,
         "key: jax.Array, *, num_steps: int, gamma=0.05, init_norm=1.0,",
         "key: jax.Array, *, num_steps: int, gamma=0.05, init_norm=0.5,",
         "DDN's default initial norm 0.5",
         ("tests/test_ddn_reference.py::test_ddn_trajectory_matches_"
          "advertorch_reference_in_float64",)),
    _ref("ddn_budget_uncapped", _DDN,
         "                         worst_norm)",
         "                         2 * worst_norm)",
         "DDN's budget capped at twice the box's largest norm",
         ("test_ddn_matches_reference",)),
    _ref("ddn_worst_norm", _DDN,
         "worst_norm = common.l2_norm(jnp.maximum(x, 1.0 - x))",
         "worst_norm = common.l2_norm(jnp.maximum(x, 0.5 - x))",
         "DDN's largest norm of the box computed wrongly",
         ("test_ddn_matches_reference",)),
    _ref("ddn_gradient_normalization", _DDN,
         "1.0 / jnp.where(grad_norm > 0, grad_norm, 1.0), grad),",
         "1.0 / jnp.where(grad_norm > 0, jnp.sqrt(grad_norm), 1.0), grad),",
         "DDN's gradient divided by the root of its norm",
         ("test_ddn_matches_reference",)),
    _ref("ddn_rescale", _DDN,
         "budget / jnp.where(size > 0, size, 1.0), delta)",
         "0.9 * budget / jnp.where(size > 0, size, 1.0), delta)",
         "DDN rescales to 0.9 of its budget", ("test_ddn_matches_reference",)),
    _ref("ddn_levels", _DDN,
         "x_new = jnp.round(x_new * (levels - 1)) / (levels - 1)",
         "x_new = jnp.round(x_new * levels) / levels",
         "DDN rounds to levels + 1 grey levels",
         ("test_ddn_matches_reference",)),
    _ref("ddn_best_ignores_success", _DDN,
         "better = is_adv & (size < best_norm)",
         "better = size < best_norm",
         "DDN keeps the smallest perturbation, adversarial or not",
         ("test_ddn_matches_reference",)),
    _ref("ddn_found_non_strict", _DDN,
         "found = best_norm < worst_norm",
         "found = best_norm <= worst_norm",
         "DDN reports a norm where it found nothing",
         ("test_ddn_matches_reference",)),
    _ref("ddn_max_norm_half", _DDN,
         "jnp.where(size > max_norm, max_norm / size, 1.0), delta)",
         "jnp.where(size > max_norm, 0.5 * max_norm / size, 1.0), delta)",
         "DDN's max_norm projection to half the radius",
         ("test_ddn_max_norm_matches_reference",)),
    _ref("ddn_noise_fixed", _DDN,
         "noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, "
         "x.dtype)",
         "noise = jax.random.normal(key, x.shape, x.dtype)",
         "DDN's zero-gradient direction the same at every step",
         ("test_ddn_zero_gradient_steps_along_the_noise",)),
    _ref("ddn_no_clip", _DDN,
         "delta = jnp.clip(x_new, 0.0, 1.0) - x",
         "delta = x_new - x",
         "DDN's iterates leave [0, 1]", ("test_ddn_matches_reference",)),
    # attacks/diagnostics.py
    _square(0, 20), _square(1, 60), _square(2, 250), _square(3, 600),
    _square(4, 1200), _square(5, 2500), _square(6, 4500), _square(7, 7000),
    _square(8, 9000),
    _ref("square_budget", _DIAG,
         "query = (i * 10000) // max(num_steps, 1)",
         "query = (i * 5000) // max(num_steps, 1)",
         "random search rescales its schedule to 5,000 queries",
         ("test_random_search_matches_reference",)),
    _ref("square_fraction_base", _DIAG,
         "fraction = jnp.where(query > threshold, p_init / 2 ** halvings, "
         "fraction)",
         "fraction = jnp.where(query > threshold, p_init / 3 ** halvings, "
         "fraction)",
         "random search divides p by 3 at each threshold",
         ("test_random_search_matches_reference",)),
    _ref("square_p_init_default", _DIAG,
         "key: jax.Array, *, eps, num_steps: int, p_init: float = 0.8",
         "key: jax.Array, *, eps, num_steps: int, p_init: float = 0.6",
         "random search's default p_init 0.6",
         ("test_random_search_matches_reference",)),
    _ref("square_side_with_channels", _DIAG,
         "side = jnp.clip(jnp.round(jnp.sqrt(fraction * height * width)), 1,",
         "side = jnp.clip(jnp.round(jnp.sqrt(fraction * height * width * "
         "channels)), 1,",
         "random search's window counts channels",
         ("test_random_search_matches_reference",)),
    _ref("square_largest_side", _DIAG,
         "largest_side = max(min(height, width) - 1, 1)",
         "largest_side = max(min(height, width), 1)",
         "random search's window may cover the whole image",
         ("test_random_search_matches_reference",)),
    _ref("square_stripes_horizontal", _DIAG,
         "stripes = eps * jax.random.choice(key_init, signs, (n, 1, width, "
         "channels))",
         "stripes = eps * jax.random.choice(key_init, signs, (n, height, 1, "
         "channels))",
         "random search starts from horizontal stripes",
         ("test_random_search_matches_reference",)),
    _ref("square_vertex_half", _DIAG,
         "vertex = eps * jax.random.choice(key_sign, signs, (n, 1, 1, "
         "channels))",
         "vertex = 0.5 * eps * jax.random.choice(key_sign, signs, (n, 1, 1, "
         "channels))",
         "random search's windows at half the radius",
         ("test_random_search_matches_reference",)),
    _ref("square_searches_after_success", _DIAG,
         "take = (decision_new < decision_best) & (decision_best > 0)",
         "take = decision_new < decision_best",
         "random search keeps moving fooled points",
         ("test_random_search_matches_reference",)),
    _ref("loss_trace_step", _DIAG,
         "return common.project(x_adv + step_size * jnp.sign(grad), x, eps), "
         "loss",
         "return common.project(x_adv + 2 * step_size * jnp.sign(grad), x, "
         "eps), loss",
         "the loss trace's PGD steps twice the step size",
         ("test_pgd_loss_trace_matches_reference",)),
    _ref("loss_trace_start", _DIAG,
         "start = common.uniform_in_ball(key, x, eps, \"linf\")",
         "start = common.uniform_in_ball(key, x, 0.5 * eps, \"linf\")",
         "the loss trace starts in half the ball",
         ("test_pgd_loss_trace_matches_reference",)),
    # regularizers.py
    _ref("init_std", _REG, "INIT_STD = 1e-3", "INIT_STD = 1e-2",
         "LFR's and TRADES' start x + 0.01 N(0, 1)",
         ("test_local_flatness_matches_reference",)),
    _ref("penalty_l2_squared", _REG,
         "return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)",
         "return jnp.where(sq > 0, safe, 0.0)",
         "the l2 penalty norm squared", ("test_input_gradient_norm_matches_"
                                         "reference",)),
    _ref("penalty_linf_mean", _REG,
         "return jnp.abs(flat).max(axis=1)",
         "return jnp.abs(flat).mean(axis=1)",
         "the l_inf penalty norm is a mean",
         ("test_input_gradient_norm_matches_reference",)),
    _ref("lfr_step_double", _REG,
         "return project_linf(x_adv + step_size * jnp.sign(direction), x, "
         "eps)",
         "return project_linf(x_adv + 2 * step_size * jnp.sign(direction), "
         "x, eps)",
         "LFR's inner max steps twice the step size",
         ("test_local_flatness_matches_reference",)),
    _ref("lfr_ascent_objective_mean", _REG,
         "return per_example_norm(input_gradients(logits_fn, z, y), "
         "norm).sum()",
         "return per_example_norm(input_gradients(logits_fn, z, y), "
         "norm).mean()",
         "LFR's inner max ascends the batch mean of the norms",
         equivalent="examples are independent, so the gradient of the mean "
         "is the gradient of the sum divided by N > 0, and only its sign is "
         "used: every step is unchanged"),
    _ref("lfr_ascent_always_l1", _REG,
         "return per_example_norm(input_gradients(logits_fn, z, y), "
         "norm).sum()",
         "return per_example_norm(input_gradients(logits_fn, z, y), "
         "\"l1\").sum()",
         "LFR's inner max ascends the l1 norm whatever the penalty's norm",
         ("test_local_flatness_matches_reference",)),
    # LFR's first-order variants: the dual directions, h, 1/h, the start.
    _ref("dual_l1_halved", _REG,
         "    return jnp.sign(g)",
         "    return 0.5 * jnp.sign(g)",
         "the l1 dual direction sign(g) / 2",
         ("test_first_order_flatness_matches_reference",)),
    _ref("dual_l2_unnormalized", _REG,
         "return (flat / jnp.where(size > 0, size, 1.0)).reshape(g.shape)",
         "return flat.reshape(g.shape)",
         "the l2 dual direction g, not g / ||g||_2",
         ("test_first_order_flatness_matches_reference",)),
    _ref("dual_l2_zero_guard", _REG,
         "return (flat / jnp.where(size > 0, size, 1.0)).reshape(g.shape)",
         "return (flat / jnp.where(size > 0, size, 2.0)).reshape(g.shape)",
         "the l2 dual direction's zero guard divides by 2",
         equivalent="the guard's value is used only where ||g||_2 = 0, "
         "i.e. g = 0, and 0 / 1 = 0 / 2: s is unchanged"),
    _ref("dual_linf_smallest", _REG,
         "hot = jax.nn.one_hot(jnp.argmax(jnp.abs(flat), axis=1), "
         "flat.shape[1],",
         "hot = jax.nn.one_hot(jnp.argmin(jnp.abs(flat), axis=1), "
         "flat.shape[1],",
         "the l_inf dual direction at the smallest |g_i|",
         ("test_first_order_flatness_matches_reference",)),
    _ref("dual_linf_every_sign", _REG,
         "return (hot * jnp.sign(flat)).reshape(g.shape)",
         "return jnp.sign(flat).reshape(g.shape)",
         "the l_inf dual direction sign(g) (the l1 one)",
         ("test_first_order_flatness_matches_reference",)),
    _ref("dual_linf_unsigned", _REG,
         "return (hot * jnp.sign(flat)).reshape(g.shape)",
         "return hot.reshape(g.shape)",
         "the l_inf dual direction e_m without the sign of g_m",
         ("test_first_order_flatness_matches_reference",)),
    _ref("fd_ascent_step_double", _REG,
         "return (input_gradients(logits_fn, x_adv + fd_step * s, y) - g) "
         "/ fd_step",
         "return (input_gradients(logits_fn, x_adv + 2 * fd_step * s, y) - "
         "g) / fd_step",
         "the first-order ascent differences over 2 h",
         ("test_first_order_flatness_matches_reference",)),
    _ref("fd_ascent_unscaled", _REG,
         "return (input_gradients(logits_fn, x_adv + fd_step * s, y) - g) "
         "/ fd_step",
         "return (input_gradients(logits_fn, x_adv + fd_step * s, y) - g)",
         "the first-order ascent direction without its 1/h",
         ("test_flatness_ascent_direction_matches_reference",)),
    _ref("fd_penalty_step_double", _REG,
         "shifted = losses.cross_entropy(logits_fn(x_point + fd_step * s), "
         "y)",
         "shifted = losses.cross_entropy(logits_fn(x_point + 2 * fd_step * "
         "s), y)",
         "the first-order penalty differences over 2 h",
         ("test_first_order_flatness_matches_reference",)),
    _ref("fd_penalty_unscaled", _REG,
         "return (shifted - losses.cross_entropy(logits_fn(x_point), y)) / "
         "fd_step",
         "return (shifted - losses.cross_entropy(logits_fn(x_point), y))",
         "the first-order penalty without its 1/h",
         ("test_first_order_flatness_matches_reference",)),
    _ref("fd_direction_default_h", _REG,
         "ascent: str = \"exact\", fd_step: float = 0.01",
         "ascent: str = \"exact\", fd_step: float = 0.02",
         "the first-order direction's default h 0.02",
         ("test_first_order_pieces_default_to_h_001",)),
    _ref("fd_ascent_default_h", _REG,
         "                    fd_step: float = 0.01, start: str = "
         "\"gaussian\"",
         "                    fd_step: float = 0.02, start: str = "
         "\"gaussian\"",
         "the first-order ascent's default h 0.02",
         ("test_first_order_pieces_default_to_h_001",)),
    _ref("fd_penalty_default_h", _REG,
         "                              fd_step: float = 0.01,",
         "                              fd_step: float = 0.02,",
         "the first-order penalty's default h 0.02",
         ("test_first_order_pieces_default_to_h_001",)),
    _ref("lfr_uniform_start_one_sided", _REG,
         "x + eps * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0), x, "
         "eps)",
         "x + eps * jax.random.uniform(key, x.shape, x.dtype, 0.0, 1.0), x, "
         "eps)",
         "LFR's uniform start in [0, eps]",
         ("test_first_order_flatness_matches_reference",)),
    _ref("lfr_uniform_start_half", _REG,
         "x + eps * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0), x, "
         "eps)",
         "x + 0.5 * eps * jax.random.uniform(key, x.shape, x.dtype, -1.0, "
         "1.0), x, eps)",
         "LFR's uniform start in half the ball",
         ("test_first_order_flatness_matches_reference",)),
    _ref("llr_start_half", _REG,
         "delta0 = project(jax.random.uniform(key, x.shape, x.dtype, -1.0, "
         "1.0) * eps)",
         "delta0 = project(jax.random.uniform(key, x.shape, x.dtype, -1.0, "
         "1.0) * eps / 2)",
         "LLR's start in half the ball",
         ("test_local_linearity_matches_reference",)),
    _ref("llr_start_one_sided", _REG,
         "delta0 = project(jax.random.uniform(key, x.shape, x.dtype, -1.0, "
         "1.0) * eps)",
         "delta0 = project(jax.random.uniform(key, x.shape, x.dtype, 0.0, "
         "1.0) * eps)",
         "LLR's start in [0, eps]", ("test_local_linearity_matches_reference",)),
    _ref("llr_adam_b1", _REG,
         "adam = optax.adam(step_size)",
         "adam = optax.adam(step_size, b1=0.8)",
         "LLR's Adam with beta1 0.8",
         ("test_local_linearity_matches_reference",)),
    _ref("llr_adam_b2", _REG,
         "adam = optax.adam(step_size)",
         "adam = optax.adam(step_size, b2=0.99)",
         "LLR's Adam with beta2 0.99",
         ("test_local_linearity_matches_reference",)),
    _ref("llr_adam_eps", _REG,
         "adam = optax.adam(step_size)",
         "adam = optax.adam(step_size, eps=1e-4)",
         "LLR's Adam with epsilon 1e-4",
         ("test_local_linearity_matches_reference",)),
    _ref("llr_objective_mean", _REG,
         "return -gap.sum()  # optax minimizes",
         "return -gap.mean()  # optax minimizes",
         "LLR's ascent on the batch mean of the gaps",
         ("test_local_linearity_matches_reference",)),
    _ref("llr_first_order_mean", _REG,
         "first_order = (delta * clean_grad).reshape(x.shape[0], -1)"
         ".sum(axis=1)",
         "first_order = (delta * clean_grad).reshape(x.shape[0], -1)"
         ".mean(axis=1)",
         "LLR's delta^T grad l(x) averaged over pixels",
         ("test_local_linearity_matches_reference",)),
    _ref("llr_first_order_signed", _REG,
         "return gap, jnp.abs(first_order)",
         "return gap, first_order",
         "LLR's mu term without its absolute value",
         ("test_local_linearity_matches_reference",)),
    _ref("llr_step_default", _REG,
         "key: jax.Array, *, eps, step_size=0.1, num_steps: int = 10,",
         "key: jax.Array, *, eps, step_size=0.05, num_steps: int = 10,",
         "LLR's default Adam step 0.05",
         ("test_local_linearity_defaults_are_llrs_adam",)),
    _ref("llr_steps_default", _REG,
         "key: jax.Array, *, eps, step_size=0.1, num_steps: int = 10,",
         "key: jax.Array, *, eps, step_size=0.1, num_steps: int = 5,",
         "LLR's default 5 Adam steps",
         ("test_local_linearity_defaults_are_llrs_adam",)),
    _ref("jacobian_squared_is_root", _REG,
         "value = jnp.square(value)",
         "value = jnp.sqrt(value)",
         "the squared decision-Jacobian norm is a square root",
         ("test_decision_jacobian_norm_matches_reference",)),
    _ref("jacobian_pixel_mean_without_channels", _REG,
         "value = value / (jac.size // jac.shape[0])",
         "value = value / (jac.shape[1] * jac.shape[2])",
         "the decision Jacobian's pixel mean ignores channels",
         ("test_decision_jacobian_norm_matches_reference",)),
    _ref("trades_step_double", _REG,
         "return project_linf(x_adv + step_size * "
         "jnp.sign(jax.grad(total_kl)(x_adv)),",
         "return project_linf(x_adv + 2 * step_size * "
         "jnp.sign(jax.grad(total_kl)(x_adv)),",
         "TRADES' inner max steps twice the step size",
         ("test_trades_kl_matches_reference",)),
    # objectives.py
    _ref("nominal_weight_ignored", _OBJ,
         "loss = nominal_weight * ce + weight * penalty.mean() + extra",
         "loss = ce + weight * penalty.mean() + extra",
         "the objectives ignore LLR's nominal weight",
         ("test_objective_matches_numpy_reference",)),
    _ref("llr_mu_ignored", _OBJ,
         "extra=mu * first_order.mean())",
         "extra=first_order.mean())",
         "LLR's objective ignores mu",
         ("test_objective_matches_numpy_reference",)),
    _ref("trades_beta_ignored", _OBJ,
         "return _penalized(views, y, beta, kl)",
         "return _penalized(views, y, 1.0, kl)",
         "TRADES' objective ignores beta",
         ("test_objective_matches_numpy_reference",)),
    _ref("pgd_at_no_random_start", _OBJ,
         "random_start=True, unroll=unroll)",
         "random_start=False, unroll=unroll)",
         "PGD-AT's inner PGD starts at x",
         ("test_objective_matches_numpy_reference",)),
    _ref("default_llr_lambda", _OBJ,
         "\"llr\": {\"step_size\": 0.1, \"num_steps\": 10, \"lam\": 4.0, "
         "\"mu\": 3.0,",
         "\"llr\": {\"step_size\": 0.1, \"num_steps\": 10, \"lam\": 3.0, "
         "\"mu\": 3.0,",
         "LLR's default lambda 3", ("test_objective_defaults_are_the_papers_"
                                    "settings",)),
    _ref("default_llr_mu", _OBJ,
         "\"llr\": {\"step_size\": 0.1, \"num_steps\": 10, \"lam\": 4.0, "
         "\"mu\": 3.0,",
         "\"llr\": {\"step_size\": 0.1, \"num_steps\": 10, \"lam\": 4.0, "
         "\"mu\": 4.0,",
         "LLR's default mu 4", ("test_objective_defaults_are_the_papers_"
                                "settings",)),
    _ref("default_llr_nominal_weight", _OBJ,
         "\"nominal_weight\": 2.0},", "\"nominal_weight\": 1.0},",
         "LLR's default nominal weight 1",
         ("test_objective_defaults_are_the_papers_settings",)),
    _ref("default_llr_adam", _OBJ,
         "\"llr\": {\"step_size\": 0.1, \"num_steps\": 10, \"lam\": 4.0, "
         "\"mu\": 3.0,",
         "\"llr\": {\"step_size\": 0.1, \"num_steps\": 5, \"lam\": 4.0, "
         "\"mu\": 3.0,",
         "LLR's default 5 Adam steps",
         ("test_objective_defaults_are_the_papers_settings",)),
    _ref("default_lfr_lambda", _OBJ,
         "\"lfr\": {\"step_size\": 0.01, \"num_steps\": 40, \"lam\": 0.02, "
         "\"norm\": \"l1\",",
         "\"lfr\": {\"step_size\": 0.01, \"num_steps\": 40, \"lam\": 0.01, "
         "\"norm\": \"l1\",",
         "LFR's default lambda 0.01",
         ("test_objective_defaults_are_the_papers_settings",)),
    _ref("default_lfr_inner", _OBJ,
         "\"lfr\": {\"step_size\": 0.01, \"num_steps\": 40, \"lam\": 0.02, "
         "\"norm\": \"l1\",",
         "\"lfr\": {\"step_size\": 0.02, \"num_steps\": 40, \"lam\": 0.02, "
         "\"norm\": \"l1\",",
         "LFR's default inner step 0.02",
         ("test_objective_defaults_are_the_papers_settings",)),
    _ref("default_lfr_fd_step", _OBJ,
         "\"ascent\": \"exact\", \"penalty\": \"exact\", \"fd_step\": 0.01,",
         "\"ascent\": \"exact\", \"penalty\": \"exact\", \"fd_step\": 0.02,",
         "LFR's default h 0.02",
         ("test_objective_defaults_are_the_papers_settings",)),
    _ref("default_lfr_start", _OBJ,
         "\"start\": \"gaussian\"},",
         "\"start\": \"uniform\"},",
         "LFR's default start uniform",
         ("test_objective_defaults_are_the_papers_settings",)),
    _ref("lfr_objective_default_h", _OBJ,
         "fd_step=fd_step, start=start)",
         "fd_step=0.01, start=start)",
         "LFR's objective drops its fd_step setting for h = 0.01",
         ("test_objective_matches_numpy_reference",)),
    _ref("default_trades_beta", _OBJ,
         "\"trades\": {\"step_size\": 0.01, \"num_steps\": 40, \"beta\": "
         "1.0},",
         "\"trades\": {\"step_size\": 0.01, \"num_steps\": 40, \"beta\": "
         "6.0},",
         "TRADES' default beta 6",
         ("test_objective_defaults_are_the_papers_settings",)),
    _ref("default_gradient_norm_lambda", _OBJ,
         "\"gradient_norm\": {\"lam\": 0.02, \"norm\": \"l1\"},",
         "\"gradient_norm\": {\"lam\": 0.05, \"norm\": \"l1\"},",
         "the first-order penalty's default lambda 0.05",
         ("test_objective_defaults_are_the_papers_settings",)),
    _ref("default_pgd_at_steps", _OBJ,
         "\"pgd_at\": {\"step_size\": 0.01, \"num_steps\": 40},",
         "\"pgd_at\": {\"step_size\": 0.01, \"num_steps\": 20},",
         "PGD-AT's default 20 steps",
         ("test_objective_defaults_are_the_papers_settings",)),
)

# What the copy holds: the package, the tests and everything they import.
_COPIED = ("lfr_jax", "tests", "configs", "tools", "bench", "pyproject.toml")
_LINKED = ("data",)  # read-only data, linked rather than copied


def occurrences(mutant: Mutant, root: str = REPO) -> int:
  """How often the mutant's original text occurs in its file (0 if no file)."""
  path = os.path.join(root, mutant.path)
  if not os.path.isfile(path):
    return 0
  with open(path, encoding="utf-8") as f:
    return f.read().count(mutant.original)


def problems(mutants: Sequence[Mutant] = MUTANTS, root: str = REPO
             ) -> list[str]:
  """Everything that makes the table unusable, without running anything:
  duplicate names, no-op or multi-line edits, originals not found exactly
  once (stale), and tests whose file or function does not exist."""
  out, seen = [], set()
  for m in mutants:
    if m.name in seen:
      out.append(f"{m.name}: duplicate name")
    seen.add(m.name)
    if m.original == m.replacement:
      out.append(f"{m.name}: the replacement equals the original")
    if "\n" in m.original or "\n" in m.replacement:
      out.append(f"{m.name}: not a one-line edit")
    count = occurrences(m, root)
    if count != 1:
      out.append(f"{m.name}: stale, its original occurs {count} times in "
                 f"{m.path}")
    if not m.tests and not m.suite:
      out.append(f"{m.name}: no tests")
    for file in m.suite:
      if not os.path.isfile(os.path.join(root, file)):
        out.append(f"{m.name}: no test file {file}")
    for node in m.tests:
      file, _, func = node.partition("::")
      func = func.split("[")[0]
      path = os.path.join(root, file)
      if not os.path.isfile(path):
        out.append(f"{m.name}: no test file {file}")
        continue
      with open(path, encoding="utf-8") as f:
        if not re.search(rf"^def {re.escape(func)}\(", f.read(), re.M):
          out.append(f"{m.name}: no test {func} in {file}")
  return out


def make_copy(root: str = REPO) -> str:
  """A temporary copy of what the tests need; returns its path."""
  dest = tempfile.mkdtemp(prefix="lfr_mutants_")
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
  for name in _COPIED:
    src = os.path.join(root, name)
    if os.path.isdir(src):
      shutil.copytree(src, os.path.join(dest, name), ignore=ignore)
    elif os.path.isfile(src):
      shutil.copy2(src, os.path.join(dest, name))
  for name in os.listdir(root):
    if name.endswith(".py") and os.path.isfile(os.path.join(root, name)):
      shutil.copy2(os.path.join(root, name), os.path.join(dest, name))
  for name in _LINKED:
    if os.path.exists(os.path.join(root, name)):
      os.symlink(os.path.join(root, name), os.path.join(dest, name))
  return dest


# Inside the copy: the persistent XLA compilation cache shared by every test
# run of one mutation check, and the seconds each test took unmutated.
_CACHE = ".jax_cache"
_TIMES = ".test_seconds.json"


def _env(copy: str, *, order: bool = False, record: bool = False
         ) -> dict[str, str]:
  """The test runs' environment: the copy first on the path, XLA's
  persistent compilation cache in the copy, and the timing plugin's
  switches (``order``: fastest tests first; ``record``: save the times).

  The cache is keyed by the compiled program itself (its HLO, the compile
  options and the jax, jaxlib and XLA versions), so a mutant that changes
  a program compiles it afresh, while the programs it leaves alone are
  loaded instead of compiled again: most of a test file's time on CPU.
  Programs with host callbacks are never cached by jax.
  """
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [copy] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  env["PYTHONDONTWRITEBYTECODE"] = "1"
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(copy, _CACHE)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  for name in (mutants_plugin.ORDER, mutants_plugin.TIMES):
    env.pop(name, None)
  if order:
    env[mutants_plugin.ORDER] = os.path.join(copy, _TIMES)
  if record:
    env[mutants_plugin.TIMES] = os.path.join(copy, _TIMES)
  return env


def check_imports_copy(copy: str) -> None:
  """Raises unless ``import lfr_jax`` in the copy loads the copy."""
  out = subprocess.run(
      [sys.executable, "-c", "import lfr_jax; print(lfr_jax.__file__)"],
      cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=300)
  where = out.stdout.strip()
  if out.returncode or not os.path.realpath(where).startswith(
      os.path.realpath(copy) + os.sep):
    raise RuntimeError(f"lfr_jax in the copy imports from {where!r} "
                       f"{out.stderr[-500:]}")


def add_old_suite(copy: str, root: str = REPO) -> str:
  """Writes the test files of :data:`OLD_SUITE_COMMIT` under ``copy``.

  Returns:
    The folder (relative to ``copy``) that holds them as ``tests/``.
  """
  folder = os.path.join(copy, "old_suite")
  os.makedirs(folder)
  archive = subprocess.run(
      ["git", "-C", root, "archive", OLD_SUITE_COMMIT, "tests"],
      capture_output=True, check=True).stdout
  subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
  return "old_suite"


def run_tests(copy: str, nodes: Sequence[str], timeout: float, *,
              order: bool = False, record: bool = False
              ) -> tuple[str, str, str]:
  """Runs ``nodes`` (test ids or files) in the copy with ``-x``, deselecting
  the slow tests: (status, first failing node, log).

  ``order`` runs each file's tests fastest first (by the recorded times);
  ``record`` records their times (see ``tools/mutants_plugin.py``).
  """
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
         "-p", "tools.mutants_plugin", "-o", "addopts=", "-m", "not slow",
         "-rfE", *nodes]
  try:
    proc = subprocess.run(cmd, cwd=copy,
                          env=_env(copy, order=order, record=record),
                          capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", "", f"over {timeout:.0f} s"
  log = proc.stdout + proc.stderr
  failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", log, re.M)
  if proc.returncode == 1 and failed:
    return "failed", failed[0], log
  if proc.returncode == 0:
    if not re.search(r"\d+ passed", log):
      return "skipped", "", log
    return "passed", "", log
  return "error", "", log


@dataclasses.dataclass
class Result:
  """Outcome of one mutant: "caught", "survived", "equivalent" (survived,
  and its entry explains why it cannot change a value), "stale", "error",
  "timeout"."""
  mutant: Mutant
  status: str
  caught_by: str = ""
  seconds: float = 0.0
  detail: str = ""


def _stages(m: Mutant, old_suite: str | None
            ) -> list[tuple[tuple[str, ...], bool]]:
  """The test runs tried in turn, each (nodes, fastest first): the hints in
  their order, then the module's suite files; against the old suite, only
  its files (under ``old_suite``)."""
  if old_suite is not None:
    return [(tuple(f"{old_suite}/{f}"
                   for f in suite_files(m.path, old=True)), True)]
  return [(nodes, fastest) for nodes, fastest in ((m.tests, False),
                                                  (m.suite, True)) if nodes]


def _baseline(mutants: Sequence[Mutant], copy: str, timeout: float,
              old_suite: str | None, log: Callable[[str], None]) -> None:
  """Runs every test run of ``mutants`` unmutated; raises unless all pass.

  The first pass, in collection order, records each test's time and fills
  the compilation cache; the second runs the files fastest first, as the
  mutants' suite runs do, so that a mutant is never "caught" by a test that
  fails in that order alone.
  """
  stages = {stage for m in mutants if occurrences(m, copy) == 1
            for stage in _stages(m, old_suite)}
  everything = {n for nodes, _ in stages for n in nodes}
  # A node id inside a file that runs whole would run twice.
  passes = [(sorted(n for n in everything
                    if "::" not in n or n.split("::")[0] not in everything),
             False, True)]
  fastest = sorted({n for nodes, first in stages if first for n in nodes})
  if fastest:
    passes.append((fastest, True, False))
  for nodes, order, record in passes:
    t0 = time.time()
    status, node, out = run_tests(copy, nodes, timeout * 2, order=order,
                                  record=record)
    log(f"baseline{' (fastest first)' if order else ''}: {len(nodes)} tests "
        f"or files {status} in {time.time() - t0:.0f} s")
    if status != "passed":
      raise RuntimeError(f"the unmutated tests did not pass ({status} "
                         f"{node}):\n{out[-3000:]}")


def run(mutants: Sequence[Mutant] = MUTANTS, *, root: str = REPO,
        timeout: float = 1800.0, baseline: bool = True, keep: bool = False,
        old: bool = False, log: Callable[[str], None] = print,
        progress: Callable[[list[Result]], None] | None = None
        ) -> list[Result]:
  """Applies each mutant alone to a fresh copy of ``root`` and runs its tests.

  Args:
    mutants: the mutants to try.
    root: the repository to copy.
    timeout: seconds allowed for one test run of one mutant.
    baseline: first run every test run unmutated (all must pass, or nothing
      is tried); without it the suite files run in collection order.
    keep: keep the temporary copy.
    old: run the second set's mutants against the old suite (the module's
      test files at :data:`OLD_SUITE_COMMIT`) instead of the current one.
    log: progress printer.
    progress: called with the results so far after each mutant (e.g. to
      save a partial record that an interrupted run leaves behind).

  Returns:
    One :class:`Result` per mutant, in order.
  """
  copy = make_copy(root)
  try:
    check_imports_copy(copy)
    old_suite = add_old_suite(copy, root) if old else None
    if baseline:
      _baseline(mutants, copy, timeout, old_suite, log)
    results = []
    for m in mutants:
      results.append(_try(m, copy, timeout, old_suite))
      r = results[-1]
      log(f"{m.name}: {r.status} {r.caught_by} ({r.seconds:.0f} s)")
      if progress is not None:
        progress(list(results))
    return results
  finally:
    if keep:
      log(f"copy kept in {copy}")
    else:
      shutil.rmtree(copy, ignore_errors=True)


def _try(m: Mutant, copy: str, timeout: float,
         old_suite: str | None = None) -> Result:
  path = os.path.join(copy, m.path)
  count = occurrences(m, copy)
  if count != 1:
    return Result(m, "stale", detail=f"original found {count} times")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  t0 = time.time()
  status, node, out = "passed", "", ""
  try:
    with open(path, "w", encoding="utf-8") as f:
      f.write(text.replace(m.original, m.replacement))
    for nodes, fastest in _stages(m, old_suite):
      status, node, out = run_tests(copy, nodes, timeout, order=fastest)
      if status != "passed":
        break
  finally:
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
  seconds = time.time() - t0
  if status == "failed":
    return Result(m, "caught", node, seconds)
  if status == "passed":
    return Result(m, "equivalent" if m.equivalent else "survived",
                  seconds=seconds)
  return Result(m, status, seconds=seconds, detail=out[-2000:])


def table(results: Sequence[Result]) -> str:
  """The results as a Markdown table."""
  lines = ["| mutant | file | bug | result | caught by | s |",
           "|---|---|---|---|---|---|"]
  for r in results:
    what = r.mutant.what
    if r.mutant.equivalent:
      what += f" (equivalent: {r.mutant.equivalent})"
    what = what.replace("|", "\\|")
    lines.append(f"| {r.mutant.name} | {r.mutant.path} | {what} | "
                 f"{r.status} | {r.caught_by or '-'} | {r.seconds:.0f} |")
  return "\n".join(lines)


def summary(results: Sequence[Result]) -> tuple[int, int, int]:
  """(caught, equivalent, total)."""
  return (sum(r.status == "caught" for r in results),
          sum(r.status == "equivalent" for r in results), len(results))


def hardware() -> str:
  """The machine in words, e.g. "2-core x86_64 CPU"."""
  return f"{os.cpu_count()}-core {platform.machine()} CPU"


def sample(mutants: Sequence[Mutant], k: int, seed: int) -> list[Mutant]:
  """``k`` of ``mutants`` (all if there are no more), the first ``k`` of a
  random permutation drawn by ``seed``: any prefix of a run (one that was
  stopped early) is a random sample too, and a smaller ``k`` tries the
  first mutants of a larger one."""
  order = random.Random(seed).sample(range(len(mutants)), len(mutants))
  return [mutants[i] for i in order[:k]]


def write_record(path: str, results: Sequence[Result], suite: str,
                 planned: int | None = None, command: str = "") -> None:
  """Saves a run's outcome (per mutant, when, and on what machine) as JSON.

  ``planned``: how many mutants the run was to try (``total`` is how many it
  has tried; fewer if it was interrupted); ``command``: how it was run.
  """
  caught, equivalent, total = summary(results)
  record = {"suite": suite, "old_suite_commit": OLD_SUITE_COMMIT,
            "date": time.strftime("%Y-%m-%d"), "hardware": hardware(),
            "command": command, "set_size": len(REFERENCE_MUTANTS),
            "planned": total if planned is None else planned,
            "caught": caught,
            "equivalent": equivalent, "total": total,
            "seconds": round(sum(r.seconds for r in results)),
            "mutants": {r.mutant.name: {"status": r.status,
                                        "caught_by": r.caught_by,
                                        "seconds": round(r.seconds, 1)}
                        for r in results}}
  with open(path, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.write("\n")


def read_record(path: str = OLD_SUITE_RECORD) -> dict | None:
  """A record written by :func:`write_record`, or None if there is none."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _rate(statuses: dict[str, str], names: Sequence[str]) -> str:
  caught = sum(statuses[n] == "caught" for n in names)
  equivalent = sum(statuses[n] == "equivalent" for n in names)
  return f"{caught} of {len(names)} caught, {equivalent} equivalent"


def comparison(statuses: dict[str, str], old: dict | None) -> str:
  """One line: the current suite's and the old suite's catch rates on the
  mutants both tried (``statuses``: name -> status of the current run;
  ``old``: the old suite's record, or None)."""
  if not old:
    return ("The old suite's rate is not recorded: run `python "
            "tools/mutants.py --old_suite --record "
            f"{os.path.relpath(OLD_SUITE_RECORD, REPO)}`.")
  old_statuses = {k: v["status"] for k, v in old["mutants"].items()}
  both = [n for n in statuses if n in old_statuses]
  if not both:
    return "The old suite's record shares no mutant with this run."
  return (f"On the {len(both)} mutants both tried: this suite "
          f"{_rate(statuses, both)}; the old suite (the tests at "
          f"{old['old_suite_commit'][:7]}, {old['date']}) "
          f"{_rate(old_statuses, both)}.")


def merge_records(records: Sequence[dict]) -> dict:
  """One record from several runs of the same suite: a later run's outcome
  of a mutant replaces an earlier one's; the commands are joined."""
  merged = dict(records[0], mutants=dict(records[0]["mutants"]))
  for r in records[1:]:
    merged["mutants"].update(r["mutants"])
    merged["command"] += f"`, then `{r['command']}"
  statuses = [m["status"] for m in merged["mutants"].values()]
  merged.update(caught=statuses.count("caught"),
                equivalent=statuses.count("equivalent"), total=len(statuses))
  return merged


def report(new: dict, old: dict | None) -> str:
  """Markdown: the catch rates of two records (the current suite's and the
  old suite's) and, per mutant of the second set, the test that caught it."""
  lines = [f"# Mutation check: every constant and normalization\n",
           f"Written by `python tools/mutants.py --report`, from "
           f"`{new['command']}` ({new['date']}, {new['hardware']}"
           + (f") and `{old['command']}` ({old['date']}, {old['hardware']})."
              if old else ")."), ""]
  statuses = {k: v["status"] for k, v in new["mutants"].items()}
  lines.append(f"- Default suite: {_rate(statuses, list(statuses))} of the "
               f"{new['planned']} planned (the set has {new['set_size']}).")
  if old:
    old_statuses = {k: v["status"] for k, v in old["mutants"].items()}
    lines.append(f"- Old suite: {_rate(old_statuses, list(old_statuses))} of "
                 f"the {old['planned']} planned.")
  lines += ["- " + comparison(statuses, old), "",
            "| mutant | file | constant or normalization changed | test meant "
            "to pin it | default suite: caught by | old suite |",
            "|---|---|---|---|---|---|"]
  for m in REFERENCE_MUTANTS:
    got = new["mutants"].get(m.name)
    was = (old or {}).get("mutants", {}).get(m.name)
    what = m.what + (f" (equivalent: {m.equivalent})" if m.equivalent
                     else "")
    here = (f"{got['status']}: `{got['caught_by']}`" if got
            and got["caught_by"] else got["status"] if got else "not run")
    meant = ", ".join(f"`{t.split('::')[-1]}`" for t in m.tests) or "-"
    lines.append(f"| {m.name} | {m.path} | {what.replace('|', '/')} | "
                 f"{meant} | {here} | {was['status'] if was else 'not run'} |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--set", default="all",
                      choices=("all", "first", "reference"),
                      help="the first set (MUTANTS), the second "
                      "(REFERENCE_MUTANTS) or both")
  parser.add_argument("--only", default="",
                      help="comma-separated mutant names (default: all)")
  parser.add_argument("--sample", type=int, default=0,
                      help="run only this many of the second set's mutants, "
                      "drawn at random (reproducibly, by --seed)")
  parser.add_argument("--seed", type=int, default=0,
                      help="the seed of --sample's draw")
  parser.add_argument("--report", default="",
                      help="print the Markdown report of this record of the "
                      "default suite (comma-separated records: later runs' "
                      "mutants replace earlier ones'), with the old suite's "
                      "record beside it; run nothing")
  parser.add_argument("--list", action="store_true",
                      help="print the table of mutants and their tests")
  parser.add_argument("--old_suite", action="store_true",
                      help="run the second set against the old suite (test "
                      "files at OLD_SUITE_COMMIT) instead")
  parser.add_argument("--record", default="",
                      help="write the second set's outcome to this JSON file")
  parser.add_argument("--timeout", type=float, default=1800.0,
                      help="seconds per test run of one mutant")
  parser.add_argument("--no_baseline", action="store_true",
                      help="skip the unmutated run")
  parser.add_argument("--keep", action="store_true",
                      help="keep the temporary copy")
  args = parser.parse_args(argv)
  if args.report:
    records = [read_record(path) for path in args.report.split(",")]
    if any(r is None for r in records):
      parser.error(f"no record at one of {args.report}")
    print(report(merge_records(records), read_record()), end="")
    return 0
  first = list(MUTANTS) if args.set in ("all", "first") else []
  second = (list(REFERENCE_MUTANTS)
            if args.set in ("all", "reference") or args.old_suite else [])
  if args.old_suite:
    first = []
  if args.only:
    names = [n for n in args.only.split(",") if n]
    known = {m.name for m in MUTANTS + REFERENCE_MUTANTS}
    unknown = sorted(set(names) - known)
    if unknown:
      parser.error(f"unknown mutant(s) {unknown}; see --list")
    first = [m for m in first if m.name in names]
    second = [m for m in second if m.name in names]
  if args.sample:
    second = sample(second, args.sample, args.seed)
  if args.list:
    for m in first + second:
      print(f"{m.name}  [{m.path}]  {m.what}")
      for node in m.tests + m.suite:
        print(f"    {node}")
      if m.equivalent:
        print(f"    equivalent: {m.equivalent}")
    return 0
  bad = problems(first + second)
  for line in bad:
    print(f"table: {line}", file=sys.stderr)
  progress = lambda s: print(s, file=sys.stderr, flush=True)
  suite_name = "old" if args.old_suite else "default"
  command = "python tools/mutants.py " + " ".join(
      sys.argv[1:] if argv is None else argv)

  def save(results: list[Result]) -> None:
    if args.record:
      write_record(args.record, results[len(first):], suite_name,
                   planned=len(second), command=command)

  results = run(first + second, timeout=args.timeout,
                baseline=not args.no_baseline, keep=args.keep,
                old=args.old_suite, log=progress, progress=save)
  first_results, second_results = results[:len(first)], results[len(first):]
  ok = not bad
  if first_results:
    print("## First set: the bugs we thought of\n")
    print(table(first_results))
    caught, _, total = summary(first_results)
    print(f"\n{caught} of {total} mutants caught.\n")
    ok &= caught == total
  if second_results:
    suite = "old suite" if args.old_suite else "default suite"
    print(f"## Second set: every constant and normalization ({suite})\n")
    print(table(second_results))
    caught, equivalent, total = summary(second_results)
    print(f"\n{caught} of {total} mutants caught by the {suite}, "
          f"{equivalent} shown equivalent, "
          f"{total - caught - equivalent} missed.")
    if not args.old_suite:
      print(comparison({r.mutant.name: r.status for r in second_results},
                       read_record()))
    ok &= caught + equivalent == total
    save(results)
  for r in results:
    if r.status not in ("caught", "equivalent") and r.detail:
      print(f"\n--- {r.mutant.name} ({r.status}) ---\n{r.detail}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
