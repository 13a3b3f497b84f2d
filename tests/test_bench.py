"""The benchmarks in bench/: the PyTorch peer is faithful, the HVP modes agree, the scripts run.

- The PyTorch LFR step of ``bench/common.py`` computes what
  ``objectives.build("lfr")`` computes on the same weights: the regularizer
  at a fixed x_adv, the whole loss and its double-backprop parameter
  gradient, and the inner sign-ascent from the same start. Its PGD-AT inner
  point stays in the ball.
- ``bench/hvp_modes.py``'s plain-lax SmallCNN equals our model, and its three
  ways to compute H sign(grad) give the same vector.
- Each bench script runs end to end with tiny flags, in subprocesses started
  together at the beginning (they mostly compile, one core each).

The PyTorch parts skip without torch (``pip install torch``), the
torchattacks run without torchattacks, the APGD run without the MNIST files
(``$LFR_DATA_DIR`` or the repository's ``data/mnist/``). Run with ``pytest tests/test_bench.py -q``.
"""

import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfr_jax import interop
from lfr_jax import mnist
from lfr_jax import objectives
from lfr_jax import regularizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
sys.path.insert(0, BENCH)

import breakdown  # noqa: E402
import common  # noqa: E402
import hvp_modes  # noqa: E402
import scaling  # noqa: E402


def _importable(name: str) -> bool:
  try:
    importlib.import_module(name)
  except ImportError:
    return False
  return True


HAS_TORCH = _importable("torch")
HAS_TORCHATTACKS = HAS_TORCH and _importable("torchattacks")
# Configured MNIST (LFR_DATA_DIR or the embedded copy); a configured but
# broken folder makes the script, and so its test, fail.
HAS_MNIST = bool(os.environ.get("LFR_DATA_DIR")) or os.path.isdir(
    mnist.EMBEDDED_DIR)

