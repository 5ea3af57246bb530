"""Warm starts: initialize a new run's parameters from another run's checkpoint.

A fine-tune (say a classifier on top of an MLM-pretrained encoder) names the pretrained
workdir in `TrainConfig.init_from`. Every parameter whose path and shape match is copied;
parameters only the new model has (a fresh classification head) keep their initialization;
parameters only the old model had (its MLM head) are dropped. A path present in both with a
different shape is an error, raised before anything is trained or written, because silently
re-initializing a pretrained tensor is the classic way to fine-tune from scratch by accident.
The source may be any workdir, trained or converted (`llmjax convert --from_hf`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import traverse_util

from llmjax import workdir as workdir_lib
from llmjax.models.interface import LanguageModel


@dataclasses.dataclass(frozen=True)
class WarmStartReport:
  """What a warm start did, by parameter path ('/'-joined)."""
  source: str
  step: int
  copied: tuple[str, ...]
  initialized: tuple[str, ...]  # Only in the new model: kept their fresh initialization.
  dropped: tuple[str, ...]  # Only in the source model.

  def summary(self) -> str:
    text = (f"warm start from {self.source} (step {self.step}): copied {len(self.copied)} "
            f"parameter arrays")
    if self.initialized:
      text += f"; newly initialized: {', '.join(self.initialized)}"
    if self.dropped:
      text += f"; not used: {', '.join(self.dropped)}"
    return text


@dataclasses.dataclass(frozen=True)
class WarmStart:
  """A checked warm start: the source run, its checkpoint step and its abstract params.

  Built by `plan` (configs only, no tensors) before a run writes anything; `apply` then reads
  the checkpoint into the new run's initialized params.
  """
  source: str
  step: int
  source_params: Any  # The source model's abstract params (jax.ShapeDtypeStruct leaves).

  def apply(self, params: Any) -> tuple[Any, WarmStartReport]:
    """Returns `params` with every leaf the source checkpoint also has replaced.

    Args:
      params: the new model's (sharded) params; copied leaves keep their sharding and dtype.
    """
    source = traverse_util.flatten_dict(self.source_params, sep="/")
    target = traverse_util.flatten_dict(params, sep="/")
    restored = traverse_util.flatten_dict(
        workdir_lib.restore_params(self.source, self.source_params, step=self.step), sep="/")
    shared = set(source) & set(target)
    merged = dict(target)
    for path in shared:
      merged[path] = jax.device_put(restored[path].astype(target[path].dtype),
                                    target[path].sharding)
    report = WarmStartReport(
        source=self.source, step=self.step, copied=tuple(sorted(shared)),
        initialized=tuple(sorted(set(target) - set(source))),
        dropped=tuple(sorted(set(source) - set(target))))
    return traverse_util.unflatten_dict(merged, sep="/"), report


def plan(workdir: str, abstract_params: Any, step: int | None = None) -> WarmStart:
  """Checks (reading only configs, no tensors) that `workdir` can warm-start these params.

  Args:
    workdir: the source run directory (TrainConfig.init_from).
    abstract_params: the new model's params or their shapes.
    step: the source checkpoint step (TrainConfig.init_from_step); None = latest.

  Raises:
    FileNotFoundError: no such workdir or checkpoint.
    ValueError: not an llmjax workdir, or a parameter present in both models has different
      shapes, or they share no parameter.
  """
  flag = "TrainConfig.init_from"
  record = workdir_lib.read_run_config(workdir, flag=flag)
  steps = workdir_lib.checkpoint_steps(record.workdir)
  if step is not None and steps and step not in steps:
    raise FileNotFoundError(
        f"TrainConfig.init_from_step={step}: {record.workdir} has no checkpoint for that step; "
        f"it has steps {steps}: choose one of them, or None for the latest.")
  step = workdir_lib.resolve_step(record.workdir, step, flag=flag)
  source_params = jax.eval_shape(LanguageModel(record.model).init, jax.random.PRNGKey(0))
  source = traverse_util.flatten_dict(source_params, sep="/")
  target = traverse_util.flatten_dict(abstract_params, sep="/")
  mismatched = [f"{p}: checkpoint {source[p].shape} vs model {target[p].shape}"
                for p in sorted(set(source) & set(target)) if source[p].shape != target[p].shape]
  if mismatched:
    raise ValueError(
        f"cannot warm-start from {record.workdir}: these parameters have different shapes:\n  "
        + "\n  ".join(mismatched)
        + "\nMake the shared model fields (widths, heads, layers, vocab) match the source run.")
  if not set(source) & set(target):
    raise ValueError(f"cannot warm-start from {record.workdir}: it shares no parameter with "
                     "this model (a different architecture?).")
  return WarmStart(source=record.workdir, step=step, source_params=source_params)


def load_matching_params(workdir: str, params: Any, step: int | None = None
                         ) -> tuple[Any, WarmStartReport]:
  """`plan(workdir, params, step).apply(params)`: a warm start in one call (as `plan` raises)."""
  return plan(workdir, params, step).apply(params)
