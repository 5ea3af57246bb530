"""An evaluation's result record (what eval/<task>-step<N>.json holds) and its stdout table.

The record:
  {"task": name, "kind": kind, "data": [files], "workdir": path, "step": N,
   "config": {num_fewshot, limit, fewshot_seed, ...: the settings that change the numbers},
   "metrics": {name: value, name_stderr: value or null}, "num_items": n,
   "wall_time_s": seconds (reading, scoring and metrics; not loading the checkpoint),
   + per kind: "num_tokens"/"num_bytes" (perplexity), "examples" (generation),
   "confusion_matrix" (classification)}
Non-finite numbers (an infinite perplexity) are written as null: JSON has no NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llmjax.evaluation.tasks import PreparedTask


def _finite(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def make_record(task: PreparedTask, *, workdir: str, step: int,
                task_metrics: Mapping[str, float | None], extra: Mapping[str, Any],
                wall_time_s: float) -> dict[str, Any]:
  """The result record of a scored task (see the module docstring)."""
  config = task.config
  return {"task": config.task_name, "kind": config.kind, "data": list(task.data_paths),
          "workdir": workdir, "step": int(step), "config": config.settings(),
          "metrics": {k: _finite(v) for k, v in task_metrics.items()},
          "num_items": len(task.items), "wall_time_s": round(float(wall_time_s), 3), **extra}


def _number(value: float | None, missing: str = "n/a") -> str:
  if value is None:
    return missing
  return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.3e}"


def format_table(record: Mapping[str, Any]) -> str:
  """A readable table of the record's metrics (value ± stderr) under a one-line header."""
  config = record["config"]
  shots = f", {config['num_fewshot']}-shot" if "fewshot_seed" in config else ""
  lines = [f"{record['task']} ({record['kind']}{shots}, {record['num_items']} items, step "
           f"{record['step']}, {record['wall_time_s']:.1f} s)",
           f"  {'metric':<18} {'value':>12} {'stderr':>10}"]
  values = record["metrics"]
  for name, value in values.items():
    if name.endswith("_stderr"):
      continue
    stderr = values.get(f"{name}_stderr")
    lines.append(f"  {name:<18} {_number(value):>12} {_number(stderr, ''):>10}")
  matrix = record.get("confusion_matrix")
  if matrix is not None:
    lines.append("  confusion matrix (rows: true label, columns: predicted):")
    lines.extend("    " + " ".join(f"{n:>6d}" for n in row) for row in matrix)
  return "\n".join(lines)
