"""What the benchmarks in bench/ share: machine line, weights, steps, timing.

Every bench script is one benchmark and imports its shared parts from here:

- the machine: :func:`machine_line` (CPU model, visible cores, load, versions,
  XLA flags, date) heads every table, :func:`load_warning` says when other
  processes make the timings noisy;
- the model: :func:`small_cnn_weights` (the same SmallCNN weights for JAX and
  PyTorch), :func:`random_batch`;
- timing: :func:`median_and_min`;
- our training step, :func:`make_jax_step` (``steps.make_train_step``,
  the step every run uses, and its placed state);
- a faithful PyTorch port of the LFR authors' training steps
  (:func:`torch_lfr_step`, :func:`torch_pgd_at_step`) and :func:`compare`,
  which times one step of each framework on the same weights and batch,
  interleaved.

The PyTorch side follows the authors' code: the inner loop runs in
``model.eval()``, starts at ``x + 0.001 * randn`` (LFR) or uniformly in the
ball (PGD-AT, Madry et al.), and takes K sign steps of ``step_size``,
projecting onto the eps-ball and [0, 1]. An LFR inner step differentiates
``loss_grad = mean_i sum_{C,H,W} |d CE / d x_adv|`` (``create_graph=True``)
once more with respect to ``x_adv``. The outer LFR loss, in ``model.train()``,
is ``CE(model(x)) + lam * B * mean_i sum |d CE(model(x_adv)) / d x_adv|`` with
``create_graph=True`` (double backprop); the authors multiply by the batch
size B because their CE is a batch mean, so the term is the mean of the
per-example l1 norms, as in ``objectives.build("lfr")``. PGD-AT's outer loss
is the train-mode CE at ``x_adv``. Both end with an SGD-momentum step.

torch is imported only when a PyTorch function is called, so the JAX-only
benchmarks run without it. Importing this module puts the repository root
first on ``sys.path``: a bench script run as ``python bench/<name>.py`` then
uses this checkout's ``lfr_jax``, not another installed copy.

Example (from the repository root)::

    import sys; sys.path.insert(0, "bench")
    import common
    net, _ = common.small_cnn_weights(0)
    x, y = common.random_batch(8)
    step, state = common.make_jax_step(
        "lfr", net, common.objective_settings("lfr", 1, 0.01, 0.02),
        eps=0.3, lr=0.01, momentum=0.9)
    state, metrics = step(state, x, y)
    print(common.median_and_min([0.2, 0.1, 0.3]))   # 0.200 (0.100)
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import lfr_jax  # noqa: E402,F401  (fast CPU flags before jax starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from lfr_jax import interop  # noqa: E402
from lfr_jax import models  # noqa: E402
from lfr_jax import objectives  # noqa: E402
from lfr_jax import sharding  # noqa: E402
from lfr_jax import steps  # noqa: E402
from lfr_jax import train_state  # noqa: E402

TORCH_INSTALL = "pip install torch==2.13.0"


# ---------------------------------------------------------------------------
# The machine


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (platform's guess elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def visible_cores() -> int:
  """The cores this process may run on (its affinity mask where it has one)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # no affinity masks (macOS)
    return os.cpu_count() or 1


