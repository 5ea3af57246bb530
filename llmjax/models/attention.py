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

Cached keys/values are kv-head-major, [b, g, s, k]: the layout the attention's batched matmuls
(batch b, g; contract k, then s) read as they are. A [b, s, g, k] cache cost a transposed copy
of every layer's cache at every decode step (benchmarks/NOTES.md).
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

LayerCache = dict[str, jax.Array]  # {"k": [b, g, s, k], "v": [b, g, s, k]}
# Causal query blocks of einsum_attention: >= 64 rows each, at most 8 (measured on gpt_baby's
# t = 256: 4 blocks -35% fwd+bwd, 8 blocks -31%; benchmarks/NOTES.md #28).
CAUSAL_BLOCK_ROWS = 64
MAX_CAUSAL_BLOCKS = 8


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
  """Scatters new [b, t, g, k] into cache [b, g, s, k] at slots positions[b, t]."""
  rows = jnp.broadcast_to(jnp.arange(new.shape[0])[:, None], positions.shape)
  # Advanced indices split by a slice index [b, t, g, k]: the layout of `new`.
  return cache.at[rows, :, positions].set(new.astype(cache.dtype), mode="drop")


@jax.custom_vjp
def softmax(x: jax.Array) -> jax.Array:
  """`jax.nn.softmax` over the last axis, with a backward pass that sums rows with a matmul.

  The backward needs sum(g * y) per row; XLA:CPU gives that reduction to a library fusion that
  took 1.2-1.4 ms per layer for a [12, 4, 64, 64] score tensor, a tenth of a GPT-small-CPU
  training step (benchmarks/NOTES.md); as a matrix-vector product it is ~40 us.
  """
  return jax.nn.softmax(x, axis=-1)


def _softmax_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  y = softmax(x)
  return y, y


def _softmax_bwd(y: jax.Array, g: jax.Array) -> tuple[jax.Array]:
  gy = g * y
  ones = jnp.ones((y.shape[-1], 1), y.dtype)
  row_sums = (gy.reshape(-1, y.shape[-1]) @ ones).reshape(*y.shape[:-1], 1)
  return (gy - y * row_sums,)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _group_heads(x: jax.Array, g: int, r: int) -> jax.Array:
  """A mask or bias [B, h or 1, t, s] as [B, g or 1, r or 1, t, s] (query heads by kv head)."""
  if x.shape[1] == 1:
    return x[:, :, None]
  return x.reshape(x.shape[0], g, r, *x.shape[2:])


