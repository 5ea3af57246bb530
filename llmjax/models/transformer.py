"""Decoder-only transformer (GPT / LLaMA family) as a thin composition of layers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.config import ModelConfig
from llmjax.models.embedding import Embed
from llmjax.models.norms import make_norm
from llmjax.models.position import LearnedPositions
from llmjax.models.stack import Cache, DecoderStack
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain


class DecoderOnly(nn.Module):
  """Embed -> (+ learned positions) -> blocks -> final norm -> vocabulary logits."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, *, cache: Cache | None = None,
               deterministic: bool = True) -> tuple[jax.Array, Cache | None]:
    """Runs the model.

    Args:
      tokens: [b, t] int token ids.
      positions: [b, t] positions within each document (default arange(t)).
      segment_ids: [b, t] packed-document ids, 0 = padding (default all ones).
      cache: {"k", "v"} of shape [l, b, s, g, k] for decoding, or None.
      deterministic: disables dropout.

    Returns:
      ([b, t, v] float32 logits, updated cache or None).
    """
    cfg = self.config
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    act = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)

    embed = Embed(cfg.vocab_size, cfg.embed_dim, cfg.compute_dtype, cfg.weight_dtype,
                  name="token_embed")
    x = embed(tokens)  # [b, t, d]
    if cfg.position == "learned":
      x = x + LearnedPositions(cfg.max_seq_len, cfg.embed_dim, cfg.compute_dtype,
                               cfg.weight_dtype, name="position_embed")(positions)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = constrain(x, act)

    x, cache = DecoderStack(cfg, deterministic, name="decoder")(x, positions, segment_ids, cache)
    x = make_norm(cfg, "final_norm")(x)

    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      kernel = self.param(
          "output_kernel",
          nn.with_logical_partitioning(
              nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
              (axes.EMBED, axes.VOCAB)),
          (cfg.embed_dim, cfg.vocab_size), cfg.weight_dtype)
      logits = jnp.einsum("btd,dv->btv", x, kernel.astype(cfg.compute_dtype))
      if cfg.use_bias:
        bias = self.param("output_bias",
                          nn.with_logical_partitioning(nn.initializers.zeros, (axes.VOCAB,)),
                          (cfg.vocab_size,), cfg.weight_dtype)
        logits = logits + bias.astype(cfg.compute_dtype)
    logits = logits.astype(jnp.float32)
    return constrain(logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB)), cache
