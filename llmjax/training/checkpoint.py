"""Orbax checkpoints of the train state and the data iterator, in DIR/checkpoints/<step>/.

Each step directory holds two items: `state` (the TrainState, `StandardSave`) and `data_iter`
(the Grain iterator state, `JsonSave`), so a resumed run continues with the exact next batch.
Where they live and what the items are called is the workdir format (llmjax/workdir.py, which
also lists steps and reads params alone for loading, conversion and warm starts).

What survives what:
- A save cut short (even by kill -9, async or not) is never a step: Orbax writes into a
  temporary directory and renames it when complete; the leftovers are removed on the next start.
- Each step carries a manifest of its files and their sizes (workdir.CHECKPOINT_MANIFEST),
  written into the temporary directory after Orbax has finished it and before the rename, so a
  committed step always has one. A file truncated or deleted later (a full disk, a bad copy) is
  then named before any restore (`find_resume_point`), instead of surfacing as a TensorStore
  traceback or, for some files, not at all.
- A damaged newest step stops a resume unless the run allows a fallback; then it is moved to
  checkpoints/damaged/<step> (never deleted) and the run resumes from the newest intact step.
  Moving it out of Orbax's steps matters: left in place it would count towards `keep` (so
  Orbax would garbage-collect an intact older step early) and collide with the resumed run's
  own save of that step number.
Restoring always goes into an abstract target carrying the wanted shardings, which is what
makes restoring onto a different mesh (or number of processes) work.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from llmjax import workdir as workdir_lib

# Orbax's temporary step directories are named `<step><this>[suffix]` before the commit rename.
_ORBAX_TMP = ".orbax-checkpoint-tmp"
FALLBACK_FLAG = "--allow_fallback_checkpoint"


@dataclasses.dataclass(frozen=True)
class ResumePoint:
  """Where a run resumes: the newest intact step, and the newer damaged steps it skips.

  Attributes:
    step: the checkpoint step to restore.
    damaged: (step, what is wrong) of each newer step, newest first; set aside before restoring.
    allow_fallback: whether the run may fall back further if Orbax cannot read `step`.
  """

  step: int
  damaged: tuple[tuple[int, str], ...] = ()
  allow_fallback: bool = False


def _fallback_fix(workdir: str, step: int, previous: int | None) -> str:
  """The fix for a trainer resuming from a damaged `step`."""
  if previous is None:
    return ("No checkpoint was changed; no earlier complete checkpoint exists: restore the file "
            "from a backup, or start over in a new --workdir.")
  return (f"No checkpoint was changed. To resume from step {previous}, the newest complete "
          f"checkpoint, rerun with {FALLBACK_FLAG} (Python: train(..., "
          f"allow_fallback_checkpoint=True)): step {step} is then moved to "
          f"{workdir_lib.set_aside_path(workdir, step)}, not deleted.")


def find_resume_point(workdir: str, *, allow_fallback: bool = False) -> ResumePoint | None:
  """Checks a workdir's checkpoints before a run writes anything: where does it resume?

  Reads only (file sizes against each step's manifest). Steps without a manifest (saved before
  llmjax wrote them) count as intact; `Checkpointer.restore` names what Orbax cannot read.

  Args:
    workdir: the run directory.
    allow_fallback: resume from the newest intact step when newer ones are damaged.

  Returns:
    None when there is no checkpoint (a new run), else the ResumePoint.

  Raises:
    DamagedCheckpointError: the newest step is damaged and `allow_fallback` is False, or every
      step is damaged. The message names the step, the file and the fix.
  """
  damaged: list[tuple[int, str]] = []
  for step in reversed(workdir_lib.checkpoint_steps(workdir)):
    detail = workdir_lib.checkpoint_damage(workdir, step)
    if detail is None:
      return ResumePoint(step=step, damaged=tuple(damaged), allow_fallback=allow_fallback)
    if not allow_fallback:
      previous = workdir_lib.newest_intact_step(workdir, below=step)
      raise workdir_lib.damaged_checkpoint_error(workdir, step, detail,
                                                 _fallback_fix(workdir, step, previous))
    damaged.append((step, detail))
  if damaged:
    step, detail = damaged[0]
    raise workdir_lib.damaged_checkpoint_error(workdir, step, detail,
                                               _fallback_fix(workdir, step, None))
  return None


def set_aside(workdir: str, point: ResumePoint) -> None:
  """Moves the steps `point` skips to checkpoints/damaged/ (process 0), saying so on stderr."""
  if not point.damaged:
    return
  if jax.process_index() == 0:
    for step, detail in point.damaged:
      where = workdir_lib.set_aside_checkpoint(workdir, step)
      print(f"llmjax: checkpoint step {step} is damaged ({detail}); moved it to {where} "
            f"(nothing deleted); resuming from step {point.step}.", file=sys.stderr)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("llmjax: damaged checkpoints set aside")


class Checkpointer:
  """Saves and restores (train state, data iterator state) pairs under DIR/checkpoints.

  Saves always go through Orbax's async checkpointer, whose finalization hook writes the
  step's manifest before the commit; `async_save=False` simply waits for each save.

  Args:
    workdir: the run directory (or its checkpoints/ subdirectory).
    keep: how many recent checkpoints to keep.
    async_save: write in a background thread; call `wait_until_finished` before reading.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = workdir_lib.checkpoint_dir(workdir)
    self._async_save = async_save
    self._saving: int | None = None  # The step the background save is finishing.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._write_manifest),
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
    # Orbax waits for the previous save inside `save` anyway; waiting first keeps `_saving`
    # the step its finalization hook is about.
    self._manager.wait_until_finished()
    self._saving = step
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    if not self._async_save:
      self._manager.wait_until_finished()
    return saved

  def _write_manifest(self) -> None:
    """Orbax's post-finalization hook (primary process, background thread): the step is fully
    written into its temporary directory and not yet renamed into place."""
    step = self._saving
    pending = sorted(glob.glob(os.path.join(glob.escape(self.directory), f"{step}{_ORBAX_TMP}*")),
                     key=os.path.getmtime)
    if pending:
      workdir_lib.write_checkpoint_manifest(pending[-1])
    elif os.path.isdir(os.path.join(self.directory, str(step))):
      # An Orbax that writes in place (commit files, not a rename): already final.
      workdir_lib.write_checkpoint_manifest(os.path.join(self.directory, str(step)))
    else:
      raise RuntimeError(f"checkpoint step {step}: no directory to write its manifest into in "
                         f"{self.directory} (has Orbax changed how it names temporary steps?).")

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
      DamagedCheckpointError: a file of the step is truncated or missing, or Orbax cannot read
        it; the message names the step, the file and the fallback flag.
    """
    step = self._resolve_step(step)
    workdir = os.path.dirname(self.directory)
    detail = workdir_lib.checkpoint_damage(workdir, step)
    if detail is not None:
      previous = workdir_lib.newest_intact_step(workdir, below=step)
      raise workdir_lib.damaged_checkpoint_error(workdir, step, detail,
                                                 _fallback_fix(workdir, step, previous))
    state_item, iter_item = workdir_lib.STATE_ITEM, workdir_lib.DATA_ITER_ITEM
    items = {state_item: ocp.args.StandardRestore(abstract_state)}
    has_iter = os.path.isdir(os.path.join(self.directory, str(step), iter_item))
    if with_data_iter and has_iter:
      items[iter_item] = ocp.args.JsonRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Whatever Orbax raises for a file it cannot read.
      error = workdir_lib.read_error(workdir, step, e)
      previous = workdir_lib.newest_intact_step(workdir, below=step)
      raise workdir_lib.damaged_checkpoint_error(
          workdir, step, error.detail, _fallback_fix(workdir, step, previous),
          unreadable=True) from e
    return restored[state_item], (restored[iter_item] if iter_item in items else None)

  def resume(self, abstract_state: Any, point: ResumePoint) -> tuple[Any, Any]:
    """Restores a run at `point` (from `find_resume_point`): (state, data iterator state).

    The damaged steps `point` skips are set aside first. With `point.allow_fallback`, a step
    that passed the manifest check (or has none) but that Orbax cannot read is set aside too
    and the next older intact step is tried; single-process runs only, because processes
    reading different files could disagree about which step failed.

    Raises:
      DamagedCheckpointError: as `restore`, when no fallback is allowed or possible.
    """
    workdir = os.path.dirname(self.directory)
    while True:
      if point.damaged:
        set_aside(workdir, point)
        self._manager.reload()  # Forget the steps just moved.
      try:
        return self.restore(abstract_state, point.step)
      except workdir_lib.DamagedCheckpointError as e:
        previous = workdir_lib.newest_intact_step(workdir, below=point.step)
        if not point.allow_fallback or previous is None or jax.process_count() > 1:
          raise
        point = dataclasses.replace(point, step=previous, damaged=((point.step, e.detail),))

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
