"""Position information: a learned absolute table and rotary embeddings (RoPE).

Positions are explicit `[b, t]` integers (restarting at 0 in each packed document, or a row's
current length while decoding), never implied by array indices.
"""

from __future__ import annotations

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