def machine_line(torch_threads: int | None = None) -> str:
  """One line describing where a benchmark ran, for the table header.

  Args:
    torch_threads: PyTorch intra-op threads, when PyTorch takes part.

  Returns:
    CPU model, visible cores, load average, versions, XLA flags and the date.
  """
  load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
  parts = [f"{cpu_model()}", f"{visible_cores()} cores visible (load {load})",
           f"{jax.device_count()}x {jax.devices()[0].platform}",
           f"jax {jax.__version__}"]
  if torch_threads is not None:
    import torch  # pylint: disable=g-import-not-at-top
    parts.append(f"torch {torch.__version__} ({torch_threads} threads)")
  parts.append(f"XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}'")
  parts.append(datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
  return "; ".join(parts)


def load_warning(with_torch: bool = True) -> str | None:
  """A warning line when other processes keep the cores busy, else None.

  Args:
    with_torch: PyTorch takes part (its spinning threads suffer most).
  """
  cores = visible_cores()
  load = os.getloadavg()[0]
  if load > 0.5 * cores:
    return (f"# WARNING: 1-minute load average {load:.1f} on {cores} cores: "
            f"other processes compete for the CPU, timings are noisy"
            + (" (PyTorch's spinning OpenMP threads suffer most)."
               if with_torch else "."))
  return None


# ---------------------------------------------------------------------------
# The model and the batch


def small_cnn_weights(seed: int = 0, dropout: float = 0.5
                      ) -> tuple[models.Network, dict[str, np.ndarray]]:
  """SmallCNN weights shared by both frameworks.

  Drawn in numpy as TRADES draws them (Kaiming-normal convs with zero bias,
  PyTorch-default linear layers), except fc3: TRADES zeroes it, which makes
  every input gradient zero at step 0, so it gets PyTorch's default uniform
  init here and the sign steps are not degenerate. The JAX network is built
  from them with ``interop.from_torch`` (abstractly, nothing to compile), and
  PyTorch's copy is ``interop.export_torch_state_dict`` of that network.

  Args:
    seed: seed of the weights.
    dropout: SmallCNN dropout rate of the JAX network.

  Returns:
    (JAX network, the same weights as a TRADES-layout PyTorch state_dict of
    numpy arrays).
  """
  rng = np.random.default_rng(seed)
  drawn = {}
  for i, (c_in, c_out) in enumerate([(1, 32), (32, 32), (32, 64), (64, 64)]):
    prefix = f"feature_extractor.conv{i + 1}"
    drawn[f"{prefix}.weight"] = rng.normal(
        0.0, np.sqrt(2.0 / (9 * c_in)), (c_out, c_in, 3, 3))
    drawn[f"{prefix}.bias"] = np.zeros(c_out)
  for i, (f_in, f_out) in enumerate([(1024, 200), (200, 200), (200, 10)]):
    prefix, bound = f"classifier.fc{i + 1}", 1.0 / np.sqrt(f_in)
    drawn[f"{prefix}.weight"] = rng.uniform(-bound, bound, (f_out, f_in))
    drawn[f"{prefix}.bias"] = rng.uniform(-bound, bound, f_out)
  drawn = {k: v.astype(np.float32) for k, v in drawn.items()}
  net = interop.from_torch("small_cnn", drawn, dropout=dropout)
  return net, interop.export_torch_state_dict(net, "small_cnn")


def random_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A fixed MNIST-shaped batch: uniform images (N, 28, 28, 1), labels (N,)."""
  rng = np.random.default_rng(seed + 1)
  x = rng.uniform(0.0, 1.0, (batch, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, (batch,)).astype(np.int32)
  return x, y


# ---------------------------------------------------------------------------
# Timing


def median_and_min(times: list[float], digits: int = 3) -> str:
  """``median (min)`` of timings in seconds, e.g. ``0.200 (0.100)``.

  Args:
    times: seconds of the timed calls.
    digits: decimals of both numbers.
  """
  return (f"{statistics.median(times):.{digits}f} "
          f"({min(times):.{digits}f})")


# ---------------------------------------------------------------------------
# PyTorch side (torch imported lazily)


def import_torch():
  """Returns torch, or raises ImportError naming the install command."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"this benchmark needs PyTorch: {TORCH_INSTALL}") from e
  return torch


def torch_small_cnn(state_dict: dict[str, np.ndarray] | None = None,
                    dropout: float = 0.5):
  """The TRADES SmallCNN in PyTorch (NCHW), optionally loaded with weights.

  Args:
    state_dict: TRADES-layout weights as numpy arrays (``small_cnn_weights``).
    dropout: dropout rate after fc1.

  Returns:
    The ``torch.nn.Module``.
  """
  torch = import_torch()
  nn = torch.nn
  from collections import OrderedDict  # pylint: disable=g-import-not-at-top

  class SmallCNN(nn.Module):
    """TRADES' SmallCNN: 4 conv + 3 FC, dropout 0.5 (models/small_cnn.py)."""

    def __init__(self):
      super().__init__()
      self.feature_extractor = nn.Sequential(OrderedDict([
          ("conv1", nn.Conv2d(1, 32, 3)), ("relu1", nn.ReLU()),
          ("conv2", nn.Conv2d(32, 32, 3)), ("relu2", nn.ReLU()),
          ("maxpool1", nn.MaxPool2d(2, 2)),
          ("conv3", nn.Conv2d(32, 64, 3)), ("relu3", nn.ReLU()),
          ("conv4", nn.Conv2d(64, 64, 3)), ("relu4", nn.ReLU()),
          ("maxpool2", nn.MaxPool2d(2, 2)),
      ]))
      self.classifier = nn.Sequential(OrderedDict([
          ("fc1", nn.Linear(64 * 4 * 4, 200)), ("relu1", nn.ReLU()),
          ("drop", nn.Dropout(dropout)),
          ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()),
          ("fc3", nn.Linear(200, 10)),
      ]))

    def forward(self, x):
      features = self.feature_extractor(x)
      return self.classifier(features.view(-1, 64 * 4 * 4))

  model = SmallCNN()
  if state_dict is not None:
    model.load_state_dict({k: torch.from_numpy(np.array(v))
                           for k, v in state_dict.items()})
  return model