def causal_query_blocks(t: int) -> int:
  """How many query blocks `einsum_attention` splits a causal length-t attention into: blocks
  of CAUSAL_BLOCK_ROWS queries or more (smaller ones lose more to per-op cost than the skipped
  keys save), at most MAX_CAUSAL_BLOCKS, and a divisor of t."""
  blocks = min(t // CAUSAL_BLOCK_ROWS, MAX_CAUSAL_BLOCKS)
  while blocks > 1 and t % blocks:
    blocks -= 1
  return max(blocks, 1)


def _block_of(x: jax.Array | None, rows: slice, keys: int) -> jax.Array | None:
  """Rows `rows` and the first `keys` columns of a mask or bias broadcastable to [.., t, s]."""
  if x is None:
    return None
  if x.shape[-2] > 1:
    x = x[..., rows, :]
  return x[..., :keys] if x.shape[-1] > 1 else x


def einsum_attention(q: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None,
                     mask: jax.Array, scale: float | None = None,
                     heads_major: bool = False, causal: bool = False) -> jax.Array:
  """Softmax attention as two einsums, grouped by kv head; the math of
  `jax.nn.dot_product_attention` (scale default 1/sqrt(k), softmax in float32).

  On CPU this runs the backward pass about twice as fast as jax's XLA implementation, whose
  [b, t, h, k] -> [b, h, t, k] transposes and reductions dominate at small widths
  (benchmarks/NOTES.md). q: [b, t, h, k]; key/value: [b, s, g, k], or [b, g, s, k] with
  `heads_major` (a cache); bias/mask broadcastable to [b, h, t, s]. Returns [b, t, h, k].

  `causal`: the mask hides every key after the query's own index (causal self-attention over
  the same t tokens, no cache). Long sequences are then split into query blocks that read
  only the keys up to their last row, skipping the masked upper triangle: the same math, since
  those keys carry zero weight and no row is fully masked (the sums run over fewer terms, so
  the last bits can differ); gpt_baby's attention fwd+bwd -35%.
  """
  if causal and not heads_major and key.shape[1] == q.shape[1]:
    blocks = causal_query_blocks(q.shape[1])
    if blocks > 1:
      n = q.shape[1] // blocks
      outs = []
      for i in range(blocks):
        rows, end = slice(i * n, (i + 1) * n), (i + 1) * n
        outs.append(einsum_attention(q[:, rows], key[:, :end], value[:, :end],
                                     _block_of(bias, rows, end), _block_of(mask, rows, end),
                                     scale))
      return jnp.concatenate(outs, axis=1)
  b, t, h, k = q.shape
  g = key.shape[1 if heads_major else 2]
  kv = "bgsk" if heads_major else "bsgk"
  r = h // g
  scale = k ** -0.5 if scale is None else scale
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, g, r, k)
  scores = jnp.einsum(f"btgrk,{kv}->bgrts", q, key, preferred_element_type=jnp.float32)
  if bias is not None:
    scores = scores + _group_heads(bias, g, r).astype(jnp.float32)
  scores = jnp.where(_group_heads(mask, g, r), scores, jnp.finfo(jnp.float32).min)
  probs = softmax(scores).astype(value.dtype)
  return jnp.einsum(f"bgrts,{kv}->btgrk", probs, value).reshape(b, t, h, k)


def einsum_step_attention(q: jax.Array, k_new: jax.Array, v_new: jax.Array, k_old: jax.Array,
                          v_old: jax.Array, bias: jax.Array | None, mask: jax.Array,
                          positions: jax.Array, scale: float | None = None) -> jax.Array:
  """One new token per row attending to the cache as it was BEFORE this token's write, plus
  the token itself: the result of writing k_new/v_new at `positions` and then running
  `einsum_attention` over the cache, without any matmul reading the freshly written cache.

  Why: at batch 1, XLA:CPU turns the cache write into a dynamic-update-slice, fuses it into the
  attention matmuls' operands and copies (transposes) every layer's cache at every step (a
  fifth of a batch-1 decode step, benchmarks/NOTES.md); matmuls reading the loop's own cache
  buffer avoid that (the caller orders the write after them).

  q: [b, 1, h, k]; k_new/v_new: [b, 1, g, k]; k_old/v_old: [b, g, s, k]; mask (slots <=
  position) and bias broadcastable to [b, h, 1, s]; positions: [b, 1]. Returns [b, 1, h, k].
  """
  b, _, h, k = q.shape
  g, slots = k_old.shape[1], k_old.shape[2]
  r = h // g

  def grouped(x: jax.Array) -> jax.Array:  # [B, h or 1, 1, s] -> [B, g or 1, r or 1, s]
    return _group_heads(x, g, r)[..., 0, :]

  scale = k ** -0.5 if scale is None else scale
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, g, r, k)
  scores = jnp.einsum("bgrk,bgsk->bgrs", q, k_old, preferred_element_type=jnp.float32)
  own = jnp.einsum("bgrk,bgk->bgr", q, k_new[:, 0].astype(q.dtype),
                   preferred_element_type=jnp.float32)
  is_own = (jnp.arange(slots) == positions)[:, None, None, :]  # [b, 1, 1, s]
  scores = jnp.where(is_own, own[..., None], scores)  # The stale slot gets the new key's score.
  if bias is not None:
    scores = scores + grouped(bias).astype(jnp.float32)
  scores = jnp.where(grouped(mask), scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  own_prob = jnp.sum(jnp.where(is_own, probs, 0.0), axis=-1, keepdims=True)  # [b, g, r, 1]
  probs = jnp.where(is_own, 0.0, probs).astype(v_old.dtype)
  out = jnp.einsum("bgrs,bgsk->bgrk", probs, v_old)
  out = out + own_prob.astype(out.dtype) * v_new[:, 0, :, None].astype(out.dtype)
  return out.reshape(b, 1, h, k)


def _uses_einsum(implementation: str | None) -> bool:
  return implementation == "einsum" or (implementation is None
                                        and jax.default_backend() == "cpu")


def attend(q: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None,
           mask: jax.Array, implementation: str | None = None,
           scale: float | None = None, heads_major: bool = False,
           causal: bool = False) -> jax.Array:
  """[b, t, h, k] attention output: `einsum_attention` when `implementation` is 'einsum' (or
  None on CPU), else `jax.nn.dot_product_attention` with that implementation (None lets GPUs
  pick cuDNN's fused kernel; biases go through its `bias` argument, so they keep it).
  `scale` multiplies the query-key products (None: 1/sqrt(k)); `heads_major`: key/value are
  [b, g, s, k] (a cache) instead of [b, s, g, k]; `causal`: the mask is causal over the same
  tokens (lets `einsum_attention` skip the masked keys)."""
  if _uses_einsum(implementation):
    return einsum_attention(q, key, value, bias, mask, scale, heads_major, causal)
  if heads_major:
    key, value = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)
  if bias is not None:
    bias = bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, key, value, bias=bias, mask=mask, scale=scale,
                                      implementation=implementation)


