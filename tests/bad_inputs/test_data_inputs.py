"""Bad data inputs through the CLI: missing, empty, binary and misplaced text files, broken
example files, an unprepared TFDS dataset, impossible tokenizer sizes; and the one-file corpus
that used to crash or never evaluate, which now trains and evaluates."""

import json
import os

import pytest

from tests.bad_inputs.harness import assert_clear_failure, run_cli, snapshot

_TEXT = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(60))
_SEQ2SEQ = ["--gin_file=gin_configs/runs/seq2seq.gin", "--gin.TOKENIZER='byte'",
            "--gin.VOCAB_SIZE=260", "--gin.EVAL_FILE=None"]
_TINY = ["--gin.TRAIN_STEPS=2", "--gin.WARMUP_STEPS=1", "--gin.BATCH_SIZE=8", "--gin.SEQ_LEN=32",
         "--gin.MAX_SEQ_LEN=64", "--gin.CHECKPOINT_EVERY=2", "--gin.EVAL_EVERY=2",
         "--gin.TrainConfig.log_every=1", "--gin.TrainConfig.eval_batches=1",
         "--gin.ModelConfig.num_layers=1", "--gin.ModelConfig.embed_dim=32",
         "--gin.ModelConfig.mlp_dim=64", "--gin.ModelConfig.num_heads=2",
         "--gin.ModelConfig.num_kv_heads=1"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("LLMJAX_CACHE_DIR", str(tmp_path / "cache"))


def _write(path, data) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data.encode() if isinstance(data, str) else data)
  return str(path)


def _tokenizer_train(tmp_path, capfd, *flags):
  out = tmp_path / "tok"
  return run_cli(["tokenizer", "train", f"--output={out}", *flags], capfd), out


def _train(tmp_path, capfd, *flags):
  """`llmjax train` into a fresh workdir; returns (outcome, workdir)."""
  workdir = tmp_path / "run"
  return run_cli(["train", f"--workdir={workdir}", *flags], capfd), workdir


def test_glob_matching_nothing(tmp_path, capfd):
  outcome, out = _tokenizer_train(tmp_path, capfd, f"--text_files={tmp_path}/corpus/*.txt")
  assert_clear_failure(outcome, 2, r"matched no files", r"check the path",
                       before={}, dirs=(out,))


def test_only_empty_files(tmp_path, capfd):
  _write(tmp_path / "c" / "a.txt", "")
  _write(tmp_path / "c" / "b.txt", "")
  outcome, workdir = _train(tmp_path, capfd, "--gin_file=gin_configs/runs/quickstart.gin",
                            f"--gin.TEXT_FILES='{tmp_path}/c/*.txt'", "--gin.TOKENIZER='byte'",
                            "--gin.VOCAB_SIZE=260")
  assert_clear_failure(outcome, 2, r"is empty \(2 files\)", r"files with text in them",
                       before={}, dirs=(workdir,))


def test_binary_file_in_the_glob(tmp_path, capfd):
  _write(tmp_path / "c" / "notes.txt", _TEXT)
  _write(tmp_path / "c" / "logo.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0")
  outcome, out = _tokenizer_train(tmp_path, capfd, f"--text_files={tmp_path}/c/*",
                                  "--kind=byte")
  assert_clear_failure(outcome, 2, r"logo\.png is not a text file", r"NUL bytes",
                       r"narrow .*--text_files|convert the file to UTF-8",
                       before={}, dirs=(out,))


def test_utf16_file(tmp_path, capfd):
  _write(tmp_path / "c" / "notes.txt", _TEXT.encode("utf-16"))
  outcome, out = _tokenizer_train(tmp_path, capfd, f"--text_files={tmp_path}/c/notes.txt",
                                  "--kind=byte")
  assert_clear_failure(outcome, 2, r"notes\.txt is not a text file", r"UTF-16",
                       r"convert the file to UTF-8", before={}, dirs=(out,))


def test_directory_instead_of_a_glob(tmp_path, capfd):
  _write(tmp_path / "corpus" / "a.txt", _TEXT)
  outcome, out = _tokenizer_train(tmp_path, capfd, f"--text_files={tmp_path}/corpus")
  assert_clear_failure(outcome, 2, r"corpus' is a directory", r"give a glob", r"\*\*/\*\.txt",
                       before={}, dirs=(out,))


def test_sentencepiece_vocab_below_its_minimum(tmp_path, capfd):
  _write(tmp_path / "c" / "a.txt", _TEXT)
  outcome, out = _tokenizer_train(tmp_path, capfd, f"--text_files={tmp_path}/c/a.txt",
                                  "--vocab_size=100")
  assert_clear_failure(outcome, 2, r"vocab_size=100 is too small", r">= 300|'byte'",
                       before={}, dirs=(out,))


