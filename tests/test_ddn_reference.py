"""DDN against a PyTorch reference of advertorch's ``DDNL2Attack``.

The LFR authors' evaluation runs ``advertorch.attacks.DDNL2Attack(model,
nb_iter=20)`` with its defaults (gamma 0.05, init norm 1, 256 grey levels).
advertorch 0.2.3, its last release, no longer imports beside torch 2, so the
reference below restates its ``perturb`` loop with the same torch pieces it
uses (``optim.SGD`` with lr 1 and ``CosineAnnealingLR(eta_min=0.01)`` stepped
before the optimizer, per-example CE summed over the batch). Our
``attacks.ddn(levels=256)`` must find the same adversarial points and norms
on the same linear model, and, in float64, take the same path: every point
at which the two query a small softplus MLP agrees. Skips when torch is not
installed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfr_jax import attacks

torch = pytest.importorskip("torch")

N, D, C = 64, 28 * 28, 10


def _reference_ddn(model, x, y, *, nb_iter, gamma=0.05, init_norm=1.0,
                   levels=256):
  """advertorch 0.2.3 DDNL2Attack.perturb, untargeted, clip to [0, 1]."""
  n = x.shape[0]
  norm = torch.full((n,), init_norm)
  worst_norm = torch.max(x, 1 - x).flatten(1).norm(p=2, dim=1)
  delta = torch.zeros_like(x, requires_grad=True)
  optimizer = torch.optim.SGD([delta], lr=1)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
      optimizer, T_max=nb_iter, eta_min=0.01)
  best_l2, best_delta = worst_norm.clone(), torch.zeros_like(x)
  loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
  for _ in range(nb_iter):
    scheduler.step()
    l2 = delta.data.flatten(1).norm(p=2, dim=1)
    logits = model(x + delta)
    is_adv = logits.argmax(1) != y
    both = is_adv & (l2 < best_l2)
    best_l2[both] = l2[both]
    best_delta[both] = delta.data[both]
    optimizer.zero_grad()
    (-loss_fn(logits, y)).backward()
    grad_norms = delta.grad.flatten(1).norm(p=2, dim=1)
    delta.grad.div_(grad_norms.view(-1, 1, 1, 1))
    optimizer.step()
    # advertorch's is_adv.float(), in x's dtype (its images are float32).
    norm.mul_(1 - (2 * is_adv.to(x.dtype) - 1) * gamma)
    delta.data.mul_((norm / delta.data.flatten(1).norm(p=2, dim=1)
                     ).view(-1, 1, 1, 1))
    delta.data.add_(x)
    if levels is not None:
      delta.data.mul_(levels - 1).round_().div_(levels - 1)
    delta.data.clamp_(0, 1).sub_(x)
  found = best_l2 < worst_norm
  return (x + best_delta).detach(), torch.where(found, best_l2,
                                                torch.tensor(float("inf")))


# The bias sets how far the points lie from the boundary: some within the
# largest budget nb_iter steps reach (1.05^nb_iter), some beyond it.
@pytest.mark.parametrize("nb_iter,margin", [(5, 3.0), (20, 4.5)])
def test_ddn_matches_advertorch_reference(nb_iter, margin):
  rng = np.random.default_rng(0)
  w = rng.normal(0, 0.05, (D, C)).astype(np.float32)
  x = rng.uniform(0, 1, (N, 28, 28, 1)).astype(np.float32)
  # Labels the model gets right, by a margin that puts the nearest boundary
  # at l2 distances around the largest budget the steps reach.
  b = np.zeros(C, np.float32)
  b[0] = margin - float((x.reshape(N, -1) @ w)[:, 0].mean())
  y = np.argmax(x.reshape(N, -1) @ w + b, -1).astype(np.int32)
  # The model is linear, so its gradient never vanishes: no random directions.
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w + b

  x_adv, norms = jax.jit(lambda x, y: attacks.ddn(
      logits_fn, x, y, jax.random.key(0), num_steps=nb_iter, levels=256))(
          jnp.asarray(x), jnp.asarray(y))

  wt, bt = torch.from_numpy(w), torch.from_numpy(b)
  # Same pixel order: NHWC flattens like the (N, 28, 28, 1) torch tensor.
  ref_adv, ref_norms = _reference_ddn(
      lambda z: z.reshape(z.shape[0], -1) @ wt + bt,
      torch.from_numpy(x), torch.from_numpy(y).long(), nb_iter=nb_iter)

  norms, ref_norms = np.asarray(norms), ref_norms.numpy()
  found = np.isfinite(norms)
  # Both the hits and their sizes agree: the attacks took the same path.
  assert 0 < found.sum() < N, "the test needs both found and missed points"
  np.testing.assert_array_equal(found, np.isfinite(ref_norms))
  np.testing.assert_allclose(norms[found], ref_norms[found], atol=2e-3)
  # Rounding to the grid turns float32 differences between the frameworks
  # into whole grey levels at a few pixels: allow 2 levels at < 0.1 % of them.
  diff = np.abs(np.asarray(x_adv) - ref_adv.numpy())
  assert diff.max() <= 2 / 255 + 1e-6
  assert np.mean(diff > 1e-5) < 1e-3
  # Every iterate lies on the 256-level grid, as 8-bit images do.
  grid = np.asarray(x_adv)[found] * 255
  np.testing.assert_allclose(grid, np.round(grid), atol=1e-3)


def test_ddn_without_quantization_differs_and_stays_in_box():
  """levels=None is the unquantized attack: off the grid, still in [0, 1]."""
  rng = np.random.default_rng(1)
  w = rng.normal(0, 0.05, (D, C)).astype(np.float32)
  x = rng.uniform(0, 1, (16, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, C, 16).astype(np.int32)
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w
  x_adv, norms = attacks.ddn(logits_fn, jnp.asarray(x), jnp.asarray(y),
                             jax.random.key(0), num_steps=10)
  x_adv = np.asarray(x_adv)
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  moved = np.isfinite(np.asarray(norms)) & (np.abs(x_adv - x).max((1, 2, 3)) > 0)
  assert moved.any()
  grid = x_adv[moved] * 255
  assert np.abs(grid - np.round(grid)).max() > 1e-2


def test_ddn_rejects_bad_levels():
  x = jnp.zeros((2, 28, 28, 1)); y = jnp.zeros((2,), jnp.int32)
  with pytest.raises(ValueError, match="levels must be an integer >= 2"):
    attacks.ddn(lambda z: jnp.zeros((2, 10)), x, y, jax.random.key(0),
                num_steps=2, levels=1)


def test_ddn_trajectory_matches_advertorch_reference_in_float64():
  """Every iterate x + delta_i that DDN judges, in float64, on a softplus
  MLP, with advertorch's defaults (gamma 0.05, initial norm 1, 256 grey
  levels): the cosine-annealed unit gradient step, the (1 -+ gamma)
  budget, the rescaling, the grey levels and the clip, step by step. 12
  steps from norm 1 stay below the box's largest norm, where our cap would
  differ."""
  levels = 256
  from references import tiny_models
  model = tiny_models.make("softplus_mlp", 3, (4, 4, 1), 5)
  rng = np.random.default_rng(4)
  x = np.clip(rng.uniform(-0.2, 1.2, (6, 4, 4, 1)), 0.0, 1.0)
  y = model.logits(x).argmax(axis=1)
  nb_iter = 12
  before = (jax.config.jax_enable_x64, torch.get_default_dtype())
  jax.config.update("jax_enable_x64", True)
  torch.set_default_dtype(torch.float64)
  try:
    ours, forward = [], model.jax_logits()

    def logits_fn(z):
      jax.debug.callback(lambda v: ours.append(np.asarray(v)), z,
                         ordered=True)
      return forward(z)

    x_adv, norms = attacks.ddn(logits_fn, jnp.asarray(x), jnp.asarray(y),
                               jax.random.key(0), num_steps=nb_iter,
                               levels=levels)
    jax.effects_barrier()
    w1, b1, w2, b2 = (torch.from_numpy(a) for a in (model.w1, model.b1,
                                                     model.w2, model.b2))
    theirs = []

    def torch_model(z):  # z NHWC, as _reference_ddn passes it through
      theirs.append(z.detach().numpy().copy())
      return torch.nn.functional.softplus(
          z.reshape(z.shape[0], -1) @ w1 + b1) @ w2 + b2

    ref_adv, ref_norms = _reference_ddn(
        torch_model, torch.from_numpy(x), torch.from_numpy(y).long(),
        nb_iter=nb_iter, levels=levels)
  finally:
    jax.config.update("jax_enable_x64", before[0])
    torch.set_default_dtype(before[1])
  assert len(ours) == len(theirs) == nb_iter
  for i, (a, b) in enumerate(zip(ours, theirs)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10, err_msg=f"step {i}")
  np.testing.assert_allclose(np.asarray(x_adv), ref_adv.numpy(), atol=1e-10)
  np.testing.assert_allclose(np.asarray(norms), ref_norms.numpy(),
                             rtol=1e-12)
  assert np.isfinite(ref_norms.numpy()).any()
