"""The training loop's guards: stop signals (preemption) and non-finite steps (divergence).

`StopSignals` turns SIGTERM and SIGINT into a request to stop after the current step; the loop
then saves a checkpoint synchronously and returns, so a rerun of the same command resumes bit
for bit. On a multi-process run the processes agree on the step with an all-reduce of the
request every step (a process that got no signal stops with the others). JAX's own preemption
service (`multihost_utils.reached_preemption_sync_point`) is not used: it catches SIGTERM only,
needs `jax.distributed` (so not a single process), and its C++ signal handler and Python's
replace each other.

`DivergenceGuard` reads each step's loss and gradient norm (one step behind the one in flight,
so the device stays busy) and, per `TrainConfig.nan_policy`, raises `DivergenceError` at the
first non-finite one ('halt') or counts steps the compiled step skipped and raises after too
many in a row ('skip'). `tree_is_finite` is the check made before every checkpoint save.
"""

from __future__ import annotations

import math
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

Metrics = dict[str, jax.Array]


class DivergenceError(RuntimeError):
  """Training produced a non-finite loss, gradient norm or state; nothing of it was saved."""


def tree_is_finite(tree: Any) -> jax.Array:
  """A bool scalar: every floating-point leaf of `tree` holds only finite values."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


class StopSignals:
  """While entered, SIGTERM and SIGINT request a stop instead of killing the process.

  A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt at once. Outside the main thread
  (where Python cannot install handlers) nothing is installed and no stop is ever requested.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def requested(self) -> bool:
    """Whether to stop after this step: on every process alike (a collective when several)."""
    local = self.signum is not None
    if jax.process_count() == 1:
      return local
    return bool(np.any(multihost_utils.process_allgather(np.int32(local))))


class DivergenceGuard:
  """Checks each step's metrics for non-finite values, per `TrainConfig.nan_policy`.

  Args:
    policy: 'halt' or 'skip'.
    max_consecutive_skips: with 'skip', raise after this many skipped steps in a row.
  """

  def __init__(self, policy: str, max_consecutive_skips: int):
    self.policy = policy
    self.max_consecutive_skips = max_consecutive_skips
    self.consecutive_skips = 0
    self._unchecked: list[tuple[int, Metrics]] = []

  def add(self, step: int, metrics: Metrics) -> None:
    """Queues the metrics of step `step` (1-based, as in metrics.jsonl) for checking."""
    self._unchecked.append((step, metrics))

  def check(self, *, in_flight: int = 0) -> None:
    """Checks every queued step but the last `in_flight` ones (fetching their scalars).

    Raises:
      DivergenceError: per the policy (the message names the step and the quantity).
    """
    upto = len(self._unchecked) - in_flight
    if upto <= 0:
      return
    ready, self._unchecked = self._unchecked[:upto], self._unchecked[upto:]
    keys = ("skipped",) if self.policy == "skip" else ("loss", "grad_norm")
    values = jax.device_get([{k: m[k] for k in keys} for _, m in ready])
    for (step, _), v in zip(ready, values, strict=True):
      if self.policy == "skip":
        self._count_skip(step, bool(v["skipped"]))
        continue
      bad = {k: float(v[k]) for k in keys if not math.isfinite(float(v[k]))}
      if bad:
        names = " and ".join(f"the {_NAMES[k]} is {x}" for k, x in bad.items())
        raise DivergenceError(f"training diverged at step {step}: {names}.")

  def _count_skip(self, step: int, skipped: bool) -> None:
    self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
    if self.consecutive_skips >= self.max_consecutive_skips:
      first = step - self.consecutive_skips + 1
      raise DivergenceError(
          f"training diverged: steps {first}-{step} ({self.consecutive_skips} in a row, "
          f"TrainConfig.max_consecutive_skips={self.max_consecutive_skips}) all had a "
          "non-finite loss or gradient norm and were skipped.")


_NAMES = {"loss": "loss", "grad_norm": "gradient norm"}


def resume_hint(step: int | None, policy: str) -> str:
  """What a halted run kept and how to continue it."""
  kept = (f"the last checkpoint (step {step}) holds finite values and is untouched"
          if step is not None else "no checkpoint was written")
  fix = ("rerun the same command with --gin.TrainConfig.nan_policy='skip' (drops such steps)"
         if policy == "halt" else "rerun with a larger TrainConfig.max_consecutive_skips")
  return (f"Nothing after it was saved; {kept}. To continue from it, {fix}; or train a new "
          "workdir with a lower TrainConfig.learning_rate (or more warmup_steps).")
