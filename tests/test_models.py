"""Model zoo: shapes, parameter counts, inits, dropout, BatchNorm modes, grads.

Every registered model is exercised on a tiny variant and a tiny batch; the
full-size networks are only traced (``jax.eval_shape``), never run. Run with
``pytest tests/test_models.py -q``.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lfr_jax import models
from lfr_jax.models import layers

# name -> (create kwargs, input shape, num_classes). Small enough to run.
TINY = {
    "small_cnn": (dict(), (2, 28, 28, 1), 10),
    "ds_mnist_cnn": (dict(), (2, 28, 28, 1), 10),
    "ds_cifar_convnet": (dict(widths=(4, 8, 8, 8, 8)), (2, 8, 8, 3), 10),
    "wide_resnet": (dict(depth=10, width=1), (2, 8, 8, 3), 10),
    "resnet": (dict(stage_sizes=(1, 1), width=4, num_classes=7),
               (2, 16, 16, 3), 7),
}
# Too deep to run on a shared CPU; checked with jax.eval_shape only.
TRACE_ONLY = {
    "resnet50": (dict(), (1, 224, 224, 3), 1000),
    "resnet152": (dict(), (1, 224, 224, 3), 1000),
}
BN_MODELS = ["ds_cifar_convnet", "wide_resnet", "resnet"]


@functools.partial(jax.jit, static_argnames=("train", "bn_mode"))
def _apply(net, x, *, train=False, bn_mode="running", dropout_key=None):
  # One compiled program per (model, mode) is much cheaper than running the
  # model op by op; eager execution is covered by the jit-vs-eager test.
  return net.apply(x, train=train, bn_mode=bn_mode, dropout_key=dropout_key)


def _create(name, seed=0, **overrides):
  kwargs, _, _ = TINY[name]
  return _create_cached(name, seed, tuple(sorted({**kwargs, **overrides}.items())))


@functools.cache
def _create_cached(name, seed, items):
  # Networks are immutable pytrees (tests apply them under jit only), so one
  # initialization per configuration can be shared; init dominates runtime.
  return models.create(name, jax.random.key(seed), **dict(items))


def _with_live_head(net):
  """Randomizes SmallCNN's zero-initialized fc3 kernel (other models: as is).

  With fc3 at zero the logits are constant and every input gradient is zero,
  which would make dropout and gradient tests vacuous.
  """
  def live(path, leaf):
    if [getattr(k, "key", None) for k in path[:2]] == ["fc3", "kernel"]:
      return 0.1 * jax.random.normal(jax.random.key(5), leaf.shape)
    return leaf
  return net.replace(params=jax.tree_util.tree_map_with_path(live, net.params))


def _input(name, seed=1):
  _, shape, _ = TINY[name]
  return jax.random.uniform(jax.random.key(seed), shape)


def _num_params(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _bn_leaves(state, field):
  """{path: array} of the BatchNorm variables called ``field`` in a state."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    if field in keys:
      out[tuple(map(str, keys))] = leaf
  return out


def _summed_ce(logits_fn, y):
  def loss(x):
    logp = jax.nn.log_softmax(logits_fn(x))
    return -jnp.take_along_axis(logp, y[:, None], axis=1).sum()
  return loss


