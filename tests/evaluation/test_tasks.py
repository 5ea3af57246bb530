"""The task kinds against hand-computed references, through a fake request-API model.

The fake (tests/evaluation/fakes.py) returns log-probabilities the test chooses, so acc,
acc_norm, perplexity, bits per byte and exact match can be checked against numbers worked out
by hand; few-shot prompts are checked for determinism and for never containing their item.
"""

import json
import math

import numpy as np
import pytest

from llmjax.evaluation import metrics, tasks
from llmjax.evaluation.config import EvalConfig
from llmjax.models.config import ModelConfig
from tests.evaluation.fakes import FakeModel

_DECODER = ModelConfig(vocab_size=260, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32,
                       mlp_dim=64, max_seq_len=64)


def _jsonl(path, rows) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return str(path)


def _run(config: EvalConfig, model: FakeModel):
  task = tasks.prepare(config, _DECODER)
  return task, *tasks.run(task, model)


# --- multiple choice ------------------------------------------------------------------------

def test_multiple_choice_acc_and_acc_norm_hand_computed(tmp_path):
  data = _jsonl(tmp_path / "mc.jsonl", [
      {"question": "q1", "choices": ["aa", "bbbb"], "answer": 1},
      {"question": "q2", "choices": ["c", "ddd", "e"], "answer": 0},
      {"question": "q3", "choices": ["ff", "g"], "answer": 0},
  ])
  lls = {("q1", "aa"): -2.0, ("q1", "bbbb"): -3.0,  # acc: aa (wrong); norm: -1.0 vs -0.75 -> bbbb
         ("q2", "c"): -1.0, ("q2", "ddd"): -1.5, ("q2", "e"): -4.0,  # acc: c; norm: ddd (-0.5)
         ("q3", "ff"): -1.0, ("q3", "g"): -2.0}  # both right
  model = FakeModel(score=lambda ctx, cont: lls[(ctx.split()[1], cont.strip())])
  task, out, _ = _run(EvalConfig(kind="multiple_choice", data=data), model)
  # Requests: the default template, and " " + choice as the continuation.
  assert task.requests[:2] == [("Question: q1\nAnswer:", " aa"), ("Question: q1\nAnswer:", " bbbb")]
  acc, acc_norm = [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]
  assert out["acc"] == pytest.approx(2 / 3)
  assert out["acc_norm"] == pytest.approx(2 / 3)
  # Sample stderr of the mean by hand: sqrt(sum((x - mean)^2) / (n - 1)) / sqrt(n).
  expected = math.sqrt(((0 - 2 / 3) ** 2 + 2 * (1 - 2 / 3) ** 2) / 2) / math.sqrt(3)
  assert out["acc_stderr"] == pytest.approx(expected)
  assert out["acc_norm_stderr"] == pytest.approx(expected)
  assert metrics.choice_metrics([[-2.0, -3.0]], [1], [["aa", "bbbb"]])[1][0]["acc"] == acc[0]
  assert (metrics.choice_metrics([[-2.0, -3.0]], [1], [["aa", "bbbb"]])[1][0]["acc_norm"]
          == acc_norm[0])


def test_acc_norm_divides_by_characters_and_acc_bytes_by_utf8_bytes_like_lm_eval():
  # "éé" is 2 characters but 4 bytes: per character -3.0/2 = -1.5 loses to "abc" -3.3/3 = -1.1
  # (acc_norm, as lm-eval's len(choice)); per byte -3.0/4 = -0.75 wins (acc_bytes).
  _, items = metrics.choice_metrics([[-3.0, -3.3]], [0], [["éé", "abc"]])
  assert (items[0]["pred_norm"], items[0]["acc_bytes"]) == (1, 1.0)
  # "x" -1.0 vs "yyy" -2.5: per character of the choice, -1.0 < -0.83 -> "yyy"; counting the
  # " " delimiter (-0.5 vs -0.625) would pick "x".
  _, items = metrics.choice_metrics([[-1.0, -2.5]], [1], [["x", "yyy"]])
  assert (items[0]["pred"], items[0]["pred_norm"]) == (0, 1)


