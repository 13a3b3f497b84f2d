"""What an evaluation reads: a run's checkpoints, PyTorch state_dicts, the test data.

A workdir's layout is :mod:`lfr_jax.workdir`'s (``config.json``, ``checkpoints/``,
``best_checkpoint/``); every workdir path goes through ``etils.epath``, so
``gs://`` workdirs load too. The test data is what the run read: a run's
``config.json`` records its data source and folder (``data.source``,
``data.dir``), and :func:`load_test_data` reads that folder when it exists
here, else the default one (``$LFR_DATA_DIR``, then the repository's
``data/mnist/``), or the folder given to it.

Example::

    from lfr_jax.evaluation import loading
    x, y, info = loading.load_test_data({"name": "mnist"}, 8)
    x.shape, info["source"]                  # ((8, 28, 28, 1), 'idx')
    loading.data_line(info, 8)    # 'test data: mnist test split, idx, ...'
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from absl import logging
from etils import epath
import jax
import numpy as np

from lfr_jax import text
from lfr_jax import workdir as workdir_lib
from lfr_jax.evaluation.results import EvalError
from lfr_jax.evaluation.results import ModelRow

# Checkpoint-read failures of orbax and TensorStore come in many types; their
# gist is the message's first line.
_ONE_LINE = dict(pick="first", limit=200)


def _saved_steps(folder: epath.Path) -> list[int]:
  """The step folders under ``folder``, read only.

  A plain listing rather than ``workdir.checkpoint_steps``: that opens an
  orbax manager, which creates the folder in a workdir that has none.
  """
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def load_run_config(workdir: str):
  """The training config a workdir was written with (``config.json``).

  Raises:
    EvalError: no such workdir or no readable config.json.
  """
  folder = workdir_lib.resolve(workdir)
  if not folder.is_dir():
    raise EvalError(f"workdir {folder} is a file, not a training workdir."
                    if folder.exists() else
                    f"workdir {folder} does not exist.")
  try:
    return workdir_lib.read_config(folder)
  except workdir_lib.WorkdirError as e:
    raise EvalError(str(e)) from None


def resolve_checkpoint(workdir: str, at: tuple[str, int]) -> int:
  """The saved step that ``("epoch", N)`` or ``("step", N)`` names.

  Epoch N is the checkpoint written at the end of epoch N (step N times the
  run's steps per epoch); runs keep chosen epoch ends with
  ``config.checkpoint.keep_epochs``.

  Raises:
    EvalError: no such saved checkpoint (the message lists those there are).
  """
  folder = workdir_lib.resolve(workdir)
  steps, steps_per_epoch = workdir_lib.checkpoint_steps(folder)
  kind, n = at
  step = n * steps_per_epoch if kind == "epoch" and steps_per_epoch else n
  if step not in steps:
    have = ", ".join(
        f"step {s}" + (f" (epoch {s // steps_per_epoch})"
                       if steps_per_epoch and s % steps_per_epoch == 0 else "")
        for s in steps)
    raise EvalError(f"{folder / workdir_lib.CHECKPOINTS} holds no checkpoint "
                    f"for {kind} {n}; it holds: {have or 'none'}.")
  return step


def _abstract_network(config, folder: epath.Path):
  """The run's model, built abstractly (its graphdef, nothing allocated)."""
  from lfr_jax import models  # pylint: disable=g-import-not-at-top
  try:
    return jax.eval_shape(lambda k: models.create(
        config.model.name, k, **models.kwargs_from_config(config.model)),
                          jax.random.key(0))
  except Exception as e:  # pylint: disable=broad-except
    raise EvalError(f"{folder / workdir_lib.CONFIG} describes no model this "
                    f"code can build: {text.one_line(e, **_ONE_LINE)}"
                    ) from None


def _row(config, folder: epath.Path, net, state, label: str, **info
         ) -> ModelRow:
  """A restored train state as a table row."""
  from lfr_jax import models  # pylint: disable=g-import-not-at-top
  network = models.Network(graphdef=net.graphdef, params=state.params,
                           state=state.model_state)
  return ModelRow.from_network(
      label, network, source="workdir", workdir=str(folder), **info,
      method=str(config.get("method", "")), model=str(config.model.name))


def _load_step(config, folder: epath.Path, net, at: tuple[str, int],
               prefix: str) -> ModelRow:
  """The row of one saved epoch end or step (``--checkpoint=epoch:N``)."""
  step = resolve_checkpoint(folder, at)
  try:
    state, _ = workdir_lib.load_checkpoint(config, folder, step=step)
  except Exception as e:  # pylint: disable=broad-except
    raise EvalError(f"cannot read step {step} in "
                    f"{folder / workdir_lib.CHECKPOINTS} (corrupt or written "
                    f"by another config): {type(e).__name__}: "
                    f"{text.one_line(e, **_ONE_LINE)}") from None
  label = f"{at[0]} {at[1]} (step {step})" if at[0] == "epoch" else (
      f"step {step}")
  return _row(config, folder, net, state, f"{prefix}{label}",
              checkpoint=label, step=step)


def _load_final_and_best(config, folder: epath.Path, net, prefix: str
                         ) -> list[ModelRow]:
  """The final row, and the best one when it is another step."""
  out = []
  final_step = None
  for best in (False, True):
    kind = "best" if best else "final"
    if best and not _saved_steps(folder / workdir_lib.BEST):
      continue
    try:
      state, meta = workdir_lib.load_checkpoint(config, folder, best=best)
    except FileNotFoundError:
      continue
    except Exception as e:  # pylint: disable=broad-except
      where = folder / (workdir_lib.BEST if best else workdir_lib.CHECKPOINTS)
      raise EvalError(f"cannot read the {kind} checkpoint in {where} (corrupt "
                      f"or written by another config): {type(e).__name__}: "
                      f"{text.one_line(e, **_ONE_LINE)}") from None
    step = int(meta.get("step", -1))
    if best and step == final_step:
      out[0] = dataclasses.replace(
          out[0], label=f"{prefix}final = best (step {step})",
          info=dict(out[0].info, checkpoint="final = best"))
      continue
    final_step = step if not best else final_step
    out.append(_row(config, folder, net, state, f"{prefix}{kind} (step {step})",
                    checkpoint=kind, step=step))
  return out


def load_run(workdir: str, *, prefix: str = "",
             at: tuple[str, int] | None = None) -> tuple[Any, list[ModelRow]]:
  """The final checkpoint of a run, and its best one if it differs.

  Args:
    workdir: a workdir written by ``training.train_and_evaluate``.
    prefix: prepended to the row labels (to tell several runs apart).
    at: ``("epoch", N)`` or ``("step", N)``: that saved checkpoint alone
      instead (see :func:`resolve_checkpoint`).

  Returns:
    (training config, rows): "final (step S)" and, when the best
    checkpoint (by validation PGD accuracy) is another step,
    "best (step S)"; with ``at``, one row "epoch N (step S)" or "step S".

  Raises:
    EvalError: no workdir, config, or checkpoint, or one that cannot be read.
  """
  folder = workdir_lib.resolve(workdir)
  config = load_run_config(folder)
  if not _saved_steps(folder / workdir_lib.CHECKPOINTS):
    raise EvalError(f"no checkpoint in {folder / workdir_lib.CHECKPOINTS}; "
                    f"train first (python train.py --workdir={folder} ...).")
  net = _abstract_network(config, folder)
  if at is not None:
    return config, [_load_step(config, folder, net, at, prefix)]
  return config, _load_final_and_best(config, folder, net, prefix)


def load_torch(path: str, model_name: str, *, label: str | None = None,
               **model_kwargs) -> ModelRow:
  """A PyTorch state_dict as a row (label: the file name).

  Raises:
    EvalError: missing or unreadable file, torch absent, or a state_dict
      that does not match the model.
  """
  from lfr_jax import interop  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(path))
  try:
    state_dict = interop.load_torch_state_dict(path)
    net = interop.from_torch(model_name, state_dict, **model_kwargs)
  except (ValueError, ImportError) as e:
    raise EvalError(text.one_line(e, **_ONE_LINE)) from None
  return ModelRow.from_network(label or os.path.basename(path), net,
                               source="torch", checkpoint=path,
                               model=model_name,
                               model_kwargs=dict(model_kwargs))


