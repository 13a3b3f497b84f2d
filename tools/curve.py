"""Robust accuracy against training compute, and LFR in our loop.

Three studies of whether LFR trains robust models in this library, each a
stage list over runs under ``--workdir`` (default ``runs/curve``):

- **The compute curve**: every row of :data:`ROWS` trains with its preset's
  ``:curve`` variant (``configs/common.py``: the ``:repro`` protocol, K = 10
  steps of 0.075, lr 0.05, seed 0, run for 5 epochs), keeping the checkpoints
  after epochs 1, 2 and 5; ``evaluate.py`` judges each on the first 500 test
  images with every attack at full settings and the worst case (masking
  checks and geometry on the last epoch only).
- **The authors' published model** (``--authors_checkpoint``, the LFR
  authors' ``model_best.pth.tar``) through the same evaluation, on the first
  1,000 test images, with the masking checks.
- **LFR at the authors' exact settings** (``configs/mnist_lfr.py``: K = 40,
  step 0.01, SGD lr 0.01, batch 128, lambda 0.02, no dropout), trained for
  ``--authors_epochs`` epochs of its 100-epoch schedule, logging per epoch the
  mean regularizer at x_worst and clean CE over the training steps and clean
  accuracy on the full test set.

``bench`` times one training step of every row's config, interleaved in one
process, for the compute axis; ``collect`` copies the small results into
``docs/results/curve/``, from which ``tools/reproduce.py --stages=report``
writes the sections of ``docs/RESULTS.md``. Every stage skips what is done and
training resumes from its checkpoints::

    python tools/curve.py --workdir=runs/curve --authors_checkpoint=model_best.pth.tar
    python tools/curve.py --stages=train,eval --rows=lfr_s0,trades_s0
    python tools/curve.py --stages=collect
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import common  # noqa: E402  pylint: disable=g-import-not-at-top
from tools import subprocesses  # noqa: E402  pylint: disable=g-import-not-at-top
from tools.subprocesses import shown  # noqa: E402  pylint: disable=g-import-not-at-top

RESULTS_DIR = os.path.join(REPO, "docs", "results", "curve")
PROG = "tools/curve.py"


@dataclasses.dataclass(frozen=True)
class CurveRow:
  """One method trained for the compute curve."""
  name: str      # workdir name under --workdir
  preset: str    # configs/<preset>.py, run with its :curve variant
  label: str     # legend and table label
  # Config fields set on top of the preset's :curve variant, as
  # (("lfr.lam", 0.1), ...): applied in Python (bench, flops) and passed as
  # --config.<field>=<value> to train.py.
  overrides: tuple[tuple[str, object], ...] = ()
  # The epochs whose checkpoints are kept and evaluated.
  epochs: tuple[int, ...] = common.CURVE_KEEP_EPOCHS

  def override_flags(self) -> list[str]:
    """The overrides as train.py flags."""
    return [f"--config.{field}={_flag_value(value)}"
            for field, value in self.overrides]

  def config(self):
    """The row's training config, as train.py builds it."""
    module = __import__(f"configs.{self.preset}", fromlist=["get_config"])
    config = module.get_config("curve")
    for field, value in self.overrides:
      section, key = field.rsplit(".", 1)
      config[section][key] = value
    return config


def _flag_value(value) -> str:
  """A value as ml_collections parses it from the command line."""
  if isinstance(value, tuple):
    return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
  return str(value)


