"""`llmjax sample`: print completions (or fill-mask candidates) from a trained workdir."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODES = ("generate", "fill_mask")
DEFAULT_FILL_MASK_TOP_K = 5


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="llmjax sample",
                                   description="Print completions from a trained workdir.")
  parser.add_argument("--workdir", required=True, help="a directory written by `llmjax train`")
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
  parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  parser.add_argument("--top_k", type=int, default=0,
                      help=f"0 = off; fill_mask: candidates per mask (0 = "
                      f"{DEFAULT_FILL_MASK_TOP_K})")
  parser.add_argument("--top_p", type=float, default=1.0, help="1.0 = off")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_samples", type=int, default=1,
                      help="completions per prompt (with --num_beams > 1: the n best beams)")
  parser.add_argument("--num_beams", type=int, default=1,
                      help="> 1: beam search (deterministic; ignores temperature/top_k/top_p/seed)")
  parser.add_argument("--length_penalty", type=float, default=1.0,
                      help="beam search GNMT alpha: score = log_prob / ((5 + len) / 6) ** alpha")
  return parser


def _read_prompts(args: argparse.Namespace) -> list[str]:
  if args.prompt_file is None:
    return [args.prompt or ""]
  path = Path(args.prompt_file)
  if not path.is_file():
    raise ValueError(f"--prompt_file={path} does not exist.")
  # One prompt per line; a literal \n inside a line stands for a newline in the prompt.
  lines = path.read_text(encoding="utf-8").splitlines()
  prompts = [line.replace("\\n", "\n") for line in lines if line.strip()]
  if not prompts:
    raise ValueError(f"--prompt_file={path} holds no non-empty lines.")
  return prompts


def _print_fill_mask(prompts: list[str], results: list) -> None:
  for i, (prompt, masks) in enumerate(zip(prompts, results, strict=True)):
    print(f"=== prompt {i + 1} ===")
    print(prompt)
    for m, candidates in enumerate(masks):
      print(f"[MASK] {m + 1}:")
      for text, prob in candidates:
        print(f"  {prob:.4f}  {text!r}")  # repr: whitespace tokens stay visible.


def _sample_ids(model, args: argparse.Namespace) -> int:
  """Prints the generated ids of an id prompt, one completion per line."""
  try:
    ids = [int(x) for x in args.prompt_ids.replace(" ", "").split(",") if x]
  except ValueError:
    raise ValueError(f"--prompt_ids={args.prompt_ids!r}: write comma-separated integers, e.g. "
                     "--prompt_ids=1,450,3186.") from None
  if not ids:
    raise ValueError("--prompt_ids is empty.")
  completions = model.generate_ids(
      [ids] * args.num_samples, max_new_tokens=args.max_new_tokens,
      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
  for completion in completions:
    print(",".join(map(str, completion)))
  return 0


def main(argv: list[str]) -> int:
  """Loads the workdir and prints `num_samples` completions per prompt (or fill-mask tops)."""
  args = _parser().parse_args(argv)
  try:
    prompts = _read_prompts(args)
    import llmjax

    model = llmjax.load(args.workdir)
    if args.prompt_ids is not None:
      return _sample_ids(model, args)
    if args.mode == "fill_mask":
      results = model.fill_mask(prompts, top_k=args.top_k or DEFAULT_FILL_MASK_TOP_K)
    else:
      completions = model.generate(
          prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
          top_k=args.top_k, top_p=args.top_p, seed=args.seed, num_samples=args.num_samples,
          num_beams=args.num_beams, length_penalty=args.length_penalty)
  except (ValueError, FileNotFoundError) as e:
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
