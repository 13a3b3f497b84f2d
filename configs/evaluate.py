"""Settings of the robustness evaluation (evaluate.py, tools/sweep.py).

Run (full test set, the LFR paper's attacks; ``:quick`` for a few-minute
estimate on 200 examples, ``:smoke`` for tests only)::

    python evaluate.py --workdir=runs/mnist_lfr
    python evaluate.py --workdir=runs/mnist_lfr --config.eval.num_examples=500
    python evaluate.py --workdir=runs/a,runs/b --out=runs/compare \\
        --config=configs/evaluate.py:quick

All values live under ``eval``. The defaults are the LFR paper's MNIST
protocol (eps 0.3, PGD-40 with step 0.01); for CIFAR-10 override
``eval.eps``, ``eval.step_size``, ``eval.eps_sweep`` and ``eval.ddn_l2_budget``.

- ``num_examples``: first N test examples; 0 = the whole test split.
- ``attacks``: comma-separated table columns, in order, from
  ``lfr_jax.evaluation.ATTACK_NAMES`` ("all" = every one): ``pgd``,
  ``fgsm_lfr``, ``mifgsm_lfr``, ``ddn_lfr`` (the LFR authors' settings),
  ``fgsm``, ``mifgsm`` (textbook), ``apgd_ce``, ``apgd_t`` (AutoAttack) and
  ``worst`` (per example, the worst case over the l_inf columns).
- ``apgd_t_examples``: APGD-T on the first N evaluated images only (its
  column's accuracy is over them; the worst case includes it there only);
  0 = all.
- ``eps_sweep``: radii of the PGD / APGD-CE accuracy-vs-eps table and plot.
- ``checks``: gradient-masking sanity checks on the first ``check_examples``.
- ``geometry``: decision/loss surfaces, Jacobian/Hessian indicator and gamma
  histograms under ``<out>/figures``.

The ``:smoke`` variant shrinks every attack to a few steps: its numbers are
not robust accuracies (the report says so).
"""

import ml_collections

VARIANTS = ("", "quick", "smoke")


def get_config(arg=None):
  """Returns the evaluation config; ``arg`` is "", "quick" or "smoke"."""
  arg = arg or ""
  if arg not in VARIANTS:
    raise ValueError(f"unknown config variant {arg!r}; valid: '' (full), "
                     f"'quick', 'smoke'.")
  e = ml_collections.ConfigDict()
  e.num_examples = 0           # 0 = the whole test split
  e.batch_size = 500
  e.seed = 0
  e.attacks = "all"
  e.progress = True            # tqdm bar with ETA per attack
  e.variant = arg              # "" (full), "quick" or "smoke": for the report

  # Threat model and the LFR authors' attack settings (MNIST).
  e.eps = 0.3                  # l_inf radius of every l_inf column
  e.step_size = 0.01           # PGD / MI-FGSM step
  e.pgd_steps = 40             # PGD-40 and MI-FGSM's 40 steps
  e.mifgsm_lfr_decay = 0.1     # the authors' momentum decay
  e.mifgsm_decay = 1.0         # Dong et al.'s (textbook) decay
  e.ddn_steps = 20             # DDN, no norm bound
  e.ddn_levels = 256           # grey levels of DDN's iterates; 0 = off
  e.ddn_l2_budget = 2.0        # accuracy reported at ||delta||_2 <= this
  e.apgd_steps = 100           # APGD-CE and APGD-T (per target)
  e.apgd_targets = 9           # APGD-T target classes
  e.apgd_t_examples = 0        # APGD-T on the first N only; 0 = all
  e.eps_sweep = (0.1, 0.2, 0.3)

  # Gradient-masking checks (Carlini et al. 2019; Athalye et al. 2018).
  e.checks = True
  e.check_examples = 1000      # first N evaluated examples; 0 = all
  e.check_steps = 100          # PGD-100 (vs PGD-40), large-eps PGD, DDN
  e.check_restarts = 2         # restarts of the PGD-100 run
  e.large_eps = 0.5            # the all-0.5 image lies in every such ball
  e.large_eps_max_acc = 0.05   # PGD accuracy at large_eps must not exceed it
  e.random_search_steps = 1000  # queries of the gradient-free attack

  # Geometry figures and indicators.
  e.geometry = True
  e.geometry_examples = 100    # Jacobian / Hessian indicator images
  e.surface_points = 3         # test images with surfaces
  e.surface_resolution = 21    # grid points per axis
  e.surface_extent = 0.5       # grid half-width, pixel units
  e.hessian_iters = 20         # Lanczos steps per image
  e.gamma_examples = 0         # gamma histograms; 0 = every evaluated image
  e.gamma_steps = 20           # ascent steps of the local-flatness gamma

  if arg == "quick":
    # A few minutes on 2 CPU cores (README: "Evaluation"): every column at
    # full attack strength on fewer images, APGD-T (9 targets x 100 steps,
    # ~2/3 of the full table's cost) on the first 50 of them; evaluate.py
    # prints that it is an estimate and how it differs from the full one.
    e.num_examples = 200
    e.apgd_t_examples = 50
    e.check_examples = 100
    e.random_search_steps = 300
    e.geometry_examples = 10
    e.surface_points = 2
    e.surface_resolution = 15
    e.gamma_examples = 100
    e.hessian_iters = 10
  elif arg == "smoke":
    e.num_examples = 20
    e.batch_size = 16
    e.pgd_steps = 2
    e.step_size = 2.5 * e.eps / e.pgd_steps   # two steps still reach eps
    e.ddn_steps = 3
    e.apgd_steps = 3
    e.apgd_targets = 2
    e.eps_sweep = (0.1, 0.3)
    e.check_examples = 0
    e.check_steps = 3
    e.check_restarts = 2
    e.random_search_steps = 5
    e.geometry_examples = 4
    e.surface_points = 1
    e.surface_resolution = 3
    e.hessian_iters = 2
    e.gamma_examples = 8
    e.gamma_steps = 1
    e.progress = False
  return ml_collections.ConfigDict({"eval": e})
