"""benchmarks/decode_throughput.py in-process on a tiny model: its JSON and its tokens."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decode_throughput.py"
BATCH, PROMPT, NEW = 2, 8, 8


def _load_script():
  spec = importlib.util.spec_from_file_location("decode_throughput", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _full_forward_greedy(model, params, prompt: np.ndarray, n: int) -> np.ndarray:
  """Greedy tokens from re-running the whole sequence each step (no cache): the reference."""
  total = prompt.shape[1] + n
  positions = jnp.broadcast_to(jnp.arange(total, dtype=jnp.int32), (prompt.shape[0], total))

  @jax.jit
  def last_logits(seqs, last):  # Right padding cannot change earlier (causal) positions.
    logits, _ = model.logits_fn(params, seqs, positions, None)
    return logits[jnp.arange(seqs.shape[0]), last]

  seqs = np.zeros((prompt.shape[0], total), np.int32)
  seqs[:, :prompt.shape[1]] = prompt
  for step in range(n):
    length = prompt.shape[1] + step
    logits = np.asarray(last_logits(seqs, jnp.full((prompt.shape[0],), length - 1)))
    seqs[:, length] = np.argmax(logits, axis=-1)
  return seqs[:, prompt.shape[1]:]


def test_decode_benchmark_reports_fields_and_decodes_like_full_forward():
  script = _load_script()
  outputs = {}
  result = script.main(
      ["--gin_file=runs/benchmark.gin", "--gin_file=models/gpt_cpu_small.gin",
       f"--batch_size={BATCH}", f"--prompt_len={PROMPT}", f"--new_tokens={NEW}",
       "--repeats=1", "--bandwidth_mb=8", "--bandwidth_repeats=2"], outputs)
  json.loads(json.dumps(result))  # One JSON object, as printed.
  for key in ("tokens_per_sec", "tokens_per_sec_min", "tokens_per_sec_max", "prefill_time_s",
              "time_to_first_token_s", "time_to_first_token_cold_s", "compile_time_s",
              "bandwidth_gb_s", "floor_tokens_per_sec", "fraction_of_bandwidth_floor",
              "num_params", "device", "jax_version", "python"):
    assert key in result, key
  assert result["tokens_per_sec_min"] <= result["tokens_per_sec"] <= result["tokens_per_sec_max"]
  assert result["floor_tokens_per_sec"] > 0 and result["fraction_of_bandwidth_floor"] > 0
  assert result["compile_time_s"] > 0
  assert result["ratio_to_hf"] is None  # The HF anchors are for the GPT-2-shaped baby model.
  assert (result["batch_size"], result["prompt_len"], result["new_tokens"]) == (BATCH, PROMPT,
                                                                                 NEW)
  assert result["num_params"] == sum(x.size for x in jax.tree.leaves(outputs["params"]))

  tokens = outputs["tokens"]
  assert tokens.shape == (BATCH, NEW)
  expected = _full_forward_greedy(outputs["model"], outputs["params"], outputs["prompt"], NEW)
  np.testing.assert_array_equal(tokens, expected)