def to_torch(x: np.ndarray, y: np.ndarray):
  """NHWC numpy images and labels -> NCHW float tensor and int64 labels."""
  torch = import_torch()
  # clone() sets standard NCHW strides: with C = 1 numpy's strides can make
  # torch pick channels_last, and TRADES' .view() then fails.
  images = torch.from_numpy(np.asarray(x, np.float32)).permute(0, 3, 1, 2)
  return (images.clone(memory_format=torch.contiguous_format),
          torch.from_numpy(np.asarray(y).astype(np.int64)))


def _project(torch, x_adv, x, eps):
  return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def torch_lfr_inner(model, x, y, *, eps, step_size, num_steps,
                    init_std: float = 1e-3):
  """The authors' LFR inner maximization (eval mode, sign steps on loss_grad).

  Args:
    model: the PyTorch SmallCNN; left in eval mode.
    x: (N, 1, 28, 28) clean images in [0, 1].
    y: (N,) int64 labels.
    eps: l_inf radius.
    step_size: sign-step length.
    num_steps: K.
    init_std: std of the Gaussian start (the authors: 0.001).

  Returns:
    x_adv, detached.
  """
  torch = import_torch()
  F = torch.nn.functional
  model.eval()
  x_adv = _project(torch, x.detach() + init_std * torch.randn_like(x), x, eps)
  for _ in range(num_steps):
    x_adv.requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y)
    (g,) = torch.autograd.grad(loss, [x_adv], create_graph=True)
    loss_grad = torch.mean(torch.sum(torch.abs(g), dim=(1, 2, 3)))
    (step,) = torch.autograd.grad(loss_grad, [x_adv])
    x_adv = x_adv.detach() + step_size * torch.sign(step.detach())
    x_adv = _project(torch, x_adv, x, eps)
  return x_adv.detach()


def torch_lfr_regularizer(model, x_adv, y):
  """``B * mean_i sum |d CE / d x_adv|`` with ``create_graph=True``.

  CE is the batch mean, so this is the mean over examples of the per-example
  l1 norm of d CE_i / d x_i, differentiable with respect to the weights.
  Runs in the model's current mode.
  """
  torch = import_torch()
  F = torch.nn.functional
  x_adv = x_adv.detach().clone().requires_grad_(True)
  loss = F.cross_entropy(model(x_adv), y)
  (g,) = torch.autograd.grad(loss, [x_adv], create_graph=True)
  return torch.mean(torch.sum(torch.abs(g), dim=(1, 2, 3))) * x_adv.shape[0]


def torch_lfr_loss(model, x, x_adv, y, lam: float):
  """The outer LFR loss in train mode.

  Returns:
    (loss, clean CE, regularizer), all differentiable.
  """
  torch = import_torch()
  model.train()
  ce = torch.nn.functional.cross_entropy(model(x), y)
  reg = torch_lfr_regularizer(model, x_adv, y)
  return ce + lam * reg, ce, reg


def torch_lfr_step(model, optimizer, x, y, *, eps, step_size, num_steps,
                   lam):
  """One LFR training step as in the authors' code; returns the loss."""
  x_adv = torch_lfr_inner(model, x, y, eps=eps, step_size=step_size,
                          num_steps=num_steps)
  model.train()
  optimizer.zero_grad(set_to_none=True)
  loss, _, _ = torch_lfr_loss(model, x, x_adv, y, lam)
  loss.backward()
  optimizer.step()
  return loss.detach()


def torch_pgd_inner(model, x, y, *, eps, step_size, num_steps):
  """Madry PGD in eval mode: uniform start, K sign steps, projection.

  Returns:
    x_adv in B_inf(x, eps) intersected with [0, 1], detached.
  """
  torch = import_torch()
  F = torch.nn.functional
  model.eval()
  x_adv = _project(torch, x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
  for _ in range(num_steps):
    x_adv.requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y)
    (g,) = torch.autograd.grad(loss, [x_adv])
    x_adv = _project(torch, x_adv.detach() + step_size * torch.sign(g), x, eps)
  return x_adv.detach()


def torch_pgd_at_step(model, optimizer, x, y, *, eps, step_size, num_steps,
                      lam=None):
  """One PGD-AT training step (train-mode CE at x_adv); returns the loss."""
  del lam
  torch = import_torch()
  x_adv = torch_pgd_inner(model, x, y, eps=eps, step_size=step_size,
                          num_steps=num_steps)
  model.train()
  optimizer.zero_grad(set_to_none=True)
  loss = torch.nn.functional.cross_entropy(model(x_adv), y)
  loss.backward()
  optimizer.step()
  return loss.detach()


