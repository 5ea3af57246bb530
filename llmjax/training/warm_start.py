"""Warm starts: initialize a new run's parameters from another run's checkpoint.

A fine-tune (say a classifier on top of an MLM-pretrained encoder) names the pretrained
workdir in `TrainConfig.init_from`. Every parameter whose path and shape match is copied;
parameters only the new model has (a fresh classification head) keep their initialization;
parameters only the old model had (its MLM head) are dropped. A path present in both with a
different shape is an error, raised before anything is trained or written, because silently
re-initializing a pretrained tensor is the classic way to fine-tune from scratch by accident.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
from flax import traverse_util

from llmjax.models.config import ModelConfig
from llmjax.training import checkpoint as ckpt_lib


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


def source_model_config(workdir: str) -> ModelConfig:
  """The ModelConfig a training workdir was run with (from its run_config.json)."""
  path = os.path.join(workdir, "run_config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"TrainConfig.init_from={workdir!r} is not a training workdir "
                            f"({path} is missing): point it at a directory written by "
                            "`llmjax train`.")
  with open(path, encoding="utf-8") as f:
    return ModelConfig(**json.load(f)["model"])


def _source(workdir: str, step: int | None) -> tuple[str, Any, int]:
  from llmjax.models.interface import LanguageModel  # Models import training.losses.

  workdir = os.path.abspath(workdir)
  source_lm = LanguageModel(source_model_config(workdir))
  abstract = jax.eval_shape(source_lm.init, jax.random.PRNGKey(0))
  step = ckpt_lib.latest_step(workdir) if step is None else step
  if step is None:
    raise FileNotFoundError(f"TrainConfig.init_from={workdir!r} holds no checkpoint yet.")
  return workdir, abstract, step


def check_compatible(workdir: str, abstract_params: Any, step: int | None = None) -> None:
  """Raises (reading only configs, no tensors) if `workdir` cannot warm-start these params.

  Raises:
    FileNotFoundError: no such workdir or checkpoint.
    ValueError: a parameter present in both models has different shapes.
  """
  workdir, abstract, _ = _source(workdir, step)
  source = traverse_util.flatten_dict(abstract, sep="/")
  target = traverse_util.flatten_dict(abstract_params, sep="/")
  mismatched = [f"{p}: checkpoint {source[p].shape} vs model {target[p].shape}"
                for p in sorted(set(source) & set(target)) if source[p].shape != target[p].shape]
  if mismatched:
    raise ValueError(
        f"cannot warm-start from {workdir}: these parameters have different shapes:\n  "
        + "\n  ".join(mismatched)
        + "\nMake the shared model fields (widths, heads, layers, vocab) match the source run.")
  if not set(source) & set(target):
    raise ValueError(f"cannot warm-start from {workdir}: it shares no parameter with this "
                     "model (a different architecture?).")


def load_matching_params(workdir: str, params: Any, step: int | None = None
                         ) -> tuple[Any, WarmStartReport]:
  """Returns `params` with every leaf that the checkpoint in `workdir` also has replaced.

  Args:
    workdir: the source run directory.
    params: the new model's (sharded) params; copied leaves keep their sharding.
    step: the source checkpoint step; None = latest.

  Raises:
    As `check_compatible`.
  """
  check_compatible(workdir, params, step)
  workdir, abstract, step = _source(workdir, step)
  source = traverse_util.flatten_dict(abstract, sep="/")
  target = traverse_util.flatten_dict(params, sep="/")
  restored = traverse_util.flatten_dict(
      ckpt_lib.restore_params(workdir, abstract, step=step), sep="/")
  shared = set(source) & set(target)
  merged = dict(target)
  for path in shared:
    merged[path] = jax.device_put(restored[path].astype(target[path].dtype),
                                  target[path].sharding)
  report = WarmStartReport(
      source=workdir, step=step, copied=tuple(sorted(shared)),
      initialized=tuple(sorted(set(target) - set(source))),
      dropped=tuple(sorted(set(source) - set(target))))
  return traverse_util.unflatten_dict(merged, sep="/"), report
