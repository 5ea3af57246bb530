"""`--search`: plan every (remat policy, microbatch count, rule set) and rank the ones that fit.

Each candidate is compiled like a single plan (seconds each), so the space is kept small:
the remat policies the target platform supports, microbatch counts 1, 2, 4, 8 (those that
divide the batch into microbatches splittable over data x fsdp; the others are skipped with
the trainer's reason) and every rule set in `llmjax.sharding.rules.RULE_SETS`, read when the
search runs so rule sets added later are searched too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from llmjax.models.config import REMAT_POLICIES, ModelConfig
from llmjax.models.stack import check_remat_supported
from llmjax.planning.devices import DeviceSpec
from llmjax.planning.planner import Plan, plan
from llmjax.sharding import rules as rules_lib
from llmjax.training.config import TrainConfig

DEFAULT_MICROBATCHES = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One point of the search space."""

  remat_policy: str
  microbatches: int
  rules: str

  def describe(self) -> str:
    return (f"remat={self.remat_policy} microbatches={self.microbatches} "
            f"rules={self.rules}")


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """Plans that fit (fastest predicted step first), those that do not, and skipped points.

  Attributes:
    fitting: plans with `fits`, sorted by `step_time_s`.
    not_fitting: plans that exceed the device memory, smallest first.
    skipped: (candidate, reason) for points that failed validation or compilation.
  """

  fitting: list[Plan]
  not_fitting: list[Plan]
  skipped: list[tuple[Candidate, str]]

  def to_dict(self) -> dict[str, Any]:
    return {
        "fitting": [p.to_dict() for p in self.fitting],
        "not_fitting_count": len(self.not_fitting),
        "not_fitting": [p.to_dict() for p in self.not_fitting],
        "skipped": [{**dataclasses.asdict(c), "reason": r} for c, r in self.skipped],
    }


def supported_remat_policies(model: ModelConfig, platform: str) -> list[str]:
  """The remat policies `platform` can run (all but 'offload' on cpu)."""
  supported = []
  for policy in REMAT_POLICIES:
    try:
      check_remat_supported(model.replace(remat_policy=policy), platform)
    except ValueError:
      continue
    supported.append(policy)
  return supported


def candidates(model: ModelConfig, platform: str, *, remat: Sequence[str] | None = None,
               microbatches: Sequence[int] | None = None,
               rules: Sequence[str] | None = None) -> list[Candidate]:
  """The search space, in a fixed order (remat, then microbatches, then rule set).

  Raises:
    ValueError: an unknown or unsupported remat policy or rule set asked for explicitly.
  """
  supported = supported_remat_policies(model, platform)
  remat = list(remat or supported)
  bad = [r for r in remat if r not in supported]
  if bad:
    raise ValueError(f"remat policies {bad} cannot run on {platform!r}; choose from "
                     f"{supported}.")
  rules = list(rules or rules_lib.RULE_SETS)
  for name in rules:
    rules_lib.get_rules(name)  # Raises with the valid names.
  counts = list(microbatches or DEFAULT_MICROBATCHES)
  return [Candidate(r, m, s) for r in remat for m in counts for s in rules]


def search(model: ModelConfig, train: TrainConfig, data: Any, mesh_shape: dict[str, int],
           device: DeviceSpec, *, remat: Sequence[str] | None = None,
           microbatches: Sequence[int] | None = None, rules: Sequence[str] | None = None,
           devices: list | None = None,
           progress: Callable[[str], None] | None = None) -> SearchResult:
  """Plans every candidate; see the module docstring.

  Args:
    model, train, data: the configs (remat_policy and microbatches are overridden).
    mesh_shape: `{axis: size}` of the target mesh.
    device: the target chip.
    remat, microbatches, rules: restrict the space (default: all of each).
    devices: fake devices for the mesh (default: this process's).
    progress: called with one line per candidate (the CLI prints them on stderr).
  """
  space = candidates(model, device.platform, remat=remat, microbatches=microbatches,
                     rules=rules)
  plans, skipped = [], []
  for i, cand in enumerate(space, 1):
    start = time.perf_counter()
    try:
      cand_train = train.replace(microbatches=cand.microbatches)
      result = plan(model.replace(remat_policy=cand.remat_policy), cand_train, data,
                    mesh_shape, cand.rules, device, devices)
    except ValueError as e:  # The trainer's own checks: the reason is the message.
      skipped.append((cand, str(e)))
      line = f"skipped: {e}"
    except Exception as e:  # noqa: BLE001 -- a compile failure skips one point, not all.
      reason = f"did not compile on the CPU planner: {type(e).__name__}: "
      skipped.append((cand, reason + str(e).strip().splitlines()[0][:200]))
      line = "skipped: " + skipped[-1][1]
    else:
      plans.append(result)
      line = (f"{'fits' if result.fits else 'does not fit'}: "
              f"{result.total_bytes / 1e9:.3g} GB, {result.step_time_s * 1e3:.3g} ms")
    if progress is not None:
      progress(f"[{i}/{len(space)}] {cand.describe()}: {line} "
               f"({time.perf_counter() - start:.1f} s)")
  fitting = sorted((p for p in plans if p.fits), key=lambda p: p.step_time_s)
  not_fitting = sorted((p for p in plans if not p.fits), key=lambda p: p.total_bytes)
  return SearchResult(fitting=fitting, not_fitting=not_fitting, skipped=skipped)
