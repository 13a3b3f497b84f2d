"""Shared defaults for every preset: one place for each paper's protocol.

A preset calls one of :func:`mnist`, :func:`cifar10` or :func:`imagenet` with
its method and method settings, then :func:`finish` with the ``:arg`` suffix of
the ``--config`` flag (``quick`` or ``smoke``). Configs hold only values
(strings, numbers, bools, tuples of numbers), so they print, diff and
override from the command line.

Layout of a config:

- ``method``: objective name (``lfr_jax.objectives.names()``).
- ``<method>``: that method's own settings (e.g. ``lfr.lam``); absent for
  methods without any (standard, pgd_at).
- ``inner``: the inner maximization shared by the methods that have one:
  ``eps`` (training radius), ``step_size``, ``num_steps``, ``warmup_epochs``
  (eps grows linearly from 0, LLR), ``unroll`` ("auto", "full", "none").
- ``model``: ``name`` plus keyword arguments of ``lfr_jax.models.create``
  (among them ``dtype``, the compute dtype, and ``conv``).
- ``data``, ``optim``, ``train``, ``eval``, ``checkpoint``, ``log``, ``mesh``,
  ``distributed``, ``seed``.

Example::

    from configs import common
    config = common.finish(common.mnist("lfr", lfr={"lam": 0.02, "norm": "l1"}),
                           "quick")
    config.inner.num_steps   # 10
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("", "quick", "repro", "curve", "converge", "smoke")

# The reduced protocol of docs/RESULTS.md (":repro"): the same for every row.
REPRO_EPOCHS = 1.0
REPRO_K = 10
# The robustness-vs-compute protocol (":curve"): :repro run for CURVE_EPOCHS,
# keeping the epoch-end checkpoints that are evaluated as the curve's points.
CURVE_EPOCHS = 5.0
CURVE_KEEP_EPOCHS = (1, 2, 5)

# Training until validation clean accuracy plateaus (":converge"): at most
# CONVERGE_EPOCHS, the learning rate x0.1 at each of CONVERGE_DECAY_EPOCHS,
# stopped once the best validation clean accuracy (on CONVERGE_VAL_EXAMPLES
# held-out images) is CONVERGE_PATIENCE epochs old and the last decay too.
CONVERGE_EPOCHS = 40.0
CONVERGE_DECAY_EPOCHS = (10.0, 20.0)
CONVERGE_PATIENCE = 3
CONVERGE_VAL_EXAMPLES = 2000

# Every keyword of lfr_jax.models.create for each model the presets use, with
# its default, so that any of them can be overridden from the command line
# (e.g. --config.model.activation=softplus). mean/std () = no normalization.
# Every model also takes the compute dtype ("float32" or "bfloat16":
# parameters, BatchNorm statistics, logits and losses stay float32) and the
# convolution ("auto" picks per platform, see lfr_jax.models.layers).
_NUMERICS = {"dtype": "float32", "conv": "auto"}
MODELS = {
    "small_cnn": {"num_classes": 10, "in_channels": 1, "dropout": 0.5,
                  "activation": "relu", **_NUMERICS},
    "ds_mnist_cnn": {"num_classes": 10, "in_channels": 1, "activation": "relu",
                     "init": "madry", **_NUMERICS},
    "wide_resnet": {"depth": 28, "width": 10, "num_classes": 10,
                    "in_channels": 3, "activation": "relu", "dropout": 0.0,
                    "mean": (), "std": (), **_NUMERICS},
    "resnet152": {"num_classes": 1000, "in_channels": 3, "width": 64,
                  "activation": "relu", "zero_init_residual": False,
                  "mean": (), "std": (), **_NUMERICS},
}


def model_section(name: str, **overrides) -> ml_collections.ConfigDict:
  """The ``model`` section: ``name`` plus every keyword of that model.

  Args:
    name: a key of :data:`MODELS`.
    **overrides: keywords that differ from the model's defaults.

  Returns:
    The section.
  """
  unknown = sorted(set(overrides) - set(MODELS[name]))
  if unknown:
    raise ValueError(f"model {name!r} has no setting(s) {unknown}.")
  return ml_collections.ConfigDict({"name": name, **MODELS[name], **overrides})

# Paper threat models and inner maximizations.
MNIST_EPS, MNIST_STEP, MNIST_K = 0.3, 0.01, 40          # LFR Sec. 5 (from TRADES)
CIFAR_EPS, CIFAR_STEP, CIFAR_K = 8 / 255, 2 / 255, 10   # TRADES/LLR CIFAR-10
IMAGENET_EPS = 4 / 255                                  # LLR ImageNet (4/255)

# ImageNet channel statistics, applied inside the model (inputs stay in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base(method: str) -> ml_collections.ConfigDict:
  """Settings every preset shares; the dataset helpers override what differs.

  Args:
    method: objective name.

  Returns:
    An unlocked ConfigDict.
  """
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  c.model = model_section("small_cnn")
  c.inner = ml_collections.ConfigDict({
      "eps": MNIST_EPS, "step_size": MNIST_STEP, "num_steps": MNIST_K,
      "warmup_epochs": 0.0, "unroll": "auto"})
  c.data = ml_collections.ConfigDict({
      "name": "mnist",
      # "auto": MNIST from IDX files when data.dir or $LFR_DATA_DIR is set,
      # otherwise (and for every other dataset) tfds array_record.
      "source": "auto",
      "dir": "",                 # IDX folder (MNIST)
      "tfds_data_dir": "",       # tfds data_dir; "" = tfds default
      "download": False,         # let tfds download and prepare
      "validation_size": 5000,   # held out from the end of the train split
      "train_size": 0,           # 0 = every non-validation train example
      "batch_size": 128,         # global, over all hosts and devices
      "augment": "none",         # "none", "crop_flip", "inception"
      "image_size": 0,           # 0 = native (ImageNet needs a size)
      # Grain worker processes that read, decode and augment tfds images;
      # 0 = in the training process. In-memory arrays (MNIST IDX) are always
      # read in-process.
      "workers": 0,
  })
  c.optim = ml_collections.ConfigDict({
      "name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False,
      # l2 added to the gradient, as PyTorch's SGD weight_decay.
      "weight_decay": 0.0,
      "decay_epochs": (90.0,), "decay_factor": 0.1,
      # "step" (lr x decay_factor at each decay epoch) or "one_cycle" (linear
      # 0 -> lr at peak_fraction of the run -> 0, Wong et al. 2020).
      "schedule": "step", "peak_fraction": 0.5,
  })
  c.train = ml_collections.ConfigDict({
      "num_epochs": 100.0,
      "max_steps": 0,            # stop (and checkpoint) at this step; 0 = off
      # Stop (and checkpoint) after this many epochs of the schedule above;
      # 0 = off. Rerun with a larger value to go on, as with max_steps.
      "max_epochs": 0.0,
      # Rematerialization: "none", "blocks" (jax.checkpoint around each
      # residual block: ResNet, WideResNet) or "inner" (around the network
      # in each step of the inner maximization). Same gradients, other
      # memory and FLOPs; lfr-plan shows what each saves (docs/SCALING.md).
      "remat": "none",
  })
  c.eval = ml_collections.ConfigDict({
      "every_epochs": 1,
      "val_examples": 1000,      # validation examples judged each epoch
      "test_examples": 0,        # 0 = the whole test split
      "test_checkpoint": "final",  # or "best" (by validation select_on)
      # The validation accuracy that picks the best checkpoint: "pgd" or
      # "clean" (a natural model's PGD accuracy is ~0 and selects nothing).
      "select_on": "pgd",
      # Stop once select_on has not improved for this many epochs (validated
      # every epoch); 0 = train the whole schedule.
      "patience": 0,
      # Clean accuracy on the whole test split after every epoch, logged as
      # the "test_clean" record (monitoring, as in the LFR authors' logs;
      # never used to pick a checkpoint).
      "epoch_test_clean": False,
      "batch_size": 500,
      "eps": MNIST_EPS, "step_size": MNIST_STEP, "num_steps": MNIST_K,
      "restarts": 1, "norm": "linf", "unroll": "auto",
  })
  c.checkpoint = ml_collections.ConfigDict({
      "every_steps": 0,          # extra saves between epoch ends; 0 = off
      "keep": 3,
      # Epoch-end checkpoints kept for good besides the last `keep`, e.g.
      # (1, 2, 5) for a robustness-vs-training-compute curve.
      "keep_epochs": (),
      "keep_best": True,
  })
  c.log = ml_collections.ConfigDict({"every_steps": 50, "progress": True})
  c.mesh = ml_collections.ConfigDict({"num_devices": 0})  # 0 = all devices
  c.distributed = ml_collections.ConfigDict({
      "enabled": False,
      # Empty / 0 / -1 let jax.distributed.initialize detect the cluster.
      "coordinator_address": "", "num_processes": 0, "process_id": -1,
  })
  return c


def _set_method(c: ml_collections.ConfigDict, method_settings: dict | None
                ) -> ml_collections.ConfigDict:
  """Sets ``config.<method>``: every setting of the method, preset's first.

  The section lists all the method's own settings (its defaults where the
  preset names none), so that each one prints in config.json and can be
  overridden from the command line; the shared inner settings stay in
  ``config.inner``.
  """
  from lfr_jax import objectives  # pylint: disable=g-import-not-at-top
  own = {k: v for k, v in objectives.DEFAULTS[c.method].items()
         if k not in objectives.INNER_SETTINGS}
  own.update(method_settings or {})
  if own:
    c[c.method] = ml_collections.ConfigDict(own)
  return c


def mnist(method: str, model: str = "small_cnn", **method_settings
          ) -> ml_collections.ConfigDict:
  """The LFR paper's MNIST protocol (Sec. 5, from TRADES).

  SmallCNN, eps 0.3, inner step 0.01, K = 40, 100 epochs of SGD (lr 0.01,
  momentum 0.9, batch 128, x0.1 at epoch 90); PGD-40 evaluation.

  Args:
    method: objective name.
    model: model name.
    **method_settings: at most one keyword, named after the method, holding
      a dict of its settings (e.g. ``lfr={"lam": 0.02}``).

  Returns:
    The config (not yet finished).
  """
  c = base(method)
  c.model = model_section(model)
  c.eval.epoch_test_clean = True   # 10,000 clean forwards: seconds per epoch
  return _set_method(c, method_settings.get(method))


def cifar10(method: str, **method_settings) -> ml_collections.ConfigDict:
  """The LLR paper's CIFAR-10 protocol (Sec. 5, Appendix F.2).

  WRN-28-8 with softplus, eps 8/255 grown linearly over 15 epochs, SGD lr 0.1
  momentum 0.9, x0.1 after 100 and 105 epochs, 110 epochs, batch 256, l2
  2e-4, random crop + flip; PGD-20 (step 2/255) evaluation.

  Args:
    method: objective name.
    **method_settings: ``<method>={...}`` settings of that method.

  Returns:
    The config (not yet finished).
  """
  c = base(method)
  c.model = model_section("wide_resnet", width=8, activation="softplus")
  c.inner.update({"eps": CIFAR_EPS, "step_size": CIFAR_STEP,
                  "num_steps": CIFAR_K, "warmup_epochs": 15.0})
  c.data.update({"name": "cifar10", "batch_size": 256,
                 "augment": "crop_flip"})
  c.optim.update({"lr": 0.1, "weight_decay": 2e-4,
                  "decay_epochs": (100.0, 105.0)})
  c.train.num_epochs = 110.0
  c.eval.update({"eps": CIFAR_EPS, "step_size": 2 / 255, "num_steps": 20,
                 "batch_size": 256})
  return _set_method(c, method_settings.get(method))


def imagenet(method: str, **method_settings) -> ml_collections.ConfigDict:
  """The LLR paper's ImageNet (4/255) protocol (Appendix F.2), for TPU pods.

  ResNet-152 with softplus, eps 4/255 grown over 20 epochs, SGD lr 0.1
  momentum 0.9, x0.1 after 35, 70 and 95 epochs, 100 epochs, batch 512, l2
  1e-4, Inception crop + flip at 224; distributed on.

  Args:
    method: objective name.
    **method_settings: ``<method>={...}`` settings of that method.

  Returns:
    The config (not yet finished).
  """
  c = base(method)
  c.model = model_section("resnet152", activation="softplus",
                          mean=IMAGENET_MEAN, std=IMAGENET_STD)
  c.inner.update({"eps": IMAGENET_EPS, "step_size": 2 / 255, "num_steps": 2,
                  "warmup_epochs": 20.0})
  # workers: a v3 host has 96 vCPUs; one worker makes about 230 Inception
  # crops/s on a 2026 x86 core (docs/BENCHMARKS.md) and LLR's pace needs
  # about 350 per host: 8 leave a wide margin.
  c.data.update({"name": "imagenet2012", "batch_size": 512,
                 "augment": "inception", "image_size": 224,
                 "validation_size": 10000, "workers": 8})
  c.optim.update({"lr": 0.1, "weight_decay": 1e-4,
                  "decay_epochs": (35.0, 70.0, 95.0)})
  c.train.num_epochs = 100.0
  # LLR evaluates ImageNet on the first 1,000 test (validation) images.
  c.eval.update({"eps": IMAGENET_EPS, "step_size": 1 / 255, "num_steps": 20,
                 "batch_size": 512, "val_examples": 1024,
                 "test_examples": 1000})
  c.log.every_steps = 100
  c.checkpoint.every_steps = 1000
  c.distributed.enabled = True
  return _set_method(c, method_settings.get(method))


def _scale_epochs(c: ml_collections.ConfigDict, num_epochs: float) -> None:
  """Shrinks the run to ``num_epochs``, keeping the schedule's shape."""
  ratio = num_epochs / c.train.num_epochs
  c.optim.decay_epochs = tuple(e * ratio for e in c.optim.decay_epochs)
  c.inner.warmup_epochs = c.inner.warmup_epochs * ratio
  c.train.num_epochs = float(num_epochs)


