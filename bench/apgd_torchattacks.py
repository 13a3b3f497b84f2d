"""APGD-CE: ``lfr_jax.attacks.apgd`` against torchattacks' APGD on the same SmallCNN.

APGD-CE (Croce & Hein 2020), ``--steps`` (100) iterations, one restart,
l_inf ``--eps`` (0.3), on the first ``--num_examples`` (1,000) MNIST test
images (``lfr_jax.data.load_mnist_idx("test")``, from ``$LFR_DATA_DIR``).
Both frameworks attack the same weights: those of ``--workdir`` (a
``train.py`` run of SmallCNN, restored with ``lfr_jax.workdir.load_checkpoint``)
or, without it, a SmallCNN trained here for ``--train_steps`` steps of
``--train_method`` (our ``steps.make_train_step``), exported to PyTorch with
``lfr_jax.interop.export_torch_state_dict``. Both run in eval mode.

It reports clean and robust accuracy of each (they should agree within
sampling noise: the attacks draw different random starts) and the wall time
of the whole attack over all examples, interleaved (one JAX run, one
torchattacks run, ``--repeats`` times; medians). Ours is timed after
compiling; the compile time is reported apart. Target: torchattacks time /
ours >= 2.

torchattacks is imported lazily. Its declared torchvision requirement would
pull a multi-GB build, so install it without dependencies::

    pip install --no-deps torchattacks==3.5.1 scipy requests tqdm

Run::

    python bench/apgd_torchattacks.py                      # trains a SmallCNN first
    python bench/apgd_torchattacks.py --workdir=runs/mnist_at_quick
    python bench/apgd_torchattacks.py --num_examples=16 --steps=5 --train_steps=5 \\
        --repeats=1                                        # smoke
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from typing import Any

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (first: this checkout's lfr_jax, fast CPU flags)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from lfr_jax import attacks  # noqa: E402
from lfr_jax import cli  # noqa: E402
from lfr_jax import data  # noqa: E402
from lfr_jax import files  # noqa: E402
from lfr_jax import interop  # noqa: E402
from lfr_jax import models  # noqa: E402
from lfr_jax import objectives  # noqa: E402
from lfr_jax import sharding  # noqa: E402
from lfr_jax import workdir as workdir_lib  # noqa: E402
from lfr_jax import text  # noqa: E402
from lfr_jax import training  # noqa: E402

FLAGS = flags.FLAGS
PROG = "bench/apgd_torchattacks.py"
TORCHATTACKS_INSTALL = ("pip install --no-deps torchattacks==3.5.1 scipy "
                        "requests tqdm")


def define_flags() -> None:
  """Defines this script's flags (called only when run as a script)."""
  flags.DEFINE_string("workdir", "", "A train.py workdir of a SmallCNN run "
                      "to attack; empty: train one here.")
  flags.DEFINE_bool("best", False, "With --workdir: the best checkpoint "
                    "instead of the latest.")
  flags.DEFINE_string("train_method", "standard", "Without --workdir: the "
                      "objective to train with (objectives.names()).")
  flags.DEFINE_integer("train_steps", 300, "Without --workdir: training "
                       "steps of batch 128 (SGD 0.01, momentum 0.9).")
  flags.DEFINE_integer("train_k", 10, "Inner steps when --train_method has "
                       "an inner loop.")
  flags.DEFINE_integer("num_examples", 1000, "First N MNIST test images.")
  flags.DEFINE_integer("batch", 1000, "Attack batch size (both frameworks).")
  flags.DEFINE_integer("steps", 100, "APGD iterations.")
  flags.DEFINE_float("eps", 0.3, "l_inf radius.")
  flags.DEFINE_integer("repeats", 3, "Timed runs per framework.")
  flags.DEFINE_integer("threads", 2, "torch.set_num_threads.")
  flags.DEFINE_string("omp_wait_policy", "", "Sets OMP_WAIT_POLICY before "
                      "torch loads (PASSIVE helps PyTorch on a busy "
                      "machine); empty: leave the environment alone.")
  flags.DEFINE_integer("seed", 0, "Seed of training and of the attacks.")
  flags.DEFINE_string("json", "", "Also write the results to this JSON file.")


