"""Robustness evaluation: attack tables, gradient-masking checks, geometry.

:func:`evaluate` runs every selected attack of the robustness table on every
row (checkpoint) and returns a :class:`Report`; :func:`write_report` writes
it as ``robustness.md``, ``robustness.csv``, ``robustness.json`` and
``per_example.npz``. One module per job:

- :mod:`~lfr_jax.evaluation.settings`: ``config.eval`` checked and typed
  once (:func:`from_config` -> :class:`EvalSettings`);
- :mod:`~lfr_jax.evaluation.columns`: the table's attack columns
  (``config.eval.attacks``, see ``configs/evaluate.py``): the LFR paper's
  attacks at the authors' settings, the textbook versions, AutoAttack's
  APGD-CE / APGD-T, and ``worst`` (per example, misclassified under any
  l_inf column);
- :mod:`~lfr_jax.evaluation.runner`: jitted, batched attack execution;
- :mod:`~lfr_jax.evaluation.results`: rows, per-example results, the report;
- :mod:`~lfr_jax.evaluation.masking`: the gradient-masking checks (Carlini
  et al. 2019; Athalye et al. 2018), one ``PASS``/``WARN``/``SKIP`` line each;
- :mod:`~lfr_jax.evaluation.geometry_report`: surfaces, Jacobian/Hessian
  indicators and gammas, computed then drawn;
- :mod:`~lfr_jax.evaluation.loading`: workdirs, PyTorch checkpoints, the
  test data a run read;
- :mod:`~lfr_jax.evaluation.reports`: Markdown, CSV, JSON;
- :mod:`~lfr_jax.evaluation.pipeline`: :func:`evaluate` itself.

Usage (see evaluate.py)::

    python evaluate.py --workdir=runs/mnist_lfr
    python evaluate.py --workdir=runs/mnist_lfr --config.eval.num_examples=500

or in Python: ``config, rows = evaluation.load_run(workdir)``,
``x, y, info = evaluation.load_test_data(config.data, n)``, ``report =
evaluation.evaluate(rows, x, y, evaluation.from_config(eval_cfg),
figures_dir=...)``, ``evaluation.write_report(report, out_dir)``.

Example::

    import jax.numpy as jnp
    import numpy as np
    from configs import evaluate as eval_configs
    from lfr_jax import evaluation

    cfg = eval_configs.get_config("smoke").eval
    cfg.attacks, cfg.checks, cfg.geometry = "pgd,fgsm,worst", False, False
    row = evaluation.ModelRow("linear", lambda p, x: x.reshape(len(x), -1) @ p,
                              jnp.eye(4, 3))
    x, y = np.full((4, 2, 2, 1), 0.5, np.float32), np.arange(4) % 3
    report = evaluation.evaluate([row], x, y, evaluation.from_config(cfg))
    print(evaluation.summary_text(report))   # the table, then the eps sweep
"""

from lfr_jax.evaluation.columns import ATTACK_NAMES
from lfr_jax.evaluation.columns import Attack
from lfr_jax.evaluation.columns import COLUMNS
from lfr_jax.evaluation.columns import LINF_COLUMNS
from lfr_jax.evaluation.columns import apgd_ce_attack
from lfr_jax.evaluation.columns import pgd_attack
from lfr_jax.evaluation.columns import table_attacks
from lfr_jax.evaluation.columns import worst_description
from lfr_jax.evaluation.geometry_report import GeometryData
from lfr_jax.evaluation.geometry_report import compute_geometry
from lfr_jax.evaluation.geometry_report import draw_geometry
from lfr_jax.evaluation.geometry_report import flatness_step
from lfr_jax.evaluation.geometry_report import geometry_outputs
from lfr_jax.evaluation.loading import data_line
from lfr_jax.evaluation.loading import load_run
from lfr_jax.evaluation.loading import load_run_config
from lfr_jax.evaluation.loading import load_test_data
from lfr_jax.evaluation.loading import load_torch
from lfr_jax.evaluation.loading import resolve_checkpoint
from lfr_jax.evaluation.masking import CHECK_NAMES
from lfr_jax.evaluation.masking import CHECKS
from lfr_jax.evaluation.masking import build_check_attacks
from lfr_jax.evaluation.masking import masking_checks
from lfr_jax.evaluation.masking import noise_tolerance
from lfr_jax.evaluation.masking import run_check_attacks
from lfr_jax.evaluation.pipeline import evaluate
from lfr_jax.evaluation.reports import PAPER_STEP_COUNTS
from lfr_jax.evaluation.reports import check_lines
from lfr_jax.evaluation.reports import environment
from lfr_jax.evaluation.reports import estimate_notice
from lfr_jax.evaluation.reports import geometry_table
from lfr_jax.evaluation.reports import main_table
from lfr_jax.evaluation.reports import metrics
from lfr_jax.evaluation.reports import reduced_settings
from lfr_jax.evaluation.reports import summary_text
from lfr_jax.evaluation.reports import sweep_table
from lfr_jax.evaluation.reports import to_csv
from lfr_jax.evaluation.reports import to_json
from lfr_jax.evaluation.reports import to_markdown
from lfr_jax.evaluation.reports import write_report
from lfr_jax.evaluation.results import Check
from lfr_jax.evaluation.results import EvalError
from lfr_jax.evaluation.results import ModelRow
from lfr_jax.evaluation.results import Report
from lfr_jax.evaluation.results import RowResult
from lfr_jax.evaluation.results import accuracy
from lfr_jax.evaluation.results import ddn_summary
from lfr_jax.evaluation.results import network_logits
from lfr_jax.evaluation.runner import Runner
from lfr_jax.evaluation.runner import attack_key
from lfr_jax.evaluation.settings import SETTINGS
from lfr_jax.evaluation.settings import EvalSettings
from lfr_jax.evaluation.settings import from_config
from lfr_jax.evaluation.settings import parse_attacks
from lfr_jax.evaluation.settings import parse_eps_sweep
from lfr_jax.evaluation.settings import validate_settings

__all__ = [
    "ATTACK_NAMES", "CHECK_NAMES", "EvalError", "ModelRow", "Attack",
    "Runner", "Check", "RowResult", "Report", "accuracy", "parse_attacks",
    "validate_settings", "table_attacks", "pgd_attack", "apgd_ce_attack",
    "noise_tolerance", "ddn_summary", "masking_checks", "evaluate",
    "geometry_outputs", "load_run", "load_run_config", "load_torch",
    "load_test_data", "environment", "metrics", "main_table", "sweep_table",
    "check_lines", "to_markdown", "to_csv", "to_json", "write_report",
    "summary_text", "attack_key", "network_logits",
    # Named by the split into modules.
    "EvalSettings", "from_config", "parse_eps_sweep", "SETTINGS", "COLUMNS",
    "LINF_COLUMNS", "CHECKS", "PAPER_STEP_COUNTS", "build_check_attacks",
    "run_check_attacks", "compute_geometry", "draw_geometry", "GeometryData",
    "flatness_step", "geometry_table", "reduced_settings",
    "worst_description", "resolve_checkpoint", "data_line",
    "estimate_notice",
]
