"""Decision surfaces, directions and curvature against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfr_jax import geometry
from lfr_jax import losses
from lfr_jax import regularizers
from lfr_jax.models.conv import fast_conv_general_dilated

H, W, C = 8, 8, 1
DIM = H * W * C


# ------------------------------------------------------------------ models --


def linear_model(key, classes, dtype=jnp.float32):
  kw, kb = jax.random.split(key)
  w = jax.random.normal(kw, (DIM, classes), dtype)
  b = jax.random.normal(kb, (classes,), dtype)
  return w, b, lambda x: x.reshape(x.shape[0], -1) @ w + b


def conv_model(key, classes=3, dtype=jnp.float32, act=jax.nn.softplus):
  """A smooth net through the custom_vjp convolution (no forward mode)."""
  k1, k2, k3 = jax.random.split(key, 3)
  conv = jax.random.normal(k1, (3, 3, C, 4), dtype) * 0.5
  dense = jax.random.normal(k2, (6 * 6 * 4, classes), dtype) * 0.3
  bias = jax.random.normal(k3, (classes,), dtype) * 0.1

  def logits_fn(x):
    h = fast_conv_general_dilated(x, conv, (1, 1), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return act(h).reshape(x.shape[0], -1) @ dense + bias

  return logits_fn


def quadratic_model(a):
  """z = [0.5 x^T A x + 1, 0, 0]: label 0's decision value has Hessian A."""
  def logits_fn(x):
    flat = x.reshape(x.shape[0], -1)
    quad = 0.5 * jnp.einsum("ni,ij,nj->n", flat, a, flat) + 1.0
    return jnp.stack([quad, jnp.zeros_like(quad), jnp.zeros_like(quad)], 1)
  return logits_fn


def symmetric(key, eigenvalues):
  q, _ = jnp.linalg.qr(jax.random.normal(key, (DIM, DIM)))
  return (q * jnp.asarray(eigenvalues)) @ q.T


def images(key, n=None, dtype=jnp.float32):
  shape = (H, W, C) if n is None else (n, H, W, C)
  return jax.random.uniform(key, shape, dtype)


def top_by_magnitude(values, k):
  values = np.asarray(values)
  return values[np.argsort(-np.abs(values), kind="stable")][:k]


# ----------------------------------------------------------------- surface --


def test_surface_grid_shape_and_centre_is_the_clean_decision_value():
  logits_fn = conv_model(jax.random.key(0))
  x = images(jax.random.key(1))
  u = geometry.random_direction(jax.random.key(2), x.shape)
  v = geometry.random_direction(jax.random.key(3), x.shape)
  ii, jj, z = geometry.surface(logits_fn, x, 2, u, v, extent=0.3,
                               resolution=5)
  assert ii.shape == jj.shape == z.shape == (5, 5)
  coords = np.array([-0.3, -0.15, 0.0, 0.15, 0.3])
  np.testing.assert_allclose(ii[0], coords, atol=1e-7)  # i along columns
  np.testing.assert_allclose(jj[:, 0], coords, atol=1e-7)  # j along rows
  assert ii[2, 2] == 0.0 and jj[2, 2] == 0.0
  clean = losses.decision_value(logits_fn(x[None]), jnp.array([2]))[0]
  np.testing.assert_allclose(z[2, 2], clean, rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [7, 256])
def test_surface_of_linear_model_is_the_closed_form(chunk_size):
  w, b, logits_fn = linear_model(jax.random.key(0), classes=4)
  x = images(jax.random.key(1))
  u = geometry.random_direction(jax.random.key(2), x.shape)
  v = geometry.random_direction(jax.random.key(3), x.shape)
  y = 1
  ii, jj, z = geometry.surface(logits_fn, x, y, u, v, extent=2.0,
                               resolution=5, chunk_size=chunk_size)
  # z_k(i, j) = z_k(x) + i (W^T u)_k + j (W^T v)_k: L = z_y - max of the rest.
  w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
  z0 = np.asarray(x, np.float64).ravel() @ w + b
  du, dv = np.asarray(u).ravel() @ w, np.asarray(v).ravel() @ w
  grid = (z0 + np.asarray(ii)[..., None] * du + np.asarray(jj)[..., None] * dv)
  expected = grid[..., y] - np.delete(grid, y, axis=-1).max(-1)
  np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-3)