ROWS = (
    CurveRow("lfr_s0", "mnist_lfr", "LFR (λ=0.02)"),
    CurveRow("trades_s0", "mnist_trades", "TRADES (β=1)"),
    CurveRow("at_s0", "mnist_at", "AT (PGD-AT)"),
    CurveRow("lfr_softplus_s0", "mnist_lfr_softplus", "LFR, softplus SmallCNN"),
    CurveRow("lfr_warmup_s0", "mnist_lfr_warmup", "LFR, ε warm-up"),
    CurveRow("llr_s0", "mnist_llr", "LLR"),
    # The cheapest LFR: one inner step of 1.25 eps from a uniform start
    # (Wong et al.'s FGSM-RS step), lambda 0.1, run 4x as many epochs.
    CurveRow("lfr_k1_s0", "mnist_lfr", "LFR, K = 1 from a uniform start "
             "(λ=0.1)", overrides=(
                 ("inner.num_steps", 1), ("inner.step_size", 0.375),
                 ("lfr.start", "uniform"), ("lfr.lam", 0.1),
                 ("train.num_epochs", 20.0), ("optim.decay_epochs", (18.0,))),
             epochs=(1, 2, 5, 10, 20)),
)
ROW_NAMES = tuple(r.name for r in ROWS)
EPOCHS = common.CURVE_KEEP_EPOCHS
EVAL_EXAMPLES = 500
AUTHORS_MODEL = "authors_model"          # eval folder of the published model
AUTHORS_MODEL_EXAMPLES = 1000
AUTHORS_SETTINGS = "lfr_authors_settings"  # workdir of the K = 40 run
AUTHORS_EPOCHS = 2
STAGES = ("train", "eval", "authors_model", "authors_settings", "flops",
          "bench", "collect")


def train_command(row: CurveRow, root: str) -> list[str]:
  """The train.py command of a curve row."""
  keep = ([f"--config.checkpoint.keep_epochs={_flag_value(row.epochs)}"]
          if row.epochs != common.CURVE_KEEP_EPOCHS else [])
  return [sys.executable, "train.py",
          f"--config=configs/{row.preset}.py:curve",
          f"--workdir={os.path.join(root, row.name)}",
          "--config.log.progress=False", *row.override_flags(), *keep]


def eval_command(row: CurveRow, root: str, epoch: int) -> list[str]:
  """evaluate.py on the checkpoint kept at the end of ``epoch``."""
  last = epoch == max(row.epochs)
  return [sys.executable, "evaluate.py",
          f"--workdir={os.path.join(root, row.name)}",
          f"--checkpoint=epoch:{epoch}",
          f"--out={os.path.join(root, 'eval', row.name, f'epoch_{epoch}')}",
          f"--config.eval.num_examples={EVAL_EXAMPLES}",
          f"--config.eval.checks={last}", f"--config.eval.geometry={last}",
          "--config.eval.progress=False"]


def authors_model_command(root: str, checkpoint: str) -> list[str]:
  """evaluate.py on the LFR authors' published PyTorch model."""
  return [sys.executable, "evaluate.py", f"--torch_checkpoint={checkpoint}",
          "--model=small_cnn",
          f"--out={os.path.join(root, 'eval', AUTHORS_MODEL)}",
          f"--config.eval.num_examples={AUTHORS_MODEL_EXAMPLES}",
          "--config.eval.progress=False"]


def authors_settings_command(root: str, epochs: int) -> list[str]:
  """train.py with the full mnist_lfr preset, stopped after ``epochs``."""
  return [sys.executable, "train.py", "--config=configs/mnist_lfr.py",
          f"--workdir={os.path.join(root, AUTHORS_SETTINGS)}",
          f"--config.train.max_epochs={epochs}",
          "--config.checkpoint.every_steps=100",
          "--config.log.progress=False"]


def _run(command, log_path, dry_run=False):
  return subprocesses.run_logged(PROG, command, log_path, dry_run)


def _load(path: str):
  with open(path) as f:
    return json.load(f)


def _write_command(folder: str, command: list[str], seconds: float) -> None:
  """command.json beside the evaluation just published in ``folder``."""
  from lfr_jax import files  # pylint: disable=g-import-not-at-top
  files.write_json(os.path.join(files.latest(folder) or folder,
                                "command.json"),
                   {"command": shown(command), "seconds": seconds}, indent=None)


def evaluated(folder: str) -> bool:
  """Whether an evaluation's output folder holds a finished report (its
  ``latest`` version, or the flat layout of older runs)."""
  from lfr_jax import files  # pylint: disable=g-import-not-at-top
  return files.latest_file(folder, "robustness.json") is not None


def stage_train(root: str, rows, dry_run: bool) -> None:
  for row in rows:
    summary = os.path.join(root, row.name, "summary.json")
    if not (os.path.isfile(summary) and _load(summary).get("completed")):
      _run(train_command(row, root),
                 os.path.join(root, f"{row.name}.log"), dry_run)


