"""Which attention implementation runs with which arguments, for each kind of attention: the
dispatch is a pure function, so the GPU choices are tested here without a GPU."""

import jax.numpy as jnp
import pytest

from llmjax.models.attention_plan import CudnnDevice, plan_attention
from llmjax.models.masks import MaskSpec

T = 16
SEG = jnp.ones((2, T), jnp.int32)
LENGTHS = jnp.array([9, 16], jnp.int32)
H100, A100 = CudnnDevice((9, 0)), CudnnDevice((8, 0))
MASKS = {
    "causal": MaskSpec.self_attention(T, causal=True),
    "bidirectional": MaskSpec.self_attention(T, causal=False),
    "causal_window": MaskSpec.self_attention(T, causal=True, window=4),
    "bidirectional_window": MaskSpec.self_attention(T, causal=False, window=4),
    "causal_padded": MaskSpec.self_attention(T, causal=True, window=4, lengths=LENGTHS),
    "bidirectional_padded": MaskSpec.self_attention(T, causal=False, lengths=LENGTHS),
    "packed": MaskSpec.self_attention(T, causal=True, segment_ids=SEG),
    "cache": MaskSpec.over_cache(SEG[:, :1], 32),
    "cross": MaskSpec.explicit(jnp.ones((2, 1, T, 8), bool)),
}


def _plan(mask, requested=None, platform="gpu", dtype=jnp.bfloat16, head_dim=64,
          cudnn=H100, **kwargs):
  return plan_attention(MASKS[mask], requested=requested, platform=platform, dtype=dtype,
                        head_dim=head_dim, cudnn=cudnn, **kwargs)


def _args(plan):
  return (plan.implementation, plan.dense_mask, plan.is_causal, plan.local_window_size,
          plan.seq_lengths)


@pytest.mark.parametrize("mask,expected", [
    # (implementation, dense mask, is_causal, local_window_size, sequence lengths)
    ("causal", ("cudnn", False, True, None, False)),
    ("bidirectional", ("cudnn", False, False, None, False)),
    ("causal_window", ("cudnn", False, True, (3, 0), False)),
    ("causal_padded", ("cudnn", False, True, (3, 0), True)),
    ("bidirectional_padded", ("cudnn", False, False, None, True)),
])
def test_gpu_default_uses_cudnn_with_the_mask_structure(mask, expected):
  plan = _plan(mask)
  assert _args(plan) == expected
  assert not plan.fallback
  assert plan.dot_product_attention_kwargs() == {
      "is_causal": expected[2], "local_window_size": expected[3], "implementation": "cudnn"}


@pytest.mark.parametrize("mask,kwargs,expected,reason", [
    ("causal", {"dtype": jnp.float32}, ("xla", False, True, None, False), "bfloat16/float16"),
    ("bidirectional_window", {}, ("xla", False, False, (3, 3), False),
     "bidirectional sliding window"),
    ("packed", {}, ("xla", True, False, None, False), "packed segments"),
    ("causal", {"has_bias": True}, ("xla", False, True, None, False), "position bias"),
    ("cross", {}, ("xla", True, False, None, False), "explicit dense mask"),
    ("cache", {"kv_heads_major": True}, ("xla", True, False, None, False), "KV cache"),
    ("causal", {"head_dim": 256, "cudnn": A100}, ("xla", False, True, None, False),
     "at most 128"),
    ("causal", {"head_dim": 100}, ("xla", False, True, None, False), "multiple of 8"),
    ("causal", {"queries_split": True}, ("xla", False, True, None, False),
     "sequence parallelism"),
])
def test_gpu_default_falls_back_to_xla_with_the_reason(mask, kwargs, expected, reason):
  plan = _plan(mask, **kwargs)
  assert _args(plan) == expected
  assert reason in plan.reason
  # Self-attention that misses cuDNN is reported; cache and cross-attention are XLA by design.
  assert plan.fallback == (mask not in ("cache", "cross"))


@pytest.mark.parametrize("head_dim,device,implementation", [
    (256, H100, "cudnn"), (128, A100, "cudnn"), (72, A100, "cudnn"), (264, H100, "xla"),
    (8, A100, "cudnn")])
def test_cudnn_head_dims(head_dim, device, implementation):
  assert _plan("causal", head_dim=head_dim, cudnn=device).implementation == implementation


def test_float16_uses_cudnn():
  assert _plan("causal", dtype=jnp.float16).implementation == "cudnn"


def test_cpu_default_is_einsum_over_the_dense_mask():
  plan = _plan("causal_window", platform="cpu", cudnn=None, dtype=jnp.float32)
  assert _args(plan) == ("einsum", True, True, None, False)
  # Causal query blocks only for self-attention over the same tokens, never over a cache.
  assert not _plan("cache", platform="cpu", cudnn=None).is_causal
  assert _plan("packed", requested="einsum").implementation == "einsum"


def test_xla_takes_the_structure_where_it_says_everything():
  assert _args(_plan("causal_window", requested="xla")) == ("xla", False, True, (3, 0), False)
  assert _args(_plan("causal_padded", platform="cpu", requested="xla")) == (
      "xla", False, True, (3, 0), True)
  assert _args(_plan("packed", platform="tpu", cudnn=None)) == ("xla", True, False, None, False)
  tpu = _plan("causal", platform="tpu", cudnn=None)
  assert _args(tpu) == ("xla", False, True, None, False) and not tpu.fallback
  # A GPU without cuDNN flash attention (ROCm, pre-Ampere): XLA, nothing to report.
  assert not _plan("causal", cudnn=None).fallback


def test_requested_cudnn_fails_clearly_where_it_cannot_run():
  with pytest.raises(ValueError, match="bfloat16/float16.*attention_impl=None"):
    _plan("causal", requested="cudnn", dtype=jnp.float32)
  with pytest.raises(ValueError, match="no CUDA GPU"):
    _plan("causal", requested="cudnn", platform="cpu", cudnn=None)
  assert _plan("causal", requested="cudnn").implementation == "cudnn"
  # Decoding over a KV cache and cross-attention have no cuDNN form here: XLA, reported.
  for mask in ("cache", "cross"):
    plan = _plan(mask, requested="cudnn", kv_heads_major=mask == "cache")
    assert plan.implementation == "xla" and not plan.fallback
  with pytest.raises(ValueError, match="not one of"):
    _plan("causal", requested="flash")
