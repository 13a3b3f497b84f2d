"""Every plot writes a PNG and the arrays behind it, and returns a Figure."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from lfr_jax import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_written(path, expected: dict):
  assert path.read_bytes()[:8] == PNG_MAGIC
  assert path.stat().st_size > 1000
  with np.load(path.with_suffix(".npz")) as saved:
    assert set(saved.files) == set(expected)
    for key, value in expected.items():
      np.testing.assert_array_equal(saved[key], value)


def grid(fn, n=9):
  i, j = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
  return i, j, fn(i, j)


def test_plot_surfaces(tmp_path):
  grids = {"standard": grid(lambda i, j: 1 - 3 * j ** 2 - i),
           "LFR": grid(lambda i, j: 1 + 0 * i)}  # all correct, flat
  path = tmp_path / "sub" / "surfaces.png"
  fig = plots.plot_surfaces(grids, path=path, title="MNIST")
  assert isinstance(fig, Figure)
  assert len(fig.axes) == 2 * 2 + 2  # 3-D + contour per column, colorbars
  assert fig.axes[0].get_title() == "standard"
  contour = fig.axes[1]
  assert contour.get_xlabel() == "random direction"
  assert contour.get_ylabel() == "adversarial direction"
  expected = {"labels": np.array(["standard", "LFR"])}
  for k, (i, j, z) in enumerate(grids.values()):
    expected.update({f"I_{k}": i, f"J_{k}": j, f"Z_{k}": z})
  assert_written(path, expected)


def test_plot_surfaces_without_path_and_bad_grid():
  fig = plots.plot_surfaces({"a": grid(lambda i, j: i * j)},
                            shared_scale=False)
  assert isinstance(fig, Figure)
  with pytest.raises(ValueError, match="I, J, Z"):
    plots.plot_surfaces({"a": (np.zeros((3, 3)), np.zeros((3, 3)))})
  with pytest.raises(ValueError, match="non-empty"):
    plots.plot_surfaces({})


@pytest.mark.parametrize("log_x", [False, True])
def test_plot_histograms(tmp_path, log_x):
  rng = np.random.default_rng(0)
  values = {"ADV-2": rng.gamma(2.0, 1.0, 200),
            "LLR-2": rng.gamma(1.0, 0.5, 150)}
  path = tmp_path / "hist.png"
  fig = plots.plot_histograms(values, "gamma(8/255, x)", path=path, bins=20,
                              log_x=log_x)
  assert isinstance(fig, Figure)
  assert fig.axes[0].get_xlabel() == "gamma(8/255, x)"
  with np.load(path.with_suffix(".npz")) as saved:
    edges = saved["bin_edges"]
  assert edges.shape == (21,)
  every = np.concatenate(list(values.values()))
  np.testing.assert_allclose(edges[[0, -1]], [every.min(), every.max()])
  assert_written(path, {"labels": np.array(["ADV-2", "LLR-2"]),
                        "values_0": values["ADV-2"],
                        "values_1": values["LLR-2"], "bin_edges": edges})


@pytest.mark.parametrize("channels,mode", [(1, "minmax"), (3, "abs")])
def test_plot_jacobian_maps(tmp_path, channels, mode):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 8, 8, channels))
  jacs = {"natural": rng.normal(size=images.shape),
          "robust": rng.normal(size=images.shape) * 0.1}
  path = tmp_path / "jac.png"
  fig = plots.plot_jacobian_maps(images, jacs, [6, 1, 4], path=path,
                                 mode=mode)
  assert isinstance(fig, Figure)
  assert len(fig.axes) == 3 * 3
  assert fig.axes[0].get_title() == "6"
  assert_written(path, {"images": images, "jacobians_0": jacs["natural"],
                        "jacobians_1": jacs["robust"],
                        "labels": np.array(["natural", "robust"]),
                        "captions": np.array(["6", "1", "4"])})
  single = plots.plot_jacobian_maps(images, jacs["natural"])
  assert len(single.axes) == 2 * 3
  with pytest.raises(ValueError, match="shape"):
    plots.plot_jacobian_maps(images, images[:2])


def test_plot_lambda_sweep(tmp_path):
  lams = [0.0, 0.005, 0.01, 0.02, 0.05]
  clean = [99.4, 99.3, 99.2, 99.1, 98.5]
  robust = {"PGD-40": [0.0, 80.1, 90.2, 93.0, 91.0],
            "FGSM": [10.0, 90.0, 95.0, 96.0, 95.5]}
  path = tmp_path / "lambda.png"
  fig = plots.plot_lambda_sweep(lams, clean, robust, path=path)
  assert isinstance(fig, Figure)
  ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
  assert ticks == ["0", "0.005", "0.01", "0.02", "0.05"]
  assert_written(path, {"lams": lams, "clean_acc": clean,
                        "robust_0": robust["PGD-40"],
                        "robust_1": robust["FGSM"],
                        "labels": np.array(["PGD-40", "FGSM"])})
  with pytest.raises(ValueError, match="robust_acc"):
    plots.plot_lambda_sweep(lams, clean, {"PGD": [1.0, 2.0]})


def test_plot_eps_sweep(tmp_path):
  eps = [0.0, 0.1, 0.2, 0.3]
  acc = {"standard": [99.0, 40.0, 2.0, 0.0], "LFR": [99.0, 97.0, 95.0, 93.0]}
  path = tmp_path / "eps.png"
  fig = plots.plot_eps_sweep(eps, acc, path=path, title="PGD-40")
  assert isinstance(fig, Figure)
  assert len(fig.axes[0].get_lines()) == 2
  assert_written(path, {"eps": eps, "acc_0": acc["standard"],
                        "acc_1": acc["LFR"],
                        "labels": np.array(["standard", "LFR"])})


def test_plot_training_curves(tmp_path):
  panels = {"train accuracy": {"LFR": ([50, 100], [0.2, 0.6]),
                               "LLR": ([50, 100, 150], [0.1, 0.5, 0.1])},
            "clean CE": {"LFR": ([50, 100], [2.0, 1.0])}}
  path = tmp_path / "curves.png"
  fig = plots.plot_training_curves(panels, path=path)
  assert [ax.get_title() for ax in fig.axes] == ["train accuracy", "clean CE"]
  assert [len(ax.get_lines()) for ax in fig.axes] == [2, 1]
  assert_written(path, {"steps_0_0": [50, 100], "values_0_0": [0.2, 0.6],
                        "steps_0_1": [50, 100, 150],
                        "values_0_1": [0.1, 0.5, 0.1],
                        "steps_1_0": [50, 100], "values_1_0": [2.0, 1.0],
                        "labels_0": np.array(["LFR", "LLR"]),
                        "labels_1": np.array(["LFR"]),
                        "panels": np.array(["train accuracy", "clean CE"])})
  with pytest.raises(ValueError, match="must be"):
    plots.plot_training_curves({"acc": {"LFR": ([1, 2], [0.5])}})
  with pytest.raises(ValueError, match="pair"):
    plots.plot_training_curves({"acc": {"LFR": [1, 2, 3]}})
