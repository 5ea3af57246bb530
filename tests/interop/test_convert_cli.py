"""`llmjax convert` through the CLI, and what a converted workdir is good for: `llmjax sample`
(text and token ids), fine-tuning with `llmjax train` (TrainConfig.init_from), and exporting the
fine-tuned run back to a folder transformers loads."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch", reason="HF conversion tests need torch (test extra: torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="HF tests need transformers")

import llmjax  # noqa: E402
from llmjax.cli import main  # noqa: E402
from tests.interop import hf_fixtures as fx  # noqa: E402


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli_gpt2")
  made = fx.make_gpt2(str(root / "hf"))
  assert main(["convert", f"--from_hf={root / 'hf'}", f"--workdir={root / 'w'}"]) == 0
  return made, root


def test_convert_both_ways_through_the_cli(gpt2, capsys):
  made, root = gpt2
  assert main(["convert", "--to_hf", f"--workdir={root / 'w'}", f"--out={root / 'out'}"]) == 0
  assert "converted gpt2" in capsys.readouterr().out
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(root / "out")).eval()
  ids = np.arange(3, 15)[None]
  np.testing.assert_array_equal(fx.torch_logits(reloaded, ids),
                                fx.torch_logits(made["model"], ids))
  # A second conversion into the same directory is refused; nothing is touched.
  before = sorted(os.listdir(root / "w"))
  assert main(["convert", f"--from_hf={root / 'hf'}", f"--workdir={root / 'w'}"]) == 2
  assert "never overwrites" in capsys.readouterr().err
  assert sorted(os.listdir(root / "w")) == before


def test_sample_prompt_ids_without_a_text_tokenizer(gpt2, capsys):
  made, root = gpt2
  want = fx.hf_greedy(made["model"], np.asarray([[5, 17, 33]]), 6)[0].tolist()
  assert main(["sample", f"--workdir={root / 'w'}", "--prompt_ids=5,17,33",
               "--max_new_tokens=6", "--temperature=0"]) == 0
  got = [int(x) for x in capsys.readouterr().out.strip().split(",")]
  assert got == want[:len(got)] and got
  # Text needs a text tokenizer; the error says what to do instead.
  assert main(["sample", f"--workdir={root / 'w'}", "--prompt=hello"]) == 2
  assert "--prompt_ids" in capsys.readouterr().err


def test_training_into_a_converted_workdir_is_refused(gpt2, capsys):
  _, root = gpt2
  code = main(["train", "--gin_file=gin_configs/runs/quickstart.gin",
               f"--gin_file={root / 'w' / 'model.gin'}", "--gin.TOKENIZER='byte'",
               f"--workdir={root / 'w'}"])
  assert code == 2
  assert "init_from" in capsys.readouterr().err


def test_fine_tune_a_converted_llama_then_export_it(tmp_path, capsys):
  hf_dir = tmp_path / "hf"
  fx.make_llama(str(hf_dir))
  fx.write_sentencepiece(str(hf_dir), "llama")
  converted = tmp_path / "converted"
  assert main(["convert", f"--from_hf={hf_dir}", f"--workdir={converted}"]) == 0
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(6):
    (corpus / f"doc{i}.py").write_text("def add(a, b):\n    return a + b\n" * (i + 4))
  finetuned = tmp_path / "finetuned"
  code = main([
      "train", "--gin_file=gin_configs/runs/quickstart.gin",
      f"--gin_file={converted / 'model.gin'}", f"--workdir={finetuned}",
      f"--gin.TEXT_FILES='{corpus}/*.py'", f"--gin.DataConfig.cache_dir='{tmp_path / 'cache'}'",
      f"--gin.DataConfig.tokenizer_dir='{converted / 'tokenizer'}'",
      f"--gin.TrainConfig.init_from='{converted}'", "--gin.TRAIN_STEPS=2",
      "--gin.WARMUP_STEPS=1", "--gin.BATCH_SIZE=8", "--gin.SEQ_LEN=32",
      "--gin.CHECKPOINT_EVERY=2", "--gin.EVAL_EVERY=100", "--gin.TrainConfig.log_every=1",
      "--gin.TrainConfig.learning_rate=1e-4"])
  err = capsys.readouterr().err
  assert code == 0, err
  assert "warm start from" in err and "newly initialized" not in err
  records = [json.loads(line) for line in open(finetuned / "metrics.jsonl")]
  assert [r["step"] for r in records if "loss" in r] == [1, 2]
  # The fine-tuned run (a native llmjax workdir) exports as a LLaMA transformers computes
  # identically to llmjax.
  assert main(["convert", "--to_hf", f"--workdir={finetuned}", f"--out={tmp_path / 'out'}"]) == 0
  assert os.path.exists(tmp_path / "out" / "tokenizer.model")
  reloaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  ids = np.arange(3, 20)[None]
  want = fx.torch_logits(reloaded, ids)
  got = llmjax.load(str(finetuned)).logits(ids)
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
