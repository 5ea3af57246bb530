"""The `llmjax` command: one thin subcommand module per verb over the library.

This package is the only place that imports gin (DESIGN.md, principle 2).
"""

from __future__ import annotations

import sys

_USAGE = """usage: llmjax <command> [flags]

commands:
  train       train (or resume) a model:  llmjax train --gin_file=F --workdir=DIR [--gin.NAME=VALUE]
  sample      print completions:          llmjax sample --workdir=DIR --prompt=TEXT
  eval        score on a local task:      llmjax eval --workdir=DIR --task=KIND --data=PATH
                                          (perplexity|multiple_choice|generation|classification)
  plan        will it fit? (no hardware): llmjax plan --gin_file=F --mesh=fsdp:8 --device=h100
  shardings   every parameter's layout:   llmjax shardings --gin_file=F --mesh=fsdp:4,tensor:2
  tokenizer   tokenizer tools:            llmjax tokenizer train --text_files=GLOB --output=DIR
  convert     Hugging Face checkpoints:   llmjax convert --from_hf=HF_DIR --workdir=OUT
                                          llmjax convert --to_hf --workdir=W --out=HF_DIR

Run `llmjax <command> --help` for the flags of one command.
"""


def enable_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache for the train and sample commands.

  Programs that took over half a second to compile are stored in
  $LLMJAX_COMPILATION_CACHE_DIR (default ~/.cache/llmjax/jax_compilation; 'off' disables it),
  so a second `llmjax sample` or a resumed `llmjax train` skips XLA compilation: the first
  token comes in well under the ~2 s a cold decode compile takes on a CPU.
  Returns the directory, or None when disabled.
  """
  import os
  path = os.environ.get("LLMJAX_COMPILATION_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "llmjax", "jax_compilation")
  if path.lower() == "off":
    return None
  import jax
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


def main(argv: list[str] | None = None) -> int:
  """Entry point of the `llmjax` console script."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_USAGE)
    return 0
  command, rest = argv[0], argv[1:]
  if command in ("train", "sample", "eval"):
    enable_compilation_cache()
  # Imported lazily so `llmjax --help` and typos answer without importing jax.
  if command == "train":
    from llmjax.cli import train
    return train.main(rest)
  if command == "sample":
    from llmjax.cli import sample
    return sample.main(rest)
  if command == "eval":
    from llmjax.cli import eval as eval_cli
    return eval_cli.main(rest)
  if command == "plan":
    from llmjax.cli import plan
    return plan.main(rest)
  if command == "shardings":
    from llmjax.cli import shardings
    return shardings.main(rest)
  if command == "tokenizer":
    from llmjax.cli import tokenizer
    return tokenizer.main(rest)
  if command == "convert":
    from llmjax.cli import convert
    return convert.main(rest)
  print(f"llmjax: unknown command {command!r}.\n\n{_USAGE}", file=sys.stderr)
  return 2