class Attention(nn.Module):
  """Attention of [b, t, d] queries over themselves or (cross=True) over an encoder output.

  Attributes:
    config: the model config.
    cross: cross-attention (keys/values from `kv_input` or a precomputed cache; no rotary).
    causal: self-attention of a causal stack (the mask hides later keys).
  """

  config: ModelConfig
  cross: bool = False
  causal: bool = False

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
      cache: self-attention: this layer's {"k", "v"} [b, g, s, k], written at `positions`;
        cross-attention: the precomputed encoder {"k", "v"} [b, g, s, k], read only.
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
    if cache is not None:
      kv_axes = (axes.ACT_BATCH, axes.ACT_KV_HEADS, axes.ACT_KV_LENGTH, axes.ACT_HEAD_DIM)
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
    out = None
    if cache is not None and not self.cross:
      if x.shape[:2] == (1, 1) and _uses_einsum(cfg.attention_impl):
        # A batch-1 decode step on CPU: attend first, then write (see einsum_step_attention).
        # Larger batches write with a scatter the matmuls read in place: 3% faster there.
        out = einsum_step_attention(q, key, value, cache["k"].astype(q.dtype),
                                    cache["v"].astype(q.dtype), bias, mask, positions,
                                    cfg.attention_scale)
        # The write must come after every read of the old cache, or XLA copies the whole cache
        # to keep the old one readable (0.8 ms of a 7 ms batch-1 step). Making the slot depend
        # on the output orders it: +1 only in a row whose output is already NaN.
        first = out[:, :, 0, 0]  # [b, 1]
        positions = positions + (first != first).astype(positions.dtype)
      new_cache = {"k": write_cache(cache["k"], key, positions),
                   "v": write_cache(cache["v"], value, positions)}
      key, value = new_cache["k"], new_cache["v"]  # [b, g, s, k]
    if out is None:
      key, value = constrain(key, kv_axes), constrain(value, kv_axes)
      out = attend(q, key.astype(q.dtype), value.astype(q.dtype), bias, mask,
                   cfg.attention_impl, cfg.attention_scale, heads_major=cache is not None,
                   causal=self.causal and not self.cross and cache is None)
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
