"""Throughput of `loglikelihood` (the evaluator's scoring path) on a gin-configured model.

  python benchmarks/eval_throughput.py --gin_file=runs/benchmark.gin \
      --gin_file=models/gpt_cpu_small.gin --num_items=64 --num_choices=4 \
      --context_len=48 --continuation_len=8 [--batch_size=N] [--repeats=3]

The model comes from gin exactly as in `llmjax train` (random-init params); the requests are a
synthetic multiple-choice set on token ids: num_items contexts of uniform random length in
[context_len / 2, context_len] tokens (BOS first), each with num_choices continuations of 1 to
continuation_len tokens (--continuation_len=1: one-token answers, which share one row per
item). They run through `Scorer.loglikelihood_tokens` (llmjax/sampling/scoring.py), the code
behind `LoadedModel.loglikelihood`, minus the tokenizer.

Reported (the last line of stdout is one JSON object):
- requests_per_sec, tokens_per_sec: requests and their tokens (context + continuation, after
  truncation to max_seq_len) per second of a warm call, median over repeats (with min, max);
- forward_tokens_per_sec: the padded [rows, length] tokens the compiled forward passes ran;
  padding_fraction: the share of those that were padding; rows and batches of a call;
- first_call_s (compile included), num_compilations;
- unbatched_requests_per_sec: the first --unbatched_items (8) items' requests scored one call
  each with batch_size=1 (a naive loop), and speedup_vs_unbatched = requests_per_sec over it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a source checkout.

from llmjax.cli import gin_config  # noqa: E402
from llmjax.data.tokenizer import IdTokenizer  # noqa: E402
from llmjax.models.interface import LanguageModel  # noqa: E402
from llmjax.sampling.scoring import Scorer  # noqa: E402


def make_requests(rng: np.random.Generator, *, num_items: int, num_choices: int,
                  context_len: int, continuation_len: int, vocab_size: int,
                  bos_id: int) -> list[tuple[list[int], list[int]]]:
  """Synthetic multiple-choice requests on ids (see the module docstring), item-major."""
  requests = []
  for _ in range(num_items):
    length = int(rng.integers(max(context_len // 2, 1), context_len + 1))
    context = [bos_id] + rng.integers(0, vocab_size, length - 1).tolist()
    for _ in range(num_choices):
      n = int(rng.integers(1, continuation_len + 1))
      requests.append((context, rng.integers(0, vocab_size, n).tolist()))
  return requests


def _timed(fn) -> tuple[float, Any]:
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def main(argv: list[str], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs the benchmark and returns the result dict (printed as JSON by the script).

  Args:
    argv: command-line flags (see the module docstring); `--gin.NAME=VALUE` as in the CLI.
    outputs: if given, filled with what the JSON leaves out, for tests: "scorer", "requests"
      and "scores" (the last timed call's [(log p, is_greedy)]).
  """
  rest, bindings = gin_config.split_gin_flags(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--num_items", type=int, default=64)
  parser.add_argument("--num_choices", type=int, default=4)
  parser.add_argument("--context_len", type=int, default=48)
  parser.add_argument("--continuation_len", type=int, default=8)
  parser.add_argument("--batch_size", type=int, default=None,
                      help="rows per forward pass; default: the Scorer's automatic choice")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--unbatched_items", type=int, default=8,
                      help="items whose requests the naive one-per-call loop scores")
  args = parser.parse_args(rest)
  gin_config.parse(args.gin_file or ["runs/benchmark.gin", "models/gpt_cpu_small.gin"],
                   bindings)
  model_cfg = gin_config.build("ModelConfig")
  if model_cfg.architecture == "encoder":
    raise ValueError("eval_throughput scores continuations: use a decoder or encoder_decoder "
                     "model (an encoder-only model has no left-to-right likelihood).")
  lm = LanguageModel(model_cfg)
  params = jax.block_until_ready(lm.init(jax.random.PRNGKey(args.seed)))
  tokenizer = IdTokenizer(model_cfg.vocab_size, pad_id=0, bos_id=1, eos_id=2)
  scorer = Scorer(lm, params, tokenizer)
  rng = np.random.default_rng(args.seed)
  requests = make_requests(rng, num_items=args.num_items, num_choices=args.num_choices,
                           context_len=args.context_len,
                           continuation_len=args.continuation_len,
                           vocab_size=model_cfg.vocab_size, bos_id=tokenizer.bos_id)
  max_len = model_cfg.max_seq_len
  request_tokens = sum(min(len(c) + len(x), max_len + 1) - 1 for c, x in requests)

  def score(reqs, batch_size=args.batch_size):
    return scorer.loglikelihood_tokens(reqs, batch_size=batch_size)

  load_before = os.getloadavg()[0]
  first_call_s, _ = _timed(lambda: score(requests))
  times, scores = [], None
  for _ in range(args.repeats):
    seconds, scores = _timed(lambda: score(requests))
    times.append(seconds)
  stats = dict(scorer.stats)
  call_s = statistics.median(times)
  rates = [len(requests) / t for t in times]
  # A naive loop: one request per call, batch_size=1 (warm: each shape compiled before timing).
  few = requests[:min(args.num_items, args.unbatched_items) * args.num_choices]
  for request in few:
    score([request], batch_size=1)
  unbatched_s, _ = _timed(lambda: [score([r], batch_size=1) for r in few])
  unbatched_rate = len(few) / unbatched_s
  if outputs is not None:
    outputs.update(scorer=scorer, requests=requests, scores=scores)
  return {
      "benchmark": "eval_throughput",
      "gin_files": args.gin_file,
      "bindings": bindings,
      "num_requests": len(requests),
      "num_items": args.num_items,
      "num_choices": args.num_choices,
      "context_len": args.context_len,
      "continuation_len": args.continuation_len,
      "batch_size": args.batch_size,
      "requests_per_sec": statistics.median(rates),
      "requests_per_sec_min": min(rates),
      "requests_per_sec_max": max(rates),
      "tokens_per_sec": request_tokens / call_s,
      "forward_tokens_per_sec": stats["padded_tokens"] / call_s,
      "padding_fraction": 1 - stats["row_tokens"] / stats["padded_tokens"],
      "request_tokens": request_tokens,
      "rows": stats["rows"],
      "batches": stats["batches"],
      "call_time_s": call_s,
      "first_call_s": first_call_s,
      "num_compilations": scorer.num_compilations,
      "unbatched_requests_per_sec": unbatched_rate,
      "speedup_vs_unbatched": statistics.median(rates) / unbatched_rate,
      "num_params": lm.num_params(),
      "max_seq_len": max_len,
      "vocab_size": model_cfg.vocab_size,
      "device": jax.devices()[0].device_kind,
      "platform": jax.devices()[0].platform,
      "cpu_count": os.cpu_count(),
      # 1-minute load average before and after: above cpu_count, other jobs shared the cores.
      "load_average": [load_before, os.getloadavg()[0]],
      "jax_version": jax.__version__,
      "python": platform.python_version(),
  }


if __name__ == "__main__":
  result = main(sys.argv[1:])
  print(json.dumps(result))