def test_surface_of_two_class_linear_model_is_a_plane():
  _, _, logits_fn = linear_model(jax.random.key(4), classes=2)
  x = images(jax.random.key(5))
  u = geometry.random_direction(jax.random.key(6), x.shape)
  v = geometry.random_direction(jax.random.key(7), x.shape)
  ii, jj, z = geometry.surface(logits_fn, x, 0, u, v, extent=1.0,
                               resolution=7)
  design = np.stack([np.ones(49), np.ravel(ii), np.ravel(jj)], 1)
  coef, *_ = np.linalg.lstsq(design, np.ravel(z), rcond=None)
  np.testing.assert_allclose(design @ coef, np.ravel(z), atol=1e-4)
  slope_u = np.asarray(jax.grad(lambda t: losses.decision_value(
      logits_fn((x + t * u)[None]), jnp.array([0]))[0])(0.0))
  np.testing.assert_allclose(coef[1], slope_u, rtol=1e-4)


@pytest.mark.parametrize("clip", [False, True])
def test_loss_surface_matches_cross_entropy(clip):
  logits_fn = conv_model(jax.random.key(0))
  x = images(jax.random.key(1))
  u = geometry.random_direction(jax.random.key(2), x.shape)
  v = geometry.adversarial_direction(logits_fn, x, 1)
  ii, jj, z = geometry.surface(logits_fn, x, 1, u, v, extent=0.5,
                               resolution=3, quantity="loss", clip=clip)
  points = (x + ii.ravel()[:, None, None, None] * u
            + jj.ravel()[:, None, None, None] * v)
  if clip:
    points = jnp.clip(points, 0.0, 1.0)
  expected = losses.cross_entropy(logits_fn(points), jnp.ones(9, jnp.int32))
  np.testing.assert_allclose(np.ravel(z), expected, rtol=1e-5)


def test_surface_rejects_bad_arguments():
  logits_fn = conv_model(jax.random.key(0))
  x = images(jax.random.key(1))
  with pytest.raises(ValueError, match="one image"):
    geometry.surface(logits_fn, x[None], 0, x, x, extent=1, resolution=3)
  with pytest.raises(ValueError, match="quantity"):
    geometry.surface(logits_fn, x, 0, x, x, extent=1, resolution=3,
                     quantity="kl")
  with pytest.raises(ValueError, match="dir_v"):
    geometry.surface(logits_fn, x, 0, x, x[..., :1, :], extent=1,
                     resolution=3)


# -------------------------------------------------------------- directions --


