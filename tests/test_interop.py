"""PyTorch interop: key mappings, layout conversions, round trips, errors.

The round-trip and error tests run without torch. The tests that compare with
PyTorch's forward pass define the TRADES SmallCNN and WideResNet in PyTorch and
skip cleanly when torch is not installed (``pip install torch``). Run with
``pytest tests/test_interop.py -q``.
"""

import collections
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lfr_jax import interop, models

WRN = dict(depth=10, width=1)  # one block per group, shortcuts in groups 2, 3
CONFIGS = {"small_cnn": {}, "wide_resnet": WRN}

SMALL_CNN_KEYS = (
    [f"feature_extractor.conv{i}.{p}" for i in range(1, 5)
     for p in ("weight", "bias")]
    + [f"classifier.fc{i}.{p}" for i in range(1, 4)
       for p in ("weight", "bias")])


def _net(name, seed=0, **kwargs):
  """A ``name`` model with every parameter and statistic random.

  Built abstractly and filled from numpy, which skips compiling the
  initializers (seconds on CPU). Variances are positive.
  """
  net = jax.eval_shape(lambda k: models.create(name, k, **kwargs),
                       jax.random.key(0))
  rng = np.random.default_rng(seed)

  def rand(path, var):
    shape, dtype = var.get_value().shape, var.get_value().dtype
    if path[-1] in ("var", "snap_var"):
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.normal(0.0, 0.1, shape)
    return path, var.replace(jnp.asarray(value, dtype))

  def fill(collection):
    return nnx.from_flat_state(
        [rand(p, v) for p, v in nnx.to_flat_state(collection)])

  return net.replace(params=fill(net.params), state=fill(net.state))


def _flat(collection):
  return {p: np.asarray(v.get_value())
          for p, v in nnx.to_flat_state(collection)}


# --------------------------------------------------------------------------
# Without torch.


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip(name):
  net = _net(name, **CONFIGS[name])
  sd = interop.export_torch_state_dict(net, name)
  assert all(isinstance(v, np.ndarray) and v.flags.writeable
             and v.flags.c_contiguous for v in sd.values())
  back = interop.from_torch(name, sd, **CONFIGS[name])
  assert back.graphdef == net.graphdef
  got, want = _flat(back.params), _flat(net.params)
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))
  got, want = _flat(back.state), _flat(net.state)
  assert got.keys() == want.keys()
  for path in want:
    # The snapshot is reset to the running statistics.
    source = path[:-1] + ({"snap_mean": "mean", "snap_var": "var"}.get(
        path[-1], path[-1]),)
    np.testing.assert_array_equal(got[path], want[source], err_msg=str(path))


def test_small_cnn_keys_and_layouts():
  net = _net("small_cnn")
  sd = interop.export_torch_state_dict(net, "small_cnn")
  assert sorted(sd) == sorted(SMALL_CNN_KEYS)
  kernel = np.asarray(net.params["conv2"]["kernel"][...])       # HWIO
  np.testing.assert_array_equal(sd["feature_extractor.conv2.weight"],
                                kernel.transpose(3, 2, 0, 1))  # OIHW
  assert sd["feature_extractor.conv1.weight"].shape == (32, 1, 3, 3)
  fc1 = np.asarray(net.params["fc1"]["kernel"][...])            # (in, out)
  np.testing.assert_array_equal(sd["classifier.fc1.weight"], fc1.T)
  assert sd["classifier.fc1.weight"].shape == (200, 1024)
  assert sd["classifier.fc3.bias"].shape == (10,)


