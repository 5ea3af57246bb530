"""Attention: self- and cross-attention, multi-head, grouped-query (GQA) and multi-query (MQA).

The textbook computation: project x to queries, keys and values (q: [d, h, k] kernel, k/v:
[d, g, k]), rotate q and k by their positions (RoPE), attend, project the heads back out
([h, k, d]). Cross-attention takes its keys/values from the encoder output (or from the
decode cache, computed once) and never applies rotary angles: the two streams share no
positions. With a cache, each token's keys/values are written at slot `positions[b, t]` of
its row, and the queries attend over the whole cache.

The projections and the attention product are the backend's (`models/backend.py`): the
platform swaps in its own form of `dense`, `attention` and `cached_attention` there, so this
file stays the same on CPU, GPU and TPU. Masks arrive as a `MaskSpec` (models/masks.py),
built once per stack.

Cached keys/values are kv-head-major, [b, g, s, k]: the layout the attention's batched matmuls
(batch b, g; contract k, then s) read as they are, without a transposed copy of each layer's
cache at each decode step.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from llmjax.models.backend import CACHE_AXES, backend_for
from llmjax.models.config import ModelConfig
from llmjax.models.masks import MaskSpec
from llmjax.models.position import apply_rope
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain

LayerCache = dict[str, jax.Array]  # {"k": [b, g, s, k], "v": [b, g, s, k]}
_HEADS = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_HEAD_DIM)
# Keys and values span the whole length: under sequence parallelism every query shard attends
# to all of them, so they are gathered (act_kv_length is never split).
_KV = (axes.ACT_BATCH, axes.ACT_KV_LENGTH, axes.ACT_KV_HEADS, axes.ACT_HEAD_DIM)


class Attention(nn.Module):
  """Attention of [b, t, d] queries over themselves or (cross=True) over an encoder output.

  Attributes:
    config: the model config.
    cross: cross-attention (keys/values from `kv_input` or a precomputed cache; no rotary).
  """

  config: ModelConfig
  cross: bool = False

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
  def __call__(self, x: jax.Array, positions: jax.Array, mask: MaskSpec | jax.Array,
               bias: jax.Array | None = None, cache: LayerCache | None = None,
               kv_input: jax.Array | None = None) -> tuple[jax.Array, LayerCache | None]:
    """Attends x to itself (and to the cache), or to kv_input / the cache when cross.

    Args:
      x: [b, t, d] inputs (compute dtype).
      positions: [b, t] int positions (rotary angles; cache slots).
      mask: the stack's `MaskSpec`, or a bool array broadcastable to [b, h, t, s] (taken as
        an explicit mask).
      bias: additive position bias broadcastable to [b, h, t, s], or None.
      cache: self-attention: this layer's {"k", "v"} [b, g, s, k], written at `positions`;
        cross-attention: the precomputed encoder {"k", "v"} [b, g, s, k], read only.
      kv_input: cross-attention without a cache: the [b, s, d] encoder output.

    Returns:
      ([b, t, d] output, updated cache or None).
    """
    cfg = self.config
    backend = backend_for(cfg)
    if not isinstance(mask, MaskSpec):
      mask = MaskSpec.explicit(mask)
    d, h, g, k = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    wq = self._param("query", (d, h, k), (axes.EMBED, axes.HEADS, axes.HEAD_DIM), 0, (1, 2))
    wk = self._param("key", (d, g, k), (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM), 0, (1, 2))
    wv = self._param("value", (d, g, k), (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM), 0, (1, 2))
    wo = self._param("out", (h, k, d), (axes.HEADS, axes.HEAD_DIM, axes.EMBED), (0, 1), 2)
    biases = None
    if cfg.use_bias:
      biases = (self._bias("query_bias", (h, k), (axes.HEADS, axes.HEAD_DIM)),
                self._bias("key_bias", (g, k), (axes.KV_HEADS, axes.HEAD_DIM)),
                self._bias("value_bias", (g, k), (axes.KV_HEADS, axes.HEAD_DIM)))

    q = backend.dense(x, wq)  # [b, t, h, k]
    if biases is not None:
      q = q + biases[0]
    if self.cross and cache is not None:
      key, value = cache["k"], cache["v"]  # [b, g, s, k], computed once from the encoder.
    else:
      source = kv_input if self.cross else x
      if source is None:
        raise ValueError("cross-attention needs the encoder output (kv_input) or a decode "
                         "cache holding the encoder's keys/values.")
      key, value = backend.dense(source, wk), backend.dense(source, wv)  # [b, s, g, k]
      if biases is not None:
        key, value = key + biases[1], value + biases[2]
    if cfg.position == "rope" and not self.cross:
      q = apply_rope(q, positions, cfg.rope_theta)
      key = apply_rope(key, positions, cfg.rope_theta)
    q = constrain(q, _HEADS)

    new_cache = cache
    if cache is not None and not self.cross:
      out, new_cache = backend.cached_attention(q, key, value, cache, positions, bias, mask,
                                                cfg.attention_scale)
    else:
      kv_axes = _KV if cache is None else CACHE_AXES
      key, value = constrain(key, kv_axes), constrain(value, kv_axes)
      out = backend.attention(q, key.astype(q.dtype), value.astype(q.dtype), bias, mask,
                              cfg.attention_scale, kv_heads_major=cache is not None)
    out = constrain(out, _HEADS)
    y = backend.dense(out, wo, 2)  # [b, t, d]
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
