"""`llmjax tokenizer train`: build a tokenizer once, ahead of the runs that share it.

It trains exactly what a run would train from the same DataConfig (same text, same seeded
order), so `--gin.DataConfig.tokenizer_dir=DIR` in a run reproduces an auto-trained tokenizer.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="llmjax tokenizer")
  verbs = parser.add_subparsers(dest="verb", required=True)
  train = verbs.add_parser(
      "train", help="train a tokenizer on local text files and save it to --output",
      description="Train a lossless SentencePiece (or set up a byte-level) tokenizer and save "
      "it to --output; use it in a run with --gin.DataConfig.tokenizer_dir=OUTPUT.")
  train.add_argument("--text_files", action="append", default=None,
                     help="glob or path of text files (repeatable); default: the Python "
                     "standard library's sources")
  train.add_argument("--output", required=True, help="directory to save the tokenizer in")
  train.add_argument("--kind", choices=("sentencepiece", "byte"), default="sentencepiece")
  train.add_argument("--vocab_size", type=int, default=4096)
  train.add_argument("--max_text_mb", type=float, default=8.0,
                     help="megabytes of text the SentencePiece trainer reads")
  train.add_argument("--eval_fraction", type=float, default=0.05,
                     help="share of files held out (as in a run's DataConfig); the tokenizer "
                     "trains on the rest and its compression is reported on the held-out files")
  train.add_argument("--seed", type=int, default=0, help="document order for training")
  train.add_argument("--overwrite", action="store_true",
                     help="replace a tokenizer already saved in --output")
  return parser


def _train(args: argparse.Namespace) -> int:
  import absl.logging
  import tensorflow_datasets as tfds

  from llmjax.data import pipeline
  from llmjax.data import tokenizer as tokenizer_lib

  # As in `llmjax train`: TFDS's progress bars and notices say nothing a user acts on.
  absl.logging.set_verbosity(absl.logging.ERROR)
  tfds.disable_progress_bar()

  config_path = os.path.join(args.output, tokenizer_lib.CONFIG_FILE)
  if os.path.exists(config_path) and not args.overwrite:
    raise ValueError(f"{args.output} already holds a tokenizer; pass --overwrite to replace it "
                     "or choose another --output.")
  data_cfg = pipeline.DataConfig(
      text_files=tuple(args.text_files) if args.text_files else None, tokenizer=args.kind,
      vocab_size=args.vocab_size, max_train_text_mb=args.max_text_mb,
      eval_fraction=args.eval_fraction, seed=args.seed)
  train_source, eval_source, _ = pipeline.prepare_dataset(data_cfg)
  tok = pipeline.get_or_train_tokenizer(data_cfg, train_source, tokenizer_dir=None)
  tok.save(args.output)  # Atomic per file (tokenizer.py), so an interrupted save is not loaded.
  print(f"saved a {tok.kind} tokenizer with {tok.vocab_size} tokens to {args.output}")
  held_out = eval_source if eval_source is not None else train_source
  texts = [pipeline.document_text(held_out[i], data_cfg.text_feature)
           for i in range(min(len(held_out), 50))]
  num_bytes = sum(len(t.encode("utf-8")) for t in texts)
  num_tokens = sum(len(tok.encode(t)) for t in texts)
  lossless = all(tok.decode(tok.encode(t)) == t for t in texts)
  print(f"{'held-out' if eval_source is not None else 'training'} text: "
        f"{num_bytes / max(num_tokens, 1):.2f} bytes/token over {len(texts)} documents; "
        f"round trip {'exact' if lossless else 'NOT exact'}")
  return 0


def main(argv: list[str]) -> int:
  """Dispatches `llmjax tokenizer <verb>`; returns the process exit code."""
  args = _parser().parse_args(argv)
  try:
    return _train(args)
  except (ValueError, OSError) as e:  # Bad data, a missing file, an unwritable --output.
    print(f"llmjax tokenizer: {e}", file=sys.stderr)
    return 2
