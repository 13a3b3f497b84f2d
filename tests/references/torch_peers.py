"""torchattacks 3.5.1 on the tiny models, in float64, with every query recorded.

:class:`TorchModel` copies a :mod:`tiny_models` model's parameters into a
float64 ``torch.nn.Module`` (images NCHW, as torchattacks expects) and
records every input it is called with, converted back to NHWC: the
trajectory of the attack. :func:`feeding` replaces torch's random draws
(``torch.rand``, ``torch.randn``, ``Tensor.uniform_``, ``Tensor.normal_``)
by given arrays, in the order they are asked for, so the peer starts where
the code under test starts. Importing this module needs torch.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from references import tiny_models


def to_torch(x_nhwc):
  return torch.from_numpy(np.ascontiguousarray(
      np.transpose(np.asarray(x_nhwc, np.float64), (0, 3, 1, 2))))


def to_numpy(x_nchw):
  return np.transpose(x_nchw.detach().numpy(), (0, 2, 3, 1)).copy()


class TorchModel(torch.nn.Module):
  """The same maths as the NumPy model, float64, recording its inputs."""

  def __init__(self, model):
    super().__init__()
    p = lambda a: torch.nn.Parameter(torch.from_numpy(np.array(a)),
                                     requires_grad=False)
    self.kind = type(model)
    if isinstance(model, tiny_models.Linear):
      self.w, self.b = p(model.w), p(model.b)
    elif isinstance(model, tiny_models.SoftplusMLP):
      self.w1, self.b1 = p(model.w1), p(model.b1)
      self.w2, self.b2 = p(model.w2), p(model.b2)
    else:
      # HWIO -> OIHW for conv2d (a cross-correlation, like lax).
      self.kernel = p(np.transpose(model.kernel, (3, 2, 0, 1)))
      self.bias, self.dense = p(model.bias), p(model.dense)
      self.dense_bias = p(model.dense_bias)
    self.queries = []

  def forward(self, x):
    self.queries.append(to_numpy(x))
    if self.kind is tiny_models.ReluCNN:
      h = torch.relu(F.conv2d(x, self.kernel, self.bias))
      h = h.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
      return h @ self.dense + self.dense_bias
    flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    if self.kind is tiny_models.Linear:
      return flat @ self.w + self.b
    return F.softplus(flat @ self.w1 + self.b1) @ self.w2 + self.b2


@contextlib.contextmanager
def feeding(monkeypatch, draws):
  """Serves ``draws`` (NHWC or per-example arrays) to torch's generators.

  Each call to a patched generator takes the next array (converted to NCHW
  when 4-d) and checks its shape; the context asserts at exit that every
  draw was used.
  """
  queue = list(draws)

  def take(shape):
    assert queue, "the peer asked for more random draws than given"
    a = np.asarray(queue.pop(0), np.float64)
    t = to_torch(a) if a.ndim == 4 else torch.from_numpy(a.copy())
    assert tuple(t.shape) == tuple(shape), (tuple(t.shape), tuple(shape))
    return t

  def rand(*shape, **_):
    shape = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) \
        else shape
    return take(tuple(shape))

  def fill(self, *args, **kwargs):
    del args, kwargs
    with torch.no_grad():
      self.copy_(take(tuple(self.shape)))
    return self

  with monkeypatch.context() as m:
    m.setattr(torch, "rand", rand)
    m.setattr(torch, "randn", rand)
    m.setattr(torch.Tensor, "uniform_", fill)
    m.setattr(torch.Tensor, "normal_", fill)
    yield
  assert not queue, f"{len(queue)} random draws were not used"


@contextlib.contextmanager
def float64_default():
  """torch's default dtype float64, so that the constants torchattacks makes
  (``torch.ones``, ``torch.Tensor([2.0])``, its loss history) are float64."""
  before = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64)
  try:
    yield
  finally:
    torch.set_default_dtype(before)


def run(attack_cls, model, x, y, monkeypatch, draws=(), **settings):
  """Runs a torchattacks attack; returns (x_adv NHWC, queries NHWC)."""
  net = TorchModel(model)
  attack = attack_cls(net, **settings)
  with float64_default(), feeding(monkeypatch, draws):
    out = attack(to_torch(x), torch.from_numpy(np.asarray(y, np.int64)))
  return to_numpy(out), net.queries
