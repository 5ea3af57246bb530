"""The lm-evaluation-harness backend: `llmjax` as an lm_eval model, offline, on local YAML tasks.

The reference is llmjax's own request API called directly: the harness, running local
multiple-choice, rolling-perplexity and generation tasks through lm_eval_adapter (and through
its CLI wrapper), must send the requests its YAML describes and report exactly the scores,
acc / acc_norm and bits per byte that `LoadedModel.loglikelihood` / `loglikelihood_rolling` /
`generate_until` give on the same items. Unit tests of the adapter use a recording stand-in
for the model (no JAX). Skipped without the `eval` extra (lm-eval).
"""

import glob
import json
import math
import os
import re
import sys

# Nothing may reach the hub: set before `datasets` (imported by lm_eval) reads them.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

lm_eval = pytest.importorskip("lm_eval", reason="the lm-eval backend needs the `eval` extra")

from lm_eval.api.instance import Instance  # noqa: E402

import llmjax  # noqa: E402
from llmjax.data.tokenizer import ByteTokenizer  # noqa: E402
from llmjax.evaluation import lm_eval_main  # noqa: E402
from llmjax.evaluation.lm_eval_adapter import LlmjaxLM  # noqa: E402
from llmjax.models.config import ModelConfig  # noqa: E402
from llmjax.models.interface import LanguageModel  # noqa: E402
from tests.evaluation.fakes import write_workdir  # noqa: E402

# A one-layer byte-level decoder: the rolling document below is longer than its context.
_MODEL = ModelConfig(vocab_size=260, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32,
                     mlp_dim=64, max_seq_len=48)

# Choices of different lengths, so acc (argmax of the sum) and acc_norm (argmax of the sum
# per character) can disagree.
_MC_ITEMS = [
    {"question": "2 + 2 =", "choices": ["4", "five", "22"], "answer": 0},
    {"question": "The sky is", "choices": ["green", "blue"], "answer": 1},
    {"question": "def f(x): return", "choices": ["x", "x + 1", "None", "f"], "answer": 0},
    {"question": "import", "choices": ["os", "numpy as np"], "answer": 0},
    {"question": "for i in", "choices": ["range(3):", "x", "[]:"], "answer": 0},
    {"question": "Paris is in", "choices": ["France", "Peru", "a"], "answer": 0},
    {"question": "3 * 3 =", "choices": ["9", "33", "nine"], "answer": 0},
    {"question": "True and", "choices": ["False", "True", "not"], "answer": 1},
]
_DOCS = [
    {"text": "def add(a, b):\n  return a + b\n"},
    {"text": "A short line."},
    # 150 bytes: several rolling windows of max_seq_len=48.
    {"text": "class Point:\n  def __init__(self, x, y):\n    self.x = x\n    self.y = y\n\n"
             "  def norm(self):\n    return (self.x ** 2 + self.y ** 2) ** 0.5\n"},
]
_GEN_ITEMS = [
    {"prompt": "x = 1\ny =", "target": " 2"},
    {"prompt": "print(", "target": "'hi')"},
    {"prompt": "# sum\n", "target": "s = 0"},
]
# `llmjax eval --task=multiple_choice`'s default prompt (evaluation/fewshot.py), which the YAML
# task below spells in lm-eval's terms, so both score the same (context, continuation) pairs.
_MC_TEMPLATE = "Question: {question}\nAnswer:"
_GEN_KWARGS = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}

