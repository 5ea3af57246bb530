"""The Attention module against a NumPy oracle: MHA, GQA, MQA with causal + packed-segment masks,
through each attention implementation that runs on CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.models.attention import Attention
from llmjax.models.config import ModelConfig
from llmjax.models.masks import MaskSpec, make_segment_mask
from llmjax.models.stack import TransformerStack


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


def _random_params(module, x, positions, mask):
  # Random params of the right shapes (no init compile; biases nonzero so they count).
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), x, positions,
                                   mask))["params"]
  rng = np.random.default_rng(0)
  return {k: (rng.normal(size=v.shape) * 0.3).astype(np.float32) for k, v in shapes.items()}


@pytest.mark.parametrize("impl", ["einsum", "xla"])
@pytest.mark.parametrize("kv_heads,position,use_bias", [
    (4, "learned", True),  # MHA
    (2, "rope", False),  # GQA
    (1, "rope", True),  # MQA
])
@pytest.mark.parametrize("dense", [False, True])
def test_attention_matches_numpy_oracle(kv_heads, position, use_bias, impl, dense):
  """Packed causal self-attention, the mask given as a MaskSpec or as an explicit array."""
  config = _config(kv_heads, position, use_bias, attention_impl=impl)
  segment_ids = PACKED_SEGMENTS
  positions = _positions(segment_ids)
  x = jax.random.normal(jax.random.PRNGKey(1), segment_ids.shape + (16,))
  module = Attention(config)
  mask = MaskSpec.self_attention(12, causal=True, segment_ids=jnp.asarray(segment_ids))
  if dense:
    mask = make_segment_mask(jnp.asarray(segment_ids))
  params = _random_params(module, x, positions, mask)
  y, cache = jax.jit(module.apply)({"params": params}, x, positions, mask)
  assert cache is None
  expected = _attention_np(params, x, positions, segment_ids, config)
  np.testing.assert_allclose(np.asarray(y), expected, atol=2e-5, rtol=1e-4)
  assert np.all(np.isfinite(np.asarray(y)))


@pytest.mark.parametrize("impl", ["einsum", "xla"])
def test_attention_unpacked_and_padded_rows_match_oracle(impl):
  """One document per row (no segment ids: is_causal on XLA), and right padding given as
  lengths (sequence lengths on XLA): the real tokens' outputs are the oracle's."""
  config = _config(2, "rope", False, attention_impl=impl)
  b, t = 2, 12
  positions = np.broadcast_to(np.arange(t), (b, t))
  x = jax.random.normal(jax.random.PRNGKey(4), (b, t, 16))
  module = Attention(config)
  whole = MaskSpec.self_attention(t, causal=True)
  params = _random_params(module, x, positions, whole)
  y, _ = jax.jit(module.apply)({"params": params}, x, positions, whole)
  expected = _attention_np(params, x, positions, np.ones((b, t), np.int32), config)
  np.testing.assert_allclose(np.asarray(y), expected, atol=2e-5, rtol=1e-4)

  lengths = np.array([7, 12], np.int32)
  padded = MaskSpec.self_attention(t, causal=True, lengths=jnp.asarray(lengths))
  y, _ = jax.jit(module.apply)({"params": params}, x, positions, padded)
  segments = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  expected = _attention_np(params, x, positions, segments, config)
  real = segments.astype(bool)
  np.testing.assert_allclose(np.asarray(y)[real], expected[real], atol=2e-5, rtol=1e-4)


def test_causal_attention_module_equals_unblocked():
  """A causal MaskSpec at t = 128 (the CPU attention's causal query blocks) computes what the
  same mask given as a plain array (no causal structure, one block) computes."""
  cfg = ModelConfig(vocab_size=64, num_layers=1, num_heads=4, num_kv_heads=2, embed_dim=16,
                    mlp_dim=32, max_seq_len=128, position="rope", attention_impl="einsum")
  segments = jnp.asarray(np.where(np.arange(128) < 70, 1, 2)[None].repeat(2, 0))
  segments = segments.at[0].set(1)
  positions = jnp.asarray(_positions(np.asarray(segments)))
  spec = MaskSpec.self_attention(128, causal=True, segment_ids=segments)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 128, 16))
  params = Attention(cfg).init(jax.random.PRNGKey(3), x, positions, spec)
  blocked, _ = Attention(cfg).apply(params, x, positions, spec)
  plain, _ = Attention(cfg).apply(params, x, positions, make_segment_mask(segments))
  np.testing.assert_allclose(np.asarray(blocked), np.asarray(plain), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["einsum", "xla"])
def test_stack_without_segment_ids_equals_one_segment_per_row(impl):
  """A stack given no segment ids builds the structural mask (is_causal for XLA, cuDNN on a
  GPU); it computes what all-ones segment ids compute."""
  cfg = ModelConfig(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=16,
                    mlp_dim=32, max_seq_len=16, position="alibi", sliding_window=5,
                    attention_impl=impl)
  stack = TransformerStack(cfg, cfg.num_layers, causal=True)
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 12, 16))
  positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
  ones = jnp.ones((2, 12), jnp.int32)
  params = stack.init(jax.random.PRNGKey(6), x, positions, ones)
  whole, _ = jax.jit(stack.apply)(params, x, positions, None)
  segmented, _ = jax.jit(stack.apply)(params, x, positions, ones)
  np.testing.assert_allclose(np.asarray(whole), np.asarray(segmented), atol=1e-5, rtol=1e-5)