def _inner_steps(c: ml_collections.ConfigDict, k: int) -> None:
  """Uses ``k`` inner steps, lengthening the step so that K * step >= eps."""
  # Madry et al.'s rule of thumb, 2.5 eps / K; LLR's Adam steps move about
  # one learning rate per coordinate, so the same rule applies.
  c.inner.step_size = max(c.inner.step_size, 2.5 * c.inner.eps / k)
  c.inner.num_steps = k


def _eval_steps(c: ml_collections.ConfigDict, k: int, examples: tuple[int, int],
                batch: int) -> None:
  c.eval.step_size = max(c.eval.step_size, 2.5 * c.eval.eps / k)
  c.eval.num_steps = k
  c.eval.val_examples, c.eval.test_examples = examples
  c.eval.batch_size = batch


def _quick(c: ml_collections.ConfigDict) -> None:
  """A few minutes on 2 CPU cores that still trains something real."""
  c.data.train_size = 10000
  _scale_epochs(c, 2.0)
  _inner_steps(c, min(c.inner.num_steps, 10))
  _eval_steps(c, 20, (500, 1000), 250)
  if c.data.name == "mnist" and c.optim.name == "sgd":
    # 156 steps at the paper's lr 0.01 leave SmallCNN at ~90% clean and
    # LFR at ~3% PGD-20; at 0.05 the same minutes reach ~94% / ~19%
    # (measured, see README). The full protocol keeps the paper's lr.
    c.optim.lr = 5 * c.optim.lr
  c.log.every_steps = 20
  c.checkpoint.every_steps = 0
  if c.data.name == "cifar10":
    c.model.update({"depth": 10, "width": 2})
    c.data.batch_size = 128
  elif c.data.name == "imagenet2012":
    _small_resnet(c, width=16, image_size=64)
    c.data.batch_size = 128
    c.data.validation_size = 1000
    c.data.workers = 0
  c.distributed.enabled = False


