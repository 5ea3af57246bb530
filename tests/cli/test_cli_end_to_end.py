"""`llmjax train` then `llmjax sample` and `llmjax tokenizer train`, through the CLI entry point."""

import json
import os

import numpy as np
import pytest

import llmjax
from llmjax.cli import main
from llmjax.data import tokenizer as tokenizer_lib

_CODE = "def add(a, b):\n\treturn a + b\n\n\nclass Point:\n    x: int = 0  # café\n"
# The quickstart run file, shrunk to seconds: byte tokenizer, a 1-layer model, 4 steps.
_SMALL = ["--gin.TOKENIZER=byte", "--gin.VOCAB_SIZE=260", "--gin.TRAIN_STEPS=4",
          "--gin.WARMUP_STEPS=1", "--gin.BATCH_SIZE=8", "--gin.SEQ_LEN=32",
          "--gin.CHECKPOINT_EVERY=2", "--gin.EVAL_EVERY=2", "--gin.ModelConfig.num_layers=1",
          "--gin.ModelConfig.embed_dim=32", "--gin.ModelConfig.mlp_dim=64",
          "--gin.ModelConfig.num_heads=2", "--gin.ModelConfig.num_kv_heads=1",
          "--gin.MAX_SEQ_LEN=128", "--gin.TrainConfig.log_every=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
  directory = tmp_path_factory.mktemp("cli_corpus")
  for i in range(12):
    (directory / f"doc{i}.py").write_text(_CODE * (i + 2) + f"# file {i}\n", encoding="utf-8")
  return str(directory)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, corpus) -> str:
  workdir = str(tmp_path_factory.mktemp("cli_run"))
  cache = os.path.join(corpus, "cache")
  code = main(["train", "--gin_file=gin_configs/runs/quickstart.gin", f"--workdir={workdir}",
               f"--gin.TEXT_FILES={corpus}/*.py", f"--gin.DataConfig.cache_dir={cache}", *_SMALL])
  assert code == 0
  return workdir


def test_train_writes_the_documented_run_files(workdir):
  config_gin = open(os.path.join(workdir, "config.gin"), encoding="utf-8").read()
  assert "TrainConfig.train_steps = 4" in config_gin or "TRAIN_STEPS = 4" in config_gin
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    lines = [json.loads(line) for line in f]
  train_lines = [r for r in lines if "loss" in r]
  assert [r["step"] for r in train_lines] == [2, 4]
  for record in train_lines:
    assert {"learning_rate", "tokens_per_sec", "mfu"} <= set(record)
    assert record["tokens_per_sec"] > 0 and 0 < record["mfu"] < 1
  assert [r["step"] for r in lines if "eval_loss" in r] == [2, 4]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  assert tokenizer_lib.load_tokenizer(os.path.join(workdir, "tokenizer")).kind == "byte"
  assert any(n.startswith("events") for n in os.listdir(os.path.join(workdir, "tensorboard")))


def test_greedy_sample_equals_full_forward_argmax(workdir, capsys):
  prompt = "def "
  capsys.readouterr()
  code = main(["sample", f"--workdir={workdir}", f"--prompt={prompt}", "--temperature=0",
               "--max_new_tokens=12"])
  assert code == 0
  out = capsys.readouterr().out
  assert out.startswith("=== prompt 1 ===\n" + prompt)
  printed = out.split("\n", 1)[1][len(prompt):].rstrip("\n")

  # Reference: no cache, the full forward pass re-run over the growing sequence.
  model = llmjax.load(workdir)
  ids = [model.tokenizer.bos_id] + model.tokenizer.encode(prompt)
  new = []
  for _ in range(12):
    next_id = int(np.argmax(model.logits(np.asarray(ids + new))[-1]))
    if next_id == model.tokenizer.eos_id:
      break
    new.append(next_id)
  assert printed == model.tokenizer.decode(new).rstrip("\n")


def test_rerun_on_finished_workdir_resumes_without_training(workdir, corpus, capsys):
  before = open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8").read()
  cache = os.path.join(corpus, "cache")
  code = main(["train", "--gin_file=gin_configs/runs/quickstart.gin", f"--workdir={workdir}",
               f"--gin.TEXT_FILES={corpus}/*.py", f"--gin.DataConfig.cache_dir={cache}", *_SMALL])
  assert code == 0
  assert "already at step 4" in capsys.readouterr().err
  assert open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8").read() == before


