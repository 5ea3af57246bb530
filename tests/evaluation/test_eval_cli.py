"""`llmjax eval` end to end on tiny workdirs (random params, written in well under a second).

References are independent of the request API's batching: per-request log-probabilities from
LoadedModel.logits (one full forward pass per row, BOS first), a uniform model's closed form,
and per-example classifier logits without padding.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llmjax
from llmjax import workdir as workdir_lib
from llmjax.data.pipeline import DataConfig
from llmjax.models.config import ModelConfig
from tests.bad_inputs.harness import run_cli
from tests.evaluation.fakes import write_workdir

_DECODER = ModelConfig(vocab_size=260, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32,
                       mlp_dim=64, max_seq_len=128)
_CLASSIFIER = ModelConfig(architecture="encoder", vocab_size=260, num_layers=1, num_heads=2,
                          num_kv_heads=2, embed_dim=32, mlp_dim=64, max_seq_len=32,
                          num_classes=3, pooling="mean")


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory) -> str:
  return write_workdir(str(tmp_path_factory.mktemp("eval") / "decoder"), _DECODER)


def _jsonl(path, rows) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return str(path)


def _eval(capfd, workdir, *flags) -> dict:
  outcome = run_cli(["eval", f"--workdir={workdir}", *flags], capfd)
  assert outcome.code == 0, outcome.err
  lines = outcome.out.strip().splitlines()
  result = json.loads(lines[-1])
  # The file holds the same record as stdout's last line, after a readable table.
  path = workdir_lib.eval_result_path(workdir, result["task"], result["step"])
  with open(path, encoding="utf-8") as f:
    assert json.load(f) == result
  assert lines[0].startswith(f"{result['task']} ({result['kind']}")
  assert any(line.split()[:1] == [next(iter(result["metrics"]))] for line in lines[1:-1])
  return result


def _reference_loglikelihoods(model, requests) -> np.ndarray:
  """sum log p(continuation | BOS + context) per request, from full forward passes over rows
  right-padded to max_seq_len (causal: padding after a row cannot change its logits)."""
  tok, length = model.tokenizer, model.config.max_seq_len
  rows, spans = np.zeros((len(requests), length), np.int64), []
  for r, (context, continuation) in enumerate(requests):
    ctx = [tok.bos_id] + tok.encode(context)
    cont = tok.encode(context + continuation)[len(ctx) - 1:]
    rows[r, :len(ctx) + len(cont)] = ctx + cont
    spans.append((len(ctx), cont))
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(model.logits(rows)), axis=-1))  # [n, t, v]
  return np.asarray([sum(float(logp[r, start - 1 + i, t]) for i, t in enumerate(cont))
                     for r, (start, cont) in enumerate(spans)])


def test_multiple_choice_matches_unbatched_reference(decoder_dir, tmp_path, capfd):
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "x", "yy", "zzz", "def f():", "return 1"]
  rows = [{"question": f"item {i}: " + " ".join(rng.choice(words, 3)),
           "choices": list(rng.choice(words, 3, replace=False)), "answer": int(i % 3)}
          for i in range(8)]
  data = _jsonl(tmp_path / "mc.jsonl", rows)
  result = _eval(capfd, decoder_dir, "--task=multiple_choice", f"--data={data}",
                 "--num_fewshot=1", "--name=mc", "--batch_size=5")
  assert result["task"] == "mc" and result["step"] == 2 and result["num_items"] == 8
  assert os.path.basename(workdir_lib.eval_result_path(decoder_dir, "mc", 2)) == "mc-step2.json"
  # Reference: the same prompts (rebuilt by prepare, which needs no model) scored one by one.
  from llmjax.evaluation import tasks
  from llmjax.evaluation.config import EvalConfig
  task = tasks.prepare(EvalConfig(kind="multiple_choice", data=data, num_fewshot=1), _DECODER)
  model = llmjax.load(decoder_dir)
  reference = _reference_loglikelihoods(model, task.requests)
  acc, acc_norm, start = [], [], 0
  for row in rows:
    lls = reference[start:start + len(row["choices"])]
    start += len(row["choices"])
    acc.append(float(np.argmax(lls) == row["answer"]))
    norm = lls / np.asarray([len(c.encode()) for c in row["choices"]])
    acc_norm.append(float(np.argmax(norm) == row["answer"]))
  assert result["metrics"]["acc"] == pytest.approx(np.mean(acc))
  assert result["metrics"]["acc_norm"] == pytest.approx(np.mean(acc_norm))
  assert result["metrics"]["acc_stderr"] == pytest.approx(np.std(acc, ddof=1) / math.sqrt(8))
  assert result["config"]["num_fewshot"] == 1 and result["config"]["batch_size"] == 5


def test_uniform_model_perplexity_and_bits_per_byte(tmp_path, capfd):
  """All-zero params make every logit 0: each token costs ln(vocab), including documents
  longer than max_seq_len (rolling windows)."""
  workdir = write_workdir(str(tmp_path / "uniform"), _DECODER,
                          params_fn=lambda p: jax.tree.map(jnp.zeros_like, p))
  texts = {"short.txt": "café ☕\n", "long.txt": "déjà vu, naïve. " * 9}  # 171 bytes > 128.
  for name, text in texts.items():
    (tmp_path / name).write_text(text, encoding="utf-8")
  result = _eval(capfd, workdir, "--task=perplexity", f"--data={tmp_path / '*.txt'}")
  tokens = sum(len(t.encode()) for t in texts.values())  # Byte tokenizer: a token per byte.
  assert result["num_tokens"] == tokens and result["num_bytes"] == tokens
  assert result["task"] == f"perplexity_{tmp_path.name}"
  m = result["metrics"]
  assert m["loss"] == pytest.approx(math.log(260), rel=1e-5)
  assert m["perplexity"] == pytest.approx(260, rel=1e-4)
  assert m["bits_per_byte"] == pytest.approx(math.log2(260) * tokens / tokens, rel=1e-5)


def test_generation_exact_match_against_greedy_generate(decoder_dir, tmp_path, capfd):
  model = llmjax.load(decoder_dir)
  prompts = ["ab", "12+7=", "def "]
  greedy = model.generate(prompts, max_new_tokens=4, temperature=0.0)
  # Item 0's target is the model's own greedy output (a match), the others' are not.
  rows = [{"prompt": prompts[0], "target": greedy[0]},
          {"prompt": prompts[1], "targets": ["19", "nineteen"]},
          {"prompt": prompts[2], "target": greedy[2] + "zz"}]
  data = _jsonl(tmp_path / "gen.jsonl", rows)
  result = _eval(capfd, decoder_dir, "--task=generation", f"--data={data}", "--max_gen_toks=4",
                 "--until=\\n\\n\\n")  # Three newlines: a random model rarely emits them.
  assert all("\n\n\n" not in g for g in greedy) and greedy[0].strip()
  expected = [1.0, float(greedy[1].strip() in ("19", "nineteen")), 0.0]
  assert result["metrics"]["exact_match"] == pytest.approx(np.mean(expected))
  assert [e["prediction"] for e in result["examples"]] == [
      g.split("\n\n\n")[0] for g in greedy]
  assert result["config"]["until"] == ["\n\n\n"] and result["config"]["max_gen_toks"] == 4


def test_classification_matches_per_example_logits(tmp_path, capfd):
  data_cfg = DataConfig(objective="classification", train_file="/nonexistent/train.jsonl",
                        num_classes=3, tokenizer="byte")
  workdir = write_workdir(str(tmp_path / "classifier"), _CLASSIFIER, data=data_cfg, seed=2)
  rng = np.random.default_rng(1)
  # Two lengths (the reference compiles once per length): 5 bytes, and 40 (cut to 32).
  texts = ["".join(rng.choice(list("abcdef "), n)) for n in [5, 40] * 6]
  rows = [{"text": t, "label": int(rng.integers(0, 3))} for t in texts]
  data = _jsonl(tmp_path / "cls.jsonl", rows)
  result = _eval(capfd, workdir, "--task=classification", f"--data={data}", "--batch_size=4")
  # Reference: each example alone, unpadded, in the training row format.
  model = llmjax.load(workdir)
  tok = model.tokenizer
  preds = []
  for t in texts:
    ids = tok.encode(t)
    row = ([tok.bos_id, *ids] + ([tok.eos_id] if len(ids) + 2 <= 32 else []))[:32]
    preds.append(int(np.argmax(model.logits(np.asarray(row)))))
  labels = [r["label"] for r in rows]
  matrix = np.zeros((3, 3), int)
  for label, pred in zip(labels, preds, strict=True):
    matrix[label, pred] += 1
  assert result["confusion_matrix"] == matrix.tolist()
  assert result["metrics"]["accuracy"] == pytest.approx(np.trace(matrix) / len(rows))
  assert len(set(preds)) > 1  # Random weights still separate the examples.
