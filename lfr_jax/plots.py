"""Figures of the papers: decision surfaces, histograms, Jacobians, sweeps.

Each function takes plain arrays (e.g. from :mod:`lfr_jax.geometry` or an
evaluation run) and returns a ``matplotlib.figure.Figure``. The figures are
built without ``pyplot``, so no display or GUI backend is needed (PNGs are
rendered with Agg), nothing global is touched and nothing needs closing;
in a notebook a returned figure displays as the cell's value. With
``path="out/fig.png"`` the figure is saved there and the plotted arrays go
next to it as ``out/fig.npz`` (series keyed ``<name>_<k>`` in input order,
their labels under ``labels``), so a plot can be redrawn without
recomputing.

- :func:`plot_surfaces` - 3-D decision surfaces over filled contours, one
  column per checkpoint (LFR Fig. 1; decision-surface paper, Fig. 6).
- :func:`plot_histograms` - overlaid histograms (LLR Fig. 7).
- :func:`plot_jacobian_maps` - images and their decision Jacobians
  (decision-surface paper, Fig. 8 and 10).
- :func:`plot_lambda_sweep` - clean and robust accuracy against lambda
  (LFR Fig. 3).
- :func:`plot_eps_sweep` - accuracy against the attack radius.
- :func:`plot_training_curves` - logged training metrics against the step,
  one panel per metric, one line per run.

Example::

    import os, tempfile
    import numpy as np
    from lfr_jax import plots

    i, j = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 9))
    grids = {"standard": (i, j, 1 - 3 * j ** 2 - i),
             "LFR": (i, j, 1 - 0.3 * j ** 2)}
    out = os.path.join(tempfile.mkdtemp(), "surfaces.png")
    fig = plots.plot_surfaces(grids, path=out)   # also writes surfaces.npz
    fig = plots.plot_histograms({"LFR": np.random.rand(50)}, "gamma")
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colors
from matplotlib import ticker
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers "3d")

from lfr_jax import files

PathLike = str | os.PathLike
JACOBIAN_MODES = ("minmax", "abs")


# ----------------------------------------------------------------- helpers --


def _save(fig: Figure, path: PathLike | None, arrays: dict, dpi: int) -> None:
  """Writes the figure to ``path`` and the arrays to ``path`` with .npz.

  Each file is written whole (:func:`lfr_jax.files.atomic_file`): a run
  killed while drawing leaves the previous figure, never a torn one.
  """
  if path is None:
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with files.atomic_file(path, "wb") as f:
    fig.savefig(f, format=path.suffix[1:] or "png", dpi=dpi,
                bbox_inches="tight")
  with files.atomic_file(path.with_suffix(".npz"), "wb") as f:
    np.savez(f, **arrays)


def _nonempty(name: str, mapping: Mapping) -> list[str]:
  if not isinstance(mapping, Mapping) or not mapping:
    raise ValueError(f"{name} must be a non-empty dict of label -> data, got "
                     f"{type(mapping).__name__}.")
  return [str(k) for k in mapping]


def _series(name: str, values, length: int | None = None) -> np.ndarray:
  out = np.asarray(values, dtype=np.float64)
  if out.ndim != 1 or (length is not None and out.shape[0] != length):
    want = f"({length},)" if length is not None else "1-D"
    raise ValueError(f"{name} must be {want}, got shape {out.shape}.")
  return out


def _labels(labels: Sequence[str]) -> np.ndarray:
  # A unicode array loads back without pickle.
  return np.asarray([str(s) for s in labels], dtype=str)


# ---------------------------------------------------------------- surfaces --


def _check_grid(label: str, grid) -> tuple[np.ndarray, ...]:
  if not isinstance(grid, (tuple, list)) or len(grid) != 3:
    raise ValueError(f"grids[{label!r}] must be a tuple (I, J, Z).")
  arrays = tuple(np.asarray(a, dtype=np.float64) for a in grid)
  shapes = {a.shape for a in arrays}
  if len(shapes) != 1 or arrays[0].ndim != 2:
    raise ValueError(f"grids[{label!r}] must hold three 2-D arrays of one "
                     f"shape, got shapes {[a.shape for a in arrays]}.")
  return arrays


def _contour_levels(z_min: float, z_max: float, count: int) -> np.ndarray:
  """About ``count`` round levels covering [z_min, z_max] (0 among them)."""
  if z_max <= z_min:  # a constant surface still needs increasing levels
    pad = max(abs(z_min), 1.0) * 1e-3
    z_min, z_max = z_min - pad, z_max + pad
  return ticker.MaxNLocator(max(count, 2)).tick_values(z_min, z_max)


def _crosses_zero(z: np.ndarray) -> bool:
  return bool(z.min() < 0.0 < z.max())


def plot_surfaces(grids: Mapping[str, tuple], *, path: PathLike | None = None,
                  title: str | None = None,
                  xlabel: str = "random direction",
                  ylabel: str = "adversarial direction",
                  zlabel: str = "decision value", levels: int = 15,
                  shared_scale: bool = True, cmap: str = "bwr",
                  dpi: int = 150) -> Figure:
  """Decision surfaces side by side, as in LFR Fig. 1.

  One column per entry: on top the 3-D surface, below its filled contour
  map. Colours are centred on 0, so the correct region (decision value > 0)
  is red and the wrong one blue; the decision boundary (the zero level) is a
  thick black line and the clean input, (0, 0), a black dot.

  Args:
    grids: label (e.g. checkpoint) -> (I, J, Z), 2-D arrays of one shape as
      returned by :func:`lfr_jax.geometry.surface` (I along the first axis of
      the plot, J along the second).
    path: where to save the figure (and ``.npz`` with I_k, J_k, Z_k and
      labels); None saves nothing.
    title: figure title.
    xlabel: label of the I axis.
    ylabel: label of the J axis.
    zlabel: label of the values.
    levels: number of contour levels.
    shared_scale: one colour scale and z range for all columns, so flatter
      surfaces look flatter; False scales each column to its own values.
    cmap: a diverging colormap (red for positive).
    dpi: resolution of the saved image.

  Returns:
    The figure.
  """
  labels = _nonempty("grids", grids)
  data = [_check_grid(k, grids[k]) for k in grids]
  n = len(data)
  fig = Figure(figsize=(4.4 * n, 7.6), layout="constrained")
  if title:
    fig.suptitle(title)
  cells = fig.add_gridspec(2, n, height_ratios=[1.25, 1.0])
  everything = np.concatenate([z.ravel() for _, _, z in data])
  arrays = {"labels": _labels(labels)}
  for k, (label, (ii, jj, z)) in enumerate(zip(labels, data)):
    zs = everything if shared_scale else z.ravel()
    half = max(float(np.abs(zs).max()), 1e-12)
    norm = colors.CenteredNorm(vcenter=0.0, halfrange=half)
    lo, hi = float(zs.min()), float(zs.max())

    ax3 = fig.add_subplot(cells[0, k], projection="3d")
    ax3.plot_surface(ii, jj, z, cmap=cmap, norm=norm, linewidth=0,
                     antialiased=True, rstride=1, cstride=1)
    if _crosses_zero(z):
      ax3.contour(ii, jj, z, levels=[0.0], colors="k", linewidths=2.5)
    ax3.set_zlim(lo, hi if hi > lo else lo + 1e-6)
    ax3.set_title(label)
    ax3.set_xlabel(xlabel)
    ax3.set_ylabel(ylabel)
    ax3.set_zlabel(zlabel)

    ax2 = fig.add_subplot(cells[1, k])
    filled = ax2.contourf(ii, jj, z, levels=_contour_levels(lo, hi, levels),
                          cmap=cmap, norm=norm)
    ax2.contour(ii, jj, z, levels=filled.levels, colors="0.3",
                linewidths=0.4)
    if _crosses_zero(z):
      ax2.contour(ii, jj, z, levels=[0.0], colors="k", linewidths=2.5)
    ax2.plot([0.0], [0.0], "ko", markersize=4)
    ax2.set_xlabel(xlabel)
    ax2.set_ylabel(ylabel)
    ax2.set_aspect("equal", adjustable="box")
    fig.colorbar(filled, ax=ax2, shrink=0.8, label=zlabel)
    arrays.update({f"I_{k}": ii, f"J_{k}": jj, f"Z_{k}": z})
  _save(fig, path, arrays, dpi)
  return fig


# -------------------------------------------------------------- histograms --


def plot_histograms(values: Mapping[str, np.ndarray], xlabel: str, *,
                    path: PathLike | None = None, title: str | None = None,
                    bins: int = 40, ylabel: str = "count",
                    log_x: bool = False, density: bool = False,
                    dpi: int = 150) -> Figure:
  """Overlaid histograms on shared bins, as in LLR Fig. 7.

  Args:
    values: label (e.g. training method) -> 1-D values, e.g. from
      :func:`lfr_jax.geometry.linearity_values`. Non-finite values are
      left out of the plot (not of the ``.npz``).
    xlabel: what the values are, e.g. "gamma(8/255, x)".
    path: where to save the figure (and ``.npz`` with values_k,
      bin_edges and labels); None saves nothing.
    title: axes title.
    bins: number of shared bins.
    ylabel: y-axis label.
    log_x: logarithmic bins and axis (positive values only).
    density: normalize each histogram to unit area.
    dpi: resolution of the saved image.

  Returns:
    The figure.
  """
  labels = _nonempty("values", values)
  data = [np.ravel(np.asarray(values[k], dtype=np.float64)) for k in values]
  keep = np.concatenate([v[np.isfinite(v) & ((v > 0) if log_x else True)]
                         for v in data])
  if keep.size == 0:
    raise ValueError("values hold no finite values to plot"
                     + (" (log_x needs positive ones)." if log_x else "."))
  lo, hi = float(keep.min()), float(keep.max())
  if hi <= lo:
    hi = lo + (abs(lo) or 1.0) * 1e-3
  edges = (np.geomspace(lo, hi, bins + 1) if log_x
           else np.linspace(lo, hi, bins + 1))
  fig = Figure(figsize=(6.0, 4.0), layout="constrained")
  ax = fig.add_subplot()
  arrays = {"labels": _labels(labels), "bin_edges": edges}
  for k, (label, v) in enumerate(zip(labels, data)):
    ax.hist(v[np.isfinite(v)], bins=edges, alpha=0.5, label=label,
            density=density, histtype="stepfilled", edgecolor="k",
            linewidth=0.5)
    arrays[f"values_{k}"] = v
  if log_x:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("density" if density and ylabel == "count" else ylabel)
  if title:
    ax.set_title(title)
  ax.legend()
  _save(fig, path, arrays, dpi)
  return fig


# --------------------------------------------------------------- Jacobians --


def _as_images(name: str, a) -> np.ndarray:
  a = np.asarray(a, dtype=np.float64)
  if a.ndim != 4 or a.shape[-1] not in (1, 3):
    raise ValueError(f"{name} must be (N, H, W, C) with C = 1 or 3, got "
                     f"shape {a.shape}.")
  return a


def _jacobian_picture(jac: np.ndarray, mode: str) -> np.ndarray:
  """One Jacobian (H, W, C) as a picture in [0, 1]."""
  if mode == "minmax":
    # The paper's rendering: each map stretched to the full 0-255 range.
    span = jac.max() - jac.min()
    pic = (jac - jac.min()) / span if span > 0 else np.zeros_like(jac)
  else:
    mag = np.abs(jac).sum(axis=-1, keepdims=True)
    pic = mag / mag.max() if mag.max() > 0 else mag
  return pic


def _show(ax, pic: np.ndarray, cmap: str) -> None:
  if pic.shape[-1] == 1:
    ax.imshow(pic[..., 0], cmap=cmap, vmin=0.0, vmax=1.0)
  else:
    ax.imshow(np.clip(pic, 0.0, 1.0))
  ax.set_xticks([])
  ax.set_yticks([])


def plot_jacobian_maps(images, jacobians, labels: Sequence | None = None, *,
                       path: PathLike | None = None,
                       title: str | None = None, mode: str = "minmax",
                       dpi: int = 150) -> Figure:
  """Images and their decision Jacobians, decision-surface Fig. 8/10 style.

  The first row shows the images; each further row the Jacobians of one
  model, so natural and robust models can be compared column by column
  (robust Jacobians follow the strokes of the digit).

  Args:
    images: (N, H, W, C) images in [0, 1], C = 1 or 3.
    jacobians: (N, H, W, C) Jacobians (e.g. ``jacobian_stats(...).jacobian``)
      or a dict row label (model) -> such an array.
    labels: optional per-image captions (N,), e.g. the classes.
    path: where to save the figure (and ``.npz`` with images, jacobians_k
      and labels = row labels, captions); None saves nothing.
    title: figure title.
    mode: "minmax" (each map stretched to [0, 1], the paper's rendering,
      grey or RGB) or "abs" (sum over channels of |J|, scaled by its max,
      as a heat map).
    dpi: resolution of the saved image.

  Returns:
    The figure.
  """
  if mode not in JACOBIAN_MODES:
    raise ValueError(f"unknown mode {mode!r}; valid: "
                     f"{', '.join(JACOBIAN_MODES)}.")
  images = _as_images("images", images)
  rows = dict(jacobians) if isinstance(jacobians, Mapping) else {
      "Jacobian": jacobians}
  row_labels = _nonempty("jacobians", rows)
  jacs = [_as_images(f"jacobians[{k!r}]", rows[k]) for k in rows]
  for k, j in zip(row_labels, jacs):
    if j.shape != images.shape:
      raise ValueError(f"jacobians[{k!r}] has shape {j.shape}, the images "
                       f"{images.shape}.")
  n = images.shape[0]
  if labels is not None and len(labels) != n:
    raise ValueError(f"labels must have one entry per image ({n}), got "
                     f"{len(labels)}.")
  fig = Figure(figsize=(1.6 * n + 0.8, 1.7 * (1 + len(jacs))),
               layout="constrained")
  if title:
    fig.suptitle(title)
  axes = fig.subplots(1 + len(jacs), n, squeeze=False)
  heat = "hot" if mode == "abs" else "gray"
  for c in range(n):
    _show(axes[0, c], images[c], "gray")
    if labels is not None:
      axes[0, c].set_title(str(labels[c]))
    for r, jac in enumerate(jacs):
      _show(axes[r + 1, c], _jacobian_picture(jac[c], mode), heat)
  axes[0, 0].set_ylabel("image")
  for r, label in enumerate(row_labels):
    axes[r + 1, 0].set_ylabel(label)
  arrays = {"images": images, "labels": _labels(row_labels)}
  arrays.update({f"jacobians_{k}": j for k, j in enumerate(jacs)})
  if labels is not None:
    arrays["captions"] = _labels(labels)
  _save(fig, path, arrays, dpi)
  return fig


# ------------------------------------------------------------------ sweeps --


def _sweep_axes(title, xlabel, ylabel):
  fig = Figure(figsize=(6.0, 4.0), layout="constrained")
  ax = fig.add_subplot()
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  if title:
    ax.set_title(title)
  return fig, ax


def plot_lambda_sweep(lams, clean_acc, robust_acc: Mapping[str, Sequence], *,
                      path: PathLike | None = None, title: str | None = None,
                      xlabel: str = r"$\lambda$",
                      ylabel: str = "accuracy (%)", categorical: bool = True,
                      dpi: int = 150) -> Figure:
  """Clean and robust accuracy against the regularization weight (LFR Fig. 3).

  Args:
    lams: the lambda values (K,), in the order trained.
    clean_acc: clean accuracy per lambda (K,).
    robust_acc: attack name -> accuracy per lambda (K,).
    path: where to save the figure (and ``.npz`` with lams, clean_acc,
      robust_k and labels = attack names); None saves nothing.
    title: axes title.
    xlabel: x-axis label.
    ylabel: y-axis label (the values are plotted as given).
    categorical: evenly spaced ticks labelled with the lambdas (handles 0 and
      log-spaced grids); False plots against the values themselves.
    dpi: resolution of the saved image.

  Returns:
    The figure.
  """
  lams = _series("lams", lams)
  clean = _series("clean_acc", clean_acc, lams.size)
  names = _nonempty("robust_acc", robust_acc)
  robust = [_series(f"robust_acc[{k!r}]", robust_acc[k], lams.size)
            for k in robust_acc]
  fig, ax = _sweep_axes(title, xlabel, ylabel)
  xs = np.arange(lams.size) if categorical else lams
  ax.plot(xs, clean, "k-o", label="clean")
  for name, acc in zip(names, robust):
    ax.plot(xs, acc, "-s", label=name)
  if categorical:
    ax.set_xticks(xs, [f"{v:g}" for v in lams])
  ax.legend()
  arrays = {"lams": lams, "clean_acc": clean, "labels": _labels(names)}
  arrays.update({f"robust_{k}": a for k, a in enumerate(robust)})
  _save(fig, path, arrays, dpi)
  return fig


def plot_eps_sweep(eps_list, acc: Mapping[str, Sequence], *,
                   path: PathLike | None = None, title: str | None = None,
                   xlabel: str = r"$\epsilon$",
                   ylabel: str = "accuracy (%)", dpi: int = 150) -> Figure:
  """Accuracy against the attack radius, one line per row (model or attack).

  Args:
    eps_list: the radii (K,).
    acc: row label -> accuracy per radius (K,).
    path: where to save the figure (and ``.npz`` with eps, acc_k and
      labels); None saves nothing.
    title: axes title.
    xlabel: x-axis label.
    ylabel: y-axis label.
    dpi: resolution of the saved image.

  Returns:
    The figure.
  """
  eps = _series("eps_list", eps_list)
  names = _nonempty("acc", acc)
  rows = [_series(f"acc[{k!r}]", acc[k], eps.size) for k in acc]
  fig, ax = _sweep_axes(title, xlabel, ylabel)
  for name, a in zip(names, rows):
    ax.plot(eps, a, "-o", label=name)
  ax.legend()
  arrays = {"eps": eps, "labels": _labels(names)}
  arrays.update({f"acc_{k}": a for k, a in enumerate(rows)})
  _save(fig, path, arrays, dpi)
  return fig


def plot_training_curves(panels: Mapping[str, Mapping[str, tuple]], *,
                         path: PathLike | None = None,
                         xlabel: str = "step", dpi: int = 150) -> Figure:
  """Training metrics against the step: one panel per metric, a line per run.

  Args:
    panels: panel title (the metric) -> run label -> (steps, values), two
      1-D sequences of one length.
    path: where to save the figure (and ``.npz`` with ``steps_<p>_<r>``,
      ``values_<p>_<r>``, ``panels`` and ``labels_<p>``); None saves nothing.
    xlabel: x-axis label of every panel.
    dpi: resolution of the saved image.

  Returns:
    The figure.
  """
  titles = _nonempty("panels", panels)
  fig = Figure(figsize=(4.5 * len(titles), 3.6), layout="constrained")
  arrays = {"panels": _labels(titles)}
  for p, title in enumerate(titles):
    runs = panels[title]
    labels = _nonempty(f"panels[{title!r}]", runs)
    ax = fig.add_subplot(1, len(titles), p + 1)
    for r, label in enumerate(labels):
      pair = runs[label]
      if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"panels[{title!r}][{label!r}] must be a pair "
                         f"(steps, values).")
      steps = _series(f"steps of {label!r}", pair[0])
      values = _series(f"values of {label!r}", pair[1], steps.size)
      ax.plot(steps, values, "-o", markersize=3, label=label)
      arrays[f"steps_{p}_{r}"], arrays[f"values_{p}_{r}"] = steps, values
    arrays[f"labels_{p}"] = _labels(labels)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(True, alpha=0.3)
  # Outside the last panel: with many runs an inside legend hides lines.
  fig.axes[-1].legend(fontsize="small", loc="center left",
                      bbox_to_anchor=(1.02, 0.5))
  _save(fig, path, arrays, dpi)
  return fig


__all__ = [
    "JACOBIAN_MODES", "plot_surfaces", "plot_histograms",
    "plot_jacobian_maps", "plot_lambda_sweep", "plot_eps_sweep",
    "plot_training_curves",
]