def test_multiple_choice_lengths_come_from_the_choices(tmp_path):
  data = _jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["éé", "abc"], "answer": 0}])
  scores = {" éé": -3.0, " abc": -3.3}
  _, out, _ = _run(EvalConfig(kind="multiple_choice", data=data),
                   FakeModel(score=lambda ctx, cont: scores[cont]))
  assert out["acc_norm"] == 0.0 and out["acc_norm_stderr"] is None  # One item: no stderr.
  assert out["acc_bytes"] == 1.0


def _mc_items(n: int) -> list[dict]:
  return [{"question": f"item{i:03d}", "choices": [f"right{i:03d}", f"wrong{i:03d}"],
           "answer": 0} for i in range(n)]


def _prompts(config: EvalConfig) -> list[str]:
  return [ctx for ctx, _ in tasks.prepare(config, _DECODER).requests[::2]]


def test_fewshot_prompts_deterministic_layout_and_never_the_item(tmp_path):
  data = _jsonl(tmp_path / "mc.jsonl", _mc_items(12))
  config = EvalConfig(kind="multiple_choice", data=data, num_fewshot=3, fewshot_seed=7)
  prompts = _prompts(config)
  assert prompts == _prompts(config)  # Same seed, same prompts.
  assert prompts != _prompts(EvalConfig(kind="multiple_choice", data=data, num_fewshot=3,
                                        fewshot_seed=8))
  # --limit does not change the prompts of the items it keeps.
  limited = EvalConfig(kind="multiple_choice", data=data, num_fewshot=3, fewshot_seed=7, limit=4)
  assert _prompts(limited) == prompts[:4]
  for i, prompt in enumerate(prompts):
    blocks = prompt.split("\n\n")
    assert len(blocks) == 4 and blocks[-1] == f"Question: item{i:03d}\nAnswer:"
    shots = [int(b.split("\n")[0].removeprefix("Question: item")) for b in blocks[:3]]
    assert len(set(shots)) == 3 and i not in shots
    for j, block in zip(shots, blocks[:3], strict=True):
      assert block == f"Question: item{j:03d}\nAnswer: right{j:03d}"


def test_fewshot_data_file_never_supplies_the_item_itself(tmp_path):
  items = _mc_items(4)
  data = _jsonl(tmp_path / "test.jsonl", items)
  # The train split holds a copy of every test item (other test items may be shots; an item
  # itself may not) and 2 more: with 3 shots from 5 allowed, each item sees some others.
  pool = _jsonl(tmp_path / "train.jsonl", items + [
      {"question": f"train{i}", "choices": ["a", "b"], "answer": 1} for i in range(2)])
  config = EvalConfig(kind="multiple_choice", data=data, num_fewshot=5, fewshot_data=pool)
  for i, prompt in enumerate(_prompts(config)):
    assert prompt.count(f"item{i:03d}") == 1, prompt  # Only as the question being asked.
    assert prompt.count("Question: ") == 6


def test_fewshot_pool_too_small_is_refused(tmp_path):
  data = _jsonl(tmp_path / "mc.jsonl", _mc_items(3))
  with pytest.raises(ValueError, match=r"num_fewshot=3 needs 3 examples besides the item, but "
                     r"the few-shot pool has 2"):
    tasks.prepare(EvalConfig(kind="multiple_choice", data=data, num_fewshot=3), _DECODER)


# --- perplexity ---------------------------------------------------------------------------