def test_registry_is_covered():
  assert set(models.names()) == set(TINY) | set(TRACE_ONLY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_output_shape(name):
  _, shape, classes = TINY[name]
  logits, _ = _apply(_create(name), _input(name))
  assert logits.shape == (shape[0], classes)
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("name", sorted(TRACE_ONLY))
def test_full_size_output_shape(name):
  kwargs, shape, classes = TRACE_ONLY[name]
  out = jax.eval_shape(lambda: models.create(name, jax.random.key(0), **kwargs)
                       .apply(jnp.zeros(shape), bn_mode="batch")[0])
  assert out.shape == (shape[0], classes)


@pytest.mark.parametrize("name,kwargs,expected", [
    ("resnet50", {}, 25_557_032),           # torchvision resnet50
    ("resnet152", {}, 60_192_808),          # torchvision resnet152
    ("wide_resnet", dict(depth=28, width=10), 36_479_194),   # WRN-28-10
    ("wide_resnet", dict(depth=34, width=10), 46_160_474),   # TRADES WRN-34-10
    ("ds_mnist_cnn", {}, 3_274_634),        # Madry MNIST challenge
])
def test_parameter_count(name, kwargs, expected):
  net = jax.eval_shape(lambda: models.create(name, jax.random.key(0), **kwargs))
  assert _num_params(net.params) == expected


def test_resnet_stage_output_width():
  net = jax.eval_shape(lambda: models.create(
      "resnet", jax.random.key(0), stage_sizes=(2, 1, 1), width=8))
  assert net.params["fc"]["kernel"].shape == (8 * 4 * 4, 1000)


def test_small_cnn_init_matches_trades():
  p = models.create("small_cnn", jax.random.key(0)).params
  assert not np.any(p["fc3"]["kernel"]) and not np.any(p["fc3"]["bias"])
  for conv in ("conv1", "conv2", "conv3", "conv4"):
    assert not np.any(p[conv]["bias"])
    kernel = np.asarray(p[conv]["kernel"])
    fan_in = math.prod(kernel.shape[:3])
    # conv1 has only 288 weights, so its sample std is the noisiest (~4%).
    np.testing.assert_allclose(kernel.std(), math.sqrt(2.0 / fan_in),
                               rtol=0.15 if conv == "conv1" else 0.05)
    assert abs(kernel.mean()) < 3 * math.sqrt(2.0 / fan_in / kernel.size)


def test_wide_resnet_init_matches_trades():
  p = _create("wide_resnet").params
  for block in p["blocks"].values():
    kernel = np.asarray(block["conv2"]["kernel"])  # 3x3, 16, 32, 64 channels
    fan_out = 9 * kernel.shape[3]
    np.testing.assert_allclose(kernel.std(), math.sqrt(2.0 / fan_out),
                               rtol=0.08)
  assert not np.any(p["fc"]["bias"])
  assert np.all(p["bn"]["scale"] == 1) and not np.any(p["bn"]["bias"])


def test_resnet_zero_init_residual():
  net = models.create("resnet", jax.random.key(0), stage_sizes=(1, 1), width=4,
                      zero_init_residual=True)
  for block in net.params["blocks"].values():
    assert not np.any(block["bn3"]["scale"])
    assert np.all(block["bn2"]["scale"] == 1)
  default = models.create("resnet", jax.random.key(0), stage_sizes=(1,), width=4)
  assert np.all(default.params["blocks"][0]["bn3"]["scale"] == 1)


def test_ds_mnist_init():
  p = models.create("ds_mnist_cnn", jax.random.key(0)).params
  for layer in ("conv1", "conv2", "fc1", "fc2"):
    np.testing.assert_allclose(p[layer]["bias"], 0.1, rtol=1e-6)
    assert float(jnp.abs(p[layer]["kernel"]).max()) <= 0.2 + 1e-6
  torch = models.create("ds_mnist_cnn", jax.random.key(0), init="torch").params
  assert not np.any(torch["conv1"]["bias"])
  with pytest.raises(ValueError, match="madry"):
    models.create("ds_mnist_cnn", jax.random.key(0), init="tf")


@pytest.mark.parametrize("name,kwargs", [
    ("small_cnn", dict(dropout=0.5)),
    ("wide_resnet", dict(dropout=0.3)),
])
def test_dropout(name, kwargs):
  net, x = _with_live_head(_create(name, **kwargs)), _input(name)
  k1, k2 = jax.random.key(7), jax.random.key(8)
  eval_out = _apply(net, x)[0]
  np.testing.assert_array_equal(eval_out, _apply(net, x)[0])
  # The key is ignored when train=False.
  np.testing.assert_array_equal(eval_out, _apply(net, x, dropout_key=k1)[0])
  train_1 = _apply(net, x, train=True, dropout_key=k1)[0]
  assert not np.allclose(train_1, eval_out)
  np.testing.assert_array_equal(
      train_1, _apply(net, x, train=True, dropout_key=k1)[0])
  assert not np.allclose(train_1, _apply(net, x, train=True, dropout_key=k2)[0])
  with pytest.raises(ValueError, match="dropout_key"):
    _apply(net, x, train=True)


# name -> (state path of the first BatchNorm, params path of the conv feeding
# it, its stride, its padding): the stem of each model.
FIRST_BN = {
    "ds_cifar_convnet": (("bns", 0), ("convs", 0), 1, 1),
    "wide_resnet": (("blocks", 0, "bn1"), ("conv1",), 1, 1),
    "resnet": (("bn1",), ("conv1",), 2, 3),
}


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def test_batchnorm_layer_statistics_by_hand():
  """Batch mode normalizes by this batch's mean and (biased) variance,
  computed here with numpy, and moves the running averages by 0.1."""
  bn = layers.BatchNorm(3)
  bn.scale[...] = jnp.array([0.5, 1.0, 2.0])
  bn.bias[...] = jnp.array([0.1, -0.2, 0.3])
  x = jax.random.normal(jax.random.key(0), (5, 4, 4, 3)) * 2.0 + 1.0
  out = bn(x, "batch")
  xs = np.asarray(x, np.float64)
  mean, var = xs.mean(axis=(0, 1, 2)), xs.var(axis=(0, 1, 2))
  want = (xs - mean) / np.sqrt(var + 1e-5) * [0.5, 1.0, 2.0] + [0.1, -0.2, 0.3]
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(bn.snap_mean[...], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.snap_var[...], var, rtol=1e-5)
  np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var, rtol=1e-5)
  # Frozen mode reuses the snapshot for a different batch.
  x2 = x[:2] * 3.0
  want2 = ((np.asarray(x2, np.float64) - mean) / np.sqrt(var + 1e-5)
           * [0.5, 1.0, 2.0] + [0.1, -0.2, 0.3])
  np.testing.assert_allclose(bn(x2, "frozen"), want2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", BN_MODELS)
def test_bn_batch_mode_updates_state(name):
  net, x = _create(name), _input(name)
  _, new = _apply(net, x, bn_mode="batch")
  # The first BatchNorm's statistics, from its input computed here: the stem
  # convolution of x (no bias).
  bn_path, conv_path, stride, pad = FIRST_BN[name]
  stem = lax.conv_general_dilated(
      x, _at(net.params, conv_path)["kernel"][...], (stride, stride),
      ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  stem = np.asarray(stem, np.float64)
  mean, var = stem.mean(axis=(0, 1, 2)), stem.var(axis=(0, 1, 2))
  first = _at(new.state, bn_path)
  np.testing.assert_allclose(first["snap_mean"][...], mean, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(first["snap_var"][...], var, rtol=1e-4)
  np.testing.assert_allclose(first["mean"][...], 0.1 * mean, rtol=1e-4,
                             atol=1e-7)
  np.testing.assert_allclose(first["var"][...], 0.9 + 0.1 * var, rtol=1e-4)
  # Every BatchNorm: running averages move from their init (0, 1) by 0.1
  # towards statistics that are not the init's.
  mean1, var1 = _bn_leaves(new.state, "mean"), _bn_leaves(new.state, "var")
  snap_m = _bn_leaves(new.state, "snap_mean")
  snap_v = _bn_leaves(new.state, "snap_var")
  assert mean1 and len(mean1) == len(snap_m) == len(snap_v)
  for (path, m1), v1, sm, sv in zip(mean1.items(), var1.values(),
                                    snap_m.values(), snap_v.values(),
                                    strict=True):
    assert not np.allclose(sv, 1.0), path
    np.testing.assert_allclose(m1, 0.1 * sm, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v1, 0.9 + 0.1 * sv, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BN_MODELS)
def test_bn_running_mode_is_pure(name):
  net, x = _create(name), _input(name)
  _, trained = _apply(net, x, bn_mode="batch")
  out, new = _apply(trained, x, bn_mode="running")
  for a, b in zip(jax.tree.leaves(trained.state), jax.tree.leaves(new.state),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(
      _apply(trained, x[:1], bn_mode="running")[0], out[:1], rtol=1e-5,
      atol=1e-6)


@pytest.mark.parametrize("name", BN_MODELS)
def test_bn_frozen_mode(name):
  net, x = _create(name), _input(name)
  batch_out, clean = _apply(net, x, bn_mode="batch")
  frozen_out, after = _apply(clean, x, bn_mode="frozen")
  np.testing.assert_allclose(frozen_out, batch_out, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(clean.state), jax.tree.leaves(after.state),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  # Frozen statistics make examples independent: example 0 alone gives the
  # same logits, and its logits have zero gradient w.r.t. example 1 ...
  frozen_fn = clean.logits_fn(bn_mode="frozen")
  np.testing.assert_allclose(frozen_fn(x[:1]), frozen_out[:1], rtol=1e-5,
                             atol=1e-6)
  cross = jax.jit(jax.grad(lambda z: frozen_fn(z)[0].sum()))(x)
  assert float(jnp.abs(cross[0]).max()) > 0
  np.testing.assert_array_equal(cross[1:], 0.0)
  # ... which batch statistics would not give.
  batch_fn = lambda z: _apply(net, z, bn_mode="batch")[0]
  batch_cross = jax.jit(jax.grad(lambda z: batch_fn(z)[0].sum()))(x)
  assert float(jnp.abs(batch_cross[1]).max()) > 0


def test_eager_apply_leaves_input_unchanged():
  net = models.create("ds_cifar_convnet", jax.random.key(0),
                      widths=(4, 8, 8, 8, 8))
  before = [np.asarray(leaf) for leaf in jax.tree.leaves(net.state)]
  net.apply(_input("ds_cifar_convnet"), bn_mode="batch")
  for a, b in zip(before, jax.tree.leaves(net.state), strict=True):
    np.testing.assert_array_equal(a, b)


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError) as err:
    models.create("resnet9000", jax.random.key(0))
  for name in models.names():
    assert name in str(err.value)


@pytest.mark.parametrize("name", sorted(TINY))
def test_jit_and_per_example_input_gradient(name):
  _, shape, classes = TINY[name]
  net, x = _with_live_head(_create(name)), _input(name)
  y = jnp.arange(shape[0]) % classes
  logits_fn = net.logits_fn()
  jit_logits = jax.jit(lambda n, z: n.apply(z)[0])(net, x)
  np.testing.assert_allclose(jit_logits, logits_fn(x), rtol=1e-5, atol=1e-5)
  grad = jax.jit(jax.grad(_summed_ce(logits_fn, y)))(x)
  assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
  # Summed CE separates over examples, so its input gradient is the stack of
  # per-example gradients.
  single = lambda xi, yi: _summed_ce(logits_fn, yi[None])(xi[None])
  per_example = jax.jit(jax.vmap(jax.grad(single)))(x, y)
  np.testing.assert_allclose(grad, per_example, rtol=1e-4, atol=1e-6)
  for i in range(shape[0]):
    assert float(jnp.abs(grad[i]).max()) > 0


@pytest.mark.parametrize("name", sorted(TINY))
def test_double_backprop_through_model(name):
  """Gradient w.r.t. parameters of the input-gradient norm (LFR's outer step)."""
  _, shape, classes = TINY[name]
  net, x = _with_live_head(_create(name)), _input(name)
  y = jnp.arange(shape[0]) % classes

  def penalty(params):
    fn = net.replace(params=params).logits_fn()
    return jnp.sum(jnp.square(jax.grad(_summed_ce(fn, y))(x)))

  grads = jax.jit(jax.grad(penalty))(net.params)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def test_normalization_inside_model():
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  x = _input("wide_resnet")
  plain = _create("wide_resnet")
  normed = _create("wide_resnet", mean=mean, std=std)
  z = (x - jnp.asarray(mean)) / jnp.asarray(std)
  np.testing.assert_allclose(_apply(normed, x)[0], _apply(plain, z)[0], rtol=1e-5,
                             atol=1e-5)


def test_softplus_activation():
  x = _input("wide_resnet")
  relu = _apply(_create("wide_resnet"), x, bn_mode="batch")[0]
  soft = _apply(_create("wide_resnet", activation="softplus"), x,
                bn_mode="batch")[0]
  assert soft.shape == relu.shape and not np.allclose(soft, relu)
  with pytest.raises(ValueError, match="softplus"):
    _create("wide_resnet", activation="gelu")


def test_wide_resnet_rejects_bad_depth():
  with pytest.raises(ValueError, match="6n"):
    models.create("wide_resnet", jax.random.key(0), depth=12, width=1)


@pytest.mark.parametrize("shape", [(2, 9, 9, 3), (2, 8, 8, 3), (1, 112, 112, 2)])
def test_max_pool_matches_reduce_window(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  ref = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                          ((0, 0), (1, 1), (1, 1), (0, 0)))
  np.testing.assert_array_equal(layers.max_pool(x, 3, 2, 1), ref)
  np.testing.assert_array_equal(layers.max_pool(x[:, :8, :8], 2, 2, 0),
                                layers.max_pool_2x2(x[:, :8, :8]))
  # Without ties each output's gradient goes to exactly one input.
  g = jax.grad(lambda z: layers.max_pool(z, 3, 2, 1).sum())(x)
  g_ref = jax.grad(lambda z: lax.reduce_window(
      z, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
      ((0, 0), (1, 1), (1, 1), (0, 0))).sum())(x)
  np.testing.assert_array_equal(g, g_ref)
