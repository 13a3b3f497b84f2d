"""What a report says about itself: a quick estimate, APGD-T on a subset,
and why a ReLU model's Hessian columns read 0."""

import jax.numpy as jnp
import numpy as np

from configs import evaluate as eval_configs
from lfr_jax import evaluation


def _linear_row():
  return evaluation.ModelRow("linear", lambda p, x: x.reshape(len(x), -1) @ p,
                             jnp.eye(4, 10))


def test_the_quick_variant_says_it_is_an_estimate_and_how_it_differs():
  quick = evaluation.from_config(eval_configs.get_config("quick").eval)
  full = evaluation.from_config(eval_configs.get_config("").eval)
  notice = evaluation.estimate_notice(quick, full)
  assert notice.startswith("quick estimate (configs/evaluate.py:quick), not "
                           "the full evaluation: num_examples 200 (full: "
                           "all); apgd_t_examples 50 (full: 0);")
  assert "\n" not in notice
  assert evaluation.estimate_notice(full, full) == ""
  # The full attack budgets: the quick table is no smoke test.
  assert evaluation.reduced_settings(quick) == []


def test_apgd_t_on_a_subset_is_judged_on_it_and_the_report_says_so():
  cfg = eval_configs.get_config("smoke").eval
  cfg.attacks, cfg.checks, cfg.geometry = "pgd,apgd_t,worst", False, False
  cfg.eps_sweep, cfg.apgd_t_examples = (), 2
  x = np.full((6, 2, 2, 1), 0.5, np.float32)
  x[:, 0, 0, 0] = np.linspace(0.0, 1.0, 6)
  y = np.zeros(6, np.int32)
  report = evaluation.evaluate([_linear_row()], x, y,
                               evaluation.from_config(cfg))
  row = report.rows[0]
  assert row.subsets == {"apgd_t": 2}
  assert row.acc("apgd_t") == float(np.mean(row.robust["apgd_t"][:2]))
  # Past the subset APGD-T did not run: the worst case there is the others'.
  np.testing.assert_array_equal(row.robust["worst"][2:],
                                row.robust["pgd"][2:] & row.clean[2:])
  table = evaluation.main_table(report)
  assert "(first 2)" in table
  markdown = evaluation.to_markdown(report)
  assert "on the first 2 evaluated images only" in markdown
  assert "APGD-T on the first 2 only: an upper bound" in markdown
  assert evaluation.metrics(row, report)["apgd_t_examples"] == 2.0


def test_a_zero_hessian_spectrum_is_explained_in_the_report():
  cfg = eval_configs.get_config("smoke").eval
  cfg.attacks, cfg.checks, cfg.geometry, cfg.eps_sweep = "pgd", False, False, ()
  x, y = np.full((4, 2, 2, 1), 0.5, np.float32), np.zeros(4, np.int32)
  report = evaluation.evaluate([_linear_row()], x, y,
                               evaluation.from_config(cfg))
  report.rows[0].geometry.update(hessian_top_abs_mean=0.0, jacobian_l1_mean=1.0)
  assert "Zero Hessian spectrum (linear): a ReLU network is piecewise linear" \
      in evaluation.to_markdown(report)
  report.rows[0].geometry["hessian_top_abs_mean"] = 0.3
  assert "Zero Hessian spectrum" not in evaluation.to_markdown(report)
