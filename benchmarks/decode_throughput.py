"""Greedy KV-cache decoding throughput of a gin-configured decoder, against its bandwidth floor.

  python benchmarks/decode_throughput.py --gin_file=runs/benchmark.gin \
      --gin_file=models/gpt_baby.gin --gin.VOCAB_SIZE=50257 \
      --batch_size=1 --prompt_len=64 --new_tokens=192 [--repeats=5]

The model comes from gin exactly as in `llmjax train` (random-init params, random prompt ids);
decoding is the library's own compiled path, `llmjax.sampling.decoding.generate` (the loop the
Sampler also runs) over the model's `Decoder` (`LanguageModel.decoder(params)`: its logits_fn,
params and cache, as the Sampler decodes), greedy with eos_id=None, so every row generates
exactly new_tokens. Unlike the Sampler, which builds the Decoder inside each compiled call,
the Decoder's params are laid out once before timing, so the timed calls are the decode alone.

Reported (the last line of stdout is one JSON object):
- tokens_per_sec: batch * new_tokens / wall time of one whole `generate` call (prefill +
  new_tokens tokens, as a user sees it), median over repeats, with min and max;
  decode_tokens_per_sec counts only the per-token steps (the call minus the prefill).
- prefill_time_s / time_to_first_token_s: a `generate` call with max_new_tokens=1 (prefill and
  the first token), warm; time_to_first_token_cold_s is the first such call after the params
  are loaded, compile included; compile_time_s / ttft_compile_time_s are the tracing, lowering
  and XLA compile seconds of the two programs (from jax.monitoring events).
- the memory-bandwidth floor, measured in the same run: a donated, in-place `x + 1` over a
  --bandwidth_mb fp32 array gives GB/s (bytes read + written / time, median); one decode step
  has to read every parameter and the KV cache up to the current position, so
  floor_tokens_per_sec = bandwidth / (param bytes + KV bytes at the average context) * batch,
  and fraction_of_bandwidth_floor = tokens_per_sec / floor_tokens_per_sec.
- ratio_to_hf: tokens_per_sec over Hugging Face transformers' `generate` on the same machine
  for the same GPT-2-shaped model (6 layers, width 384, vocab 50257), batch 1 and 8 only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a source checkout.

from llmjax.cli import gin_config  # noqa: E402
from llmjax.models.decoder import Decoder, Params  # noqa: E402
from llmjax.models.interface import LanguageModel  # noqa: E402
from llmjax.sampling import decoding  # noqa: E402
from llmjax.sampling.cache import cache_size_bytes  # noqa: E402

# HF transformers `generate` (greedy, PyTorch, same 2-core machine) on a 30M-parameter
# GPT-2-shaped model (6 layers, width 384, vocab 50257), prompt 64 + 192 new tokens: tokens/s.
HF_ANCHOR_TOKENS_PER_SEC = {1: 70.0, 8: 253.0}
HF_ANCHOR_SHAPE = {"num_layers": 6, "embed_dim": 384, "vocab_size": 50257}
# Events jax records while tracing, lowering and compiling a program (jax._src.dispatch).
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class CompileTimer:
  """Sums the compile-related jax.monitoring durations recorded inside a `with` block."""

  def __init__(self) -> None:
    self.seconds = 0.0

  def _listener(self, event: str, duration: float, **_: Any) -> None:
    if event in COMPILE_EVENTS:
      self.seconds += duration

  def __enter__(self) -> CompileTimer:
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc: Any) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listener)


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
  """Wall and process-CPU seconds of fn() until its result is ready, and the result."""
  start, cpu = time.perf_counter(), time.process_time()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, time.process_time() - cpu, out


def measure_bandwidth(megabytes: int, repeats: int) -> float:
  """Device memory bandwidth in bytes/s: a donated, in-place `x + 1` over a float32 array.

  Each call reads and writes the whole array, so bytes moved = 2 * size. Donation keeps it in
  one buffer (no fresh allocation to fault in), like a copy loop.
  """
  n = megabytes * 2**20 // 4
  add_one = jax.jit(lambda x: x + 1, donate_argnums=0)
  x = jax.block_until_ready(add_one(jnp.zeros((n,), jnp.float32)))  # Compiles, touches memory.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    x = jax.block_until_ready(add_one(x))
    times.append(time.perf_counter() - start)
  del x
  return 2 * n * 4 / statistics.median(times)


def decode_step_bytes(decoder: Decoder, params: Params, batch: int, context: float) -> float:
  """Bytes one decode step must read: every parameter once, plus the KV cache of `context`
  positions per row (float: an average over the steps)."""
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  kv_bytes_per_slot = cache_size_bytes(decoder, batch, 1)  # k and v, all layers, one slot.
  return param_bytes + kv_bytes_per_slot * context


def main(argv: list[str], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs the benchmark and returns the result dict (printed as JSON by the script).

  Args:
    argv: command-line flags (see the module docstring); `--gin.NAME=VALUE` as in the CLI.
    outputs: if given, filled with what the JSON leaves out, for tests: "model", "params",
      "prompt" [b, P] int32 and "tokens" [b, new_tokens] int32 (the last timed call's output).
  """
  rest, bindings = gin_config.split_gin_flags(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--batch_size", type=int, default=1)
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=192)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--bandwidth_mb", type=int, default=256,
                      help="size of the float32 array the bandwidth probe streams")
  parser.add_argument("--bandwidth_repeats", type=int, default=7)
  args = parser.parse_args(rest)
  gin_config.parse(args.gin_file or ["runs/benchmark.gin", "models/gpt_baby.gin"], bindings)
  model_cfg = gin_config.build("ModelConfig")
  lm = LanguageModel(model_cfg)
  if model_cfg.architecture != "decoder":
    raise ValueError(f"decode_throughput measures decoder-only models; this one is "
                     f"{model_cfg.architecture!r}.")
  batch, prompt_len, new_tokens = args.batch_size, args.prompt_len, args.new_tokens
  cache_len = prompt_len + new_tokens
  if cache_len > model_cfg.max_seq_len:
    raise ValueError(f"prompt_len + new_tokens = {cache_len} exceeds the model's max_seq_len "
                     f"{model_cfg.max_seq_len}.")

  start = time.perf_counter()
  params = jax.block_until_ready(lm.init(jax.random.PRNGKey(args.seed)))
  init_s = time.perf_counter() - start
  rng = np.random.default_rng(args.seed)
  prompt = jnp.asarray(rng.integers(0, model_cfg.vocab_size, (batch, prompt_len), np.int32))
  lengths = jnp.full((batch,), prompt_len, jnp.int32)
  key = jax.random.PRNGKey(args.seed)
  decoder = jax.block_until_ready(lm.decoder(params))  # Lays the params out once, untimed.

  def run(max_new_tokens: int,
          timer: CompileTimer | None = None) -> tuple[float, float, decoding.DecodeOutput]:
    # A fresh all-zero cache per call, made outside the timed region (as a caller would).
    cache = jax.block_until_ready(decoder.init_cache(batch, prompt_len + max_new_tokens))
    with timer or CompileTimer():
      return _timed(lambda: decoding.generate(
          decoder.logits_fn, decoder.params, prompt, lengths, cache, key,
          max_new_tokens=max_new_tokens, eos_id=None, cache_len=decoder.cache_length(cache),
          max_seq_len=decoder.max_seq_len))

  # Time to first token after load: the first call, compile included.
  ttft_compile, compile_timer = CompileTimer(), CompileTimer()
  load_before = os.getloadavg()[0]
  ttft_cold_s, _, _ = run(1, ttft_compile)
  first_call_s, _, out = run(new_tokens, compile_timer)
  prefill_times = [run(1)[0] for _ in range(args.repeats)]
  call_times, call_cpu = [], []
  for _ in range(args.repeats):
    seconds, cpu_seconds, out = run(new_tokens)
    call_times.append(seconds)
    call_cpu.append(cpu_seconds)
  tokens = np.asarray(out.tokens)
  if not (np.asarray(out.lengths) == new_tokens).all():
    raise RuntimeError(f"rows stopped early: lengths {np.asarray(out.lengths).tolist()}.")

  bandwidth = measure_bandwidth(args.bandwidth_mb, args.bandwidth_repeats)
  # Step i (i = 0 .. new_tokens - 1) attends to prompt_len + i positions.
  average_context = prompt_len + (new_tokens - 1) / 2
  step_bytes = decode_step_bytes(decoder, params, batch, average_context)
  floor = bandwidth / step_bytes * batch

  rates = [batch * new_tokens / t for t in call_times]
  median = statistics.median(rates)
  prefill_s = statistics.median(prefill_times)
  call_s = statistics.median(call_times)
  # The steps after the first token; the prefill call already sampled token 1.
  decode_s = call_s - prefill_s
  decode_rate = batch * (new_tokens - 1) / decode_s if new_tokens > 1 and decode_s > 0 else None
  anchor = None
  if all(getattr(model_cfg, k) == v for k, v in HF_ANCHOR_SHAPE.items()):
    anchor = HF_ANCHOR_TOKENS_PER_SEC.get(batch)

  if outputs is not None:
    outputs.update(model=lm, params=params, prompt=np.asarray(prompt), tokens=tokens)
  return {
      "benchmark": "decode_throughput",
      "gin_files": args.gin_file,
      "bindings": bindings,
      "tokens_per_sec": median,
      "tokens_per_sec_min": min(rates),
      "tokens_per_sec_max": max(rates),
      "generate_time_s": call_s,
      # Process CPU seconds per call: steadier than wall time when other jobs share the cores.
      "generate_cpu_time_s": statistics.median(call_cpu),
      "decode_tokens_per_sec": decode_rate,
      "decode_step_time_s": decode_s / (new_tokens - 1) if new_tokens > 1 else None,
      "prefill_time_s": prefill_s,
      "time_to_first_token_s": prefill_s,
      "time_to_first_token_cold_s": ttft_cold_s,
      "ttft_compile_time_s": ttft_compile.seconds,
      "first_call_s": first_call_s,
      "compile_time_s": compile_timer.seconds,
      "init_time_s": init_s,
      "bandwidth_gb_s": bandwidth / 1e9,
      "bandwidth_probe": f"jit(x + 1, donated) over {args.bandwidth_mb} MiB float32, "
                         f"(read + write) / median of {args.bandwidth_repeats}",
      "bytes_per_decode_step": step_bytes,
      "average_context": average_context,
      "floor_tokens_per_sec": floor,
      "fraction_of_bandwidth_floor": median / floor,
      "decode_fraction_of_bandwidth_floor": None if decode_rate is None else decode_rate / floor,
      "hf_anchor_tokens_per_sec": anchor,
      "ratio_to_hf": None if anchor is None else median / anchor,
      "num_params": lm.num_params(),
      "param_bytes": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)),
      "kv_cache_bytes": cache_size_bytes(decoder, batch, cache_len),
      "batch_size": batch,
      "prompt_len": prompt_len,
      "new_tokens": new_tokens,
      "scan_layers": model_cfg.scan_layers,
      "compute_dtype": model_cfg.compute_dtype.name,
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
