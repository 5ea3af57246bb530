"""`llmjax sample`: print completions from a trained workdir."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="llmjax sample",
                                   description="Print completions from a trained workdir.")
  parser.add_argument("--workdir", required=True, help="a directory written by `llmjax train`")
  prompts = parser.add_mutually_exclusive_group()
  prompts.add_argument("--prompt", default=None, help="prompt text ('' = start of a document)")
  prompts.add_argument("--prompt_file", default=None, help="a file with one prompt per line")
  parser.add_argument("--max_new_tokens", type=int, default=128)
  parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  parser.add_argument("--top_k", type=int, default=0, help="0 = off")
  parser.add_argument("--top_p", type=float, default=1.0, help="1.0 = off")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_samples", type=int, default=1, help="completions per prompt")
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


def main(argv: list[str]) -> int:
  """Loads the workdir and prints `num_samples` completions per prompt."""
  args = _parser().parse_args(argv)
  try:
    prompts = _read_prompts(args)
    import llmjax

    model = llmjax.load(args.workdir)
    completions = model.generate(
        prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, num_samples=args.num_samples)
  except (ValueError, FileNotFoundError) as e:
    print(f"llmjax sample: {e}", file=sys.stderr)
    return 2
  per_prompt = args.num_samples
  for i, prompt in enumerate(prompts):
    for j in range(per_prompt):
      header = f"=== prompt {i + 1}" + (f", sample {j + 1}" if per_prompt > 1 else "") + " ==="
      print(header)
      print(prompt + completions[i * per_prompt + j])
  return 0
