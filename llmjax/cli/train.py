"""`llmjax train`: gin files + bindings -> configs -> `llmjax.training.loop.train`.

Exit codes: 0 done (or preempted by SIGTERM/SIGINT, with a checkpoint to resume from), 2 a
config or workdir error (nothing compiled), 3 training diverged (nothing non-finite saved).
"""

from __future__ import annotations

import argparse
import sys

from llmjax.cli import gin_config

EXIT_DIVERGED = 3  # A non-finite loss, gradient norm or state (TrainConfig.nan_policy).


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="llmjax train",
      description="Train a model, resuming from --workdir if it holds a checkpoint. "
      "Override any gin field or macro with --gin.NAME=VALUE (e.g. --gin.TRAIN_STEPS=100).")
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file(s), applied in order; e.g. gin_configs/runs/quickstart.gin")
  parser.add_argument("--workdir", required=True, help="run directory (created if missing)")
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


def main(argv: list[str]) -> int:
  """Parses flags and runs training; returns the process exit code."""
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
  from llmjax.training.loop import train  # After config errors, which need no jax.

  try:
    train(**configs, workdir=args.workdir, operative_config=gin_config.operative_config())
  except DivergenceError as e:
    # Names the step and the quantity, and says what was kept and how to continue.
    print(f"llmjax train: {e}", file=sys.stderr)
    return EXIT_DIVERGED
  except (ValueError, FileExistsError, FileNotFoundError) as e:
    # Config and workdir checks (mesh vs devices, vocab, resume compatibility, a foreign
    # --workdir, a missing warm-start source) raise before anything is compiled or written;
    # their message is the whole story, a traceback is noise.
    print(f"llmjax train: {e}", file=sys.stderr)
    return 2
  distributed.shutdown()  # Every process leaves together, after the last checkpoint.
  return 0