def test_random_direction_is_a_unit_sign_vector():
  d = geometry.random_direction(jax.random.key(0), (H, W, C))
  assert d.shape == (H, W, C)
  assert float(jnp.abs(d).max()) == 1.0
  assert set(np.unique(np.asarray(d))) == {-1.0, 1.0}
  d2 = geometry.random_direction(jax.random.key(0), (H, W, C), norm="l2")
  np.testing.assert_allclose(jnp.linalg.norm(d2.ravel()), 1.0, rtol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2", None])
def test_orthogonalize(norm):
  v = geometry.random_direction(jax.random.key(0), (H, W, C))
  u = geometry.random_direction(jax.random.key(1), (H, W, C))
  w = geometry.orthogonalize(v, u, norm=norm)
  scale = float(jnp.linalg.norm(w.ravel()) * jnp.linalg.norm(u.ravel()))
  assert abs(float(jnp.vdot(w, u))) < 1e-6 * scale
  if norm == "linf":
    np.testing.assert_allclose(jnp.abs(w).max(), 1.0, rtol=1e-6)
  elif norm == "l2":
    np.testing.assert_allclose(jnp.linalg.norm(w.ravel()),
                               jnp.linalg.norm(v.ravel()), rtol=1e-6)
  np.testing.assert_array_equal(
      geometry.orthogonalize(v, jnp.zeros_like(u)), v)


@pytest.mark.parametrize("kind", ["ce", "margin"])
def test_gradient_directions_decrease_the_decision_value(kind):
  logits_fn = conv_model(jax.random.key(0), classes=2)
  x = images(jax.random.key(1), n=4)
  y = jnp.array([0, 1, 0, 1])
  v = geometry.adversarial_direction(logits_fn, x, y, kind=kind)
  assert v.shape == x.shape
  assert set(np.unique(np.asarray(v))) <= {-1.0, 0.0, 1.0}
  jac = geometry.decision_jacobian(logits_fn, x, y)
  slope = (jac * v).reshape(4, -1).sum(1)
  # With two classes both losses ascend along -grad L: the slope is -||J||_1.
  np.testing.assert_allclose(slope, -regularizers.per_example_norm(jac, "l1"),
                             rtol=1e-5)
  value = lambda t: losses.decision_value(logits_fn(x + t * v), y)
  assert bool(jnp.all(value(1e-3) < value(0.0)))
  single = geometry.adversarial_direction(logits_fn, x[0], y[0], kind=kind)
  np.testing.assert_array_equal(single, v[0])


def test_pgd_direction_is_unit_linf_and_reaches_the_attack_point():
  logits_fn = conv_model(jax.random.key(0))
  x = images(jax.random.key(1), n=3)
  y = jnp.array([0, 1, 2])
  v = geometry.adversarial_direction(logits_fn, x, y, kind="pgd", eps=0.1,
                                     step_size=0.02, num_steps=5)
  np.testing.assert_allclose(regularizers.per_example_norm(v, "linf"), 1.0,
                             rtol=1e-6)
  before = losses.decision_value(logits_fn(x), y)
  after = losses.decision_value(logits_fn(jnp.clip(x + 0.1 * v, 0, 1)), y)
  assert bool(jnp.all(after < before))
  ll = geometry.adversarial_direction(logits_fn, x, y, kind="least_likely")
  assert ll.shape == x.shape


# ---------------------------------------------------------------- Jacobian --


def test_jacobian_l1_matches_the_regularizer():
  logits_fn = conv_model(jax.random.key(0))
  x = images(jax.random.key(1), n=4)
  y = jnp.array([0, 1, 2, 0])
  stats = geometry.jacobian_stats(logits_fn, x, y)
  np.testing.assert_allclose(
      stats.l1, regularizers.decision_jacobian_norm(logits_fn, x, y),
      rtol=1e-6)
  assert stats.jacobian.shape == x.shape
  assert bool(jnp.all((stats.sparsity >= 0) & (stats.sparsity <= 1)))


def test_jacobian_sparsity_on_a_constructed_case():
  # Two classes: J = w_0 - w_1, with 10 entries under 1e-3 out of 64.
  diff = np.full(DIM, 0.05, np.float32)
  diff[:5], diff[5:10], diff[10] = 0.0, 5e-4, -2e-3
  w = jnp.asarray(np.stack([diff, np.zeros(DIM, np.float32)], 1))
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = images(jax.random.key(0), n=2)
  stats = geometry.jacobian_stats(logits_fn, x, jnp.array([0, 1]))
  np.testing.assert_allclose(stats.sparsity, [10 / DIM, 10 / DIM])
  np.testing.assert_allclose(stats.l1, [np.abs(diff).sum()] * 2, rtol=1e-5)
  np.testing.assert_allclose(stats.jacobian[1].ravel(), -diff)
  half = geometry.jacobian_stats(logits_fn, x, jnp.array([0, 1]),
                                 threshold=1e-2)
  np.testing.assert_allclose(half.sparsity, [11 / DIM] * 2)


# ----------------------------------------------------------------- Hessian --


def test_lanczos_recovers_a_known_hessian():
  eigenvalues = np.linspace(-1.0, 1.0, DIM)
  eigenvalues[:3] = [9.0, -7.0, 5.0]
  a = symmetric(jax.random.key(0), eigenvalues)
  logits_fn = quadratic_model(a)
  x = images(jax.random.key(1), n=2)  # any x: H = A everywhere
  y = jnp.zeros(2, jnp.int32)
  full = geometry.hessian_eigs(logits_fn, x, y, key=jax.random.key(2),
                               num_iters=DIM)
  expected = top_by_magnitude(eigenvalues, DIM)
  for n in range(2):
    np.testing.assert_allclose(np.sort(full.eigs[n]), np.sort(eigenvalues),
                               atol=1e-4)
    np.testing.assert_allclose(full.eigs[n][:3], expected[:3], rtol=1e-5)
  np.testing.assert_allclose(full.ritz_l1, np.abs(eigenvalues).sum(),
                             rtol=1e-4)
  np.testing.assert_allclose(full.weights.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(full.top, 9.0, rtol=1e-5)
  short = geometry.hessian_eigs(logits_fn, x, y, key=jax.random.key(3),
                                num_iters=12)
  assert short.eigs.shape == (2, 12)
  np.testing.assert_allclose(short.eigs[:, :3], np.tile(expected[:3], (2, 1)),
                             rtol=1e-3)


def test_lanczos_restarts_on_a_low_rank_hessian():
  eigenvalues = np.zeros(DIM)
  eigenvalues[:3] = [4.0, -3.0, 2.0]
  logits_fn = quadratic_model(symmetric(jax.random.key(0), eigenvalues))
  x = images(jax.random.key(1), n=1)
  out = geometry.hessian_eigs(logits_fn, x, jnp.zeros(1, jnp.int32),
                              key=jax.random.key(2), num_iters=10)
  assert bool(jnp.all(jnp.isfinite(out.eigs)))
  np.testing.assert_allclose(out.eigs[0, :3], [4.0, -3.0, 2.0], rtol=1e-4)
  np.testing.assert_allclose(out.eigs[0, 3:], 0.0, atol=1e-4)


def test_piecewise_linear_net_has_zero_hessian():
  k1, k2 = jax.random.split(jax.random.key(0))
  w1 = jax.random.normal(k1, (DIM, 16))
  w2 = jax.random.normal(k2, (16, 3))
  logits_fn = lambda x: jax.nn.relu(x.reshape(x.shape[0], -1) @ w1) @ w2
  x = images(jax.random.key(1), n=2)
  out = geometry.hessian_eigs(logits_fn, x, jnp.array([0, 2]),
                              key=jax.random.key(2), num_iters=4)
  np.testing.assert_array_equal(out.eigs, 0.0)
  np.testing.assert_array_equal(out.ritz_l1, 0.0)
  np.testing.assert_allclose(out.zero_share, 1.0)


def test_hvp_matches_finite_differences():
  with jax.enable_x64(True):
    logits_fn = conv_model(jax.random.key(0), dtype=jnp.float64)
    x = images(jax.random.key(1), dtype=jnp.float64)
    v = jax.random.normal(jax.random.key(2), x.shape, jnp.float64)
    grad = jax.grad(lambda z: losses.decision_value(
        logits_fn(z[None]), jnp.array([1]))[0])
    h = 1e-5
    fd = (grad(x + h * v) - grad(x - h * v)) / (2 * h)
    np.testing.assert_allclose(geometry.hvp(logits_fn, x, 1, v), fd,
                               rtol=1e-6, atol=1e-9)


def test_lanczos_matches_the_dense_hessian_of_a_conv_net():
  logits_fn = conv_model(jax.random.key(0), act=jnp.tanh)
  x = images(jax.random.key(1), n=2)
  y = jnp.array([1, 2])
  out = geometry.hessian_eigs(logits_fn, x, y, key=jax.random.key(2),
                              num_iters=DIM, chunk_size=1)
  for n in range(2):
    f = lambda z: losses.decision_value(
        logits_fn(z.reshape(1, H, W, C)), y[n:n + 1])[0]
    # Dense Hessian, in the test only; jacrev twice (no forward mode).
    dense = jax.jacrev(jax.jacrev(f))(x[n].ravel())
    expected = np.linalg.eigvalsh(np.asarray(dense, np.float64))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np.sort(out.eigs[n]), expected,
                               atol=1e-4 * scale)


# --------------------------------------------------------- histogram data --


def test_flatness_values_are_chunked_local_flatness():
  logits_fn = conv_model(jax.random.key(0))
  x = images(jax.random.key(1), n=5)
  y = jnp.array([0, 1, 2, 0, 1])
  key = jax.random.key(2)
  settings = dict(eps=0.1, step_size=0.02, num_steps=2)
  values = geometry.flatness_values(logits_fn, x, y, key, chunk_size=2,
                                    **settings)
  expected = jnp.concatenate([
      regularizers.local_flatness(logits_fn, x[s], y[s],
                                  jax.random.fold_in(key, c), **settings)[0]
      for c, s in enumerate([slice(0, 2), slice(2, 4)])])
  assert values.shape == (5,)
  np.testing.assert_allclose(values[:4], expected, rtol=1e-5)
  assert bool(values[4] > 0)


def test_linearity_values_match_local_linearity():
  logits_fn = conv_model(jax.random.key(0))
  x = images(jax.random.key(1), n=3)
  y = jnp.array([0, 1, 2])
  key = jax.random.key(2)
  values = geometry.linearity_values(logits_fn, x, y, key, eps=0.1,
                                     num_steps=3)
  expected, _ = regularizers.local_linearity(
      logits_fn, x, y, jax.random.fold_in(key, 0), eps=0.1, step_size=0.1,
      num_steps=3)
  np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-7)
