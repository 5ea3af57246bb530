"""Position schemes against NumPy / pure-Python oracles: sinusoidal tables, T5 buckets, ALiBi
slopes, sliding-window masks, and attention with each bias through dot_product_attention."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.models.attention import Attention
from llmjax.models.config import ModelConfig
from llmjax.models.masks import make_cache_mask, make_segment_mask
from llmjax.models.position import (
    RelativePositionBias,
    alibi_bias,
    alibi_slopes,
    relative_position_bucket,
    sinusoidal_embedding,
)


def test_sinusoidal_matches_formula():
  pos = np.array([[0, 1, 5, 17]])
  got = np.asarray(sinusoidal_embedding(jnp.asarray(pos), 8))
  for t, p in enumerate(pos[0]):
    for i in range(4):
      angle = p / 10_000 ** (2 * i / 8)
      np.testing.assert_allclose(got[0, t, 2 * i], math.sin(angle), atol=1e-5)
      np.testing.assert_allclose(got[0, t, 2 * i + 1], math.cos(angle), atol=1e-5)


def _t5_bucket(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
  """Scalar transcription of T5's _relative_position_bucket."""
  ret, n = 0, -rel
  if bidirectional:
    num_buckets //= 2
    if n < 0:
      ret += num_buckets
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return ret + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return ret + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets_match_t5(bidirectional):
  rel = np.arange(-300, 301)
  got = np.asarray(relative_position_bucket(jnp.asarray(rel), bidirectional=bidirectional,
                                            num_buckets=32, max_distance=128))
  want = [_t5_bucket(int(r), bidirectional, 32, 128) for r in rel]
  np.testing.assert_array_equal(got, want)
  assert got.max() == 31 and got.min() == 0  # Every bucket is reachable.


def test_relative_bias_module_looks_up_the_table():
  module = RelativePositionBias(num_heads=3, num_buckets=8, max_distance=16, bidirectional=True)
  q = jnp.array([[0, 1, 2, 3]])
  params = nn.unbox(module.init(jax.random.PRNGKey(0), q, q))["params"]
  table = np.asarray(params["embedding"])
  got = np.asarray(module.apply({"params": params}, q, q))  # [1, h, t, s]
  for i in range(4):
    for j in range(4):
      bucket = _t5_bucket(j - i, True, 8, 16)
      np.testing.assert_allclose(got[0, :, i, j], table[bucket])


def test_alibi_slopes_match_paper():
  np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
  # 6 heads: the 4-head slopes, then every other slope of the 8-head series.
  np.testing.assert_allclose(alibi_slopes(6), [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8,
                                               2.0 ** -1, 2.0 ** -3])
  bias = np.asarray(alibi_bias(jnp.array([[0, 1, 2]]), jnp.array([[0, 1, 2]]), 2))
  np.testing.assert_allclose(bias[0, 1], -(2.0 ** -8) * np.abs(np.subtract.outer(
      [0, 1, 2], [0, 1, 2])))


def test_sliding_window_masks():
  seg = jnp.ones((1, 5), jnp.int32)
  causal = np.asarray(make_segment_mask(seg, causal=True, window=2))[0, 0]
  i, j = np.indices((5, 5))
  np.testing.assert_array_equal(causal, (j <= i) & (i - j < 2))
  both = np.asarray(make_segment_mask(seg, causal=False, window=2))[0, 0]
  np.testing.assert_array_equal(both, np.abs(i - j) < 2)
  cache = np.asarray(make_cache_mask(jnp.array([[3]]), 6, window=2))[0, 0, 0]
  np.testing.assert_array_equal(cache, [0, 0, 1, 1, 0, 0])