# Tiny settings per script; None where a dependency is missing.
SMOKE = {
    "torch_step": (["--methods=lfr", "--ks=1", "--repeats=1", "--warmup=0",
                    "--batch=8", "--threads=1"] if HAS_TORCH else None),
    "hvp_modes": ["--batch=4", "--repeats=1", "--rounds=1"],
    "breakdown": (["--batch=8", "--repeats=1", "--ks=1,2", "--gemm=64",
                   "--threads=1"] if HAS_TORCH else None),
    # The K and batch sweeps run scaling.measure, tested in-process below.
    "scaling": ["--sweeps=sharded", "--sharded_batch=8", "--sharded_k=1",
                "--devices=2", "--repeats=1", "--warmup=0"],
    "mixed_precision": (["--train_steps=2", "--batch=8", "--num_steps=1"]
                        if HAS_MNIST else None),
    "apgd_torchattacks": (["--num_examples=8", "--batch=8", "--steps=2",
                           "--train_steps=1", "--repeats=1", "--threads=1"]
                          if HAS_TORCHATTACKS and HAS_MNIST else None),
    # {tmp}: a temporary folder for the synthetic ImageNet it writes.
    "input_pipeline": ["--dir={tmp}", "--num_images=16", "--short_side=40,60",
                       "--image_size=32", "--batch=4", "--seconds=1",
                       "--cores=1", "--workers=0", "--paths=train,stages"],
}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
  """Starts every bench script with tiny flags at once; name -> Popen."""
  procs = {}
  for name, args in SMOKE.items():
    if args is None:
      continue
    tmp = str(tmp_path_factory.mktemp(name))
    procs[name] = subprocess.Popen(
        [sys.executable, os.path.join(BENCH, f"{name}.py"),
         *[a.replace("{tmp}", tmp) for a in args]],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  yield procs
  for proc in procs.values():
    if proc.poll() is None:
      proc.kill()
      proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def _start_smoke_runs(smoke_runs):
  """The subprocesses run while the in-process tests do."""
  return smoke_runs


def _finish(smoke_runs, name):
  if SMOKE[name] is None:
    pytest.skip(f"{name} needs a missing dependency: torch, torchattacks or "
                "the MNIST files (LFR_DATA_DIR unset and no data/mnist/)")
  out, err = smoke_runs[name].communicate(timeout=300)
  assert smoke_runs[name].returncode == 0, err[-3000:]
  return out


# ---------------------------------------------------------------------------
# The PyTorch peer against objectives.build


def _pair(batch=8, dropout=0.0):
  """Same weights in both frameworks (dropout off), a batch, torch tensors."""
  torch = pytest.importorskip("torch")
  # One thread: tiny ops, and spinning OpenMP threads crawl on busy cores.
  torch.set_num_threads(1)
  net, state_dict = common.small_cnn_weights(0, dropout=dropout)
  model = common.torch_small_cnn(state_dict, dropout=dropout)
  x, y = common.random_batch(batch)
  x_t, y_t = common.to_torch(x, y)
  return torch, net, model, x, y, x_t, y_t


def test_regularizer_matches_torch_at_fixed_x_adv():
  torch, net, model, x, y, _, y_t = _pair(dropout=0.5)
  rng = np.random.default_rng(1)
  x_adv = np.clip(x + rng.uniform(-0.3, 0.3, x.shape), 0, 1).astype(np.float32)
  ours = jax.jit(lambda params, x, y: regularizers.input_gradient_norm(
      net.replace(params=params).logits_fn(), x, y).mean())(
          net.params, x_adv, y)
  model.eval()  # dropout off, as in our eval-mode logits_fn
  theirs = common.torch_lfr_regularizer(
      model, common.to_torch(x_adv, y)[0], y_t).item()
  assert theirs > 0.1  # fc3 non-zero: the gradients are not degenerate
  np.testing.assert_allclose(float(ours), theirs, rtol=1e-4)


def test_lfr_loss_and_double_backprop_gradient_match_torch():
  # eps = 0 pins x_adv = x in both, dropout 0 makes train mode deterministic.
  torch, net, model, x, y, x_t, y_t = _pair()
  objective = objectives.build("lfr", num_steps=1, step_size=0.01, lam=0.5)

  def loss_fn(params):
    return objective(net.replace(params=params), jnp.asarray(x),
                     jnp.asarray(y), jax.random.key(0), 0.0)

  (loss, (metrics, _)), grads = jax.jit(
      jax.value_and_grad(loss_fn, has_aux=True))(net.params)
  loss_t, _, reg_t = common.torch_lfr_loss(model, x_t, x_t, y_t, 0.5)
  loss_t.backward()
  np.testing.assert_allclose(float(metrics["reg"]), reg_t.item(), rtol=1e-4)
  np.testing.assert_allclose(float(loss), loss_t.item(), rtol=1e-4)
  ours = interop.export_torch_state_dict(net.replace(params=grads),
                                         "small_cnn")
  for name, p in model.named_parameters():
    theirs = p.grad.numpy()
    scale = np.abs(theirs).max()
    assert np.abs(ours[name] - theirs).max() <= 1e-4 * scale, name


def test_lfr_inner_ascent_matches_torch_from_the_same_start():
  torch, net, model, x, y, x_t, y_t = _pair()
  ours = jax.jit(lambda params, x, y: regularizers.flatness_ascent(
      net.replace(params=params).logits_fn(), x, y, jax.random.key(0),
      eps=0.3, step_size=0.01, num_steps=3, init_std=0.0))(net.params, x, y)
  theirs = common.torch_lfr_inner(model, x_t, y_t, eps=0.3,
                                  step_size=0.01, num_steps=3,
                                  init_std=0.0)
  theirs = theirs.permute(0, 2, 3, 1).numpy()
  # A sign step can flip where H sign(g) is ~0; over 3 steps almost none do.
  same = np.abs(np.asarray(ours) - theirs) <= 1e-6
  assert same.mean() >= 0.99
  assert not np.allclose(theirs, x)  # it moved


@pytest.mark.parametrize("inner", ["pgd", "lfr"])
def test_torch_inner_points_stay_in_the_ball(inner):
  torch, _, model, x, _, x_t, y_t = _pair()
  torch.manual_seed(0)
  fn = (common.torch_pgd_inner if inner == "pgd"
        else common.torch_lfr_inner)
  x_adv = fn(model, x_t, y_t, eps=0.1, step_size=0.05, num_steps=4)
  assert float((x_adv - x_t).abs().max()) <= 0.1 + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  assert float((x_adv - x_t).abs().max()) > 0.05  # not stuck at x


def test_torch_steps_update_the_weights():
  torch, _, model, _, _, x_t, y_t = _pair(batch=4, dropout=0.5)
  for method, step in common.TORCH_STEPS.items():
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = step(model, optimizer, x_t, y_t, eps=0.3, step_size=0.01,
                num_steps=1, lam=0.02)
    assert np.isfinite(loss.item()), method
    assert any(not torch.equal(b, p) for b, p in
               zip(before, model.parameters())), method


# ---------------------------------------------------------------------------
# HVP modes


def test_lax_small_cnn_equals_our_model():
  net, x, _ = hvp_modes.setup(4)
  np.testing.assert_allclose(
      np.asarray(hvp_modes.lax_small_cnn_logits(net.params, x)),
      np.asarray(net.logits_fn()(x)), rtol=1e-5, atol=1e-5)


def test_hvp_modes_agree():
  net, x, y = hvp_modes.setup(4)
  fns = hvp_modes.variants(net.graphdef)
  ref = np.asarray(fns[hvp_modes.REFERENCE](net.params, x, y))
  assert np.abs(ref).max() > 0
  for name in ("fwd-rev lax", "rev-rev lax"):
    value = fns[name](net.params, x, y)
    diff = hvp_modes.relative_difference(value, ref)
    assert diff <= hvp_modes.TOLERANCE, (name, diff)


# ---------------------------------------------------------------------------
# Scaling helpers and the scripts end to end


@pytest.mark.parametrize("name", ["input gradient", "H sign(g) (LFR inner)"])
def test_breakdown_components_compute_the_same_vectors(name):
  """The profile compares like with like: both frameworks' components agree."""
  torch, net, model, x, y, x_t, y_t = _pair(dropout=0.0)
  fn, args = breakdown.jax_components(net, jnp.asarray(x), jnp.asarray(y))[name]
  ours = np.asarray(fn(*args))
  theirs = breakdown.torch_components(model, x_t, y_t)[name]()
  # PyTorch's CE is a batch mean, ours a per-example sum: a factor of N.
  theirs = theirs.detach().permute(0, 2, 3, 1).numpy() * x.shape[0]
  np.testing.assert_allclose(ours, theirs, rtol=1e-3,
                             atol=1e-4 * np.abs(ours).max())


def test_scaling_measure_in_process():
  result = scaling.measure(1, 4, repeats=1, warmup=0)
  assert result["times"][0] > 0
  assert result["compile_peak_mib"] > 0 and result["step_peak_mib"] > 0
  assert result["xla_mib"] > 0


@pytest.mark.parametrize("name", list(SMOKE))
def test_script_runs_with_tiny_flags(smoke_runs, name):
  out = _finish(smoke_runs, name)
  assert "|---|" in out  # printed its Markdown table
  assert "AMD" in out or "Intel" in out or "cores visible" in out
  if name == "hvp_modes":
    assert "The variants agree" in out
  if name == "breakdown":
    assert "Per inner step" in out and "input transpose" in out
  if name == "mixed_precision":
    assert out.count("| same inner points |") == 5
    assert out.count("| bf16 end to end |") == 5
  if name == "scaling":
    assert "overhead ratio" in out and "differ by" in out
  if name == "apgd_torchattacks":
    assert "robust accuracies agree" in out
  if name == "input_pipeline":
    assert "images/s per host" in out and "JPEG decode" in out
    assert "required:" in out and "ratio" in out
