"""Geometry of every row: compute surfaces, Jacobian/Hessian indicators and gammas, then draw them.

:func:`compute_geometry` gives the arrays and numbers (:class:`GeometryData`):
decision and loss surfaces around the first ``surface_points`` images on a
random x random plane (the same for every model) and on an adversarial (sign
of grad CE, per model) x random plane; the Jacobian l1 norm / sparsity and
the Lanczos Hessian spectrum of the decision value over the first
``geometry_examples`` images; the local flatness (LFR) and local linearity
(LLR) gammas over the first ``gamma_examples`` (0 = all) images.
:func:`draw_geometry` turns them into figures with :mod:`lfr_jax.plots`;
:func:`geometry_outputs` does both and puts the numbers into the rows.

Example::

    import jax, jax.numpy as jnp
    import numpy as np
    from configs import evaluate as eval_configs
    from lfr_jax.evaluation import geometry_report, results, settings
    s = settings.from_config(eval_configs.get_config("smoke").eval)
    rows = [results.ModelRow("linear", lambda p, x: x.reshape(len(x), -1) @ p,
                             jax.random.normal(jax.random.key(0), (16, 3)))]
    x = np.asarray(jax.random.uniform(jax.random.key(1), (4, 4, 4, 1)))
    data = geometry_report.compute_geometry(rows, x, np.arange(4) % 3, s,
                                             jax.random.key(2))
    sorted(data.numbers[0])[0]               # 'gamma_flatness_mean'
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lfr_jax import geometry

if TYPE_CHECKING:
  from lfr_jax.evaluation.results import ModelRow, RowResult
  from lfr_jax.evaluation.settings import EvalSettings

# Surface key: (plane "random" | "adversarial", quantity "decision" | "loss",
# test image index).
SurfaceKey = tuple[str, str, int]
_AXES = {"random": ("random direction 1", "random direction 2"),
         "adversarial": ("random direction", "adversarial direction")}
# Jacobian maps drawn per model (the first images).
_MAPS = 8


def flatness_step(s: EvalSettings) -> float:
  """Sign-ascent step of the flatness gamma: the table's step if
  ``gamma_steps`` of it reach eps, else 2.5 eps / gamma_steps."""
  eps, steps, step = s.eps, s.gamma_steps, s.step_size
  return step if steps * step >= eps else 2.5 * eps / max(steps, 1)


@dataclasses.dataclass
class GeometryData:
  """The computed geometry of every model, in the models' order.

  Attributes:
    surfaces: (plane, quantity, image) -> model label -> surface grid.
    jacobians: model label -> the first Jacobians (drawn as maps).
    flatness: model label -> per-image local flatness gamma.
    linearity: model label -> per-image local linearity gamma.
    numbers: per model, the summary numbers (``RowResult.geometry``).
    jacobian_images: images of the Jacobian / Hessian indicators.
    gamma_images: images of the gammas.
  """
  surfaces: dict[SurfaceKey, dict[str, tuple]]
  jacobians: dict[str, np.ndarray]
  flatness: dict[str, np.ndarray]
  linearity: dict[str, np.ndarray]
  numbers: list[dict[str, float]]
  jacobian_images: int
  gamma_images: int


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What every model's geometry is computed with (shared directions, keys)."""
  random_u: jax.Array
  random_v: jax.Array
  hessian_key: jax.Array
  gamma_key: jax.Array
  points: int
  jacobian_images: int
  gamma_images: int
  settings: EvalSettings


def _plan(x: np.ndarray, s: EvalSettings, key: jax.Array) -> _Plan:
  n, shape = x.shape[0], x.shape[1:]
  k_u, k_v, k_h, k_g = jax.random.split(key, 4)
  rnd_u = geometry.random_direction(k_u, shape)
  rnd_v = geometry.orthogonalize(geometry.random_direction(k_v, shape), rnd_u)
  return _Plan(rnd_u, rnd_v, k_h, k_g, points=min(s.surface_points, n),
               jacobian_images=min(s.geometry_examples, n),
               gamma_images=n if not s.gamma_examples else min(
                   s.gamma_examples, n),
               settings=s)