def _test_data_config(data_cfg, data_dir: str | None) -> dict[str, Any]:
  """The data config to read: ``data_dir``, else the recorded folder if here.

  A run trained on another machine (or before its data moved) records a
  folder that may not exist here; then the default resolution applies
  (``$LFR_DATA_DIR``, then the repository's ``data/mnist/``).
  """
  out = dict(data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else data_cfg)
  recorded = out.get("dir") or ""
  if data_dir:
    out["dir"] = data_dir
  elif recorded and not os.path.isdir(os.path.expanduser(recorded)):
    logging.warning("the recorded data folder %s does not exist here; "
                    "reading the default one.", recorded)
    out["dir"] = ""
  return out


def load_test_data(data_cfg, num_examples: int = 0, *,
                   data_dir: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """The first ``num_examples`` (0 = all) test images of a dataset.

  Args:
    data_cfg: a training config's ``data`` section (or a dict with "name").
    num_examples: how many; 0 = the whole test split.
    data_dir: the MNIST IDX folder to read instead of the recorded one.

  Returns:
    (x float32 (N, H, W, C) in [0, 1], y int32 (N,), description: dataset,
    split, source ("idx" or "tfds"), dir (the folder read; for tfds its
    data_dir, "" = tfds's default) and total).

  Raises:
    lfr_jax.data.DataError: missing or corrupt data.
  """
  from lfr_jax import data  # pylint: disable=g-import-not-at-top
  data_config = _test_data_config(data_cfg, data_dir)
  dataset = data.load(data_config)
  total = len(dataset.test)
  n = total if num_examples <= 0 else min(int(num_examples), total)
  images, labels = dataset.test.read(np.arange(n))
  x = data.preprocess(images, train=False,
                      image_size=int(data_config.get("image_size") or 0))
  info = {"dataset": dataset.info.name, "split": "test",
          "source": dataset.source, "dir": dataset.location, "total": total}
  return np.asarray(x, np.float32), np.asarray(labels, np.int32), info


def data_line(info: Mapping[str, Any], examples: int) -> str:
  """One line naming the test data: dataset, source, folder, image count."""
  folder = info.get("dir") or "tfds's default folder"
  return (f"test data: {info.get('dataset', 'data')} "
          f"{info.get('split', 'test')} split, {info.get('source', '?')} from "
          f"{folder}, {examples} of {info.get('total', examples)} images")
