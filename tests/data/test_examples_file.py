"""JSONL / CSV example files: parsing, validation errors that name file + line, eval hold-out."""

import json

import pytest

from llmjax.data import examples_file


def _write(path, text):
  path.write_text(text, encoding="utf-8")
  return str(path)


def test_good_jsonl_and_csv_give_the_same_examples(tmp_path):
  rows = [{"sentence": "good film", "y": 1}, {"sentence": "bad, \"awful\"", "y": 0}]
  jl = _write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
  csv = _write(tmp_path / "a.csv", 'sentence,y\ngood film,1\n"bad, ""awful""",0\n')
  kw = dict(text_field="sentence", label_field="y", num_classes=2)
  a, keys = examples_file.read_examples(jl, "classification", **kw)
  b, _ = examples_file.read_examples(csv, "classification", **kw)
  assert a == b == [{"text": "good film", "label": 1}, {"text": 'bad, "awful"', "label": 0}]
  assert keys[0] == json.dumps(rows[0])
  s2s = _write(tmp_path / "s.csv", "input,target,extra\nab,ba,x\n")
  assert examples_file.read_examples(s2s, "seq2seq")[0] == [{"input": "ab", "target": "ba"}]


@pytest.mark.parametrize("name,text,line,fix", [
    ("missing.jsonl", '{"text": "a", "label": 0}\n{"text": "b"}\n', 2, "label_field"),
    ("missing.csv", "text,label\na,0\nb,1\nc,\n", 4, "label"),
    ("range.jsonl", '{"text": "a", "label": 3}\n', 1, "num_classes"),
    ("negative.csv", "text,label\na,-1\n", 2, "0..num_classes-1"),
    ("notint.jsonl", '{"text": "a", "label": 0}\n\n{"text": "a", "label": "pos"}\n', 3,
     "class indices"),
    ("float.jsonl", '{"text": "a", "label": 1.5}\n', 1, "class indices"),
    ("bool.jsonl", '{"text": "a", "label": true}\n', 1, "class indices"),
    ("badjson.jsonl", '{"text": "a", "label": 0}\n{"text": "a", label: 0}\n', 2, "JSON object"),
    ("array.jsonl", '[1, 2]\n', 1, "JSON object"),
    ("nottext.jsonl", '{"text": 5, "label": 0}\n', 1, "string"),
    ("notext.jsonl", '{"txt": "a", "label": 0}\n', 1, "DataConfig.text_field"),
])
def test_bad_classification_rows_name_file_line_and_fix(tmp_path, name, text, line, fix):
  path = _write(tmp_path / name, text)
  with pytest.raises(ValueError) as e:
    examples_file.read_examples(path, "classification", num_classes=3)
  assert f"{path}:{line}:" in str(e.value) and fix in str(e.value)


def test_missing_seq2seq_field_names_the_setting(tmp_path):
  path = _write(tmp_path / "s.jsonl", '{"input": "a", "target": "b"}\n{"input": "a"}\n')
  with pytest.raises(ValueError, match=r"s\.jsonl:2: missing field 'target'.*target_field"):
    examples_file.read_examples(path, "seq2seq")


@pytest.mark.parametrize("name,text", [("e.jsonl", ""), ("blank.jsonl", "\n  \n"),
                                       ("e.csv", ""), ("header.csv", "text,label\n")])
def test_empty_files_raise(tmp_path, name, text):
  path = _write(tmp_path / name, text)
  with pytest.raises(ValueError, match=f"{path}: the file holds no examples"):
    examples_file.read_examples(path, "classification", num_classes=2)


def test_wrong_extension_missing_file_and_num_classes(tmp_path):
  with pytest.raises(ValueError, match=r"\.jsonl.*\.csv"):
    examples_file.read_examples(_write(tmp_path / "a.txt", "x"), "seq2seq")
  with pytest.raises(ValueError, match="no such file"):
    examples_file.read_examples(str(tmp_path / "nope.jsonl"), "seq2seq")
  with pytest.raises(ValueError, match="num_classes"):
    examples_file.read_examples(_write(tmp_path / "a.jsonl", "{}"), "classification")


def test_holdout_is_seeded_deterministic_and_about_the_fraction(tmp_path):
  lines = [json.dumps({"input": f"q{i}", "target": f"a{i}"}) for i in range(2000)]
  path = _write(tmp_path / "s.jsonl", "\n".join(lines))
  load = lambda seed: examples_file.load_example_files(path, None, "seq2seq",
                                                       eval_fraction=0.1, seed=seed)
  train, valid, stats = load(0)
  again, valid_again, _ = load(0)
  assert train == again and valid == valid_again
  assert stats["num_train_examples"] + stats["num_validation_examples"] == 2000
  assert 0.08 < len(valid) / 2000 < 0.12
  inputs = lambda xs: {x["input"] for x in xs}
  assert not inputs(train) & inputs(valid)
  # Independent reference: which lines a seeded hash puts below the fraction.
  import hashlib
  ref = {f"q{i}" for i, line in enumerate(lines)
         if int(hashlib.sha256(f"0\0{line}".encode()).hexdigest()[:15], 16) / 16**15 < 0.1}
  assert inputs(valid) == ref
  assert inputs(load(1)[1]) != inputs(valid)  # Another seed holds out other examples.


def test_eval_file_and_small_files(tmp_path):
  t = _write(tmp_path / "t.jsonl", '{"input": "a", "target": "b"}\n{"input": "c", "target": "d"}')
  e = _write(tmp_path / "e.csv", "input,target\nx,y\n")
  train, valid, _ = examples_file.load_example_files(t, e, "seq2seq", eval_fraction=0.5, seed=0)
  assert len(train) == 2 and valid == [{"input": "x", "target": "y"}]
  # Two examples, tiny fraction: one is still held out, never both.
  train, valid, _ = examples_file.load_example_files(t, None, "seq2seq", eval_fraction=0.01,
                                                     seed=0)
  assert len(train) == len(valid) == 1
  _, valid, _ = examples_file.load_example_files(t, None, "seq2seq", eval_fraction=0.0, seed=0)
  assert valid is None


def test_sentence_pairs_read_a_second_text_field(tmp_path):
  path = _write(tmp_path / "nli.csv", "premise,hypothesis,y\nit rains,it is wet,1\nsun,snow,0\n")
  kw = dict(text_field="premise", text_pair_field="hypothesis", label_field="y", num_classes=2)
  examples, _ = examples_file.read_examples(path, "classification", **kw)
  assert examples == [{"text": "it rains", "text_pair": "it is wet", "label": 1},
                      {"text": "sun", "text_pair": "snow", "label": 0}]
  bad = _write(tmp_path / "bad.jsonl", '{"premise": "a", "y": 0}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:1:.*DataConfig\.text_pair_field"):
    examples_file.read_examples(bad, "classification", **kw)