def test_incompatible_rerun_exits_2_and_touches_nothing(workdir, corpus, capsys):
  files = {n: os.path.getmtime(os.path.join(workdir, n)) for n in os.listdir(workdir)}
  cache = os.path.join(corpus, "cache")
  code = main(["train", "--gin_file=gin_configs/runs/quickstart.gin", f"--workdir={workdir}",
               f"--gin.TEXT_FILES={corpus}/*.py", f"--gin.DataConfig.cache_dir={cache}", *_SMALL,
               "--gin.ModelConfig.embed_dim=48"])
  assert code == 2
  assert "model.embed_dim: 32 -> 48" in capsys.readouterr().err
  assert {n: os.path.getmtime(os.path.join(workdir, n)) for n in os.listdir(workdir)} == files


def test_training_into_a_foreign_directory_exits_2_and_writes_nothing(tmp_path, capsys):
  (tmp_path / "notes.txt").write_text("not a run")
  code = main(["train", "--gin_file=gin_configs/runs/quickstart.gin", f"--workdir={tmp_path}",
               *_SMALL])
  assert code == 2
  assert "is not an llmjax workdir (it holds notes.txt" in capsys.readouterr().err
  assert os.listdir(tmp_path) == ["notes.txt"]


def test_unknown_binding_exits_2_with_close_matches(tmp_path, capsys):
  code = main(["train", "--gin_file=gin_configs/runs/quickstart.gin",
               f"--workdir={tmp_path / 'w'}", "--gin.TRAIN_STEPZ=3"])
  assert code == 2
  assert "Did you mean: TRAIN_STEPS" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def test_mesh_that_does_not_fit_the_devices_exits_2(tmp_path, capsys):
  code = main(["train", "--gin_file=gin_configs/runs/quickstart.gin",
               f"--workdir={tmp_path / 'w'}", "--gin.MeshConfig.shape={'data': 3}"])
  assert code == 2
  assert "uses 3 devices" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def test_sample_from_missing_workdir_says_train_first(tmp_path, capsys):
  assert main(["sample", f"--workdir={tmp_path / 'none'}", "--prompt=x"]) == 2
  assert "llmjax train" in capsys.readouterr().err


def test_tokenizer_train_saves_the_tokenizer_a_run_would_train(corpus, tmp_path, capsys):
  out = str(tmp_path / "tok")
  cache = os.path.join(corpus, "cache")
  os.environ["LLMJAX_CACHE_DIR"] = cache  # The CLI has no cache flag; keep tests in tmp.
  try:
    code = main(["tokenizer", "train", f"--text_files={corpus}/*.py", "--vocab_size=300",
                 f"--output={out}"])
    assert code == 0
    assert "round trip exact" in capsys.readouterr().out
    tok = tokenizer_lib.load_tokenizer(out)
    assert tok.kind == "sentencepiece" and tok.vocab_size == 300
    assert tok.decode(tok.encode(_CODE)) == _CODE  # Tabs, newlines, spaces, unicode survive.

    # The same data config trains the same model in a run (deterministic training).
    same = llmjax.DataConfig(text_files=f"{corpus}/*.py", vocab_size=300)
    from llmjax.data import pipeline
    assert pipeline.make_tokenizer(same).model_proto == tok.model_proto
    # ... and a run pointed at it loads it instead of training.
    reused = llmjax.DataConfig(text_files=f"{corpus}/*.py", tokenizer_dir=out)
    assert pipeline.make_tokenizer(reused).model_proto == tok.model_proto

    # Nothing already written is replaced without --overwrite.
    assert main(["tokenizer", "train", f"--text_files={corpus}/*.py", f"--output={out}",
                 "--kind=byte"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert tokenizer_lib.load_tokenizer(out).kind == "sentencepiece"
  finally:
    del os.environ["LLMJAX_CACHE_DIR"]


def test_tokenizer_dir_of_another_kind_is_refused(corpus, tmp_path):
  out = str(tmp_path / "bytes")
  tokenizer_lib.ByteTokenizer().save(out)
  from llmjax.data import pipeline
  cfg = llmjax.DataConfig(text_files=f"{corpus}/*.py", tokenizer_dir=out,
                          cache_dir=os.path.join(corpus, "cache"))
  with pytest.raises(ValueError, match="DataConfig.tokenizer = 'byte'"):
    pipeline.make_tokenizer(cfg)
  with pytest.raises(ValueError, match="holds no saved tokenizer"):
    llmjax.DataConfig(tokenizer_dir=str(tmp_path / "missing"))
