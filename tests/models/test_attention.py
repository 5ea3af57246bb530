"""Attention against a NumPy oracle: MHA, GQA, MQA with causal + packed-segment masks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.models.attention import (
  Attention,
  attend,
  causal_query_blocks,
  einsum_step_attention,
  make_cache_mask,
  make_segment_mask,
  write_cache,
)
from llmjax.models.config import ModelConfig


def _config(kv_heads, position="learned", use_bias=False, attention_impl=None):
  return ModelConfig(vocab_size=64, num_layers=1, num_heads=4, num_kv_heads=kv_heads,
                     embed_dim=16, mlp_dim=32, max_seq_len=16, position=position,
                     use_bias=use_bias, attention_impl=attention_impl)


def _rope_np(x, positions, theta):
  half = x.shape[-1] // 2
  inv = 1.0 / theta ** (np.arange(half) / half)
  ang = positions[..., None] * inv  # [b, t, k/2]
  sin, cos = np.sin(ang)[:, :, None], np.cos(ang)[:, :, None]
  x1, x2 = x[..., :half], x[..., half:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def _attention_np(p, x, positions, segment_ids, config):
  """Loops over heads; a query sees keys j <= i of its own segment."""
  x = np.asarray(x, np.float64)
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  q = np.einsum("btd,dhk->bthk", x, p["query"])
  k = np.einsum("btd,dgk->btgk", x, p["key"])
  v = np.einsum("btd,dgk->btgk", x, p["value"])
  if config.use_bias:
    q, k, v = q + p["query_bias"], k + p["key_bias"], v + p["value_bias"]
  if config.position == "rope":
    q = _rope_np(q, positions, config.rope_theta)
    k = _rope_np(k, positions, config.rope_theta)
  b, t, h, dk = q.shape
  group = h // config.kv_heads
  out = np.zeros_like(q)
  for bi in range(b):
    for hi in range(h):
      scores = q[bi, :, hi] @ k[bi, :, hi // group].T / np.sqrt(dk)  # [t, s]
      allowed = (np.tril(np.ones((t, t), bool))
                 & (segment_ids[bi][:, None] == segment_ids[bi][None, :]))
      scores = np.where(allowed, scores, -np.inf)
      w = np.exp(scores - scores.max(-1, keepdims=True))
      out[bi, :, hi] = (w / w.sum(-1, keepdims=True)) @ v[bi, :, hi // group]
  y = np.einsum("bthk,hkd->btd", out, p["out"])
  return y + p["out_bias"] if config.use_bias else y


PACKED_SEGMENTS = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 0],
                            [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2],
                            [0] * 12], np.int32)  # The last row is all padding.


def _positions(segment_ids):
  pos = np.zeros_like(segment_ids)
  for b in range(segment_ids.shape[0]):
    for i in range(1, segment_ids.shape[1]):
      pos[b, i] = pos[b, i - 1] + 1 if segment_ids[b, i] == segment_ids[b, i - 1] else 0
  return pos


@pytest.mark.parametrize("impl", ["einsum", "xla"])
@pytest.mark.parametrize("kv_heads,position,use_bias", [
    (4, "learned", True),  # MHA
    (2, "rope", False),  # GQA
    (1, "rope", True),  # MQA
])
def test_attention_matches_numpy_oracle(kv_heads, position, use_bias, impl):
  config = _config(kv_heads, position, use_bias, attention_impl=impl)
  segment_ids = PACKED_SEGMENTS
  positions = _positions(segment_ids)
  x = jax.random.normal(jax.random.PRNGKey(1), segment_ids.shape + (16,))
  module = Attention(config)
  mask = make_segment_mask(jnp.asarray(segment_ids))
  # Random params of the right shapes (no init compile; biases nonzero so they count).
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), x, positions,
                                   mask))["params"]
  rng = np.random.default_rng(0)
  params = {k: (rng.normal(size=v.shape) * 0.3).astype(np.float32) for k, v in shapes.items()}
  y, cache = jax.jit(module.apply)({"params": params}, x, positions, mask)
  assert cache is None
  expected = _attention_np(params, x, positions, segment_ids, config)
  np.testing.assert_allclose(np.asarray(y), expected, atol=2e-5, rtol=1e-4)
  assert np.all(np.isfinite(np.asarray(y)))


def test_masks():
  seg = jnp.array([[1, 1, 2, 0]])
  mask = np.asarray(make_segment_mask(seg))[0, 0]
  np.testing.assert_array_equal(mask, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
  cache_mask = np.asarray(make_cache_mask(jnp.array([[2], [0]]), 4))[:, 0, 0]
  np.testing.assert_array_equal(cache_mask, [[1, 1, 1, 0], [1, 0, 0, 0]])


def test_write_cache_scatters_per_row():
  cache = jnp.zeros((2, 2, 5, 1))  # [b, g, s, k]
  new = jnp.array([[1.0, 2.0], [3.0, 4.0]])[:, :, None, None] * jnp.array([1.0, 10.0])[:, None]
  out = np.asarray(write_cache(cache, new, jnp.array([[0, 1], [3, 4]])))[..., 0]
  np.testing.assert_array_equal(out[:, 0], [[1, 2, 0, 0, 0], [0, 0, 0, 3, 4]])
  np.testing.assert_array_equal(out[:, 1], [[10, 20, 0, 0, 0], [0, 0, 0, 30, 40]])


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_step_attention_equals_write_then_attend(kv_heads, with_bias):
  """The decode step that attends to the old cache plus the new token == writing the token
  into the cache and attending over it, per row at its own position (stale slot included)."""
  b, h, s, k = 3, 4, 8, 16
  keys = jax.random.split(jax.random.PRNGKey(3), 7)
  q = jax.random.normal(keys[0], (b, 1, h, k))
  k_new, v_new = (jax.random.normal(keys[i], (b, 1, kv_heads, k)) for i in (1, 2))
  # Old caches full of garbage, including the slot about to be overwritten and slots ahead.
  k_old, v_old = (jax.random.normal(keys[i], (b, kv_heads, s, k)) for i in (3, 4))
  positions = jnp.array([[0], [5], [7]])
  mask = make_cache_mask(positions, s, window=6)
  bias = jax.random.normal(keys[5], (1, h, 1, s)) if with_bias else None
  got = einsum_step_attention(q, k_new, v_new, k_old, v_old, bias, mask, positions, 0.3)
  want = attend(q, write_cache(k_old, k_new, positions), write_cache(v_old, v_new, positions),
                bias, mask, "einsum", 0.3, heads_major=True)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kv_heads", [6, 2, 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_einsum_attention_equals_dot_product_attention_with_gradients(kv_heads, with_bias):
  """llmjax's CPU attention and jax.nn.dot_product_attention: same outputs and gradients,
  with GQA/MQA grouping, a per-head additive bias and a packed causal mask."""
  b, t, h, k = 2, 8, 6, 4
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(keys[0], (b, t, h, k))
  kv = jax.random.normal(keys[1], (2, b, t, kv_heads, k))
  bias = jax.random.normal(keys[2], (1, h, t, t)) if with_bias else None
  mask = make_segment_mask(jnp.asarray([[1] * 5 + [2] * 3, [1] * 8]))

  def loss(impl, q, key, value):
    out = attend(q, key, value, bias, mask, impl)
    return jnp.sum(out * jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size)

  for argnums in (0, 1, 2):
    ref = jax.grad(functools.partial(loss, "xla"), argnums)(q, kv[0], kv[1])
    got = jax.grad(functools.partial(loss, "einsum"), argnums)(q, kv[0], kv[1])
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(attend(q, kv[0], kv[1], bias, mask, "einsum")),
                             np.asarray(attend(q, kv[0], kv[1], bias, mask, "xla")),
                             atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t,kv_heads,window,with_bias", [
    (256, 2, None, True),  # 4 query blocks, GQA, per-head bias
    (192, 6, 40, False),  # 3 blocks, sliding window
])
def test_causal_query_blocks_equal_dot_product_attention_with_gradients(t, kv_heads, window,
                                                                        with_bias):
  """Causal einsum attention split into query blocks that skip the masked keys: the outputs
  and gradients of jax.nn.dot_product_attention over the whole mask (packed segments, a
  padding tail, GQA, bias or window)."""
  b, h, k = 2, 6, 8
  assert causal_query_blocks(t) == t // 64
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  q = jax.random.normal(keys[0], (b, t, h, k))
  kv = jax.random.normal(keys[1], (2, b, t, kv_heads, k))
  bias = jax.random.normal(keys[2], (1, h, t, t)) if with_bias else None
  segments = np.ones((b, t), np.int32)
  segments[0, 100:] = 2
  segments[0, t - 20:] = 0  # Padding sees padding only.
  mask = make_segment_mask(jnp.asarray(segments), window=window)

  def loss(impl, causal, q, key, value):
    out = attend(q, key, value, bias, mask, impl, causal=causal)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape)))

  for argnums in (0, 1, 2):
    ref = jax.grad(functools.partial(loss, "xla", False), argnums)(q, kv[0], kv[1])
    got = jax.grad(functools.partial(loss, "einsum", True), argnums)(q, kv[0], kv[1])
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(np.asarray(attend(q, kv[0], kv[1], bias, mask, "einsum",
                                               causal=True)),
                             np.asarray(attend(q, kv[0], kv[1], bias, mask, "xla")),
                             atol=1e-5, rtol=1e-5)


def test_causal_query_blocks_count():
  assert [causal_query_blocks(t) for t in (12, 64, 100, 128, 192, 256, 1024, 4096, 4000)] == [
      1, 1, 1, 2, 3, 4, 8, 8, 8]


def test_causal_attention_module_equals_unblocked():
  """The Attention module of a causal stack (query blocks at t = 128) computes what the same
  module without the causal hint computes."""
  cfg = ModelConfig(vocab_size=64, num_layers=1, num_heads=4, num_kv_heads=2, embed_dim=16,
                    mlp_dim=32, max_seq_len=128, position="rope", attention_impl="einsum")
  segments = np.ones((2, 128), np.int32)
  segments[1, 70:] = 2
  positions = jnp.asarray(_positions(segments))
  mask = make_segment_mask(jnp.asarray(segments))
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 128, 16))
  params = Attention(cfg).init(jax.random.PRNGKey(3), x, positions, mask)
  plain, _ = Attention(cfg).apply(params, x, positions, mask)
  blocked, _ = Attention(cfg, causal=True).apply(params, x, positions, mask)
  np.testing.assert_allclose(np.asarray(blocked), np.asarray(plain), atol=1e-5, rtol=1e-5)