def stage_eval(root: str, rows, dry_run: bool) -> None:
  for row in rows:
    for epoch in row.epochs:
      out = os.path.join(root, "eval", row.name, f"epoch_{epoch}")
      if evaluated(out):
        continue
      command = eval_command(row, root, epoch)
      seconds = _run(command, out + ".log", dry_run)
      if not dry_run:
        _write_command(out, command, seconds)


def stage_authors_model(root: str, checkpoint: str, dry_run: bool) -> None:
  """The published model through the evaluation of every other row."""
  out = os.path.join(root, "eval", AUTHORS_MODEL)
  if evaluated(out):
    return
  command = authors_model_command(root, checkpoint)
  seconds = _run(command, out + ".log", dry_run)
  if not dry_run:
    _write_command(out, command, seconds)


def stage_authors_settings(root: str, epochs: int, dry_run: bool) -> None:
  """The K = 40 run in our loop, trained up to ``epochs`` epochs."""
  summary = os.path.join(root, AUTHORS_SETTINGS, "summary.json")
  if os.path.isfile(summary) and _load(summary).get("epochs", 0) >= epochs:
    return
  command = authors_settings_command(root, epochs)
  _run(command, os.path.join(root, f"{AUTHORS_SETTINGS}.log"),
             dry_run)


def step_seconds(rows, repeats: int = 10, rounds: int = 3) -> dict[str, dict]:
  """Median seconds of one training step of each row's ``:curve`` config.

  The steps are built exactly as ``train.py`` builds them (same objective,
  model, optimizer and jit), on MNIST-shaped random data, and timed after
  compiling in ``rounds`` interleaved rounds of ``repeats`` steps, so that a
  drift of the machine's speed hits every row alike.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from lfr_jax import models  # pylint: disable=g-import-not-at-top
  from lfr_jax import objectives  # pylint: disable=g-import-not-at-top
  from lfr_jax import sharding  # pylint: disable=g-import-not-at-top
  from lfr_jax import steps  # pylint: disable=g-import-not-at-top
  from lfr_jax import train_state  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(1)
  timed = {}
  for row in rows:
    config = row.config()
    net = models.create(config.model.name, jax.random.key(0),
                        **models.kwargs_from_config(config.model))
    tx, lr_fn = train_state.make_optimizer(config.optim, 429, 429 * 5)
    step = steps.make_train_step(
        objectives.build(config.method,
                         **objectives.settings_from_config(config)),
        net.graphdef, tx, lr_fn, train_state.eps_schedule(config.inner, 429),
        mesh)
    state = jax.device_put(train_state.create_train_state(
        net, tx, jax.random.key(1)), sharding.replicated(mesh))
    key = jax.random.key(2)
    batch = jax.device_put(
        (jax.random.uniform(key, (config.data.batch_size, 28, 28, 1)),
         jax.random.randint(key, (config.data.batch_size,), 0, 10)),
        sharding.batch(mesh))
    state, metrics = step(state, *batch)  # compile
    jax.block_until_ready(metrics)
    timed[row.name] = [step, state, batch, []]
  for _ in range(rounds):
    for name, entry in timed.items():
      step, state, batch, times = entry
      for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, *batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
      entry[1] = state
  return {name: {"median_s": statistics.median(times), "min_s": min(times),
                 "steps_timed": len(times)}
          for name, (_, _, _, times) in timed.items()}


def step_flops(row: CurveRow) -> dict[str, float]:
  """FLOPs and bytes of one training step of a row, from the compiled step.

  The step is built exactly as ``train.py`` builds it and compiled for this
  host's CPU with every inner loop unrolled, so XLA's cost analysis counts
  each iteration (a rolled loop's body is counted once). FLOPs do not depend
  on the machine's speed or load, unlike seconds.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lfr_jax import models  # pylint: disable=g-import-not-at-top
  from lfr_jax import objectives  # pylint: disable=g-import-not-at-top
  from lfr_jax import sharding  # pylint: disable=g-import-not-at-top
  from lfr_jax import steps  # pylint: disable=g-import-not-at-top
  from lfr_jax import train_state  # pylint: disable=g-import-not-at-top
  config = row.config()
  config.inner.unroll = "full"
  net = models.create(config.model.name, jax.random.key(0),
                      **models.kwargs_from_config(config.model))
  tx, lr_fn = train_state.make_optimizer(config.optim, 429, 429 * 5)
  mesh = sharding.make_mesh(1)
  step = steps.make_train_step(
      objectives.build(config.method,
                       **objectives.settings_from_config(config)),
      net.graphdef, tx, lr_fn, train_state.eps_schedule(config.inner, 429),
      mesh)
  state = jax.eval_shape(
      lambda: train_state.create_train_state(net, tx, jax.random.key(1)))
  batch = config.data.batch_size
  cost = step.lower(state, jax.ShapeDtypeStruct((batch, 28, 28, 1),
                                                jnp.float32),
                    jax.ShapeDtypeStruct((batch,), jnp.int32)
                    ).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"flops": float(cost["flops"]),
          "bytes_accessed": float(cost["bytes accessed"])}


