"""Local JSONL / CSV example files for classification and seq2seq fine-tuning.

A `.jsonl` file holds one JSON object per line (blank lines are skipped); a `.csv` file has a
header row naming the columns. Each example needs the objective's fields:
classification: a text field (and, for sentence pairs, a second one) and an integer label in
[0, num_classes); seq2seq: an input and a target text field. Examples come back as
random-access lists of dicts with canonical keys ({"text", "label"}, plus "text_pair" for
pairs, or {"input", "target"}), so the rest of the pipeline does not care which field names
the file used. Every problem is a ValueError naming the file, the line and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

EXTENSIONS = (".jsonl", ".csv")
FILE_OBJECTIVES = ("classification", "seq2seq")


def _rows(path: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
  """(line number, line text, row) of every example in the file."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in EXTENSIONS:
    raise ValueError(f"{path}: unknown example file type {ext!r}; use .jsonl (one JSON object "
                     "per line) or .csv (with a header row).")
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file; set DataConfig.train_file / eval_file to an "
                     "existing .jsonl or .csv file.")
  with open(path, encoding="utf-8", newline="" if ext == ".csv" else None) as f:
    if ext == ".jsonl":
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: bad JSON ({e.msg} at column {e.colno}); each "
                           "line must be one JSON object such as {\"text\": ..., ...}.") from e
        if not isinstance(row, dict):
          raise ValueError(f"{path}:{number}: a JSON {type(row).__name__}, not an object; each "
                           "line must be one JSON object such as {\"text\": ..., ...}.")
        yield number, line.rstrip("\r\n"), row
    else:
      reader = csv.DictReader(f)
      if reader.fieldnames is None:
        return
      for row in reader:
        yield reader.line_num, "\x1f".join(str(v) for v in row.values()), row


def _checked_rows(path: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
  """_rows, with invalid UTF-8 reported by file (the decoder's own message names neither)."""
  try:
    yield from _rows(path)
  except UnicodeDecodeError as e:
    with open(path, "rb") as f:  # The first line that does not decode.
      number = next((n for n, raw in enumerate(f, start=1) if not _decodes(raw)), 0)
    raise ValueError(f"{path}:{number}: not UTF-8 text ({e.reason}); save the file as "
                     "UTF-8.") from e


def _decodes(raw: bytes) -> bool:
  try:
    raw.decode("utf-8")
    return True
  except UnicodeDecodeError:
    return False


def _text(path: str, number: int, row: dict[str, Any], field: str, setting: str) -> str:
  value = row.get(field)
  if value is None:
    raise ValueError(f"{path}:{number}: missing field {field!r} (the row has {sorted(row)}); add "
                     f"it or set DataConfig.{setting} to the field that holds it.")
  if not isinstance(value, str):
    raise ValueError(f"{path}:{number}: field {field!r} is a {type(value).__name__}, not text; "
                     "write it as a string.")
  return value


def _label(path: str, number: int, row: dict[str, Any], field: str, num_classes: int) -> int:
  value = row.get(field)
  if value is None:
    raise ValueError(f"{path}:{number}: missing field {field!r} (the row has {sorted(row)}); add "
                     "the label or set DataConfig.label_field to the field that holds it.")
  label = None
  if isinstance(value, int) and not isinstance(value, bool):
    label = value
  elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
    label = int(value)
  if label is None or not 0 <= label < num_classes:
    raise ValueError(f"{path}:{number}: label {value!r} is not an integer in [0, {num_classes}); "
                     "labels must be class indices 0..num_classes-1 (map names to indices, or "
                     "raise DataConfig.num_classes).")
  return label


def read_examples(path: str, objective: str, *, text_field: str = "text",
                  label_field: str = "label", input_field: str = "input",
                  target_field: str = "target", text_pair_field: str | None = None,
                  num_classes: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
  """Reads and validates every example of a .jsonl / .csv file.

  Args:
    path: the file.
    objective: "classification" or "seq2seq".
    text_field / label_field: classification fields.
    text_pair_field: classification of sentence pairs: the second text's field (None: one).
    input_field / target_field: seq2seq fields.
    num_classes: classification labels must be in [0, num_classes).

  Returns:
    (examples, keys): examples as {"text": str, "label": int} (+ "text_pair": str) or
    {"input": str, "target": str} in file order, and each example's line text (what the eval
    hold-out hashes).

  Raises:
    ValueError: unknown extension, missing file, bad JSON, missing field, bad label, or no
      examples; the message names the file, the line and the fix.
  """
  if objective not in FILE_OBJECTIVES:
    raise ValueError(f"objective {objective!r} does not read example files; use one of "
                     f"{FILE_OBJECTIVES}.")
  if objective == "classification" and (num_classes is None or num_classes < 2):
    raise ValueError(f"classification needs num_classes >= 2, got {num_classes}; set "
                     "DataConfig.num_classes.")
  examples, keys = [], []
  for number, line, row in _checked_rows(path):
    if objective == "classification":
      example = {"text": _text(path, number, row, text_field, "text_field"),
                 "label": _label(path, number, row, label_field, num_classes)}
      if text_pair_field is not None:
        example["text_pair"] = _text(path, number, row, text_pair_field, "text_pair_field")
      examples.append(example)
    else:
      examples.append({"input": _text(path, number, row, input_field, "input_field"),
                       "target": _text(path, number, row, target_field, "target_field")})
    keys.append(line)
  if not examples:
    raise ValueError(f"{path}: the file holds no examples; write one example per line (.jsonl) "
                     "or rows under a header row (.csv).")
  return examples, keys


def holdout_score(key: str, seed: int) -> float:
  """A uniform [0, 1) score from a seeded hash of an example's line text."""
  digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8", errors="surrogatepass")).hexdigest()
  return int(digest[:15], 16) / 16**15


def load_example_files(train_file: str, eval_file: str | None, objective: str, *,
                       eval_fraction: float, seed: int, **fields: Any
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None,
                                  dict[str, Any]]:
  """The (train, eval or None, stats) example lists of a file objective.

  With eval_file None, examples whose holdout_score(line, seed) < eval_fraction are held out
  for evaluation (at least one when there are two or more examples and eval_fraction > 0).
  `fields` are read_examples' field and num_classes arguments.
  """
  train, keys = read_examples(train_file, objective, **fields)
  valid: list[dict[str, Any]] | None = None
  if eval_file is not None:
    valid, _ = read_examples(eval_file, objective, **fields)
  elif eval_fraction > 0 and len(train) >= 2:
    scores = [holdout_score(k, seed) for k in keys]
    held = {i for i, s in enumerate(scores) if s < eval_fraction}
    if not held:  # Small files: hold out the example with the lowest score.
      held = {min(range(len(scores)), key=scores.__getitem__)}
    if len(held) == len(train):
      held.discard(max(held, key=scores.__getitem__))
    valid = [e for i, e in enumerate(train) if i in held]
    train = [e for i, e in enumerate(train) if i not in held]
  stats = {"train_file": train_file, "eval_file": eval_file,
           "num_train_examples": len(train),
           "num_validation_examples": len(valid) if valid is not None else 0}
  return train, valid, stats
