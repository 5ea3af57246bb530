"""`llmjax train`: gin files + bindings -> configs -> `llmjax.training.loop.train`.

Exit codes:
  0    done, or preempted by SIGTERM/SIGINT during the steps (with a checkpoint to resume from);
  1    the run failed after setup (while compiling or running the steps), or with an error no
       check anticipated: one line names the exception and WORKDIR/logs/error-<time>.log, which
       holds the full traceback (printed instead when the workdir cannot be written);
  2    a config or workdir error, found before compiling: one line says what and how to fix it;
  3    training diverged (nothing non-finite saved);
  130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM (128 + the signal, as shells report it)
       before the steps began (setup, data preparation, compiling): one line says whether
       there is a checkpoint to resume from. During the steps these signals preempt (exit 0).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from llmjax.cli import gin_config

EXIT_FAILED = 1  # An error after setup or one no check anticipated; traceback in WORKDIR/logs/.
EXIT_CONFIG = 2  # A config or workdir error, found before compiling.
EXIT_DIVERGED = 3  # A non-finite loss, gradient norm or state (TrainConfig.nan_policy).
# Errors the config and workdir checks raise before compiling (mesh vs devices, vocab, resume
# compatibility, a foreign or unwritable --workdir, a missing warm-start source): their message
# is the whole story, a traceback is noise. The same types raised later are not these (RunError).
SETUP_ERRORS = (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError,
                PermissionError)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="llmjax train",
      description="Train a model, resuming from --workdir if it holds a checkpoint. "
      "Override any gin field or macro with --gin.NAME=VALUE (e.g. --gin.TRAIN_STEPS=100).")
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file(s), applied in order; e.g. gin_configs/runs/quickstart.gin")
  parser.add_argument("--workdir", required=True, help="run directory (created if missing)")
  parser.add_argument("--allow_fallback_checkpoint", action="store_true",
                      help="if the newest checkpoint is damaged (a file truncated or deleted), "
                      "resume from the newest intact one; damaged steps are moved to "
                      "WORKDIR/checkpoints/damaged/, never deleted")
  dist = parser.add_argument_group(
      "multi-process runs", "every process runs the same command; see experiments/README.md")
  dist.add_argument("--coordinator_address", default=None,
                    help="HOST:PORT of process 0 (env JAX_COORDINATOR_ADDRESS)")
  dist.add_argument("--num_processes", type=int, default=None,
                    help="number of processes (env JAX_NUM_PROCESSES)")
  dist.add_argument("--process_id", type=int, default=None,
                    help="this process's index in [0, num_processes) (env JAX_PROCESS_ID)")
  dist.add_argument("--local_device_ids", default=None,
                    help="comma-separated local devices this process uses (default: all)")
  dist.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                    help="auto: initialize jax.distributed when the flags above, their env "
                    "variables, or a multi-process SLURM / Cloud TPU / Open MPI job are found")
  dist.add_argument("--distributed_timeout", type=int, default=300,
                    help="seconds to wait for the coordinator and the other processes")
  return parser


def _distributed_config(args: argparse.Namespace):
  from llmjax.distributed import DistributedConfig

  ids = None
  if args.local_device_ids:
    try:
      ids = tuple(int(i) for i in args.local_device_ids.split(","))
    except ValueError:
      raise ValueError(f"--local_device_ids={args.local_device_ids!r} is not a comma-separated "
                       "list of integers, e.g. 0,1,2,3.") from None
  return DistributedConfig(mode=args.distributed, coordinator_address=args.coordinator_address,
                           num_processes=args.num_processes, process_id=args.process_id,
                           local_device_ids=ids, timeout_s=args.distributed_timeout)


def _quiet_library_logs() -> None:
  """Keeps the terminal to llmjax's own progress bar: TFDS's preparation bars and absl's
  per-call notices ("Using custom data configuration ...") say nothing a user acts on."""
  import absl.logging
  import tensorflow_datasets as tfds

  absl.logging.set_verbosity(absl.logging.ERROR)
  tfds.disable_progress_bar()


class _InterruptSignals:
  """While entered, SIGINT and SIGTERM raise KeyboardInterrupt (recording which one came).

  This covers setup, data preparation and compiling; the training loop's own handlers
  (training/guard.py StopSignals) replace these during the steps and restore them after.
  A signal this process ignores (a `nohup` or background job) stays ignored.

  Python drops an exception raised inside a gc callback, a weakref callback or a __del__ (it
  reports it to sys.unraisablehook, "Exception ignored in ...", and carries on), and JAX runs
  such callbacks on every collection, so a signal landing there would be lost. So that report
  is silenced for the interrupt, and the signal is delivered again every REDELIVER_S until
  the interrupt is caught; if the loop's handlers have taken over meanwhile, once more to them
  (a stop request: a checkpoint, exit 0).
  """

  REDELIVER_S = 0.2

  def __init__(self):
    self.signum: int | None = None
    self.handled = False
    self._lock = threading.Lock()  # So no signal is sent once the handlers are restored.
    self._previous: dict[int, object] = {}
    self._redelivery: threading.Thread | None = None
    self._unraisablehook = None

  def __enter__(self) -> _InterruptSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
          self._previous[signum] = signal.signal(signum, self._raise)
      self._unraisablehook, sys.unraisablehook = sys.unraisablehook, self._unraisable
    return self

  def _unraisable(self, unraisable) -> None:
    if self.signum is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
      return  # Ours, swallowed by a callback: it is being delivered again.
    self._unraisablehook(unraisable)

  def mark_handled(self) -> None:
    """The interrupt was caught: deliver it no more."""
    with self._lock:
      self.handled = True

  def __exit__(self, *exc) -> None:
    self.mark_handled()
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    if self._unraisablehook is not None:
      sys.unraisablehook, self._unraisablehook = self._unraisablehook, None

  def _raise(self, signum: int, frame) -> None:
    del frame
    if self.handled:  # A redelivery that arrived after the interrupt was caught.
      return
    self.signum = signum
    if self._redelivery is None:
      self._redelivery = threading.Thread(target=self._redeliver, args=(signum,), daemon=True)
      self._redelivery.start()
    raise KeyboardInterrupt

  def _redeliver(self, signum: int) -> None:
    while True:
      time.sleep(self.REDELIVER_S)
      with self._lock:
        if self.handled:
          return
        ours = signal.getsignal(signum) == self._raise
        os.kill(os.getpid(), signum)
      if not ours:  # The loop's StopSignals: one stop request is enough.
        return


def _workdir_flag(argv: list[str]) -> str | None:
  """--workdir's value, read without the parser (which may be what was interrupted)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _latest_checkpoint(workdir: str | None) -> int | None:
  """The workdir's newest checkpoint step, or None (also when it cannot be read)."""
  if not workdir or not os.path.isdir(workdir):
    return None
  try:
    from llmjax import workdir as workdir_lib

    return workdir_lib.latest_step(workdir)
  except Exception:  # Only for a message: never hide the failure being reported.
    return None