def _small_resnet(c: ml_collections.ConfigDict, *, width: int,
                  image_size: int) -> None:
  c.model.name = "resnet"
  c.model.stage_sizes = (1, 1, 1, 1)
  c.model.width = width
  c.data.image_size = image_size


def _repro(c: ml_collections.ConfigDict, epochs: float = REPRO_EPOCHS) -> None:
  """The reduced Table-1 protocol of docs/RESULTS.md, identical for every row.

  The paper's 100 epochs at K = 40 take ~57 h per LFR run on 2 CPU cores, so
  every row trains REPRO_EPOCHS epoch(s) on the full 55,000-image training
  split at K = REPRO_K inner steps of 2.5 eps / K (K * step >= eps), with the
  :quick learning rate (5x the paper's SGD lr) and the schedule's shape kept
  (x0.1 at 90% of training). Checkpoints every 100 steps keep it resumable.
  """
  _scale_epochs(c, epochs)
  _inner_steps(c, min(c.inner.num_steps, REPRO_K))
  _eval_steps(c, 20, (1000, 1000), 500)
  if c.data.name == "mnist" and c.optim.name == "sgd":
    c.optim.lr = 5 * c.optim.lr
  c.log.every_steps = 50
  c.checkpoint.every_steps = 100


def _curve(c: ml_collections.ConfigDict) -> None:
  """:repro trained for CURVE_EPOCHS, keeping epochs CURVE_KEEP_EPOCHS.

  One run per method; its kept epoch-end checkpoints are the points of the
  robustness-vs-training-compute curve in docs/RESULTS.md. The schedule keeps
  its shape over the longer run (x0.1 at 90%, eps warm-up scaled alike), so
  the epoch-1 point is not the :repro model (which decays at 0.9 epochs).
  """
  _repro(c, CURVE_EPOCHS)
  c.checkpoint.keep_epochs = CURVE_KEEP_EPOCHS