def test_wide_resnet_keys_and_layouts():
  net = _net("wide_resnet", **WRN)
  sd = interop.export_torch_state_dict(net, "wide_resnet")
  assert sd["conv1.weight"].shape == (16, 3, 3, 3)
  assert "block1.layer.0.convShortcut.weight" not in sd   # 16 -> 16, stride 1
  assert sd["block2.layer.0.convShortcut.weight"].shape == (32, 16, 1, 1)
  assert sd["block3.layer.0.conv1.weight"].shape == (64, 32, 3, 3)
  assert sd["fc.weight"].shape == (10, 64)
  bn = net.state["blocks"][2]["bn2"]
  np.testing.assert_array_equal(sd["block3.layer.0.bn2.running_var"],
                                np.asarray(bn["var"][...]))
  np.testing.assert_array_equal(sd["bn1.weight"],
                                np.asarray(net.params["bn"]["scale"][...]))
  assert sd["bn1.num_batches_tracked"].dtype == np.int64
  # Two blocks per group: blocks[k] -> block{k // 2 + 1}.layer.{k % 2}.
  deeper = _net("wide_resnet", depth=16, width=1)
  keys = interop.export_torch_state_dict(deeper, "wide_resnet")
  assert "block3.layer.1.conv2.weight" in keys
  assert "block3.layer.2.conv2.weight" not in keys


def test_prefixes_wrappers_and_unused_keys_accepted():
  net = _net("wide_resnet", **WRN)
  sd = interop.export_torch_state_dict(net, "wide_resnet")
  sd = {f"module.{k}": v for k, v in sd.items()}
  sd["module.sub_block1.layer.0.bn1.weight"] = np.ones(16, np.float32)
  del sd["module.bn1.num_batches_tracked"]  # absent in pre-0.4.1 checkpoints
  back = interop.from_torch("wide_resnet", sd, **WRN)
  np.testing.assert_array_equal(np.asarray(back.params["fc"]["kernel"][...]),
                                np.asarray(net.params["fc"]["kernel"][...]))


def test_missing_file(tmp_path):
  path = tmp_path / "nope.pt"
  with pytest.raises(ValueError, match=re.escape(str(path))):
    interop.load_torch_state_dict(path)


def test_without_torch_clear_import_error(tmp_path, monkeypatch):
  path = tmp_path / "model.pt"
  path.write_bytes(b"x")
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  with pytest.raises(ImportError, match="pip install torch"):
    interop.load_torch_state_dict(path)


def _small_cnn_sd():
  net = _net("small_cnn")
  return interop.export_torch_state_dict(net, "small_cnn")


def test_missing_key():
  sd = _small_cnn_sd()
  del sd["classifier.fc2.bias"]
  with pytest.raises(ValueError,
                     match=r"missing keys \[classifier\.fc2\.bias\]"):
    interop.from_torch("small_cnn", sd)


def test_unexpected_key():
  sd = _small_cnn_sd()
  sd["classifier.fc4.weight"] = np.zeros((10, 10), np.float32)
  with pytest.raises(ValueError,
                     match=r"unexpected keys \[classifier\.fc4\.weight\]"):
    interop.from_torch("small_cnn", sd)


def test_wrong_shape():
  sd = _small_cnn_sd()
  sd["classifier.fc1.weight"] = np.zeros((200, 1000), np.float32)
  with pytest.raises(ValueError, match=re.escape(
      "shape mismatches [classifier.fc1.weight: got (200, 1000), "
      "expected (200, 1024)]")):
    interop.from_torch("small_cnn", sd)


def test_wrong_model_kwargs_list_first_keys():
  net = _net("wide_resnet", depth=16, width=1)
  sd = interop.export_torch_state_dict(net, "wide_resnet")
  with pytest.raises(ValueError, match=r"wide_resnet\(depth=10, width=1\).*"
                     r"unexpected keys \[.*\] \(\+\d+ more\).*model kwargs"):
    interop.from_torch("wide_resnet", sd, **WRN)


@pytest.mark.parametrize("name, message", [
    ("no_such_model", "is unknown"), ("resnet", "has no PyTorch mapping")])
def test_unknown_model(name, message):
  with pytest.raises(ValueError, match=message):
    interop.from_torch(name, {})
  with pytest.raises(ValueError, match=message):
    interop.export_torch_state_dict(
        _net("small_cnn"), name)


def test_export_under_wrong_name():
  net = _net("small_cnn")
  with pytest.raises(ValueError, match="do not match the 'wide_resnet' layout"):
    interop.export_torch_state_dict(net, "wide_resnet")


# --------------------------------------------------------------------------
# With torch: the TRADES models in PyTorch.