def _close_progress_bars() -> None:
  """Ends the training loop's progress bar, left open by an exception, so the one-line
  message starts on a line of its own (and the bar is not redrawn after it)."""
  if "tqdm" not in sys.modules:
    return
  from tqdm import tqdm

  for bar in list(getattr(tqdm, "_instances", ())):
    bar.close()


def _interrupted(signum: int | None, workdir: str | None) -> int:
  """One line for a run stopped by SIGINT/SIGTERM outside the steps; returns 128 + signal."""
  _close_progress_bars()
  # Background threads the interrupt left mid-task (Orbax's temporary-path cleanup) fail as the
  # interpreter shuts down and log that through absl with a traceback: nothing to act on.
  import logging

  logging.getLogger("absl").setLevel(logging.CRITICAL)
  signum = signum or signal.SIGINT  # A bare KeyboardInterrupt: Ctrl-C (twice, in the loop).
  name = signal.Signals(signum).name
  step = _latest_checkpoint(workdir)
  if step is None:
    print(f"llmjax train: interrupted ({name}) before the first checkpoint; nothing to resume "
          "(no checkpoint was written): rerun the same command to start again.",
          file=sys.stderr)
  else:
    print(f"llmjax train: interrupted ({name}); the newest checkpoint is step {step}: rerun the "
          "same command to resume from it.", file=sys.stderr)
  return 128 + signum


