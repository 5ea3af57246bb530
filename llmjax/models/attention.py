"""Causal self-attention: multi-head, grouped-query (GQA) and multi-query (MQA).

Projections are einsums over explicitly named kernels (q: [d, h, k], k/v: [d, g, k],
out: [h, k, d]); the attention itself is `jax.nn.dot_product_attention` in [b, t, h, k]
layout, which handles g < h natively and lets GPUs pick cuDNN flash attention.

Masks: without a cache, a query attends to earlier-or-equal keys of the same segment of its
row (packed documents never see each other; padding, segment 0, only sees padding, so no row
is ever fully masked and no NaN appears). With a cache, each token's k/v are first written at
slot `positions[b, t]` of its row, then a query at position p attends to slots j <= p.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.config import ModelConfig
from llmjax.models.position import apply_rope
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain

LayerCache = dict[str, jax.Array]  # {"k": [b, s, g, k], "v": [b, s, g, k]}


def make_segment_mask(segment_ids: jax.Array) -> jax.Array:
  """[b, t] segment ids -> [b, 1, t, t] bool: causal and within the same segment."""
  t = segment_ids.shape[-1]
  causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]  # [t, s]
  same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [b, t, s]
  return (causal[None] & same)[:, None]


def make_cache_mask(positions: jax.Array, cache_len: int) -> jax.Array:
  """[b, t] query positions -> [b, 1, t, s] bool: slot j visible iff j <= position."""
  return (jnp.arange(cache_len)[None, None, :] <= positions[:, :, None])[:, None]


def write_cache(cache: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
  """Scatters new [b, t, g, k] into cache [b, s, g, k] at slots positions[b, t]."""
  rows = jnp.broadcast_to(jnp.arange(new.shape[0])[:, None], positions.shape)
  return cache.at[rows, positions].set(new.astype(cache.dtype), mode="drop")


class Attention(nn.Module):
  """Self-attention over [b, t, d] inputs."""

  config: ModelConfig

  def _param(self, name: str, shape: tuple[int, ...], names: tuple[str, ...],
             in_axis, out_axis) -> jax.Array:
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                            in_axis=in_axis, out_axis=out_axis)
    value = self.param(name, nn.with_logical_partitioning(init, names), shape,
                       self.config.weight_dtype)
    return value.astype(self.config.compute_dtype)

  def _bias(self, name: str, shape: tuple[int, ...], names: tuple[str, ...]) -> jax.Array:
    value = self.param(name, nn.with_logical_partitioning(nn.initializers.zeros, names), shape,
                       self.config.weight_dtype)
    return value.astype(self.config.compute_dtype)

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
               cache: LayerCache | None = None) -> tuple[jax.Array, LayerCache | None]:
    """Attends x to itself (and to the cache, when given).

    Args:
      x: [b, t, d] inputs (compute dtype).
      positions: [b, t] int positions (rotary angles; cache slots).
      segment_ids: [b, t] int segment ids (ignored with a cache: one document per row).
      cache: this layer's {"k", "v"} of shape [b, s, g, k], or None.

    Returns:
      ([b, t, d] output, updated cache or None).
    """
    cfg = self.config
    d, h, g, k = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    wq = self._param("query", (d, h, k), (axes.EMBED, axes.HEADS, axes.HEAD_DIM), 0, (1, 2))
    wk = self._param("key", (d, g, k), (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM), 0, (1, 2))
    wv = self._param("value", (d, g, k), (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM), 0, (1, 2))
    wo = self._param("out", (h, k, d), (axes.HEADS, axes.HEAD_DIM, axes.EMBED), (0, 1), 2)

    q = jnp.einsum("btd,dhk->bthk", x, wq)
    key = jnp.einsum("btd,dgk->btgk", x, wk)
    value = jnp.einsum("btd,dgk->btgk", x, wv)
    if cfg.use_bias:
      q = q + self._bias("query_bias", (h, k), (axes.HEADS, axes.HEAD_DIM))
      key = key + self._bias("key_bias", (g, k), (axes.KV_HEADS, axes.HEAD_DIM))
      value = value + self._bias("value_bias", (g, k), (axes.KV_HEADS, axes.HEAD_DIM))
    if cfg.position == "rope":
      q = apply_rope(q, positions, cfg.rope_theta)
      key = apply_rope(key, positions, cfg.rope_theta)
    q = constrain(q, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_HEAD_DIM))
    kv_axes = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_KV_HEADS, axes.ACT_HEAD_DIM)

    if cache is None:
      mask = make_segment_mask(segment_ids)  # [b, 1, t, t]
      new_cache = None
    else:
      new_cache = {"k": write_cache(cache["k"], key, positions),
                   "v": write_cache(cache["v"], value, positions)}
      key, value = new_cache["k"], new_cache["v"]  # [b, s, g, k]
      mask = make_cache_mask(positions, key.shape[1])  # [b, 1, t, s]
    key, value = constrain(key, kv_axes), constrain(value, kv_axes)

    out = jax.nn.dot_product_attention(q, key, value, mask=mask,
                                       implementation=cfg.attention_impl)  # [b, t, h, k]
    out = constrain(out, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_HEAD_DIM))
    y = jnp.einsum("bthk,hkd->btd", out, wo)
    if cfg.use_bias:
      y = y + self._bias("out_bias", (d,), (axes.EMBED,))
    return constrain(y, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)), new_cache


def attention_num_params(config: ModelConfig) -> int:
  """Parameters of one Attention layer."""
  d, h, g, k = config.embed_dim, config.num_heads, config.kv_heads, config.dim_per_head
  count = 2 * d * h * k + 2 * d * g * k
  if config.use_bias:
    count += h * k + 2 * g * k + d
  return count