def import_torchattacks():
  """Returns torchattacks, or exits with the install command."""
  try:
    import torchattacks  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit(f"torchattacks is not installed; install it with:\n"
             f"  {TORCHATTACKS_INSTALL}")
  return torchattacks


# ---------------------------------------------------------------------------
# The model


def load_workdir(workdir: str, best: bool = False) -> models.Network:
  """The SmallCNN of a ``train.py`` workdir (``config.json`` + checkpoint)."""
  training.quiet_library_logs()
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.model.name != "small_cnn":
    raise app.UsageError(f"--workdir {workdir} holds a {config.model.name}; "
                         "this benchmark compares SmallCNN only.")
  state, _ = workdir_lib.load_checkpoint(config, workdir, best=best)
  graphdef = models.create(config.model.name, jax.random.key(0),
                           **models.kwargs_from_config(config.model)).graphdef
  return models.Network(graphdef=graphdef, params=jax.device_get(state.params),
                        state=jax.device_get(state.model_state))


def train_small_cnn(method: str, num_steps: int, inner_k: int, seed: int,
                    eps: float = 0.3, batch: int = 128) -> models.Network:
  """Trains a SmallCNN on the MNIST train split with our training step.

  Args:
    method: objective name.
    num_steps: SGD steps.
    inner_k: inner steps K for methods with an inner loop.
    seed: seed of the weights, the data order and the step keys.
    eps: training radius.
    batch: batch size.

  Returns:
    The trained network.
  """
  settings = {}
  if "num_steps" in objectives.valid_settings(method):
    settings["num_steps"] = inner_k
  net = models.create("small_cnn", jax.random.key(seed))
  mesh = sharding.make_mesh(1)
  step, state = common.make_jax_step(method, net, settings, eps=eps, lr=0.01,
                                     momentum=0.9, seed=seed, mesh=mesh)
  x_train, y_train = data.load_mnist_idx("train")
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(len(x_train))
                          for _ in range(math.ceil(num_steps * batch
                                                   / len(x_train)))])
  batch_sharding = sharding.batch(mesh)
  metrics = {}
  for i in range(num_steps):
    idx = order[i * batch:(i + 1) * batch]
    x, y = jax.device_put((x_train[idx], y_train[idx]), batch_sharding)
    state, metrics = step(state, x, y)
  if metrics:
    print(f"# trained: {method}, {num_steps} steps, last train acc "
          f"{float(metrics['acc']):.3f}", flush=True)
  return net.replace(params=jax.device_get(state.params),
                     state=jax.device_get(state.model_state))


# ---------------------------------------------------------------------------
# The attacks


def make_jax_attack(graphdef: Any, eps: float, steps: int):
  """Jitted ``(params, state, x, y, key) -> (clean correct, robust)``.

  Robust means correctly classified at the APGD-CE point (which is ``x``
  itself where ``x`` is misclassified).
  """

  def attack(params, state, x, y, key):
    logits_fn = models.Network(graphdef=graphdef, params=params,
                               state=state).logits_fn()
    x_adv = attacks.apgd(logits_fn, x, y, key, eps=eps, num_steps=steps,
                         loss="ce")
    clean = jnp.argmax(logits_fn(x), -1) == y
    robust = jnp.argmax(logits_fn(x_adv), -1) == y
    return clean, robust

  return jax.jit(attack)


def chunks(n: int, batch: int) -> list[slice]:
  """Slices of ``range(n)`` of at most ``batch`` elements."""
  return [slice(i, min(i + batch, n)) for i in range(0, n, batch)]


