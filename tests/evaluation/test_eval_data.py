"""experiments/eval_data/make_eval_data.py: deterministic, held out, and readable by the tasks."""

import filecmp
import importlib.util
import json
import os

import pytest

from llmjax.data import tfds_text
from llmjax.evaluation import task_data

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "eval_data",
                       "make_eval_data.py")


@pytest.fixture(scope="module")
def script():
  spec = importlib.util.spec_from_file_location("make_eval_data", _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_eval_sets_are_deterministic_held_out_and_valid(script, tmp_path):
  kwargs = dict(num_next_line=20, num_generation=5, num_text_files=2)
  first = script.write_all(str(tmp_path / "a"), **kwargs)
  second = script.write_all(str(tmp_path / "b"), **kwargs)
  assert [os.path.relpath(p, tmp_path / "a") for p in first] == [
      os.path.relpath(p, tmp_path / "b") for p in second]
  assert all(filecmp.cmp(p, q, shallow=False) for p, q in zip(first, second, strict=True))

  held_out = set(tfds_text.plan_split(tfds_text.stdlib_files(), 0.05).validation_files)
  root = os.path.dirname(os.__file__)
  items = task_data.read_choice_items(str(tmp_path / "a" / "next_line.jsonl"))
  assert len(items) == 20
  with open(tmp_path / "a" / "next_line.jsonl", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  for item, row in zip(items, rows, strict=True):
    path, line = row["source"].rsplit(":", 1)
    source = os.path.join(root, path)
    assert source in held_out
    with open(source, encoding="utf-8", errors="replace") as f:
      lines = f.read().splitlines()
    # The answer is the line that follows the question's 8 lines in the file.
    assert item.choices[item.answer] == lines[int(line) - 1]
    assert item.question == "\n".join(lines[int(line) - 9:int(line) - 1])
    assert len(set(item.choices)) == 4
  for name in ("self_assign.jsonl", "arithmetic.jsonl"):
    assert len(task_data.read_generation_items(str(tmp_path / "a" / name))) == 5
  assert len(task_data.read_documents(str(tmp_path / "a" / "text" / "*.py"))) == 2
