"""cuDNN vs XLA attention on a GPU: numerics and speed of llmjax's attention seam, bf16.

  python benchmarks/gpu_attention_check.py [--models=gpt2_small,llama_1b] [--seq_len=2048] \
      [--batch_size=4] [--repeats=10]

For each model shape (heads, kv heads, head_dim from its gin file) and each mask the GPU
default sends to cuDNN (causal; causal with a sliding window; bidirectional with right
padding as sequence lengths), this runs `Backend.attention` (models/backend.py) twice: as
planned (attention_impl=None: cuDNN) and forced to XLA (attention_impl='xla'), forward and
forward + backward, and reports:
- the plan (implementation and arguments) and an assertion that it is cuDNN;
- numerics: max |error| of the output and of dq/dk/dv against a float32 XLA reference, for
  cuDNN and for bf16 XLA; `ok` when cuDNN's error is within 2x XLA's (or 2e-2);
- speed: median milliseconds of the jitted forward and forward + backward, and the speed-up.
One extra probe runs cuDNN on a packed-segment mask passed as a dense mask (which jax turns
into an additive bias with a gradient): llmjax keeps that case on XLA; the probe says whether
cuDNN would take it. The last line of stdout is one JSON object. Without a CUDA GPU with cuDNN
the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a source checkout.

from llmjax.cli import gin_config  # noqa: E402
from llmjax.models.backend import Backend, cudnn_device  # noqa: E402
from llmjax.models.masks import MaskSpec  # noqa: E402


def _shape(model: str) -> tuple[int, int, int]:
  gin_config.parse([f"models/{model}.gin"], [])
  cfg = gin_config.build("ModelConfig")
  return cfg.num_heads, cfg.kv_heads, cfg.dim_per_head


def _masks(batch: int, t: int) -> dict[str, MaskSpec]:
  lengths = jnp.asarray(np.linspace(t // 2, t, batch).astype(np.int32))
  return {"causal": MaskSpec.self_attention(t, causal=True),
          "causal_window_512": MaskSpec.self_attention(t, causal=True, window=512),
          "padded_bidirectional": MaskSpec.self_attention(t, causal=False, lengths=lengths)}


def _time_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def _max_err(a, b, rows) -> float:
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.max(np.abs(a[rows] - b[rows])))


def check(backend: Backend, xla: Backend, q, k, v, mask: MaskSpec, repeats: int) -> dict:
  """Plan, numerics and speed of one attention (bf16 q, k, v) on both implementations."""
  plan = backend.plan(mask, q, has_bias=False)
  weights = jax.random.normal(jax.random.PRNGKey(9), q.shape, jnp.float32)

  def forward(b):
    return jax.jit(lambda q, k, v: b.attention(q, k, v, None, mask))

  def loss_grad(b):
    loss = lambda q, k, v: jnp.sum(b.attention(q, k, v, None, mask).astype(jnp.float32)
                                   * weights)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

  rows = np.ones(q.shape[:2], bool)  # Padding queries' outputs are unspecified: skip them.
  if mask.lengths is not None:
    rows = np.arange(q.shape[1])[None] < np.asarray(mask.lengths)[:, None]
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  ref_out, ref_grads = forward(xla)(*f32), loss_grad(xla)(*f32)
  result = {"plan": {"implementation": plan.implementation, "is_causal": plan.is_causal,
                     "local_window_size": plan.local_window_size,
                     "seq_lengths": plan.seq_lengths, "reason": plan.reason}}
  for name, b in (("cudnn", backend), ("xla", xla)):
    out, grads = forward(b)(q, k, v), loss_grad(b)(q, k, v)
    grad_errs = [_max_err(g, r, slice(None)) for g, r in zip(grads, ref_grads, strict=True)]
    result[name] = {
        "out_err": _max_err(out, ref_out, rows),
        "grad_err": max(grad_errs),
        "fwd_ms": _time_ms(forward(b), q, k, v, repeats=repeats),
        "fwd_bwd_ms": _time_ms(loss_grad(b), q, k, v, repeats=repeats)}
  c, x = result["cudnn"], result["xla"]
  result["ok"] = (plan.implementation == "cudnn"
                  and c["out_err"] <= max(2 * x["out_err"], 2e-2)
                  and c["grad_err"] <= max(2 * x["grad_err"], 2e-2))
  result["speedup_fwd"] = x["fwd_ms"] / c["fwd_ms"]
  result["speedup_fwd_bwd"] = x["fwd_bwd_ms"] / c["fwd_bwd_ms"]
  return result


def packed_probe(q, k, v) -> str:
  """Whether cuDNN takes a packed (segment) mask as a dense mask, forward and backward."""
  t = q.shape[1]
  segments = jnp.asarray(np.repeat(np.arange(1, 5), t // 4)[None].repeat(q.shape[0], 0))
  dense = MaskSpec.self_attention(t, causal=True, segment_ids=segments).dense_mask()
  loss = lambda q, k, v: jnp.sum(jax.nn.dot_product_attention(
      q, k, v, mask=dense, is_causal=True, implementation="cudnn").astype(jnp.float32))
  try:
    jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v))
  except Exception as e:  # noqa: BLE001 - the probe reports any failure.
    return f"fails: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
  return "runs (numerics and speed not checked)"


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--models", default="gpt2_small,llama_1b")
  parser.add_argument("--seq_len", type=int, default=2048)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args(argv)
  device = cudnn_device()
  if device is None:
    message = (f"no CUDA GPU with cuDNN flash attention here (default backend "
               f"{jax.default_backend()!r}): nothing to check.")
    print(message, file=sys.stderr)
    return {"benchmark": "gpu_attention_check", "skipped": message}
  backend, xla = Backend(jax.default_backend()), Backend(jax.default_backend(), "xla")
  results = {}
  for model in args.models.split(","):
    h, g, k = _shape(model)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    b, t = args.batch_size, args.seq_len
    q = jax.random.normal(keys[0], (b, t, h, k), jnp.bfloat16)
    kv = [jax.random.normal(key, (b, t, g, k), jnp.bfloat16) for key in keys[1:]]
    results[model] = {"heads": h, "kv_heads": g, "head_dim": k}
    for name, mask in _masks(b, t).items():
      results[model][name] = check(backend, xla, q, *kv, mask, args.repeats)
      print(model, name, json.dumps(results[model][name]), file=sys.stderr, flush=True)
    results[model]["packed_mask_on_cudnn"] = packed_probe(q, *kv)
  return {"benchmark": "gpu_attention_check", "device": jax.devices()[0].device_kind,
          "compute_capability": device.compute_capability, "jax_version": jax.__version__,
          "batch_size": args.batch_size, "seq_len": args.seq_len, "dtype": "bfloat16",
          "all_ok": all(r[m]["ok"] for r in results.values() for m in r
                        if isinstance(r[m], dict)),
          "results": results}


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1:])))