def _attention_np(p, x, bias, allowed, kv_heads):
  x = np.asarray(x, np.float64)
  q = np.einsum("btd,dhk->bthk", x, p["query"])
  k = np.einsum("btd,dgk->btgk", x, p["key"])
  v = np.einsum("btd,dgk->btgk", x, p["value"])
  b, t, h, dk = q.shape
  group = h // kv_heads
  out = np.zeros_like(q)
  for bi in range(b):
    for hi in range(h):
      scores = q[bi, :, hi] @ k[bi, :, hi // group].T / np.sqrt(dk) + bias[bi, hi]
      scores = np.where(allowed[bi], scores, -np.inf)
      w = np.exp(scores - scores.max(-1, keepdims=True))
      out[bi, :, hi] = (w / w.sum(-1, keepdims=True)) @ v[bi, :, hi // group]
  return np.einsum("bthk,hkd->btd", out, p["out"])


@pytest.mark.parametrize("scheme,causal,window", [
    ("alibi", True, None), ("alibi", False, 3), ("t5_relative", False, None),
    ("t5_relative", True, 4)])
def test_attention_with_position_bias_matches_oracle(scheme, causal, window):
  config = ModelConfig(vocab_size=32, num_layers=1, num_heads=4, num_kv_heads=2, embed_dim=16,
                       mlp_dim=32, max_seq_len=16, position=scheme)
  seg = np.array([[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
  pos = np.array([[0, 1, 2, 3, 0, 1, 2, 0], list(range(8))], np.int32)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 16))
  mask = make_segment_mask(jnp.asarray(seg), causal=causal, window=window)
  if scheme == "alibi":
    bias = alibi_bias(jnp.asarray(pos), jnp.asarray(pos), 4)
    rel = pos[:, None, :] - pos[:, :, None]
    expected_bias = -np.asarray(alibi_slopes(4))[None, :, None, None] * np.abs(rel)[:, None]
  else:
    table = np.random.default_rng(2).normal(size=(32, 4))
    module = RelativePositionBias(4, 32, 128, bidirectional=not causal)
    bias = module.apply({"params": {"embedding": table}}, jnp.asarray(pos), jnp.asarray(pos))
    rel = pos[:, None, :] - pos[:, :, None]
    buckets = np.vectorize(lambda r: _t5_bucket(int(r), not causal, 32, 128))(rel)
    expected_bias = np.transpose(table[buckets], (0, 3, 1, 2))
  np.testing.assert_allclose(np.asarray(bias), expected_bias, atol=1e-6)
  module = Attention(config)
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), x, jnp.asarray(pos),
                                   mask, bias))["params"]
  rng = np.random.default_rng(0)
  params = {k: (rng.normal(size=v.shape) * 0.3).astype(np.float32) for k, v in shapes.items()}
  y, _ = jax.jit(module.apply)({"params": params}, x, jnp.asarray(pos), mask, bias)
  i, j = np.indices((8, 8))
  allowed = (seg[:, :, None] == seg[:, None, :]) & ((j <= i) if causal else True)
  if window is not None:
    allowed &= ((i - j) < window) if causal else (np.abs(i - j) < window)
  expected = _attention_np(params, x, expected_bias, allowed, 2)
  np.testing.assert_allclose(np.asarray(y), expected, atol=2e-5, rtol=1e-4)


def _biases_reaching_attention(config: ModelConfig, length: int) -> tuple[list[np.ndarray], dict]:
  """(the `bias` argument of every attention call of a forward pass, the random params)."""
  from llmjax.models.interface import LanguageModel

  lm = LanguageModel(config)
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.5, x.shape), x.dtype),
                        jax.eval_shape(lm.init, jax.random.PRNGKey(0)))
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, Attention) and context.method_name == "__call__":
      bias = args[3] if len(args) > 3 else kwargs.get("bias")
      if bias is not None:
        seen.append(np.asarray(bias))
    return next_fun(*args, **kwargs)

  tokens = jnp.asarray(rng.integers(0, config.vocab_size, (1, length)), jnp.int32)
  with nn.intercept_methods(record):
    lm.apply(params, tokens)
  return seen, params


@pytest.mark.parametrize("scheme", ["alibi", "t5_relative"])
def test_position_biases_are_float32_under_mixed_precision(scheme):
  # bf16 compute, fp32 parameters: the bias must still be the fp32 value, exactly. Distances up
  # to 599 make ALiBi's -slope * distance reach -37 (bf16 there: steps of 0.25).
  length = 600
  fields = dict(vocab_size=32, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                max_seq_len=length, position=scheme, precision="mixed_bfloat16",
                scan_layers=False)
  if scheme == "t5_relative":
    fields |= dict(architecture="encoder", relative_num_buckets=32, relative_max_distance=128)
  config = ModelConfig(**fields)
  assert config.compute_dtype == jnp.bfloat16
  seen, params = _biases_reaching_attention(config, length)
  assert seen
  pos = np.arange(length)
  rel = pos[None, :] - pos[:, None]  # key - query, [t, s]
  if scheme == "alibi":
    slopes = np.asarray([2.0 ** -4, 2.0 ** -8], np.float32)  # Press et al., 2 heads.
    want = (-slopes[:, None, None] * np.abs(rel).astype(np.float32)[None])[None]
  else:
    table = np.asarray(params["encoder"]["relpos_bias"]["embedding"], np.float32)
    buckets = np.vectorize(lambda r: _t5_bucket(int(r), True, 32, 128))(rel)
    want = np.transpose(table[buckets], (2, 0, 1))[None]
  for bias in seen:
    assert bias.dtype == np.float32
    np.testing.assert_array_equal(np.broadcast_to(bias, want.shape), want)
