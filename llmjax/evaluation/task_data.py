"""Reading and checking the local files of evaluation tasks, before any model is loaded.

- perplexity: text files (paths or globs); each file is one document, read as UTF-8.
- multiple_choice: JSONL, one item a line: {"question": str, "choices": [str, ...] (>= 2,
  none empty), "answer": int index into choices}.
- generation: JSONL: {"prompt": str, "target": str} or {"prompt": str, "targets": [str, ...]}
  (a prediction matching any target counts).
- classification: JSONL or CSV {"text", "label"} as training reads them
  (llmjax/data/examples_file.py), labels in [0, num_classes).
Blank JSONL lines are skipped; other fields are ignored. Every problem is a ValueError that names
the file, the line and the fix.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any

from llmjax.data import tfds_text


@dataclasses.dataclass(frozen=True)
class Document:
  """A perplexity document: its path and text."""

  path: str
  text: str


@dataclasses.dataclass(frozen=True)
class ChoiceItem:
  """A multiple-choice item; `where` is "file:line" for messages."""

  question: str
  choices: tuple[str, ...]
  answer: int
  where: str


@dataclasses.dataclass(frozen=True)
class GenerationItem:
  prompt: str
  targets: tuple[str, ...]
  where: str


def resolve_paths(patterns: str | Sequence[str], flag: str = "--data") -> list[str]:
  """Globs / paths -> sorted existing non-empty files; ValueError naming `flag` otherwise."""
  try:
    return tfds_text.resolve_files(patterns)
  except ValueError as e:
    raise ValueError(f"{flag}: {e}") from None


def read_documents(patterns: str | Sequence[str]) -> list[Document]:
  """Every file the patterns match, as one UTF-8 document each (sorted by path)."""
  documents = []
  for path in resolve_paths(patterns):
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); perplexity "
                       "reads UTF-8 text: save it as UTF-8 or leave it out of --data.") from None
    documents.append(Document(path=path, text=text))
  return documents


def _jsonl_rows(path: str, example: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, object) of each non-blank line of a JSONL file."""
  if not path.endswith(".jsonl"):
    raise ValueError(f"{path}: expected a .jsonl file (one JSON object per line such as "
                     f"{example}).")
  try:
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: bad JSON ({e.msg} at column {e.colno}); each line "
                           f"must be one JSON object such as {example}.") from None
        if not isinstance(row, dict):
          raise ValueError(f"{path}:{number}: a JSON {type(row).__name__}, not an object; each "
                           f"line must be one JSON object such as {example}.")
        yield number, row
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e.reason}); save the file as UTF-8.") from None


def _string(row: dict[str, Any], field: str, where: str, *, empty_ok: bool = True) -> str:
  value = row.get(field)
  if value is None:
    raise ValueError(f"{where}: missing field {field!r} (the item has {sorted(row)}); add it.")
  if not isinstance(value, str):
    raise ValueError(f"{where}: field {field!r} is a {type(value).__name__}, not text; write it "
                     "as a JSON string.")
  if not empty_ok and not value:
    raise ValueError(f"{where}: field {field!r} is empty; give it text.")
  return value


def _strings(row: dict[str, Any], field: str, where: str, what: str) -> tuple[str, ...]:
  values = row.get(field)
  if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
    raise ValueError(f"{where}: field {field!r} must be a JSON list of strings, got "
                     f"{type(values).__name__}.")
  for i, value in enumerate(values):
    if not value:
      raise ValueError(f"{where}: {field}[{i}] is empty: {what}")
  return tuple(values)


def _read_items(patterns: str | Sequence[str], flag: str, example: str, parse) -> list:
  items = []
  for path in resolve_paths(patterns, flag):
    items.extend(parse(row, f"{path}:{n}") for n, row in _jsonl_rows(path, example))
  if not items:
    raise ValueError(f"{flag}={patterns!r} holds no items; write one JSON object per line such "
                     f"as {example}.")
  return items


_CHOICE_EXAMPLE = '{"question": "2+2=", "choices": ["3", "4"], "answer": 1}'


def _choice_item(row: dict[str, Any], where: str) -> ChoiceItem:
  question = _string(row, "question", where)
  choices = _strings(row, "choices", where,
                     "an empty choice is an empty continuation, which has no log-likelihood; "
                     "give every choice text.")
  if len(choices) < 2:
    raise ValueError(f"{where}: {len(choices)} choice(s); a multiple-choice item needs at least 2.")
  answer = row.get("answer")
  if not isinstance(answer, int) or isinstance(answer, bool):
    raise ValueError(f"{where}: answer must be the integer index of the right choice (0 .. "
                     f"{len(choices) - 1}), got {answer!r}.")
  if not 0 <= answer < len(choices):
    raise ValueError(f"{where}: answer index {answer} is out of range for {len(choices)} "
                     f"choices; it must be in [0, {len(choices)}) (0 = the first choice).")
  return ChoiceItem(question=question, choices=choices, answer=answer, where=where)


def read_choice_items(patterns: str | Sequence[str], flag: str = "--data") -> list[ChoiceItem]:
  """Multiple-choice items of JSONL files (see the module docstring)."""
  return _read_items(patterns, flag, _CHOICE_EXAMPLE, _choice_item)


_GENERATION_EXAMPLE = '{"prompt": "12+7=", "target": "19"}'


def _generation_item(row: dict[str, Any], where: str) -> GenerationItem:
  prompt = _string(row, "prompt", where)
  if "targets" in row:
    targets = _strings(row, "targets", where, "give every target text.")
    if not targets:
      raise ValueError(f"{where}: targets is an empty list; give at least one target.")
  else:
    targets = (_string(row, "target", where, empty_ok=False),)
  return GenerationItem(prompt=prompt, targets=targets, where=where)


def read_generation_items(patterns: str | Sequence[str], flag: str = "--data"
                          ) -> list[GenerationItem]:
  """Generation items of JSONL files (see the module docstring)."""
  return _read_items(patterns, flag, _GENERATION_EXAMPLE, _generation_item)


def read_classification_items(patterns: str | Sequence[str], *, num_classes: int,
                              text_field: str = "text", label_field: str = "label",
                              text_pair_field: str | None = None) -> list[dict[str, Any]]:
  """{"text", "label"} (+ "text_pair") examples of JSONL / CSV files, as training reads them
  (the field names as the run's DataConfig named them)."""
  from llmjax.data import examples_file

  items = []
  for path in resolve_paths(patterns):
    examples, _ = examples_file.read_examples(path, "classification", num_classes=num_classes,
                                              text_field=text_field, label_field=label_field,
                                              text_pair_field=text_pair_field)
    items.extend(examples)
  if not items:
    raise ValueError(f"--data={patterns!r} holds no examples; write one JSON object per line "
                     'such as {"text": "what a lovely film", "label": 1}.')
  return items