def _failed(error: BaseException, workdir: str) -> int:
  """Keeps an unexpected error's traceback in WORKDIR/logs/ and names it in one line."""
  import traceback

  import jax

  from llmjax import workdir as workdir_lib
  from llmjax.training.loop import RunError

  # A RunError's cause is the exception the steps raised.
  cause = error.__cause__ if isinstance(error, RunError) and error.__cause__ else error
  _close_progress_bars()
  lines = str(cause).strip().splitlines()
  what = type(cause).__name__ + (f": {lines[0][:500]}" if lines else "")
  text = "".join(traceback.format_exception(error))
  step = _latest_checkpoint(workdir)
  kept = (f"the newest checkpoint (step {step}) is intact: rerun the same command to resume "
          "once the cause is fixed" if step is not None else "no checkpoint was written")
  try:
    path = workdir_lib.write_error_log(workdir, text, process_index=jax.process_index())
  except OSError as e:
    sys.stderr.write(text)
    print(f"llmjax train: the run failed with {what}; the traceback is above (no log written: "
          f"{e}); {kept}.", file=sys.stderr)
    return EXIT_FAILED
  print(f"llmjax train: the run failed with {what}; the full traceback is in {path}; {kept}.",
        file=sys.stderr)
  return EXIT_FAILED


def main(argv: list[str]) -> int:
  """Parses flags and runs training; returns the process exit code."""
  with _InterruptSignals() as interrupts:
    try:
      return _run(argv)
    except KeyboardInterrupt:
      interrupts.mark_handled()
      return _interrupted(interrupts.signum, _workdir_flag(argv))


def _run(argv: list[str]) -> int:
  try:
    rest, bindings = gin_config.split_gin_flags(argv)
    args = _parser().parse_args(rest)
    gin_config.parse(args.gin_file, bindings)
    configs = gin_config.build_all()
    dist_config = _distributed_config(args)
  except (gin_config.GinConfigError, ValueError, SyntaxError, OSError) as e:
    print(f"llmjax train: {e}", file=sys.stderr)
    return 2
  from llmjax import distributed

  try:
    distributed.initialize(dist_config)  # Before anything touches a device.
  except (ValueError, ConnectionError) as e:
    print(f"llmjax train: {e}", file=sys.stderr)
    return 2
  _quiet_library_logs()
  from llmjax.training.guard import DivergenceError
  from llmjax.training.loop import RunError, train  # After config errors, which need no jax.

  try:
    train(**configs, workdir=args.workdir, operative_config=gin_config.operative_config(),
          allow_fallback_checkpoint=args.allow_fallback_checkpoint)
  except DivergenceError as e:
    # Names the step and the quantity, and says what was kept and how to continue.
    _close_progress_bars()
    print(f"llmjax train: {e}", file=sys.stderr)
    return EXIT_DIVERGED
  except RunError as e:  # Raised while compiling or running the steps: keep the traceback.
    return _failed(e, args.workdir)
  except SETUP_ERRORS as e:  # Only from before compiling (see SETUP_ERRORS).
    print(f"llmjax train: {e}", file=sys.stderr)
    return EXIT_CONFIG
  except Exception as e:  # A setup error no check anticipated: keep its traceback too.
    return _failed(e, args.workdir)
  distributed.shutdown()  # Every process leaves together, after the last checkpoint.
  return 0