_MC_YAML = """\
task: llmjax_test_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
_PPL_YAML = """\
task: llmjax_test_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
_GEN_YAML = """\
task: llmjax_test_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
_TASKS = ["llmjax_test_mc", "llmjax_test_ppl", "llmjax_test_gen"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
  """A workdir as `llmjax train` leaves it, written through llmjax/workdir.py with random
  params: the backend never looks at how the weights were trained."""
  return write_workdir(str(tmp_path_factory.mktemp("lm_eval_backend") / "run"), _MODEL)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> str:
  """Three local YAML tasks over local JSONL files (and a local datasets cache)."""
  path = tmp_path_factory.mktemp("lm_eval_tasks")
  cache = path / "hf_datasets_cache"
  for name, rows, yaml in (("mc", _MC_ITEMS, _MC_YAML), ("ppl", _DOCS, _PPL_YAML),
                           ("gen", _GEN_ITEMS, _GEN_YAML)):
    data = path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (path / f"{name}.yaml").write_text(yaml.format(data=data, cache=cache))
  # The same documents as text files, for `llmjax eval --task=perplexity` (one per file).
  (path / "docs").mkdir()
  for i, doc in enumerate(_DOCS):
    (path / "docs" / f"doc{i}.txt").write_text(doc["text"])
  return str(path)


@pytest.fixture(scope="module")
def harness_lm(run_dir):
  """The model as simple_evaluate(model="llmjax", model_args=...) builds it: found by its
  registered name (importing the adapter registered it), made from model_args."""
  from lm_eval.api.registry import get_model

  return get_model("llmjax").create_from_arg_obj({"workdir": run_dir}, {"batch_size": None})


@pytest.fixture(scope="module")
def model(harness_lm):
  """The reference: the same LoadedModel, its request API called directly (sharing its
  compiled programs keeps the test fast; batching never changes a score)."""
  assert isinstance(harness_lm.model, llmjax.LoadedModel)
  return harness_lm.model


@pytest.fixture(scope="module")
def harness_results(harness_lm, task_dir):
  """simple_evaluate over the three local tasks, offline, with per-sample logs."""
  from lm_eval.tasks import TaskManager

  return lm_eval.simple_evaluate(
      model=harness_lm, tasks=_TASKS,
      task_manager=TaskManager(include_path=task_dir, include_defaults=False),
      bootstrap_iters=0, log_samples=True)


def _mc_prompt(item) -> str:
  return _MC_TEMPLATE.format(question=item["question"])


def _samples(results, task):
  return sorted(results["samples"][task], key=lambda s: s["doc_id"])


def test_multiple_choice_matches_loglikelihood(harness_results, model):
  pairs = [(_mc_prompt(item), " " + choice) for item in _MC_ITEMS for choice in item["choices"]]
  scores = iter(model.loglikelihood(pairs))
  samples = _samples(harness_results, "llmjax_test_mc")
  acc, acc_norm = [], []
  for item, sample in zip(_MC_ITEMS, samples, strict=True):
    lls = np.array([next(scores)[0] for _ in item["choices"]])
    # The harness sent (question, " " + choice) per choice and got llmjax's scores back.
    assert [tuple(a) for a in sample["arguments"]] == [
        (_mc_prompt(item), " " + c) for c in item["choices"]]
    np.testing.assert_array_equal([r[0][0] for r in sample["resps"]], lls)
    acc.append(float(np.argmax(lls) == item["answer"]))
    lengths = np.array([len(c) for c in item["choices"]], float)
    acc_norm.append(float(np.argmax(lls / lengths) == item["answer"]))
  metrics = harness_results["results"]["llmjax_test_mc"]
  assert metrics["acc,none"] == pytest.approx(np.mean(acc), abs=1e-12)
  assert metrics["acc_norm,none"] == pytest.approx(np.mean(acc_norm), abs=1e-12)


def test_perplexity_matches_loglikelihood_rolling(harness_results, model):
  texts = [doc["text"] for doc in _DOCS]
  assert len(ByteTokenizer().encode(texts[2])) > 2 * _MODEL.max_seq_len  # Several windows.
  lls = np.array(model.loglikelihood_rolling(texts))
  samples = _samples(harness_results, "llmjax_test_ppl")
  np.testing.assert_array_equal([s["resps"][0][0] for s in samples], lls)
  num_bytes = sum(len(t.encode("utf-8")) for t in texts)
  num_words = sum(len(re.split(r"\s+", t)) for t in texts)  # The harness's word count.
  metrics = harness_results["results"]["llmjax_test_ppl"]
  assert metrics["bits_per_byte,none"] == pytest.approx(-lls.sum() / num_bytes / math.log(2))
  assert metrics["byte_perplexity,none"] == pytest.approx(math.exp(-lls.sum() / num_bytes))
  assert metrics["word_perplexity,none"] == pytest.approx(math.exp(-lls.sum() / num_words))


def test_generation_matches_generate_until(harness_results, model):
  expected = model.generate_until([(item["prompt"], dict(_GEN_KWARGS)) for item in _GEN_ITEMS])
  samples = _samples(harness_results, "llmjax_test_gen")
  assert [s["resps"][0][0] for s in samples] == expected
  assert any(expected) and not any("\n" in text for text in expected)  # Cut at the stop.
  exact = np.mean([text == item["target"] for text, item in zip(expected, _GEN_ITEMS, strict=True)])
  assert harness_results["results"]["llmjax_test_gen"]["exact_match,none"] == exact


def test_results_record_the_checkpoint(harness_results, run_dir):
  config = harness_results["config"]
  num_params = sum(x.size for x in jax.tree.leaves(
      jax.eval_shape(LanguageModel(_MODEL).init, jax.random.PRNGKey(0))))
  assert (config["llmjax_workdir"], config["llmjax_step"], config["llmjax_architecture"],
          config["model_num_parameters"]) == (os.path.abspath(run_dir), 2, "decoder", num_params)


@pytest.mark.parametrize("kind, data, task, metric_names", [
    ("multiple_choice", "mc.jsonl", "llmjax_test_mc", ("acc", "acc_norm")),
    ("perplexity", "docs/*.txt", "llmjax_test_ppl",
     ("bits_per_byte", "byte_perplexity", "word_perplexity")),
])
def test_llmjax_eval_matches_harness(run_dir, task_dir, harness_results, capfd, kind, data, task,
                                     metric_names):
  """`llmjax eval` on the same items reports the harness's numbers (zero-shot: the two draw
  few-shot examples differently)."""
  from llmjax.cli import main

  capfd.readouterr()
  assert main(["eval", f"--workdir={run_dir}", f"--task={kind}",
               f"--data={os.path.join(task_dir, data)}"]) == 0
  result = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
  harness = harness_results["results"][task]
  for name in metric_names:
    assert result["metrics"][name] == pytest.approx(harness[f"{name},none"], rel=1e-9), name


# Slow: lm-eval's CLI indexes all of its ~14,000 built-in task YAMLs (about 10 s) before it
# reads --include_path; simple_evaluate above is given a TaskManager without them.
@pytest.mark.slow
def test_cli_wrapper_runs_model_llmjax(run_dir, task_dir, tmp_path, monkeypatch, capsys,
                                       harness_results):
  """`python -m llmjax.evaluation.lm_eval_main --model llmjax ...` (lm-eval's CLI with the
  adapter imported), in-process: the same numbers as simple_evaluate, in its results file."""
  out = tmp_path / "out"
  monkeypatch.setattr(sys, "argv", [
      "lm_eval", "--model", "llmjax", "--model_args", f"workdir={run_dir},step=2",
      "--tasks", "llmjax_test_mc", "--include_path", task_dir, "--output_path", str(out)])
  lm_eval_main.main()
  assert "llmjax_test_mc" in capsys.readouterr().out  # The results table.
  (path,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
  with open(path) as f:
    results = json.load(f)["results"]["llmjax_test_mc"]
  expected = harness_results["results"]["llmjax_test_mc"]
  assert (results["acc,none"], results["acc_norm,none"]) == (
      expected["acc,none"], expected["acc_norm,none"])


# --- The adapter alone, over a recording stand-in for LoadedModel (no JAX). -------------------

class _Recorder:
  """Records each request-API call and answers with values derived from the request."""

  def __init__(self):
    self.calls = []

  def loglikelihood(self, requests, *, batch_size=None):
    self.calls.append(("loglikelihood", list(requests), batch_size))
    return [(-float(len(c)), len(c) % 2 == 0) for _, c in requests]

  def loglikelihood_rolling(self, texts, *, batch_size=None):
    self.calls.append(("loglikelihood_rolling", list(texts), batch_size))
    return [-float(len(t)) for t in texts]

  def generate_until(self, requests, *, batch_size=None):
    self.calls.append(("generate_until", list(requests), batch_size))
    return [context[::-1] for context, _ in requests]


def _instances(kind, args_list):
  return [Instance(kind, {}, args, i) for i, args in enumerate(args_list)]


def test_adapter_passes_all_requests_at_once_in_order():
  recorder = _Recorder()
  lm = LlmjaxLM(model=recorder, batch_size=4)
  pairs = [("a", " b"), ("", "xyz"), ("ctx", " cc")]
  assert lm.loglikelihood(_instances("loglikelihood", pairs)) == [
      (-2.0, True), (-3.0, False), (-3.0, False)]
  assert lm.loglikelihood_rolling(_instances("loglikelihood_rolling", ["ab", "c"])) == [
      -2.0, -1.0]
  gens = [("abc", {"until": "\n", "max_gen_toks": 5}), ("de", {"until": ("x", "y")})]
  assert lm.generate_until(_instances("generate_until", gens)) == ["cba", "ed"]
  assert recorder.calls == [
      ("loglikelihood", pairs, 4),
      ("loglikelihood_rolling", ["ab", "c"], 4),
      # lm-eval allows one stop string or a tuple; llmjax takes a list.
      ("generate_until", [("abc", {"until": ["\n"], "max_gen_toks": 5}),
                          ("de", {"until": ["x", "y"]})], 4)]


@pytest.mark.parametrize("arg_string, harness_batch, expected", [
    ("workdir=W", 1, None),              # The CLI's default --batch_size 1: llmjax batches.
    ("workdir=W", None, None),
    ("workdir=W", "auto", None),
    ("workdir=W", 16, 16),               # An explicit --batch_size above 1 is used.
    ("workdir=W,batch_size=8", 1, 8),    # model_args win over the CLI's flag.
    ("workdir=W,batch_size=8,step=3", 32, 8),
    ("workdir=W,batch_size=auto", 32, None),
])
def test_model_args_parse(monkeypatch, arg_string, harness_batch, expected):
  loaded = []
  monkeypatch.setattr("llmjax.evaluation.lm_eval_adapter.load",
                      lambda workdir, step=None: loaded.append((workdir, step)) or _Recorder())
  lm = LlmjaxLM.create_from_arg_string(
      arg_string, {"batch_size": harness_batch, "max_batch_size": None, "device": "cuda:0"})
  assert lm.batch_size_per_call == expected
  assert loaded == [(os.path.abspath("W"), 3 if "step=3" in arg_string else None)]


@pytest.mark.parametrize("arg_string, match", [
    ("workdir=W,pretrained=gpt2", r"unknown llmjax model_args \['pretrained'\].*accepts "
                                  r"workdir, step, batch_size"),
    ("workdir=W,batch_size=0", r"batch_size must be an int >= 1 or 'auto'.*got 0"),
    ("workdir=W,step=-1", r"step must be a checkpoint step \(an int >= 0\), got -1"),
    ("step=3", r"needs exactly one of workdir \(model_args workdir=PATH\) and model"),
])
def test_bad_model_args_are_refused(arg_string, match):
  with pytest.raises(ValueError, match=match):
    LlmjaxLM.create_from_arg_string(arg_string, {"batch_size": 1})
