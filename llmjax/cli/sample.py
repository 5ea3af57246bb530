"""`llmjax sample`: print completions (or fill-mask candidates) from a trained workdir."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

MODES = ("generate", "fill_mask")
DEFAULT_FILL_MASK_TOP_K = 5
DEFAULT_TEMPERATURE = 0.8  # When sampling; beam search takes none (it ranks by log-probs).


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="llmjax sample",
                                   description="Print completions from a trained workdir.")
  parser.add_argument("--workdir", required=True, help="a directory written by `llmjax train`")
  parser.add_argument("--step", type=int, default=None,
                      help="the checkpoint step to load (default: the newest)")
  prompts = parser.add_mutually_exclusive_group()
  prompts.add_argument("--prompt", default=None,
                       help="prompt text ('' = start of a document); encoder_decoder: the "
                       "encoder input (<extra_id_i> = sentinel i); fill_mask: text with [MASK]")
  prompts.add_argument("--prompt_file", default=None, help="a file with one prompt per line")
  prompts.add_argument("--prompt_ids", default=None,
                       help="token ids, e.g. 1,450,3186 (prints ids; for models converted "
                       "without a SentencePiece tokenizer); encoder_decoder: the encoder input")
  parser.add_argument("--mode", choices=MODES, default="generate",
                      help="generate (decoder / encoder_decoder) or fill_mask (MLM encoder)")
  parser.add_argument("--max_new_tokens", type=int, default=128)
  parser.add_argument("--temperature", type=float, default=None,
                      help=f"0 = greedy (default {DEFAULT_TEMPERATURE}; not with --num_beams)")
  parser.add_argument("--top_k", type=int, default=0,
                      help=f"0 = off; fill_mask: candidates per mask (0 = "
                      f"{DEFAULT_FILL_MASK_TOP_K})")
  parser.add_argument("--top_p", type=float, default=1.0, help="1.0 = off")
  parser.add_argument("--seed", type=int, default=0, help="in [0, 2**32)")
  parser.add_argument("--num_samples", type=int, default=1,
                      help="completions per prompt (with --num_beams > 1: the n best beams)")
  parser.add_argument("--num_beams", type=int, default=1,
                      help="> 1: beam search (deterministic: takes no temperature, top_k, "
                      "top_p; ignores seed)")
  parser.add_argument("--length_penalty", type=float, default=1.0,
                      help="beam search GNMT alpha: score = log_prob / ((5 + len) / 6) ** alpha")
  return parser


def _read_prompts(args: argparse.Namespace) -> list[str]:
  if args.prompt_file is None:
    return [args.prompt or ""]
  path = Path(args.prompt_file)
  fix = "give a UTF-8 text file with one prompt per line, or pass --prompt=TEXT"
  if not path.is_file():
    what = "is a directory" if path.is_dir() else "does not exist"
    raise ValueError(f"--prompt_file={path} {what}: {fix}.")
  # One prompt per line; a literal \n inside a line stands for a newline in the prompt.
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f"--prompt_file={path} is not UTF-8 text (byte {e.start}): {fix}.") from None
  prompts = [line.replace("\\n", "\n") for line in lines if line.strip()]
  if not prompts:
    raise ValueError(f"--prompt_file={path} holds no non-empty lines: {fix}.")
  return prompts


def _print_fill_mask(prompts: list[str], results: list) -> None:
  for i, (prompt, masks) in enumerate(zip(prompts, results, strict=True)):
    print(f"=== prompt {i + 1} ===")
    print(prompt)
    for m, candidates in enumerate(masks):
      print(f"[MASK] {m + 1}:")
      for text, prob in candidates:
        print(f"  {prob:.4f}  {text!r}")  # repr: whitespace tokens stay visible.


def _settings(args: argparse.Namespace):
  """The sampling flags as a validated SamplingParams (before any model is loaded); None in
  fill_mask mode.

  Raises:
    ValueError: a flag out of range or flags that do not go together (the message names them).
  """
  from llmjax.sampling.params import SamplingParams

  if args.mode == "fill_mask":
    if args.prompt_ids is not None:
      raise ValueError("--mode=fill_mask reads text: pass --prompt='... [MASK] ...' instead of "
                       "--prompt_ids.")
    return None
  temperature = args.temperature
  if temperature is None:  # Beam search takes no temperature; sampling defaults to 0.8.
    temperature = 1.0 if args.num_beams > 1 else DEFAULT_TEMPERATURE
  if args.prompt_ids is not None and args.num_beams != 1:
    raise ValueError(f"--prompt_ids samples only; it does not run beam search "
                     f"(--num_beams={args.num_beams}): drop --num_beams or use --prompt.")
  return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=temperature,
                        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                        num_samples=args.num_samples, num_beams=args.num_beams,
                        length_penalty=args.length_penalty)


def _sample_ids(model, args: argparse.Namespace, settings) -> int:
  """Prints the generated ids of an id prompt, one completion per line."""
  try:
    ids = [int(x) for x in args.prompt_ids.replace(" ", "").split(",") if x]
  except ValueError:
    raise ValueError(f"--prompt_ids={args.prompt_ids!r}: write comma-separated integers, e.g. "
                     "--prompt_ids=1,450,3186.") from None
  if not ids:
    raise ValueError("--prompt_ids is empty.")
  completions = model.generate_ids(
      [ids] * settings.num_samples, max_new_tokens=settings.max_new_tokens,
      temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
      seed=settings.seed)
  for completion in completions:
    print(",".join(map(str, completion)))
  return 0


def main(argv: list[str]) -> int:
  """Loads the workdir and prints `num_samples` completions per prompt (or fill-mask tops)."""
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # argparse: --help (0) or a bad flag (2, its message printed).
    return int(e.code or 0)
  try:
    prompts = _read_prompts(args)
    # Checked before loading: a bad flag costs no checkpoint read.
    settings = _settings(args)
    import llmjax

    model = llmjax.load(args.workdir, step=args.step)
    if args.prompt_ids is not None:
      return _sample_ids(model, args, settings)
    if args.mode == "fill_mask":
      results = model.fill_mask(prompts, top_k=args.top_k or DEFAULT_FILL_MASK_TOP_K)
    else:
      completions = model.generate(prompts, **dataclasses.asdict(settings))
  except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
    print(f"llmjax sample: {e}", file=sys.stderr)
    return 2
  if args.mode == "fill_mask":
    _print_fill_mask(prompts, results)
    return 0
  # A decoder continues its prompt; an encoder_decoder's output is a new text.
  continues = not getattr(model.model, "is_encoder_decoder", False)
  per_prompt = args.num_samples
  for i, prompt in enumerate(prompts):
    for j in range(per_prompt):
      header = f"=== prompt {i + 1}" + (f", sample {j + 1}" if per_prompt > 1 else "") + " ==="
      print(header)
      completion = completions[i * per_prompt + j]
      print(prompt + completion if continues else f"{prompt}\n--> {completion}")
  return 0
