"""Mutation check of the core maths: is every one-line bug caught by a test?

Each entry of :data:`MUTANTS` names a file, an exact text in it, its one-line
replacement and the test node ids that should catch it. The script copies the
repository to a temporary folder, runs those tests once unmutated (they must
pass), then applies each mutant alone to the copy, runs its tests with
``pytest -x`` and prints a table of which mutant was caught and by which
test. The working tree is never modified.

A mutant whose original text is no longer found exactly once (the code moved
or changed) is reported "stale"; update its entry. Any outcome other than
"caught" makes the script exit with status 1, and fails the slow test
``tests/test_mutants.py``.

Usage::

    python tools/mutants.py                       # every mutant (~10 min on 2 cores)
    python tools/mutants.py --only apgd_no_halving,lfr_eps_half
    python tools/mutants.py --list                # the table, nothing run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
  """One one-line bug: ``original`` (exact, found once) -> ``replacement``."""
  name: str
  path: str
  original: str
  replacement: str
  tests: tuple[str, ...]
  what: str


_OBJ = "tests/test_objectives.py::"
_VALUE = _OBJ + "test_objective_value_matches_float64_reference"
_REG = "tests/test_regularizers.py::"
_ATT = "tests/test_attacks.py::"
_EVAL = "tests/test_evaluation.py::"
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

# What the copy holds: the package, the tests and everything they import.
_COPIED = ("lfr_jax", "tests", "configs", "tools", "bench", "pyproject.toml")
_LINKED = ("data",)  # read-only data, linked rather than copied


@dataclasses.dataclass
class Result:
  """Outcome of one mutant: "caught", "survived", "stale", "error", "timeout"."""
  mutant: Mutant
  status: str
  caught_by: str = ""
  seconds: float = 0.0
  detail: str = ""


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
    if not m.tests:
      out.append(f"{m.name}: no tests")
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


def _env(copy: str) -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [copy] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  env["PYTHONDONTWRITEBYTECODE"] = "1"
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


def run_tests(copy: str, nodes: Sequence[str], timeout: float
              ) -> tuple[str, str, str]:
  """Runs ``nodes`` in the copy with ``-x``: (status, first failing node, log)."""
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
         "-o", "addopts=", "-rfEs", *nodes]
  try:
    proc = subprocess.run(cmd, cwd=copy, env=_env(copy), capture_output=True,
                          text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", "", f"over {timeout:.0f} s"
  log = proc.stdout + proc.stderr
  failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", log, re.M)
  if proc.returncode == 1 and failed:
    return "failed", failed[0], log
  if proc.returncode == 0:
    if re.search(r"\d+ skipped", log):
      return "skipped", "", log
    return "passed", "", log
  return "error", "", log


def run(mutants: Sequence[Mutant] = MUTANTS, *, root: str = REPO,
        timeout: float = 900.0, baseline: bool = True, keep: bool = False,
        log: Callable[[str], None] = print) -> list[Result]:
  """Applies each mutant alone to a fresh copy of ``root`` and runs its tests.

  Args:
    mutants: the mutants to try.
    root: the repository to copy.
    timeout: seconds allowed for one mutant's tests.
    baseline: first run every mutant's tests unmutated (they must pass, or
      nothing is tried).
    keep: keep the temporary copy.
    log: progress printer.

  Returns:
    One :class:`Result` per mutant, in order.
  """
  copy = make_copy(root)
  try:
    check_imports_copy(copy)
    if baseline:
      nodes = sorted({n for m in mutants for n in m.tests
                      if occurrences(m, copy) == 1})
      t0 = time.time()
      status, node, out = run_tests(copy, nodes, timeout * 2)
      log(f"baseline: {len(nodes)} tests {status} in {time.time() - t0:.0f} s")
      if status != "passed":
        raise RuntimeError(f"the unmutated tests did not pass ({status} "
                           f"{node}):\n{out[-3000:]}")
    results = []
    for m in mutants:
      results.append(_try(m, copy, timeout))
      r = results[-1]
      log(f"{m.name}: {r.status} {r.caught_by} ({r.seconds:.0f} s)")
    return results
  finally:
    if keep:
      log(f"copy kept in {copy}")
    else:
      shutil.rmtree(copy, ignore_errors=True)


def _try(m: Mutant, copy: str, timeout: float) -> Result:
  path = os.path.join(copy, m.path)
  count = occurrences(m, copy)
  if count != 1:
    return Result(m, "stale", detail=f"original found {count} times")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  t0 = time.time()
  try:
    with open(path, "w", encoding="utf-8") as f:
      f.write(text.replace(m.original, m.replacement))
    status, node, out = run_tests(copy, m.tests, timeout)
  finally:
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
  seconds = time.time() - t0
  if status == "failed":
    return Result(m, "caught", node, seconds)
  if status == "passed":
    return Result(m, "survived", seconds=seconds)
  return Result(m, status, seconds=seconds, detail=out[-2000:])


def table(results: Sequence[Result]) -> str:
  """The results as a Markdown table."""
  lines = ["| mutant | file | bug | result | caught by | s |",
           "|---|---|---|---|---|---|"]
  for r in results:
    lines.append(f"| {r.mutant.name} | {r.mutant.path} | {r.mutant.what} | "
                 f"{r.status} | {r.caught_by or '-'} | {r.seconds:.0f} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="",
                      help="comma-separated mutant names (default: all)")
  parser.add_argument("--list", action="store_true",
                      help="print the table of mutants and their tests")
  parser.add_argument("--timeout", type=float, default=900.0,
                      help="seconds per mutant")
  parser.add_argument("--no_baseline", action="store_true",
                      help="skip the unmutated run")
  parser.add_argument("--keep", action="store_true",
                      help="keep the temporary copy")
  args = parser.parse_args(argv)
  chosen = list(MUTANTS)
  if args.only:
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - {m.name for m in MUTANTS})
    if unknown:
      parser.error(f"unknown mutant(s) {unknown}; see --list")
    chosen = [m for m in MUTANTS if m.name in names]
  if args.list:
    for m in chosen:
      print(f"{m.name}  [{m.path}]  {m.what}")
      for node in m.tests:
        print(f"    {node}")
    return 0
  bad = problems(chosen)
  for line in bad:
    print(f"table: {line}", file=sys.stderr)
  results = run(chosen, timeout=args.timeout, baseline=not args.no_baseline,
                keep=args.keep,
                log=lambda s: print(s, file=sys.stderr, flush=True))
  print(table(results))
  caught = sum(r.status == "caught" for r in results)
  print(f"\n{caught} of {len(results)} mutants caught.")
  for r in results:
    if r.status != "caught" and r.detail:
      print(f"\n--- {r.mutant.name} ({r.status}) ---\n{r.detail}")
  return 0 if caught == len(results) and not bad else 1


if __name__ == "__main__":
  sys.exit(main())
