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

`with_loss_window` / `is_loss_spike` (TrainConfig.loss_spike_window, off by default) add
Levanter-style loss-spike skipping: the last W accepted losses live in the optimizer state, so
they are checkpointed with it and a resumed run decides exactly as an uninterrupted one.

`transfer_guard` is where the loop dispatches each step: an implicit host<->device copy there
(a NumPy batch or state handed to the compiled step; on GPU/TPU also a device array read as a
Python number, which on CPU is no copy) raises instead of silently copying every step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

Metrics = dict[str, jax.Array]


class DivergenceError(RuntimeError):
  """Training produced a non-finite loss, gradient norm or state; nothing of it was saved."""


def tree_is_finite(tree: Any) -> jax.Array:
  """A bool scalar: every floating-point leaf of `tree` holds only finite values."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


class LossWindowState(NamedTuple):
  """The optimizer state with the loss window (see `with_loss_window`).

  Attributes:
    inner: the wrapped optimizer's state.
    losses: float32 [W], the last W accepted losses (a ring buffer, slot count % W).
    count: int32 scalar, losses pushed so far (the window is full once count >= W).
  """

  inner: Any
  losses: jax.Array
  count: jax.Array


def with_loss_window(inner: optax.GradientTransformation,
                     window: int) -> optax.GradientTransformationExtraArgs:
  """`inner`, with the losses of the last `window` updates kept in its state.

  `update(grads, state, params, *, loss)` pushes `loss` into the window. The train step drops
  the whole new optimizer state of a skipped step (nan_policy='skip'), so the window holds the
  losses of accepted steps only: a spike never raises the bar for the next one.
  """

  def init(params: Any) -> LossWindowState:
    return LossWindowState(inner.init(params), jnp.zeros((window,), jnp.float32),
                           jnp.zeros((), jnp.int32))

  def update(updates: Any, state: LossWindowState, params: Any = None, *, loss: jax.Array,
             **extra: Any) -> tuple[Any, LossWindowState]:
    del extra
    updates, inner_state = inner.update(updates, state.inner, params)
    losses = state.losses.at[state.count % window].set(loss.astype(jnp.float32))
    return updates, LossWindowState(inner_state, losses, state.count + 1)

  return optax.GradientTransformationExtraArgs(init, update)


def is_loss_spike(state: LossWindowState, loss: jax.Array, num_std: float) -> jax.Array:
  """A bool scalar: the window is full and `loss` > its mean + num_std * its std."""
  losses = state.losses
  full = state.count >= losses.shape[0]
  return full & (loss > jnp.mean(losses) + num_std * jnp.std(losses))


# JAX's own transfer-guard flags (env JAX_TRANSFER_GUARD=log, ...): a level set there wins.
_JAX_TRANSFER_GUARD_FLAGS = ("jax_transfer_guard", "jax_transfer_guard_host_to_device",
                             "jax_transfer_guard_device_to_host",
                             "jax_transfer_guard_device_to_device")


def transfer_guard() -> contextlib.AbstractContextManager[None]:
  """Implicit host<->device transfers raise inside; explicit ones pass.

  Explicit transfers are `jax.device_put` and `jax.device_get` (how metrics are fetched). The
  loop builds the global batch before entering: on multi-process runs
  `make_array_from_process_local_data` copies through a path the guard counts as implicit.
  The level is 'disallow' (a hidden per-step copy is always a bug, and the check costs
  nothing), unless JAX's own flags set one: JAX_TRANSFER_GUARD=log lists the transfers instead,
  JAX_TRANSFER_GUARD=allow turns the guard off.
  """
  if any(getattr(jax.config, flag, None) is not None for flag in _JAX_TRANSFER_GUARD_FLAGS):
    return contextlib.nullcontext()
  return jax.transfer_guard("disallow")


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
          "non-finite loss or gradient norm (or a loss spike, TrainConfig.loss_spike_window) "
          "and were skipped.")


_NAMES = {"loss": "loss", "grad_norm": "gradient norm"}


def resume_hint(step: int | None, policy: str) -> str:
  """What a halted run kept and how to continue it."""
  kept = (f"the last checkpoint (step {step}) holds finite values and is untouched"
          if step is not None else "no checkpoint was written")
  fix = ("rerun the same command with --gin.TrainConfig.nan_policy='skip' (drops such steps)"
         if policy == "halt" else "rerun with a larger TrainConfig.max_consecutive_skips")
  return (f"Nothing after it was saved; {kept}. To continue from it, {fix}; or train a new "
          "workdir with a lower TrainConfig.learning_rate (or more warmup_steps).")
