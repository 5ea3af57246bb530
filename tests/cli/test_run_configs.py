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


def test_objective_and_model_family_must_match(data_dir, monkeypatch, tmp_path, capsys):
  monkeypatch.chdir(data_dir)
  code = main(["train", f"--gin_file={REPO}/gin_configs/runs/classify.gin",
               f"--workdir={tmp_path}", "--gin.ModelConfig.num_classes=None", *_FAST])
  assert code == 2
  err = capsys.readouterr().err
  assert "DataConfig.objective='classification'" in err and "num_classes" in err
  assert not os.listdir(tmp_path)  # Refused before anything was written.