TORCH_STEPS: dict[str, Callable[..., Any]] = {
    "lfr": torch_lfr_step, "pgd_at": torch_pgd_at_step}


# ---------------------------------------------------------------------------
# JAX side


def objective_settings(method: str, num_steps: int, step_size: float,
                       lam: float) -> dict[str, Any]:
  """``objectives.build`` settings of "lfr" or "pgd_at" at K = ``num_steps``."""
  settings = {"num_steps": num_steps, "step_size": step_size}
  if method == "lfr":
    settings["lam"] = lam
  return settings


def make_jax_step(method: str, net: models.Network, settings: dict[str, Any],
                  *, eps: float, lr: float, momentum: float, seed: int = 0,
                  mesh: jax.sharding.Mesh | None = None):
  """Our training step (``steps.make_train_step``) and a fresh state.

  Args:
    method: an ``objectives.names()`` name.
    net: the network.
    settings: the objective's ``objectives.build`` settings
      (:func:`objective_settings` for LFR and PGD-AT).
    eps: l_inf radius of the inner maximization.
    lr: SGD learning rate (constant).
    momentum: SGD momentum.
    seed: seed of the state's PRNG key (the key is ``seed + 1``).
    mesh: device mesh; default one device.

  Returns:
    (jitted step, train state placed on the mesh).
  """
  tx = optax.sgd(lr, momentum=momentum)
  eps_value = jnp.asarray(eps, jnp.float32)
  mesh = mesh or sharding.make_mesh(1)
  step = steps.make_train_step(
      objectives.build(method, **settings), net.graphdef, tx, lambda s: lr,
      lambda s: eps_value, mesh)
  # Placed as the step returns it; an uncommitted state would make the
  # second call compile again.
  state = jax.device_put(
      train_state.create_train_state(net, tx, jax.random.key(seed + 1)),
      NamedSharding(mesh, P()))
  return step, state


# ---------------------------------------------------------------------------
# Both frameworks, one step each, interleaved


def compare(method: str, num_steps: int, *, batch: int, repeats: int,
            warmup: int, eps: float, step_size: float, lam: float, lr: float,
            momentum: float, seed: int, schedule: str = "interleaved"
            ) -> dict[str, Any]:
  """Times one training step setting in both frameworks, interleaved.

  Both start from :func:`small_cnn_weights` on :func:`random_batch`; ours is
  timed after compiling, with ``block_until_ready``.

  Args:
    method: "lfr" or "pgd_at".
    num_steps: K.
    batch: batch size.
    repeats: timed steps per framework.
    warmup: untimed steps per framework after compiling.
    eps, step_size, lam, lr, momentum: the step's settings.
    seed: seed of the weights and batch.
    schedule: "interleaved" (alternate the frameworks step by step) or
      "blocked" (all JAX steps, then all PyTorch steps).

  Returns:
    {"method", "k", "jax_s", "torch_s" (lists of seconds), "compile_s"}.
  """
  torch = import_torch()
  net, state_dict = small_cnn_weights(seed)
  x_np, y_np = random_batch(batch, seed)
  step, state = make_jax_step(
      method, net, objective_settings(method, num_steps, step_size, lam),
      eps=eps, lr=lr, momentum=momentum, seed=seed)
  batch_sharding = NamedSharding(sharding.make_mesh(1), P("data"))
  x_jax, y_jax = jax.device_put((x_np, y_np), batch_sharding)
  start = time.perf_counter()
  state, metrics = step(state, x_jax, y_jax)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start

  model = torch_small_cnn(state_dict)
  optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
  x_torch, y_torch = to_torch(x_np, y_np)
  torch.manual_seed(seed)
  torch_train_step = TORCH_STEPS[method]
  step_settings = dict(eps=eps, step_size=step_size, num_steps=num_steps,
                       lam=lam)

  def run_torch():
    start = time.perf_counter()
    loss = torch_train_step(model, optimizer, x_torch, y_torch,
                            **step_settings)
    float(loss)  # waits for the step, as block_until_ready does for ours
    return time.perf_counter() - start

  def run_jax():
    nonlocal state
    start = time.perf_counter()
    state, metrics = step(state, x_jax, y_jax)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  if schedule == "interleaved":
    for _ in range(warmup):
      run_jax()
      run_torch()
    jax_s, torch_s = [], []
    for _ in range(repeats):
      jax_s.append(run_jax())
      torch_s.append(run_torch())
  else:
    for _ in range(warmup):
      run_jax()
    jax_s = [run_jax() for _ in range(repeats)]
    for _ in range(warmup):
      run_torch()
    torch_s = [run_torch() for _ in range(repeats)]
  return {"method": method, "k": num_steps, "jax_s": jax_s,
          "torch_s": torch_s, "compile_s": compile_s}