class Opaque:
  """A class that weights_only loading must refuse to unpickle."""


def _torch_models(torch):
  """The TRADES SmallCNN and WideResNet, written from their descriptions."""
  nn, F = torch.nn, torch.nn.functional

  class SmallCNN(nn.Module):

    def __init__(self):
      super().__init__()
      self.feature_extractor = nn.Sequential(collections.OrderedDict([
          ("conv1", nn.Conv2d(1, 32, 3)), ("relu1", nn.ReLU()),
          ("conv2", nn.Conv2d(32, 32, 3)), ("relu2", nn.ReLU()),
          ("maxpool1", nn.MaxPool2d(2, 2)),
          ("conv3", nn.Conv2d(32, 64, 3)), ("relu3", nn.ReLU()),
          ("conv4", nn.Conv2d(64, 64, 3)), ("relu4", nn.ReLU()),
          ("maxpool2", nn.MaxPool2d(2, 2))]))
      self.classifier = nn.Sequential(collections.OrderedDict([
          ("fc1", nn.Linear(64 * 4 * 4, 200)), ("relu1", nn.ReLU()),
          ("drop", nn.Dropout(0.5)),
          ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()),
          ("fc3", nn.Linear(200, 10))]))

    def forward(self, x):
      return self.classifier(self.feature_extractor(x).view(-1, 64 * 4 * 4))

  class BasicBlock(nn.Module):

    def __init__(self, in_planes, out_planes, stride):
      super().__init__()
      self.bn1 = nn.BatchNorm2d(in_planes)
      self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(out_planes)
      self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
      self.equal_in_out = in_planes == out_planes
      # TRADES' name (and key): convShortcut.
      self.convShortcut = None if self.equal_in_out else nn.Conv2d(
          in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
      pre = F.relu(self.bn1(x))
      out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
      return (x if self.equal_in_out else self.convShortcut(pre)) + out

  class NetworkBlock(nn.Module):

    def __init__(self, n, in_planes, out_planes, stride):
      super().__init__()
      self.layer = nn.Sequential(*[
          BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                     stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
      return self.layer(x)

  class WideResNet(nn.Module):

    def __init__(self, depth, width, num_classes=10):
      super().__init__()
      n = (depth - 4) // 6
      ch = [16, 16 * width, 32 * width, 64 * width]
      self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
      self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
      self.sub_block1 = NetworkBlock(n, ch[0], ch[1], 1)  # unused, as in TRADES
      self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
      self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
      self.bn1 = nn.BatchNorm2d(ch[3])
      self.fc = nn.Linear(ch[3], num_classes)
      self.channels = ch[3]

    def forward(self, x):
      out = self.block3(self.block2(self.block1(self.conv1(x))))
      out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
      return self.fc(out.view(-1, self.channels))

  return SmallCNN, WideResNet


def _torch_net(torch, name):
  small_cnn, wide_resnet = _torch_models(torch)
  torch.manual_seed(0)
  net = small_cnn() if name == "small_cnn" else wide_resnet(**WRN)
  with torch.no_grad():
    for m in net.modules():  # non-trivial BatchNorm affine and statistics
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.num_batches_tracked.fill_(7)
  return net.eval()


@pytest.mark.parametrize("name, shape", [
    ("small_cnn", (4, 28, 28, 1)), ("wide_resnet", (4, 32, 32, 3))])
def test_matches_torch_forward(name, shape, tmp_path):
  torch = pytest.importorskip("torch")
  tnet = _torch_net(torch, name)
  sd = tnet.state_dict()
  # The plain layout, a DataParallel one and the common checkpoint wrappers.
  torch.save(sd, tmp_path / "raw.pt")
  torch.save(torch.nn.DataParallel(tnet).state_dict(), tmp_path / "dp.pt")
  torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pt")
  torch.save({"model_state_dict": sd}, tmp_path / "wrapped2.pt")
  loaded = [interop.load_torch_state_dict(tmp_path / f)
            for f in ("raw.pt", "dp.pt", "wrapped.pt", "wrapped2.pt")]
  for other in loaded[1:]:
    assert other.keys() == loaded[0].keys()
    for k in other:
      np.testing.assert_array_equal(other[k], loaded[0][k])

  net = interop.from_torch(name, loaded[0], **CONFIGS[name])
  x = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
  with torch.no_grad():
    # A fresh C-order copy: a transposed view would reach torch with
    # channels-last strides, which TRADES' .view() rejects.
    want = tnet(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  apply = jax.jit(lambda net, x, mode: net.apply(x, bn_mode=mode)[0],
                  static_argnums=2)
  np.testing.assert_allclose(apply(net, x, "running"), want, atol=1e-4, rtol=0)
  if name == "wide_resnet":  # snapshot = running statistics
    np.testing.assert_allclose(apply(net, x, "frozen"), want, atol=1e-4, rtol=0)

  # Export gives back PyTorch's own tensors, loadable into the torch model.
  exported = interop.export_torch_state_dict(net, name)
  result = tnet.load_state_dict(
      {k: torch.from_numpy(v) for k, v in exported.items()}, strict=False)
  assert not result.unexpected_keys
  assert all(k.startswith("sub_block1.") for k in result.missing_keys)
  for k, v in exported.items():
    if not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(v, sd[k].numpy(), err_msg=k)


def test_torch_state_dict_in_memory_and_bfloat16(tmp_path):
  torch = pytest.importorskip("torch")
  tnet = _torch_net(torch, "small_cnn")
  # from_torch takes torch tensors directly.
  net = interop.from_torch("small_cnn", tnet.state_dict())
  np.testing.assert_array_equal(
      np.asarray(net.params["fc3"]["bias"][...]),
      tnet.state_dict()["classifier.fc3.bias"].numpy())
  torch.save({k: v.to(torch.bfloat16) for k, v in tnet.state_dict().items()},
             tmp_path / "bf16.pt")
  sd = interop.load_torch_state_dict(tmp_path / "bf16.pt")
  assert all(v.dtype == np.float32 for v in sd.values())
  interop.from_torch("small_cnn", sd)


def test_unreadable_checkpoints(tmp_path):
  torch = pytest.importorskip("torch")
  corrupt = tmp_path / "corrupt.pt"
  corrupt.write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match=re.escape(str(corrupt))):
    interop.load_torch_state_dict(corrupt)
  pickled = tmp_path / "object.pt"  # an arbitrary pickled object
  torch.save({"model": Opaque()}, pickled)
  with pytest.raises(ValueError, match="could not read PyTorch checkpoint"):
    interop.load_torch_state_dict(pickled)
  metadata = tmp_path / "meta.pt"
  torch.save({"epoch": 3, "lr": 0.1}, metadata)
  with pytest.raises(ValueError, match="entry 'epoch' is a int, not a tensor"):
    interop.load_torch_state_dict(metadata)


def test_published_training_checkpoint(tmp_path):
  """A training checkpoint as the LFR authors published theirs loads as is.

  ``torch.save({"epoch", "state_dict" (DataParallel "module." keys), "acc",
  "best_acc", "optimizer" (SGD momentum buffers)}, "model_best.pth.tar")``.
  """
  torch = pytest.importorskip("torch")
  tnet = _torch_net(torch, "small_cnn")
  sgd = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9)
  for p in tnet.parameters():
    p.grad = torch.full_like(p, 1e-3)
  sgd.step()  # creates the momentum buffers, as after training
  wrapped = {f"module.{k}": v for k, v in tnet.state_dict().items()}
  path = tmp_path / "model_best.pth.tar"
  torch.save({"epoch": 100, "state_dict": wrapped, "acc": 99.5,
              "best_acc": 99.51, "optimizer": sgd.state_dict()}, path)
  sd = interop.load_torch_state_dict(path)
  assert sorted(sd) == sorted(tnet.state_dict())
  net = interop.from_torch("small_cnn", sd, dropout=0.0)
  x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
  with torch.no_grad():
    # A fresh copy: see test_matches_torch_forward on channels-last strides.
    expected = tnet.eval()(torch.from_numpy(
        x.transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_allclose(np.asarray(net.logits_fn()(x)), expected,
                             atol=1e-4)