def _surfaces(lf, xs, ys, plan: _Plan, bar) -> dict[SurfaceKey, tuple]:
  """One model's surfaces on both planes around the first images."""
  s, out = plan.settings, {}
  if plan.points:
    adv = geometry.adversarial_direction(lf, xs[:plan.points],
                                         ys[:plan.points], kind="ce")
  for i in range(plan.points):
    rnd_i = geometry.orthogonalize(plan.random_u, adv[i])
    for plane, (du, dv) in (("random", (plan.random_u, plan.random_v)),
                            ("adversarial", (rnd_i, adv[i]))):
      for quantity in ("decision", "loss"):
        grid = geometry.surface(lf, xs[i], ys[i], du, dv,
                                extent=s.surface_extent,
                                resolution=s.surface_resolution,
                                quantity=quantity)
        out[(plane, quantity, i)] = tuple(np.asarray(g) for g in grid)
        bar.update(1)
  return out


def _indicators(lf, xs, ys, plan: _Plan, bar
                ) -> tuple[dict[str, float], np.ndarray | None]:
  """One model's Jacobian and Hessian numbers, and its first Jacobians."""
  ng = plan.jacobian_images
  if not ng:
    bar.update(2)
    return {}, None
  jac = geometry.jacobian_stats(lf, xs[:ng], ys[:ng])
  numbers = dict(jacobian_l1_mean=float(jnp.mean(jac.l1)),
                 jacobian_l1_median=float(jnp.median(jac.l1)),
                 jacobian_sparsity=float(jnp.mean(jac.sparsity)))
  bar.update(1)
  hes = geometry.hessian_eigs(lf, xs[:ng], ys[:ng], key=plan.hessian_key,
                              num_iters=plan.settings.hessian_iters)
  numbers.update(hessian_top_abs_mean=float(jnp.mean(jnp.abs(hes.top))),
                 hessian_ritz_l1_mean=float(jnp.mean(hes.ritz_l1)),
                 hessian_l1_estimate_mean=float(jnp.mean(hes.l1_estimate)),
                 hessian_zero_share=float(jnp.mean(hes.zero_share)))
  bar.update(1)
  return numbers, np.asarray(jac.jacobian[:_MAPS])


def _gammas(lf, xs, ys, plan: _Plan, bar) -> tuple[np.ndarray, np.ndarray]:
  """One model's per-image local flatness and local linearity gammas."""
  s, nh = plan.settings, plan.gamma_images
  f = np.asarray(geometry.flatness_values(
      lf, xs[:nh], ys[:nh], plan.gamma_key, eps=s.eps,
      step_size=flatness_step(s), num_steps=s.gamma_steps))
  bar.update(1)
  li = np.asarray(geometry.linearity_values(
      lf, xs[:nh], ys[:nh], plan.gamma_key, eps=s.eps,
      num_steps=s.gamma_steps))
  bar.update(1)
  return f, li


