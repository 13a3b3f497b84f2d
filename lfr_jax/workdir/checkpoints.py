"""Orbax checkpoints of a workdir: the last few, kept epoch ends, the best, and damaged ones set aside.

Example::

    import tempfile, jax
    from configs import mnist_lfr
    from lfr_jax import models, train_state
    from lfr_jax.workdir import checkpoints
    config = mnist_lfr.get_config("smoke")
    net = models.create("small_cnn", jax.random.key(0))
    tx, _ = train_state.make_optimizer(config.optim, 1)
    state = train_state.create_train_state(net, tx, jax.random.key(1))
    folder = tempfile.mkdtemp()
    saved = checkpoints.Checkpoints(folder)
    saved.save(state, {"step": 0})
    restored, meta, damaged = saved.restore_intact(
        train_state.abstract_state(state))
    saved.close()
    meta, damaged                      # ({'step': 0}, [])
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from lfr_jax import models
from lfr_jax import sharding
from lfr_jax import text
from lfr_jax import train_state
from lfr_jax.workdir import layout


class Checkpoints:
  """The last ``keep`` checkpoints plus the best one by validation PGD accuracy.

  Each checkpoint holds the train state (params, optimizer and model state,
  step, RNG key) and a JSON record of the data position and the best
  validation result so far.
  """

  def __init__(self, path, keep: int = 1, keep_best: bool = True,
               keep_steps: tuple[int, ...] = ()):
    self.folder = layout.resolve(path)
    self._settings = (keep, keep_best, tuple(keep_steps))
    self._open()

  def _open(self) -> None:
    keep, keep_best, keep_steps = self._settings
    # Synchronous saves: the train state is donated to the next step, so its
    # buffers must be on disk (or copied) before save() returns.
    options = dict(create=True, enable_async_checkpointing=False)
    if keep_steps:
      # The last `keep`, plus these steps for good (e.g. chosen epoch ends,
      # evaluated later as points of a robustness-vs-compute curve).
      policies = ocp.checkpoint_managers
      latest = dict(preservation_policy=policies.AnyPreservationPolicy([
          policies.LatestN(keep), policies.CustomSteps(list(keep_steps))]))
    else:
      latest = dict(max_to_keep=keep)
    self.latest = ocp.CheckpointManager(
        self.folder / layout.CHECKPOINTS,
        options=ocp.CheckpointManagerOptions(**latest, **options))
    self.best = ocp.CheckpointManager(
        self.folder / layout.BEST,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, **options)
    ) if keep_best else None

  @staticmethod
  def _args(state, meta):
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))

  def save(self, state, meta: dict[str, Any], *, best: bool = False) -> None:
    """Saves ``state`` under its step (in the best slot too if ``best``)."""
    step = int(meta["step"])
    if self.latest.latest_step() != step:
      self.latest.save(step, args=self._args(state, meta))
    if best and self.best is not None:
      self.best.save(step, args=self._args(state, meta))

  def _manager(self, best: bool):
    return self.best if best else self.latest

  def restore(self, abstract_state, *, best: bool = False,
              step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
    """The latest (or best, or the given step's) checkpoint, or None."""
    manager = self._manager(best)
    if manager is None or manager.latest_step() is None:
      return None
    if step is None:
      step = manager.latest_step()
    elif step not in manager.all_steps():
      return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_intact(self, abstract_state
                     ) -> tuple[Any, dict[str, Any], list[int]] | None:
    """The newest checkpoint that restores; damaged newer ones moved aside.

    A checkpoint whose files are truncated or missing (a full disk, a partial
    copy) fails to restore. It is moved to ``damaged_checkpoints/`` (kept for
    inspection) and the next older one is tried.

    Returns:
      (state, meta, damaged steps newest first), or None without checkpoints.

    Raises:
      WorkdirError: checkpoints exist but none restores.
    """
    damaged: list[tuple[int, str]] = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        state, meta = self.restore(abstract_state, step=step)
      except Exception as e:  # pylint: disable=broad-except
        # Any failure of the restore is the checkpoint's: orbax and
        # TensorStore raise many types for damaged files.
        damaged.append((step, text.one_line(e, pick="first", limit=160)))
        continue
      for bad, _ in damaged:
        self._move_aside(bad)
      return state, meta, [bad for bad, _ in damaged]
    if damaged:
      step, reason = damaged[0]
      raise layout.WorkdirError(
          f"no checkpoint in {self.folder / layout.CHECKPOINTS} restores (step "
          f"{step}: {reason}); if the files are damaged, restore them or use a "
          f"new workdir.")
    return None

  def _move_aside(self, step: int) -> None:
    source = self.folder / layout.CHECKPOINTS / str(step)
    target_dir = self.folder / layout.DAMAGED
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / str(step)
    suffix = 1
    while target.exists():
      target, suffix = target_dir / f"{step}.{suffix}", suffix + 1
    source.rename(target)
    # The managers cache the step list: reopen them on the folder as it is.
    self.close()
    self._open()

  def steps(self, *, best: bool = False) -> list[int]:
    """The saved steps, oldest first."""
    manager = self._manager(best)
    return sorted(manager.all_steps()) if manager is not None else []

  def meta(self, step: int, *, best: bool = False) -> dict[str, Any]:
    """The JSON record saved with a step (data position, best so far)."""
    return self._manager(best).restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def close(self) -> None:
    for manager in (self.latest, self.best):
      if manager is not None:
        manager.wait_until_finished()
        manager.close()


def load_checkpoint(config, path, *, best: bool = False,
                    step: int | None = None) -> tuple[Any, dict[str, Any]]:
  """Restores the latest (or best, or one step's) train state of a run.

  Args:
    config: the run's config (its model and optimizer give the structure).
    path: the run's workdir.
    best: restore the best checkpoint by validation PGD accuracy instead.
    step: restore this saved step of ``checkpoints/`` instead of the latest.

  Returns:
    (state, meta); ``models.Network(graphdef, state.params, state.model_state)``
    with the graphdef of ``models.create(config.model.name, ...)`` rebuilds the
    network.

  Raises:
    FileNotFoundError: no such checkpoint.
  """
  net = models.create(config.model.name, jax.random.key(0),
                      **models.kwargs_from_config(config.model))
  tx, _ = train_state.make_optimizer(config.optim, 1, total_steps=1)  # structure only
  mesh = sharding.make_mesh(config.mesh.num_devices)
  state = jax.device_put(
      train_state.create_train_state(net, tx, jax.random.key(0)),
      sharding.replicated(mesh))
  ckpt = Checkpoints(path, 1, True)
  try:
    restored = ckpt.restore(train_state.abstract_state(state), best=best,
                            step=step)
  finally:
    ckpt.close()
  if restored is None:
    what = f"step {step}" if step is not None else "best" if best else "any"
    raise FileNotFoundError(f"no checkpoint ({what}) in {path}")
  return restored


def checkpoint_steps(path) -> tuple[list[int], int | None]:
  """The saved steps of ``checkpoints/`` and the run's steps per epoch.

  Returns:
    (steps oldest first, steps per epoch from the latest one's record, or
    None when there is no checkpoint).
  """
  ckpt = Checkpoints(path, 1, False)
  try:
    steps = ckpt.steps()
    per_epoch = int(ckpt.meta(steps[-1])["steps_per_epoch"]) if steps else None
  finally:
    ckpt.close()
  return steps, per_epoch
