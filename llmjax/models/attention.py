"""Attention: self- and cross-attention, multi-head, grouped-query (GQA) and multi-query (MQA).

Projections are 2-D matmuls (linear.py) over explicitly named kernels (q: [d, h, k],
k/v: [d, g, k], out: [h, k, d]). The attention itself (`attend`) is, on GPU/TPU,
`jax.nn.dot_product_attention` in [b, t, h, k] layout, which handles g < h natively, takes
position biases (T5, ALiBi) through its `bias` argument and lets GPUs pick cuDNN flash
attention; on CPU it is `einsum_attention`, the same math grouped by kv head, faster there.

Masks are built once per stack (not per layer) by the functions below. Without a cache, a
query attends to keys of the same segment of its row (causal stacks: earlier-or-equal keys;
sliding windows: only the nearest ones); padding, segment 0, only sees padding, so no row is
ever fully masked and no NaN appears. With a cache, each token's k/v are first written at slot
`positions[b, t]` of its row, then a query at position p attends to slots j <= p.
Cross-attention reads keys/values computed from the encoder output (or precomputed once into
the cache for decoding) and never applies rotary angles: the two streams share no positions.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.config import ModelConfig
from llmjax.models.linear import linear
from llmjax.models.position import apply_rope
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain

LayerCache = dict[str, jax.Array]  # {"k": [b, s, g, k], "v": [b, s, g, k]}


def _window(offset: jax.Array, window: int | None, causal: bool) -> jax.Array | bool:
  """Sliding-window visibility of keys `offset = q - k` positions behind the query."""
  if window is None:
    return True
  return offset < window if causal else jnp.abs(offset) < window


def make_segment_mask(segment_ids: jax.Array, *, causal: bool = True,
                      window: int | None = None) -> jax.Array:
  """[b, t] segment ids -> [b, 1, t, t] bool: same segment (and causal / within the window)."""
  t = segment_ids.shape[-1]
  offset = jnp.arange(t)[:, None] - jnp.arange(t)[None, :]  # [t, s]: q - k
  visible = (offset >= 0) if causal else jnp.ones((t, t), bool)
  visible = visible & _window(offset, window, causal)
  same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [b, t, s]
  return (visible[None] & same)[:, None]


def make_cache_mask(positions: jax.Array, cache_len: int, *,
                    window: int | None = None) -> jax.Array:
  """[b, t] query positions -> [b, 1, t, s] bool: slot j visible iff j <= position (and
  position - j < window)."""
  offset = positions[:, :, None] - jnp.arange(cache_len)[None, None, :]  # [b, t, s]
  return ((offset >= 0) & _window(offset, window, True))[:, None]


def make_cross_mask(segment_ids: jax.Array, encoder_segment_ids: jax.Array) -> jax.Array:
  """[b, t] decoder and [b, s] encoder segment ids -> [b, 1, t, s]: decoder segment k sees
  encoder segment k (packed examples stay apart)."""
  return (segment_ids[:, :, None] == encoder_segment_ids[:, None, :])[:, None]


def write_cache(cache: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
  """Scatters new [b, t, g, k] into cache [b, s, g, k] at slots positions[b, t]."""
  rows = jnp.broadcast_to(jnp.arange(new.shape[0])[:, None], positions.shape)
  return cache.at[rows, positions].set(new.astype(cache.dtype), mode="drop")


def einsum_attention(q: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None,
                     mask: jax.Array, scale: float | None = None) -> jax.Array:
  """Softmax attention as two einsums, grouped by kv head; the math of
  `jax.nn.dot_product_attention` (scale default 1/sqrt(k), softmax in float32).

  On CPU this runs the backward pass about twice as fast as jax's XLA implementation, whose
  [b, t, h, k] -> [b, h, t, k] transposes and reductions dominate at small widths
  (benchmarks/NOTES.md). q: [b, t, h, k]; key/value: [b, s, g, k]; bias/mask broadcastable to
  [b, h, t, s]. Returns [b, t, h, k].
  """
  b, t, h, k = q.shape
  g = key.shape[2]
  r = h // g

  def grouped(x: jax.Array) -> jax.Array:  # [B, h or 1, t, s] -> [B, g or 1, r or 1, t, s]
    if x.shape[1] == 1:
      return x[:, :, None]
    return x.reshape(x.shape[0], g, r, *x.shape[2:])

  scale = k ** -0.5 if scale is None else scale
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, g, r, k)
  scores = jnp.einsum("btgrk,bsgk->bgrts", q, key, preferred_element_type=jnp.float32)
  if bias is not None:
    scores = scores + grouped(bias).astype(jnp.float32)
  scores = jnp.where(grouped(mask), scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
  return jnp.einsum("bgrts,bsgk->btgrk", probs, value).reshape(b, t, h, k)


def attend(q: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None,
           mask: jax.Array, implementation: str | None = None,
           scale: float | None = None) -> jax.Array:
  """[b, t, h, k] attention output: `einsum_attention` when `implementation` is 'einsum' (or
  None on CPU), else `jax.nn.dot_product_attention` with that implementation (None lets GPUs
  pick cuDNN's fused kernel; biases go through its `bias` argument, so they keep it).
  `scale` multiplies the query-key products (None: 1/sqrt(k))."""
  if implementation == "einsum" or (implementation is None and jax.default_backend() == "cpu"):
    return einsum_attention(q, key, value, bias, mask, scale)
  if bias is not None:
    bias = bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, key, value, bias=bias, mask=mask, scale=scale,
                                      implementation=implementation)


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
  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
               bias: jax.Array | None = None, cache: LayerCache | None = None,
               kv_input: jax.Array | None = None) -> tuple[jax.Array, LayerCache | None]:
    """Attends x to itself (and to the cache), or to kv_input / the cache when cross.

    Args:
      x: [b, t, d] inputs (compute dtype).
      positions: [b, t] int positions (rotary angles; cache slots).
      mask: bool, broadcastable to [b, h, t, s] (see the make_*_mask functions).
      bias: additive position bias broadcastable to [b, h, t, s], or None.
      cache: self-attention: this layer's {"k", "v"} [b, s, g, k], written at `positions`;
        cross-attention: the precomputed encoder {"k", "v"} [b, s, g, k], read only.
      kv_input: cross-attention without a cache: the [b, s, d] encoder output.

    Returns:
      ([b, t, d] output, updated cache or None).
    """
    cfg = self.config
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

    q = linear(x, wq)
    if biases is not None:
      q = q + biases[0]
    # Keys and values span the whole length: under sequence parallelism every query shard
    # attends to all of them, so they are gathered here (act_kv_length is never split).
    kv_axes = (axes.ACT_BATCH, axes.ACT_KV_LENGTH, axes.ACT_KV_HEADS, axes.ACT_HEAD_DIM)
    new_cache = None
    if self.cross and cache is not None:
      key, value = cache["k"], cache["v"]  # Precomputed once from the encoder output.
      new_cache = cache
    else:
      source = kv_input if self.cross else x
      if source is None:
        raise ValueError("cross-attention needs the encoder output (kv_input) or a cache made "
                         "by encode_for_decoding.")
      key = linear(source, wk)
      value = linear(source, wv)
      if biases is not None:
        key, value = key + biases[1], value + biases[2]
    if cfg.position == "rope" and not self.cross:
      q = apply_rope(q, positions, cfg.rope_theta)
      key = apply_rope(key, positions, cfg.rope_theta)
    q = constrain(q, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_HEAD_DIM))
    if cache is not None and not self.cross:
      new_cache = {"k": write_cache(cache["k"], key, positions),
                   "v": write_cache(cache["v"], value, positions)}
      key, value = new_cache["k"], new_cache["v"]  # [b, s, g, k]
    key, value = constrain(key, kv_axes), constrain(value, kv_axes)

    out = attend(q, key.astype(q.dtype), value.astype(q.dtype), bias, mask, cfg.attention_impl,
                 cfg.attention_scale)
    out = constrain(out, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_HEAD_DIM))
    y = linear(out, wo, 2)
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