def compute_geometry(model_list: Sequence[ModelRow], x: np.ndarray,
                     y: np.ndarray, s: EvalSettings, key: jax.Array
                     ) -> GeometryData:
  """Surfaces, Jacobian/Hessian indicators and gammas of every model.

  Args:
    model_list: the rows.
    x: (N, H, W, C) images.
    y: (N,) labels.
    s: the evaluation settings.
    key: the random directions' and the iterations' key.

  Returns:
    The arrays and numbers, nothing drawn.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  plan = _plan(x, s, key)
  data = GeometryData({}, {}, {}, {}, [], plan.jacobian_images,
                      plan.gamma_images)
  bar = tqdm(total=len(model_list) * (plan.points * 4 + 4), desc="geometry",
             disable=not s.progress, leave=False, file=sys.stderr)
  xs, ys = jnp.asarray(x), jnp.asarray(y)
  for model in model_list:
    lf = model.logits_fn()
    for surface, grid in _surfaces(lf, xs, ys, plan, bar).items():
      data.surfaces.setdefault(surface, {})[model.label] = grid
    numbers, maps = _indicators(lf, xs, ys, plan, bar)
    if maps is not None:
      data.jacobians[model.label] = maps
    f, li = _gammas(lf, xs, ys, plan, bar)
    data.flatness[model.label], data.linearity[model.label] = f, li
    numbers.update(gamma_flatness_mean=float(np.mean(f)),
                   gamma_flatness_median=float(np.median(f)),
                   gamma_linearity_mean=float(np.mean(li)),
                   gamma_linearity_median=float(np.median(li)))
    data.numbers.append(numbers)
  bar.close()
  return data


def draw_geometry(data: GeometryData, x: np.ndarray, y: np.ndarray,
                  eps: float, figures_dir: str | os.PathLike) -> list[str]:
  """The figures of :func:`compute_geometry`'s results, all models side by side.

  Args:
    data: the computed geometry.
    x: the images it was computed on (the Jacobian maps show them).
    y: their labels.
    eps: the radius of the gammas (for the axis labels).
    figures_dir: where the PNGs (and their data as .npz) go.

  Returns:
    The figure paths written.
  """
  from lfr_jax import plots  # pylint: disable=g-import-not-at-top
  out_dir = os.fspath(figures_dir)
  paths = []
  for (plane, quantity, i), by_model in sorted(data.surfaces.items()):
    path = os.path.join(out_dir, f"surface_{plane}_{quantity}_{i}.png")
    plots.plot_surfaces(
        by_model, path=path, xlabel=_AXES[plane][0], ylabel=_AXES[plane][1],
        zlabel="decision value" if quantity == "decision" else "cross-entropy",
        title=f"test image {i} (label {int(y[i])}), {plane} x random plane")
    paths.append(path)
  if data.jacobians:
    shown = min(_MAPS, data.jacobian_images)
    path = os.path.join(out_dir, "jacobian_maps.png")
    plots.plot_jacobian_maps(x[:shown], data.jacobians,
                             labels=[int(v) for v in y[:shown]],
                             path=path, title="decision Jacobians")
    paths.append(path)
  for name, values, xlabel in (
      ("gamma_flatness", data.flatness,
       f"local flatness gamma(x, {eps:g}) (l1)"),
      ("gamma_linearity", data.linearity,
       f"local linearity gamma({eps:g}, x)")):
    if any(np.isfinite(v).any() for v in values.values()):
      path = os.path.join(out_dir, f"{name}.png")
      plots.plot_histograms(values, xlabel, path=path,
                            title=f"{data.gamma_images} test images")
      paths.append(path)
  return paths


def geometry_outputs(model_list: Sequence[ModelRow],
                     rows: Sequence[RowResult], x: np.ndarray, y: np.ndarray,
                     s: EvalSettings, figures_dir: str | os.PathLike | None,
                     key: jax.Array) -> list[str]:
  """Computes the geometry, puts its numbers into the rows, draws it.

  Args:
    model_list: the rows' models.
    rows: their results, in the same order; ``rows[i].geometry`` gets the
      numbers.
    x: (N, H, W, C) images.
    y: (N,) labels.
    s: the evaluation settings.
    figures_dir: where the figures go; None draws nothing.
    key: the random directions' and the iterations' key.

  Returns:
    The figure paths written (none when ``figures_dir`` is None).
  """
  data = compute_geometry(model_list, x, y, s, key)
  for row, numbers in zip(rows, data.numbers):
    row.geometry.update(numbers)
  if figures_dir is None:
    return []
  return draw_geometry(data, x, y, s.eps, figures_dir)