def run_jax(compiled: dict, net: models.Network, xs: list, ys: list,
            key: jax.Array) -> tuple[np.ndarray, np.ndarray, float]:
  """One timed pass of our APGD over all chunks.

  Returns:
    (clean correct, robust, seconds).
  """
  start = time.perf_counter()
  outs = []
  for i, (x, y) in enumerate(zip(xs, ys)):
    outs.append(compiled[x.shape](net.params, net.state, x, y,
                                  jax.random.fold_in(key, i)))
  outs = jax.block_until_ready(outs)
  seconds = time.perf_counter() - start
  clean = np.concatenate([np.asarray(c) for c, _ in outs])
  robust = np.concatenate([np.asarray(r) for _, r in outs])
  return clean, robust, seconds


def run_torch(model, xs: list, ys: list, *, eps: float, steps: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray, float]:
  """One timed pass of torchattacks' APGD-CE over all chunks.

  Returns:
    (clean correct, robust, seconds).
  """
  import torch  # pylint: disable=g-import-not-at-top
  torchattacks = import_torchattacks()
  model.eval()
  start = time.perf_counter()
  clean, robust = [], []
  for x, y in zip(xs, ys):
    atk = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps,
                            n_restarts=1, loss="ce", seed=seed)
    x_adv = atk(x, y)
    with torch.no_grad():
      clean.append((model(x).argmax(1) == y).numpy())
      robust.append((model(x_adv).argmax(1) == y).numpy())
  seconds = time.perf_counter() - start
  return np.concatenate(clean), np.concatenate(robust), seconds


def agreement_line(p_jax: float, p_torch: float, n: int) -> str:
  """Whether two robust accuracies agree within sampling noise (2 sigma)."""
  p = 0.5 * (p_jax + p_torch)
  sigma = math.sqrt(max(p * (1 - p), 0.25 / n) * 2.0 / n)
  diff = abs(p_jax - p_torch)
  verdict = "agree" if diff <= 2 * sigma + 1.0 / n else "DISAGREE"
  return (f"robust accuracies {verdict}: |difference| {100 * diff:.2f} "
          f"points, 2 sigma of the difference {200 * sigma:.2f} points")


