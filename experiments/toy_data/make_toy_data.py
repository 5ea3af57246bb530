"""Writes small, generated JSONL datasets for the classification and seq2seq run configs.

  python experiments/toy_data/make_toy_data.py --task=sentiment --output=data/sentiment
  python experiments/toy_data/make_toy_data.py --task=reverse --output=data/reverse

Nothing is downloaded: the examples are built from word lists below with a seeded RNG, so
every machine writes the same files. Each task writes train.jsonl and validation.jsonl.

- sentiment: {"text": "...", "label": 0|1}: templated reviews whose label is carried by
  positive / negative words (clearly separable; a fine-tune should reach ~100% accuracy).
- reverse: {"input": "a b c", "target": "c b a"}: reverse a short sequence of words.
"""

from __future__ import annotations

import argparse
import json
import os
import random

_POSITIVE = ("great", "wonderful", "excellent", "delightful", "superb", "lovely", "brilliant",
             "fantastic", "charming", "moving")
_NEGATIVE = ("awful", "terrible", "boring", "dreadful", "clumsy", "tedious", "painful",
             "dull", "weak", "messy")
_NOUNS = ("film", "book", "album", "play", "show", "novel", "story", "game", "meal", "concert")
_TEMPLATES = ("the {noun} was {adj}", "what a {adj} {noun}", "i found the {noun} {adj}",
              "a {adj} {noun} , really {adj}", "honestly the {noun} felt {adj} to me",
              "my friends said the {noun} was {adj} and i agree")
_WORDS = ("red", "green", "blue", "cat", "dog", "tree", "river", "stone", "cloud", "light",
          "north", "south", "one", "two", "three", "four")


def sentiment(rng: random.Random) -> dict:
  label = rng.randrange(2)
  adj = rng.choice(_POSITIVE if label else _NEGATIVE)
  text = rng.choice(_TEMPLATES).format(noun=rng.choice(_NOUNS), adj=adj)
  return {"text": text, "label": label}


def reverse(rng: random.Random) -> dict:
  words = [rng.choice(_WORDS) for _ in range(rng.randint(2, 8))]
  return {"input": " ".join(words), "target": " ".join(reversed(words))}


TASKS = {"sentiment": sentiment, "reverse": reverse}


def write(task: str, output: str, num_train: int, num_eval: int, seed: int) -> list[str]:
  """Writes OUTPUT/train.jsonl and OUTPUT/validation.jsonl; returns their paths."""
  rng = random.Random(seed)
  os.makedirs(output, exist_ok=True)
  paths = []
  for split, count in (("train", num_train), ("validation", num_eval)):
    path = os.path.join(output, f"{split}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
      for _ in range(count):
        f.write(json.dumps(TASKS[task](rng)) + "\n")
    paths.append(path)
  return paths


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--task", choices=sorted(TASKS), required=True)
  parser.add_argument("--output", required=True, help="directory for the .jsonl files")
  parser.add_argument("--num_train", type=int, default=4000)
  parser.add_argument("--num_eval", type=int, default=400)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  for path in write(args.task, args.output, args.num_train, args.num_eval, args.seed):
    print(path)


if __name__ == "__main__":
  main()
