"""`llmjax train`: gin files + bindings -> configs -> `llmjax.training.loop.train`."""

from __future__ import annotations

import argparse
import sys

from llmjax.cli import gin_config


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="llmjax train",
      description="Train a model, resuming from --workdir if it holds a checkpoint. "
      "Override any gin field or macro with --gin.NAME=VALUE (e.g. --gin.TRAIN_STEPS=100).")
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file(s), applied in order; e.g. gin_configs/runs/quickstart.gin")
  parser.add_argument("--workdir", required=True, help="run directory (created if missing)")
  return parser


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
  except (gin_config.GinConfigError, ValueError, SyntaxError, OSError) as e:
    print(f"llmjax train: {e}", file=sys.stderr)
    return 2
  _quiet_library_logs()
  from llmjax.training.loop import train  # After config errors, which need no jax.

  try:
    train(**configs, workdir=args.workdir, operative_config=gin_config.operative_config())
  except ValueError as e:
    # Config checks (mesh vs devices, vocab, resume compatibility) raise ValueError before
    # anything is compiled or written; their message is the whole story, a traceback is noise.
    print(f"llmjax train: {e}", file=sys.stderr)
    return 2
  return 0
