"""Token embedding table, also usable as the (tied) output projection via `attend`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.backend import backend_for
from llmjax.models.norms import make_norm
from llmjax.models.position import LearnedPositions, sinusoidal_embedding
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain


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
    # Contracting the table's own d axis (no `.T` operand): XLA then never materializes a
    # transposed copy of the [v, d] table, which at decode time cost 3x the projection itself.
    rows = x.reshape(-1, x.shape[-1])
    logits = jax.lax.dot_general(rows, self.embedding.astype(self.dtype), (((1,), (1,)), ((), ())))
    return logits.reshape(*x.shape[:-1], self.num_embeddings)


def vocab_projection(module: nn.Module, config: Any, x: jax.Array, embed: Embed, *,
                     bias: bool) -> jax.Array:
  """[b, t, d] -> [b, t, v] float32 logits: the tied embedding, or `module`'s own
  "output_kernel" [d, v] when config.tie_embeddings is False, plus an "output_bias" [v] param
  of `module` when `bias`. Call from inside `module`'s compact method."""
  if config.tie_embeddings:
    logits = embed.attend(x)
  else:
    kernel = module.param(
        "output_kernel",
        nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
            (axes.EMBED, axes.VOCAB)),
        (config.embed_dim, config.vocab_size), config.weight_dtype)
    logits = backend_for(config).dense(x, kernel.astype(config.compute_dtype))
  if bias:
    value = module.param("output_bias",
                         nn.with_logical_partitioning(nn.initializers.zeros, (axes.VOCAB,)),
                         (config.vocab_size,), config.weight_dtype)
    logits = logits + value.astype(config.compute_dtype)
  return logits.astype(jnp.float32)


def absolute_positions(config: Any, positions: jax.Array, name: str) -> jax.Array | None:
  """The [b, t, d] absolute position embedding config.position asks for (learned: a
  submodule `name` of the calling module; sinusoidal: fixed), or None for rope / bias schemes.
  Call from inside a compact method."""
  if config.position == "learned":
    return LearnedPositions(config.max_seq_len, config.embed_dim, config.compute_dtype,
                            config.weight_dtype, name=name)(positions)
  if config.position == "sinusoidal":
    return sinusoidal_embedding(positions, config.embed_dim).astype(config.compute_dtype)
  return None


def embed_inputs(config: Any, tokens: jax.Array, positions: jax.Array,
                 deterministic: bool, token_types: jax.Array | None = None
                 ) -> tuple[jax.Array, Embed]:
  """Token embedding (+ absolute positions, + token types, then a norm if the config asks)
  + dropout for a single-stack model: returns the [b, t, d] activations and the `token_embed`
  module (for a tied output projection). Call from inside a compact method; creates the
  submodules `token_embed`, `position_embed`, `token_type_embed` and `embed_norm` it needs.

  token_types: [b, t] token-type ids (config.type_vocab_size > 0); None = type 0 everywhere.
  """
  embed = Embed(config.vocab_size, config.embed_dim, config.compute_dtype, config.weight_dtype,
                name="token_embed")
  x = embed(tokens)  # [b, t, d]
  pos = absolute_positions(config, positions, "position_embed")
  if pos is not None:
    x = x + pos
  if config.type_vocab_size:
    types = Embed(config.type_vocab_size, config.embed_dim, config.compute_dtype,
                  config.weight_dtype, name="token_type_embed")
    x = x + types(jnp.zeros_like(tokens) if token_types is None else token_types)
  if config.embedding_norm:
    x = make_norm(config, "embed_norm")(x)
  x = nn.Dropout(config.dropout_rate)(x, deterministic=deterministic)
  return constrain(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)), embed
