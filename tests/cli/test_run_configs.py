"""Each family's run config trains through the CLI: MLM, span corruption, classification and
seq2seq; a classification fine-tune on separable generated data reaches high accuracy."""

import json
import os
import runpy
from pathlib import Path

import numpy as np
import pytest

from llmjax.cli import main

REPO = Path(__file__).resolve().parents[2]
_CODE = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n"
_FAST = ["--gin.TRAIN_STEPS=3", "--gin.WARMUP_STEPS=1", "--gin.BATCH_SIZE=8",
         "--gin.SEQ_LEN=32", "--gin.EVAL_EVERY=3", "--gin.TOKENIZER=byte"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
  """A small text corpus and the generated JSONL datasets the example-file configs read."""
  root = tmp_path_factory.mktemp("run_configs")
  for i in range(8):
    (root / f"doc{i}.py").write_text(_CODE * (i + 3), encoding="utf-8")
  toy = runpy.run_path(str(REPO / "experiments" / "toy_data" / "make_toy_data.py"))
  toy["write"]("sentiment", str(root / "data" / "sentiment"), 1000, 128, 0)
  toy["write"]("reverse", str(root / "data" / "reverse"), 200, 32, 0)
  return root


def _metrics(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("run_file,architecture", [
    ("pretrain_mlm", "encoder"), ("pretrain_span", "encoder_decoder"),
    ("classify", "encoder"), ("seq2seq", "encoder_decoder")])
def test_run_file_trains_a_few_steps(run_file, architecture, data_dir, monkeypatch, tmp_path):
  monkeypatch.chdir(data_dir)  # The example-file configs name data/... relative paths.
  flags = [f"--gin.TEXT_FILES='{data_dir}/doc*.py'",
           f"--gin.DataConfig.cache_dir='{data_dir}/cache'"] if run_file.startswith(
               "pretrain") else []
  if run_file == "pretrain_span":
    flags.append("--gin.DECODER_SEQ_LEN=16")
  code = main(["train", f"--gin_file={REPO}/gin_configs/runs/{run_file}.gin",
               f"--workdir={tmp_path}", *_FAST, *flags])
  assert code == 0
  run_config = json.loads((tmp_path / "run_config.json").read_text())
  assert run_config["model"]["architecture"] == architecture
  metrics = _metrics(tmp_path)
  train = [m for m in metrics if "loss" in m]
  evals = [m for m in metrics if "eval_loss" in m]
  assert train and evals and train[-1]["step"] == 3
  assert all(np.isfinite(m["loss"]) and m["tokens_per_sec"] > 0 for m in train)
  assert 0.0 <= evals[-1]["eval_accuracy"] <= 1.0 and np.isfinite(evals[-1]["eval_loss"])


def test_classification_fine_tune_reaches_high_accuracy(data_dir, monkeypatch, tmp_path):
  monkeypatch.chdir(data_dir)
  code = main(["train", f"--gin_file={REPO}/gin_configs/runs/classify.gin",
               f"--workdir={tmp_path}", "--gin.TRAIN_STEPS=100", "--gin.WARMUP_STEPS=10",
               "--gin.EVAL_EVERY=100", "--gin.TrainConfig.learning_rate=3e-3",
               "--gin.ModelConfig.dropout_rate=0.0"])
  assert code == 0
  final = [m for m in _metrics(tmp_path) if "eval_accuracy" in m][-1]
  assert final["eval_tokens"] == 128  # Every held-out example, each counted once.
  assert final["eval_accuracy"] >= 0.9, final  # Chance is 0.5.


def _pair_files(directory: Path) -> None:
  """Paraphrase pairs: label 1 when the second text repeats the first's words, reordered."""
  rng = np.random.default_rng(0)
  words = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "rock"]
  for name, n in (("train", 64), ("validation", 16)):
    rows = []
    for i in range(n):
      first = list(rng.choice(words, 3, replace=False))
      second = list(rng.permutation(first)) if i % 2 else list(rng.choice(words, 3))
      rows.append(json.dumps({"text": " ".join(first), "text_pair": " ".join(second),
                              "label": i % 2}))
    (directory / f"{name}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_sentence_pair_classification_trains_end_to_end(tmp_path, capsys):
  import llmjax

  _pair_files(tmp_path)
  files = [f"--gin.TRAIN_FILE='{tmp_path}/train.jsonl'",
           f"--gin.EVAL_FILE='{tmp_path}/validation.jsonl'", "--gin.TEXT_PAIR_FIELD='text_pair'"]
  # Two texts need a token-type table: refused, before anything is written, without one.
  code = main(["train", f"--gin_file={REPO}/gin_configs/runs/classify.gin",
               f"--workdir={tmp_path / 'refused'}", *_FAST, *files])
  assert code == 2 and "type_vocab_size=2" in capsys.readouterr().err
  assert not (tmp_path / "refused").exists() or not os.listdir(tmp_path / "refused")
  workdir = tmp_path / "pairs"
  code = main(["train", f"--gin_file={REPO}/gin_configs/runs/classify.gin",
               f"--workdir={workdir}", *_FAST, *files, "--gin.ModelConfig.type_vocab_size=2"])
  assert code == 0
  metrics = _metrics(workdir)
  train = [m for m in metrics if "loss" in m]
  evals = [m for m in metrics if "eval_loss" in m]
  assert train[-1]["step"] == 3 and all(np.isfinite(m["loss"]) for m in train)
  assert evals[-1]["eval_tokens"] == 16 and np.isfinite(evals[-1]["eval_loss"])
  # The trained classifier reads the token types it was trained with.
  loaded = llmjax.load(str(workdir))
  assert loaded.config.type_vocab_size == 2 and loaded.config.num_classes == 2
  ids = np.asarray([[1, 10, 11, 2, 12, 13, 2]])
  types = np.asarray([[0, 0, 0, 0, 1, 1, 1]])
  assert not np.allclose(loaded.logits(ids, token_type_ids=types), loaded.logits(ids))


def test_objective_and_model_family_must_match(data_dir, monkeypatch, tmp_path, capsys):
  monkeypatch.chdir(data_dir)
  code = main(["train", f"--gin_file={REPO}/gin_configs/runs/classify.gin",
               f"--workdir={tmp_path}", "--gin.ModelConfig.num_classes=None", *_FAST])
  assert code == 2
  err = capsys.readouterr().err
  assert "DataConfig.objective='classification'" in err and "num_classes" in err
  assert not os.listdir(tmp_path)  # Refused before anything was written.