def _converge(c: ml_collections.ConfigDict) -> None:
  """Trains to a plateau: early stopping on validation clean accuracy.

  The learning rate drops x0.1 at CONVERGE_DECAY_EPOCHS; validation judges
  CONVERGE_VAL_EXAMPLES held-out training images every epoch, the best
  epoch's checkpoint is the one tested, and the run stops once neither the
  best nor the last decay is more recent than CONVERGE_PATIENCE epochs (at
  most CONVERGE_EPOCHS). For models whose papers report a converged network
  (the decision-surface paper's 99.17% natural MNIST model).
  """
  c.train.num_epochs = CONVERGE_EPOCHS
  c.optim.update({"decay_epochs": CONVERGE_DECAY_EPOCHS, "schedule": "step",
                  "decay_factor": 0.1})
  c.eval.update({"select_on": "clean", "patience": CONVERGE_PATIENCE,
                 "every_epochs": 1, "test_checkpoint": "best"})
  _eval_steps(c, 20, (CONVERGE_VAL_EXAMPLES, 1000), 500)
  c.log.every_steps = 100


def _smoke(c: ml_collections.ConfigDict) -> None:
  """A handful of steps and a tiny evaluation, for tests (< 2 min with compile)."""
  c.data.train_size = 64
  c.data.batch_size = 16
  _scale_epochs(c, 2.0)
  _inner_steps(c, min(c.inner.num_steps, 2))
  _eval_steps(c, 2, (32, 32), 32)
  c.log.every_steps = 2
  c.log.progress = False
  c.eval.epoch_test_clean = False
  c.checkpoint.every_steps = 0
  if c.data.name == "cifar10":
    c.model.update({"depth": 10, "width": 1})
  elif c.data.name == "imagenet2012":
    _small_resnet(c, width=8, image_size=32)
    c.data.validation_size = 16
    c.data.workers = 0
  c.distributed.enabled = False


def finish(c: ml_collections.ConfigDict, arg: str | None
           ) -> ml_collections.ConfigDict:
  """Applies the ``:quick`` / ``:smoke`` variant named by ``arg``.

  Args:
    c: a preset's full config.
    arg: the text after ``:`` in ``--config=path.py:arg``; None or "" for the
      paper's full protocol.

  Returns:
    The config.

  Raises:
    ValueError: unknown variant.
  """
  arg = arg or ""
  if arg not in VARIANTS:
    raise ValueError(f"unknown config variant {arg!r}; valid: "
                     f"{', '.join(repr(v) for v in VARIANTS)}.")
  if arg == "quick":
    _quick(c)
  elif arg == "repro":
    _repro(c)
  elif arg == "curve":
    _curve(c)
  elif arg == "converge":
    _converge(c)
  elif arg == "smoke":
    _smoke(c)
  return c
