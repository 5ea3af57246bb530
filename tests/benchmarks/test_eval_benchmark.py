"""benchmarks/eval_throughput.py in-process on a tiny model: its JSON and its scores."""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_throughput.py"


def _load_script():
  spec = importlib.util.spec_from_file_location("eval_throughput", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_eval_benchmark_reports_fields_and_scores_like_full_forward():
  script = _load_script()
  outputs = {}
  result = script.main(
      ["--gin_file=runs/benchmark.gin", "--gin_file=models/gpt_cpu_small.gin",
       "--num_items=2", "--num_choices=2", "--context_len=8", "--continuation_len=3",
       "--repeats=1", "--unbatched_items=1"], outputs)
  json.loads(json.dumps(result))  # One JSON object, as printed.
  for key in ("requests_per_sec", "requests_per_sec_min", "requests_per_sec_max",
              "tokens_per_sec", "forward_tokens_per_sec", "padding_fraction", "rows", "batches",
              "first_call_s", "num_compilations", "unbatched_requests_per_sec",
              "speedup_vs_unbatched", "num_params", "device", "jax_version", "python"):
    assert key in result, key
  assert result["num_requests"] == 4 and result["rows"] <= 4
  assert result["requests_per_sec_min"] <= result["requests_per_sec"] <= (
      result["requests_per_sec_max"])
  assert 0 <= result["padding_fraction"] < 1 and result["tokens_per_sec"] > 0
  # The timed scores are the log-probs of an independent full forward pass per request.
  scorer = outputs["scorer"]
  forward = jax.jit(lambda p, t: scorer.model.apply(p, t)[0])
  for (context, continuation), (logprob, greedy) in zip(outputs["requests"], outputs["scores"],
                                                        strict=True):
    row = np.asarray([context + continuation])
    padded = np.zeros((1, 16), np.int32)  # One shape: right padding cannot change a causal row.
    padded[0, :row.shape[1] - 1] = row[0, :-1]
    logits = np.asarray(forward(scorer.params, padded), np.float64)[0, :row.shape[1] - 1]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    n = len(continuation)
    picked = logp[np.arange(len(context) - 1, row.shape[1] - 1), continuation]
    np.testing.assert_allclose(logprob, picked.sum(), rtol=1e-5, atol=1e-4)
    assert greedy == bool((logits[-n:].argmax(-1) == continuation).all())