def stage_flops(root: str, rows, dry_run: bool) -> None:
  """Writes ``step_flops.json``: each row's FLOPs per training step."""
  path = os.path.join(root, "step_flops.json")
  print(f"$ {PROG} --stages=flops  (compiles one step of each row)")
  if dry_run:
    return
  result = _load(path) if os.path.isfile(path) else {"rows": {}}
  for row in rows:
    result["rows"][row.name] = step_flops(row)
    print(f"{row.name}: {result['rows'][row.name]['flops']:.3g} FLOPs/step",
          flush=True)
  from lfr_jax import files  # pylint: disable=g-import-not-at-top
  os.makedirs(root, exist_ok=True)
  files.write_json(path, result)


def stage_bench(root: str, rows, dry_run: bool) -> None:
  import platform  # pylint: disable=g-import-not-at-top
  path = os.path.join(root, "step_seconds.json")
  print(f"$ {PROG} --stages=bench  (one step of each row, interleaved)")
  if dry_run:
    return
  import jax  # pylint: disable=g-import-not-at-top
  result = {"rows": step_seconds(rows), "machine": {
      "processor": platform.processor() or platform.machine(),
      "cpus": os.cpu_count(), "load_before": os.getloadavg(),
      "jax": jax.__version__, "device": str(jax.devices()[0].device_kind)},
            "date": time.strftime("%Y-%m-%d")}
  os.makedirs(root, exist_ok=True)
  from lfr_jax import files  # pylint: disable=g-import-not-at-top
  files.write_json(path, result)
  for name, t in result["rows"].items():
    print(f"{name}: {t['median_s']:.3f} s/step")


# Absolute paths of the machine that ran a study mean nothing elsewhere: the
# docs keep paths relative to the repository and the published model's name.
_SCRUB = ((re.compile(re.escape(REPO + os.sep)), ""),
          # A runs folder elsewhere (or linked from the clone): keep runs/...
          (re.compile(r"/[^\s\"']*/(runs/)"), r"\1"),
          (re.compile(r"/[^\s\"']*/(model_best\.pth\.tar)"), r"\1"))


def scrub(text: str) -> str:
  """``text`` without this machine's absolute paths."""
  for pattern, repl in _SCRUB:
    text = pattern.sub(repl, text)
  return text


def _copy(src_dir: str, names, dest_dir: str) -> None:
  """Copies ``names`` of ``src_dir`` (an evaluation's: its latest version)
  into ``dest_dir``, scrubbed of this machine's paths, each file whole."""
  from lfr_jax import files  # pylint: disable=g-import-not-at-top
  src_dir = files.latest(src_dir) or src_dir
  for name in names:
    src = os.path.join(src_dir, name)
    if os.path.isfile(src):
      os.makedirs(dest_dir, exist_ok=True)
      out = "train_summary.json" if name == "summary.json" else name
      with open(src) as f:
        text = scrub(f.read())
      files.write_atomic(os.path.join(dest_dir, out), text)