def test_sentencepiece_vocab_too_large_for_the_text(tmp_path, capfd):
  _write(tmp_path / "c" / "a.txt", _TEXT)
  outcome, out = _tokenizer_train(tmp_path, capfd, f"--text_files={tmp_path}/c/a.txt",
                                  "--vocab_size=20000")
  assert_clear_failure(outcome, 2, r"SentencePiece training failed", r"smaller vocab_size",
                       before={}, dirs=(out,))


def test_one_file_corpus_whose_name_hashed_to_eval_tokenizer(tmp_path, capfd):
  # 'l.txt' alone used to be all held-out data: TFDS "No examples were yielded".
  path = _write(tmp_path / "corpus" / "l.txt", _TEXT)
  outcome, out = _tokenizer_train(tmp_path, capfd, f"--text_files={path}", "--vocab_size=300")
  assert outcome.code == 0, outcome.err
  assert "held-out text" in outcome.out and "round trip exact" in outcome.out


def test_one_file_corpus_whose_name_hashed_to_eval_trains_then_its_file_goes_missing(
    tmp_path, capfd):
  path = _write(tmp_path / "corpus" / "l.txt", _TEXT)
  flags = ["--gin_file=gin_configs/runs/quickstart.gin", f"--gin.TEXT_FILES='{path}'",
           "--gin.TOKENIZER='byte'", "--gin.VOCAB_SIZE=260", *_TINY]
  outcome, workdir = _train(tmp_path, capfd, *flags)
  assert outcome.code == 0, outcome.err
  with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records if "eval_loss" in r] == [2]  # It evaluates.
  # The corpus is moved away, then the run is continued: nothing in the workdir changes.
  before = snapshot(workdir)
  os.rename(path, path + ".moved")
  outcome, _ = _train(tmp_path, capfd, *flags, "--gin.TRAIN_STEPS=4")
  assert_clear_failure(outcome, 2, r"l\.txt' matched no files", r"check the path",
                       before=before, dirs=(workdir,))


@pytest.mark.parametrize("line,patterns", [
    ('{"input": "a", "target": ', [r"train\.jsonl:2: bad JSON", r"one JSON object"]),
    ('{"input": "a"}', [r"train\.jsonl:2: missing field 'target'", r"target_field"]),
    ('["a", "b"]', [r"train\.jsonl:2: a JSON list, not an object", r"one JSON object"]),
    ('{"input": "a", "target": 7}', [r"train\.jsonl:2: field 'target' is a int",
                                     r"write it as a string"]),
])
def test_broken_jsonl_line_names_file_and_line(tmp_path, capfd, line, patterns):
  path = _write(tmp_path / "train.jsonl", '{"input": "ab", "target": "ba"}\n' + line + "\n")
  outcome, workdir = _train(tmp_path, capfd, *_SEQ2SEQ, f"--gin.TRAIN_FILE='{path}'")
  assert_clear_failure(outcome, 2, *patterns, before={}, dirs=(workdir,))


def test_jsonl_that_is_not_utf8(tmp_path, capfd):
  path = _write(tmp_path / "train.jsonl",
                b'{"input": "ab", "target": "ba"}\n{"input": "caf\xe9", "target": "b"}\n')
  outcome, workdir = _train(tmp_path, capfd, *_SEQ2SEQ, f"--gin.TRAIN_FILE='{path}'")
  assert_clear_failure(outcome, 2, r"train\.jsonl:2: not UTF-8 text", r"save the file as UTF-8",
                       before={}, dirs=(workdir,))


def test_missing_eval_file(tmp_path, capfd):
  path = _write(tmp_path / "train.jsonl", '{"input": "ab", "target": "ba"}\n')
  outcome, workdir = _train(tmp_path, capfd, *_SEQ2SEQ, f"--gin.TRAIN_FILE='{path}'",
                            f"--gin.EVAL_FILE='{tmp_path}/valid.jsonl'")
  assert_clear_failure(outcome, 2, r"valid\.jsonl: no such file", r"eval_file",
                       before={}, dirs=(workdir,))


def test_tfds_dataset_that_is_not_prepared(tmp_path, capfd):
  outcome, workdir = _train(
      tmp_path, capfd, "--gin_file=gin_configs/runs/quickstart.gin",
      "--gin.DataConfig.tfds_name='lm1b'", f"--gin.DataConfig.tfds_data_dir='{tmp_path}/tfds'",
      "--gin.TOKENIZER='byte'", "--gin.VOCAB_SIZE=260")
  assert_clear_failure(outcome, 2, r"'lm1b' is not prepared|'lm1b' not found",
                       r"never downloads", r"tfds build", before={}, dirs=(workdir,))
