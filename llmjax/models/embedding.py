"""Token embedding table, also usable as the (tied) output projection via `attend`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.sharding import axes


class Embed(nn.Module):
  """A [v, d] table: `__call__` looks tokens up, `attend` projects back onto the vocabulary.

  Attributes:
    num_embeddings: vocabulary size v.
    features: embedding width d.
    dtype: compute dtype; param_dtype: storage dtype.
  """

  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(0.02), (axes.VOCAB, axes.EMBED)),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """[b, t] ids -> [b, t, d]."""
    return jnp.take(self.embedding.astype(self.dtype), tokens, axis=0)

  def attend(self, x: jax.Array) -> jax.Array:
    """[b, t, d] -> [b, t, v] logits (x @ table.T)."""
    return jnp.einsum("btd,vd->btv", x, self.embedding.astype(self.dtype))