def run() -> None:
  """Attacks one SmallCNN with both APGDs, interleaved; prints the table."""
  if FLAGS.omp_wait_policy:
    os.environ["OMP_WAIT_POLICY"] = FLAGS.omp_wait_policy
  torch = common.import_torch()
  import_torchattacks()
  torch.set_num_threads(FLAGS.threads)
  torch.manual_seed(FLAGS.seed)

  if FLAGS.workdir:
    net = load_workdir(FLAGS.workdir, FLAGS.best)
    which = "best" if FLAGS.best else "latest"
    source = f"{FLAGS.workdir} ({which} checkpoint)"
  else:
    net = train_small_cnn(FLAGS.train_method, FLAGS.train_steps,
                          FLAGS.train_k, FLAGS.seed, FLAGS.eps)
    source = (f"trained here: {FLAGS.train_method}, {FLAGS.train_steps} "
              f"steps of batch 128")
  model = common.torch_small_cnn(
      interop.export_torch_state_dict(net, "small_cnn"))
  model.eval()

  x_all, y_all = data.load_mnist_idx("test")
  n = min(FLAGS.num_examples, len(x_all))
  x_all, y_all = x_all[:n], y_all[:n]
  parts = chunks(n, FLAGS.batch)
  xs_jax = [jnp.asarray(x_all[part]) for part in parts]
  ys_jax = [jnp.asarray(y_all[part]) for part in parts]
  xs_torch, ys_torch = zip(*[common.to_torch(x_all[part], y_all[part])
                             for part in parts])

  print(f"# bench/apgd_torchattacks.py: APGD-CE, {FLAGS.steps} iterations, "
        f"1 restart, l_inf eps {FLAGS.eps}, first {n} MNIST test images, "
        f"batch {FLAGS.batch}; model: {source}")
  print(f"# {common.machine_line(FLAGS.threads)}; OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
  warning = common.load_warning()
  if warning:
    print(warning)
  print(flush=True)

  attack = make_jax_attack(net.graphdef, FLAGS.eps, FLAGS.steps)
  key = jax.random.key(FLAGS.seed)
  compiled = {}
  start = time.perf_counter()
  for x, y in zip(xs_jax, ys_jax):
    if x.shape not in compiled:
      compiled[x.shape] = attack.lower(net.params, net.state, x, y,
                                       key).compile()
  compile_s = time.perf_counter() - start

  # Untimed warm-up of both (first-call costs of the executables and of
  # PyTorch's kernels): one short run on the first chunk.
  jax.block_until_ready(compiled[xs_jax[0].shape](net.params, net.state,
                                                xs_jax[0], ys_jax[0], key))
  run_torch(model, xs_torch[:1], ys_torch[:1], eps=FLAGS.eps, steps=2,
            seed=FLAGS.seed)

  jax_s, torch_s = [], []
  for repeat in range(FLAGS.repeats):
    clean_jax, robust_jax, seconds = run_jax(
        compiled, net, xs_jax, ys_jax, jax.random.fold_in(key, repeat))
    jax_s.append(seconds)
    clean_torch, robust_torch, seconds = run_torch(
        model, xs_torch, ys_torch, eps=FLAGS.eps, steps=FLAGS.steps,
        seed=FLAGS.seed + repeat)
    torch_s.append(seconds)

  jax_median, torch_median = (statistics.median(jax_s),
                              statistics.median(torch_s))
  print(text.markdown_table(
      ["attack", "clean acc", "robust acc", "s per run, median (min)",
       "images/s", "compile s"],
      [["lfr_jax.attacks.apgd (JAX)", f"{text.percent(clean_jax.mean())}%",
        f"{text.percent(robust_jax.mean())}%",
        common.median_and_min(jax_s, digits=2), f"{n / jax_median:.1f}",
        f"{compile_s:.1f}"],
       ["torchattacks 3.5.1 APGD (PyTorch)",
        f"{text.percent(clean_torch.mean())}%",
        f"{text.percent(robust_torch.mean())}%",
        common.median_and_min(torch_s, digits=2), f"{n / torch_median:.1f}",
        "-"]]))
  print()
  ratio = torch_median / jax_median
  print(f"- speed-up torchattacks / ours {ratio:.2f}x (target >= 2x): "
        f"{'PASS' if ratio >= 2 else 'FAIL'}; with our compile counted once: "
        f"{torch_median / (jax_median + compile_s):.2f}x")
  print(f"- {agreement_line(robust_jax.mean(), robust_torch.mean(), n)}; the "
        f"same verdict on {100 * (robust_jax == robust_torch).mean():.1f}% of "
        f"the images (last run)")
  if max(robust_jax.mean(), robust_torch.mean()) < 0.05:
    print("- both robust accuracies are near 0%, so their agreement says "
          "little: attack an adversarially trained run (--workdir=..., e.g. "
          "from python train.py --config=configs/mnist_at.py:quick "
          "--workdir=runs/mnist_at_quick) or lower --eps")
  if FLAGS.json:
    with files.atomic_file(FLAGS.json) as f:
      json.dump({"machine": common.machine_line(FLAGS.threads),
                 "model": source, "n": n, "jax_s": jax_s, "torch_s": torch_s,
                 "compile_s": compile_s,
                 "clean": [float(clean_jax.mean()), float(clean_torch.mean())],
                 "robust": [float(robust_jax.mean()),
                            float(robust_torch.mean())]},
                f, indent=2)


if __name__ == "__main__":
  define_flags()
  cli.main(PROG, run, user_errors=(app.UsageError, data.DataError),
           settings_hint="flags such as --num_examples=1000")
