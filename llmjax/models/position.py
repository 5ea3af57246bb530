"""Position information: absolute (learned, sinusoidal), rotary (RoPE) and attention-bias
(T5 relative buckets, ALiBi) schemes.

Positions are explicit `[b, t]` integers (restarting at 0 in each packed document, or a row's
current length while decoding), never implied by array indices. The bias schemes return
`[b, h, t, s]` additive biases for `jax.nn.dot_product_attention(bias=...)`, from query
positions [b, t] and key positions [b, s] (while decoding, key slot j holds position j), so the
same code serves training and cached decoding and GPUs keep the fused attention kernel.

The stacks build the biases in float32 whatever the compute dtype: bf16 keeps 8 significant
bits, so an ALiBi bias of slope x distance (e.g. -0.0625 x 599 = -37.4) would be off by up to
0.125 in the attention logits, and a T5 table entry by 0.4% of its value. The einsum attention
adds them to its float32 scores as they are; `jax.nn.dot_product_attention` takes the bias in
the query dtype, and casts there.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.sharding import axes


class LearnedPositions(nn.Module):
  """A learned [max_len, d] table added to token embeddings.

  Attributes:
    max_len: rows in the table (positions must be < max_len).
    features: embedding width d.
    dtype: output dtype; param_dtype: storage dtype.
  """

  max_len: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, positions: jax.Array) -> jax.Array:
    """[b, t] int positions -> [b, t, d] embeddings."""
    table = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(0.01), (axes.POSITION, axes.EMBED)),
        (self.max_len, self.features), self.param_dtype)
    # Clip rather than wrap: callers validate lengths before tracing (see interface.py).
    return jnp.take(table.astype(self.dtype), positions, axis=0, mode="clip")


def apply_rope(x: jax.Array, positions: jax.Array, theta: float = 10_000.0) -> jax.Array:
  """Rotates pairs (i, i + k/2) of `x` by position-dependent angles (GPT-NeoX/LLaMA layout).

  Args:
    x: [b, t, h, k] queries or keys, k even.
    positions: [b, t] integer positions.
    theta: base frequency.

  Returns:
    [b, t, h, k] in x's dtype; the rotation itself is computed in float32.
  """
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))  # [k/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, k/2]
  sin = jnp.sin(angles)[:, :, None, :]  # [b, t, 1, k/2]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def sinusoidal_embedding(positions: jax.Array, features: int,
                         max_timescale: float = 10_000.0) -> jax.Array:
  """Fixed sin/cos position embeddings (Vaswani et al.): [b, t] -> [b, t, features] float32.

  Channel 2i holds sin(p / max_timescale^(2i/d)) and channel 2i + 1 the matching cosine.
  """
  half = features // 2
  inv_freq = max_timescale ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / features)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, d/2]
  out = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [b, t, d/2, 2]
  return out.reshape(positions.shape + (features,))


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """T5's bucketing of relative positions (key - query) into int32 bucket ids.

  Half the buckets (per direction, when bidirectional) hold exact distances 0..n/2-1; the rest
  cover distances up to max_distance logarithmically, and farther ones share the last bucket.
  Causal stacks only bucket keys at or behind the query (future keys are masked anyway).
  """
  ret = jnp.zeros_like(relative_position, jnp.int32)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # max(n, max_exact) keeps log() finite; those entries take the `is_small` branch anyway.
  scaled = jnp.log(jnp.maximum(n, max_exact).astype(jnp.float32) / max_exact) / math.log(
      max_distance / max_exact)
  large = max_exact + (scaled * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return ret + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """A T5 relative-position bias table [buckets, h], shared by every layer of one stack.

  Attributes:
    num_heads: query heads h.
    num_buckets / max_distance: see `relative_position_bucket`.
    bidirectional: encoder stacks (True) tell keys before and after the query apart.
    dtype: output dtype (the stacks ask for float32, see the module docstring); param_dtype:
      storage dtype.
  """

  num_heads: int
  num_buckets: int
  max_distance: int
  bidirectional: bool
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """[b, t] query and [b or 1, s] key positions -> [b, h, t, s] bias."""
    table = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(0.1),
                                     (axes.RELPOS_BUCKETS, axes.HEADS)),
        (self.num_buckets, self.num_heads), self.param_dtype)
    relative = k_positions[:, None, :] - q_positions[:, :, None]  # [b, t, s]
    buckets = relative_position_bucket(relative, bidirectional=self.bidirectional,
                                       num_buckets=self.num_buckets,
                                       max_distance=self.max_distance)
    bias = jnp.take(table.astype(self.dtype), buckets, axis=0)  # [b, t, s, h]
    return jnp.transpose(bias, (0, 3, 1, 2))


def alibi_slopes(num_heads: int) -> jax.Array:
  """ALiBi head slopes (Press et al.): 2^(-8i/n) for i = 1..n when n is a power of two;
  otherwise those of the nearest lower power of two plus every other slope of the next one."""
  def powers(n: int) -> list[float]:
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]
  closest = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = powers(closest)
  if closest != num_heads:
    slopes += powers(2 * closest)[0::2][:num_heads - closest]
  return jnp.asarray(slopes, jnp.float32)


def alibi_bias(q_positions: jax.Array, k_positions: jax.Array, num_heads: int,
               dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """[b, t] query and [b or 1, s] key positions -> [b, h, t, s] bias -slope_h * |q - k|.

  The symmetric distance serves bidirectional stacks; causal stacks mask keys ahead of the
  query, so for them it equals ALiBi's original q - k. Computed in float32 and then cast to
  `dtype` (the stacks keep float32, see the module docstring).
  """
  distance = jnp.abs(q_positions[:, :, None] - k_positions[:, None, :]).astype(jnp.float32)
  bias = -alibi_slopes(num_heads)[None, :, None, None] * distance[:, None]
  return bias.astype(dtype)
