"""Orbax checkpoints of the train state and the data iterator, in DIR/checkpoints/<step>/.

Each step directory holds two items: `state` (the TrainState, `StandardSave`) and `data_iter`
(the Grain iterator state, `JsonSave`), so a resumed run continues with the exact next batch.
Where they live and what the items are called is the workdir format (llmjax/workdir.py, which
also lists steps and reads params alone for loading, conversion and warm starts).
Orbax writes a step into a temporary directory and renames it when complete, so a save cut
short (even by kill -9) is never listed as a step and is cleaned up on the next start.
Restoring always goes into an abstract target carrying the wanted shardings, which is what
makes restoring onto a different mesh (or number of processes) work.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from llmjax import workdir as workdir_lib


class Checkpointer:
  """Saves and restores (train state, data iterator state) pairs under DIR/checkpoints.

  Args:
    workdir: the run directory (or its checkpoints/ subdirectory).
    keep: how many recent checkpoints to keep.
    async_save: write in a background thread; call `wait_until_finished` before reading.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = workdir_lib.checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        # Leftovers of a save that was killed half way are removed, never restored.
        cleanup_tmp_directories=True,
        create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iter_state: Any = None, *,
           force: bool = True) -> bool:
    """Starts saving `state` (and the JSON-able iterator state) as checkpoint `step`."""
    items = {workdir_lib.STATE_ITEM: ocp.args.StandardSave(state)}
    if data_iter_state is not None:
      items[workdir_lib.DATA_ITER_ITEM] = ocp.args.JsonSave(data_iter_state)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state: Any, step: int | None = None, *,
              with_data_iter: bool = True) -> tuple[Any, Any]:
    """Restores (state, data iterator state or None) from `step` (default: the latest).

    Args:
      abstract_state: a tree of `jax.ShapeDtypeStruct` with `.sharding` set to where each
        array should live (see `state.state_shardings`); it may describe another mesh.
      step: which checkpoint; None means the latest.
      with_data_iter: also restore the data iterator state, if the checkpoint has one.

    Raises:
      FileNotFoundError: no checkpoint exists (or not that step).
    """
    step = self._resolve_step(step)
    state_item, iter_item = workdir_lib.STATE_ITEM, workdir_lib.DATA_ITER_ITEM
    items = {state_item: ocp.args.StandardRestore(abstract_state)}
    has_iter = os.path.isdir(os.path.join(self.directory, str(step), iter_item))
    if with_data_iter and has_iter:
      items[iter_item] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored[state_item], (restored[iter_item] if iter_item in items else None)

  def _resolve_step(self, step: int | None) -> int:
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"no checkpoint in {self.directory}.")
      return max(steps)
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                              f"available: {sorted(steps)}.")
    return step

  def wait_until_finished(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