def test_uniform_model_bits_per_byte_is_log2_vocab_times_tokens_over_bytes(tmp_path):
  texts = ["déjà vu\n", "naïve café ☕ " * 5, "plain ascii"]
  for i, text in enumerate(texts):
    (tmp_path / f"doc{i}.txt").write_text(text, encoding="utf-8")
  model = FakeModel(vocab=1000)
  _, out, extra = _run(EvalConfig(kind="perplexity", data=str(tmp_path / "*.txt")), model)
  tokens = sum(len(t) for t in texts)  # The fake tokenizer: one token per character.
  num_bytes = sum(len(t.encode("utf-8")) for t in texts)
  assert tokens != num_bytes
  assert extra == {"num_tokens": tokens, "num_bytes": num_bytes}
  assert out["bits_per_byte"] == pytest.approx(math.log2(1000) * tokens / num_bytes)
  assert out["loss"] == pytest.approx(math.log(1000))
  assert out["perplexity"] == pytest.approx(1000.0)
  assert out["byte_perplexity"] == pytest.approx(2 ** out["bits_per_byte"])
  words = sum(len(t.split()) + (t[-1].isspace()) + (t[0].isspace()) for t in texts)
  assert out["word_perplexity"] == pytest.approx(math.exp(tokens * math.log(1000) / words))
  # Every document has the same per-token loss: resampling documents cannot move it.
  assert out["loss_stderr"] == pytest.approx(0.0, abs=1e-9)
  assert out["bits_per_byte_stderr"] > 0  # Documents differ in tokens per byte.


def test_perplexity_limit_takes_the_first_documents_in_path_order(tmp_path):
  for name in ("b.txt", "a.txt", "c.txt"):
    (tmp_path / name).write_text(name, encoding="utf-8")
  model = FakeModel()
  task, _, _ = _run(EvalConfig(kind="perplexity", data=str(tmp_path / "*.txt"), limit=2),
                    model)
  assert model.calls[0][1] == ["a.txt", "b.txt"] and len(task.data_paths) == 3


# --- generation ---------------------------------------------------------------------------

def test_generation_exact_match_stop_strings_and_normalization(tmp_path):
  data = _jsonl(tmp_path / "gen.jsonl", [
      {"prompt": "1+1=", "target": "2"},
      {"prompt": "say hi", "targets": ["Hello, World", "hi"]},
      {"prompt": "2+2=", "target": "4"},
  ])
  replies = {"1+1=": " 2 ", "say hi": "  hello   world!", "2+2=": "5"}
  model = FakeModel(reply=lambda ctx, settings: replies[ctx])
  config = EvalConfig(kind="generation", data=data, until=("\n", "###"), max_gen_toks=5)
  _, out, extra = _run(config, model)
  assert model.calls[0][1][0] == ("1+1=", {"until": ["\n", "###"], "max_gen_toks": 5})
  assert out["exact_match"] == pytest.approx(1 / 3)  # Case and "!" still count.
  assert extra["examples"][0] == {"prompt": "1+1=", "prediction": " 2 ", "targets": ["2"]}
  loose = EvalConfig(kind="generation", data=data, ignore_case=True, ignore_punctuation=True)
  assert _run(loose, FakeModel(reply=lambda ctx, s: replies[ctx]))[1]["exact_match"] == (
      pytest.approx(2 / 3))


def test_normalize_answer_rules():
  assert metrics.normalize_answer("  a \n\t b  ") == "a b"
  assert metrics.normalize_answer("Hello, World!", ignore_case=True,
                                  ignore_punctuation=True) == "hello world"
  assert metrics.normalize_answer("Hello, World!") == "Hello, World!"


# --- classification metrics ---------------------------------------------------------------

def test_classification_metrics_hand_computed():
  labels, preds = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2]
  matrix = metrics.confusion_matrix(labels, preds, 4)
  assert matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
  # Per class F1 = 2tp / (2tp + fp + fn): 0: 2/4, 1: 4/5, 2: 2/3; class 3 never occurs.
  out = metrics.classification_metrics(labels, preds, 4)
  assert out["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
  assert out["accuracy"] == pytest.approx(4 / 6)
  assert out["accuracy_stderr"] == pytest.approx(np.std([1, 0, 1, 1, 0, 1], ddof=1) / 6 ** 0.5)
  assert 0 < out["macro_f1_stderr"] < 0.5