def stage_collect(root: str, results_dir: str = RESULTS_DIR) -> None:
  """Copies metrics, summaries, configs and robustness JSON into the docs."""
  train_files = ("summary.json", "config.json", "metrics.jsonl")
  eval_files = ("robustness.json", "robustness.md", "command.json")
  for row in ROWS:
    _copy(os.path.join(root, row.name), train_files,
          os.path.join(results_dir, row.name))
    for epoch in row.epochs:
      _copy(os.path.join(root, "eval", row.name, f"epoch_{epoch}"), eval_files,
            os.path.join(results_dir, row.name, f"epoch_{epoch}"))
  _copy(os.path.join(root, "eval", AUTHORS_MODEL), eval_files,
        os.path.join(results_dir, AUTHORS_MODEL))
  _copy(os.path.join(root, AUTHORS_SETTINGS), train_files,
        os.path.join(results_dir, AUTHORS_SETTINGS))
  _copy(root, ("step_seconds.json", "step_flops.json"), results_dir)
  from tools import curve_report  # pylint: disable=g-import-not-at-top
  curve_report.write_figure(results_dir)
  curve_report.write_log_figure(results_dir)


def run() -> None:
  """Runs the stages of ``--stages`` on the rows of ``--rows``."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from lfr_jax import cli  # pylint: disable=g-import-not-at-top
  settings = flags.FLAGS
  unknown = sorted(set(settings.stages) - set(STAGES))
  if unknown:
    cli.fail(PROG, f"unknown stages {unknown}; valid: {', '.join(STAGES)}.")
  unknown = sorted(set(settings.rows) - set(ROW_NAMES))
  if unknown:
    cli.fail(PROG, f"unknown rows {unknown}; valid: {', '.join(ROW_NAMES)}.")
  checkpoint = settings.authors_checkpoint
  if checkpoint and not os.path.isfile(checkpoint):
    cli.fail(PROG, f"--authors_checkpoint {checkpoint} does not exist.")
  if settings.authors_epochs < 1:
    cli.fail(PROG, f"--authors_epochs must be >= 1, got "
             f"{settings.authors_epochs}.")
  root = os.path.abspath(settings.workdir)
  rows = [r for r in ROWS if r.name in settings.rows]
  dry_run = settings.dry_run
  if "train" in settings.stages:
    stage_train(root, rows, dry_run)
  if "eval" in settings.stages:
    stage_eval(root, rows, dry_run)
  if "authors_model" in settings.stages and checkpoint:
    stage_authors_model(root, os.path.abspath(checkpoint), dry_run)
  if "authors_settings" in settings.stages:
    stage_authors_settings(root, settings.authors_epochs, dry_run)
  if "flops" in settings.stages:
    stage_flops(root, rows, dry_run)
  if "bench" in settings.stages:
    stage_bench(root, rows, dry_run)
  if "collect" in settings.stages and not dry_run:
    stage_collect(root)
    print(f"collected into {os.path.relpath(RESULTS_DIR, REPO)}; now run "
          f"python tools/reproduce.py --stages=report")


def define_flags() -> None:
  """Defines the flags (only when run as a script, so tests can import)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", "runs/curve", "Root of the runs.")
  flags.DEFINE_list("stages", list(STAGES), f"Stages, from {STAGES}.")
  flags.DEFINE_list("rows", list(ROW_NAMES), f"Curve rows, from {ROW_NAMES}.")
  flags.DEFINE_string("authors_checkpoint", "", "The LFR authors' published "
                      "model_best.pth.tar (their repository's savedModel/"
                      "MNIST/lr_0.01_lambada_0.02_rs_1000/); '' skips it.")
  flags.DEFINE_integer("authors_epochs", AUTHORS_EPOCHS, "Epochs (>= 1) of "
                       "the K = 40 run at the authors' settings (rerun with "
                       "more to go on).")
  flags.DEFINE_bool("dry_run", False, "Print the commands, run nothing.")


if __name__ == "__main__":
  from lfr_jax import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  # Only the bench stage uses jax in this process, and it keeps its logs.
  cli.main(PROG, run, settings_hint="flags such as --stages=collect",
           user_errors=(ValueError,), quiet_logs=False)
