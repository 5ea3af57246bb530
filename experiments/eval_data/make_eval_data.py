"""Writes small evaluation sets for every `llmjax eval` task kind; nothing is downloaded.

  python experiments/eval_data/make_eval_data.py --output=data/eval

writes, deterministically for a given Python installation (the stdlib sets come from its
files):

  next_line.jsonl       multiple_choice: "which line really comes next": 8 lines of a held-out
                        stdlib file as the question, its true next line and 3 distractor lines
                        drawn (seeded) from other held-out files as choices.
  text/*.py             perplexity: 8 held-out stdlib files, copied.
  self_assign.jsonl     generation: "...self.a = a\\n        self.b =" -> "b" (copying a name
                        from the signature, which a model trained on Python source can learn).
  arithmetic.jsonl      generation: "12+7=" -> "19" (for fine-tuned models; a model trained
                        only on source code scores ~0).
  sentiment/            classification: make_toy_data.py's sentiment train.jsonl and
                        validation.jsonl (train gin_configs/runs/classify.gin on train.jsonl).

"Held out" means the files the quickstart never trains on: the validation files of the
stdlib corpus's split (llmjax/data/tfds_text.plan_split with DataConfig's default
eval_fraction=0.05), so the stdlib sets measure held-out quality of the quickstart model.
Minified or generated-looking files (encodings/ code tables, pydoc_data/topics.py) and files
under 2 KB or over 60 KB are left out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil

from llmjax.data import tfds_text

EVAL_FRACTION = 0.05  # DataConfig.eval_fraction's default, which the quickstart uses.
CONTEXT_LINES = 8
NUM_CHOICES = 4
_SKIP = (os.sep + "encodings" + os.sep, os.sep + "pydoc_data" + os.sep)
_NAMES = ("name", "value", "path", "size", "parent", "timeout", "count", "data", "key", "mode",
          "level", "callback", "buffer", "offset", "encoding", "handler", "index", "limit",
          "prefix", "source", "target", "width", "height", "owner", "flags", "config")
_CLASSES = ("Node", "Entry", "Record", "Reader", "Writer", "Handler", "Item", "Task", "Job",
            "Config", "Frame", "Token")


def held_out_files() -> list[str]:
  """The quickstart's held-out stdlib files that look like ordinary source, sorted."""
  split = tfds_text.plan_split(tfds_text.stdlib_files(), EVAL_FRACTION)
  return [f for f in split.validation_files
          if not any(s in f for s in _SKIP) and 2_000 <= os.path.getsize(f) <= 60_000]


def _lines(path: str) -> list[str]:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read().splitlines()


def _good_line(line: str) -> bool:
  return 10 <= len(line.strip()) and len(line) <= 80


def next_line_items(files: list[str], num_items: int, rng: random.Random) -> list[dict]:
  """Multiple-choice items: 8 lines of context, the true next line among 3 distractors."""
  lines = {f: _lines(f) for f in files}
  candidates = [(f, i) for f in files for i in range(CONTEXT_LINES, len(lines[f]))
                if _good_line(lines[f][i])]
  distractor_pool = {f: [line for line in lines[f] if _good_line(line)] for f in files}
  items = []
  for f, i in sorted(rng.sample(candidates, num_items)):
    true = lines[f][i]
    others = [g for g in files if g != f]
    distractors: list[str] = []
    while len(distractors) < NUM_CHOICES - 1:
      line = rng.choice(distractor_pool[rng.choice(others)])
      if line.strip() != true.strip() and line not in distractors:
        distractors.append(line)
    choices = [true, *distractors]
    rng.shuffle(choices)
    items.append({"question": "\n".join(lines[f][i - CONTEXT_LINES:i]), "choices": choices,
                  "answer": choices.index(true),
                  "source": f"{os.path.relpath(f, os.path.dirname(os.__file__))}:{i + 1}"})
  return items


def self_assign_items(num_items: int, rng: random.Random) -> list[dict]:
  items = []
  for _ in range(num_items):
    a, b = rng.sample(_NAMES, 2)
    prompt = (f"class {rng.choice(_CLASSES)}:\n\n    def __init__(self, {a}, {b}):\n"
              f"        self.{a} = {a}\n        self.{b} =")
    items.append({"prompt": prompt, "target": b})
  return items


def arithmetic_items(num_items: int, rng: random.Random) -> list[dict]:
  items = []
  for _ in range(num_items):
    a, b = rng.randrange(100), rng.randrange(100)
    items.append({"prompt": f"{a}+{b}=", "target": str(a + b)})
  return items


def _write_jsonl(path: str, rows: list[dict]) -> str:
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return path


def _toy_data_module():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toy_data",
                      "make_toy_data.py")
  spec = importlib.util.spec_from_file_location("make_toy_data", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_all(output: str, *, seed: int = 0, num_next_line: int = 200,
              num_generation: int = 100, num_text_files: int = 8) -> list[str]:
  """Writes every set under `output` (see the module docstring); returns the paths."""
  os.makedirs(output, exist_ok=True)
  files = held_out_files()
  if len(files) < num_text_files:
    raise SystemExit(f"only {len(files)} held-out stdlib files qualify; need {num_text_files}.")
  paths = [_write_jsonl(os.path.join(output, "next_line.jsonl"),
                        next_line_items(files, num_next_line, random.Random(seed)))]
  text_dir = os.path.join(output, "text")
  shutil.rmtree(text_dir, ignore_errors=True)
  os.makedirs(text_dir)
  root = os.path.dirname(os.__file__)
  for f in sorted(random.Random(seed + 1).sample(files, num_text_files)):
    target = os.path.join(text_dir, os.path.relpath(f, root).replace(os.sep, "__"))
    shutil.copyfile(f, target)
    paths.append(target)
  paths.append(_write_jsonl(os.path.join(output, "self_assign.jsonl"),
                            self_assign_items(num_generation, random.Random(seed + 2))))
  paths.append(_write_jsonl(os.path.join(output, "arithmetic.jsonl"),
                            arithmetic_items(num_generation, random.Random(seed + 3))))
  paths.extend(_toy_data_module().write("sentiment", os.path.join(output, "sentiment"),
                                        num_train=4000, num_eval=400, seed=seed))
  return paths


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--output", default="data/eval", help="directory for the sets")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  for path in write_all(args.output, seed=args.seed):
    print(path)


if __name__ == "__main__":
  main()
