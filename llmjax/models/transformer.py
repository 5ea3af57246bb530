"""Decoder-only transformer (GPT / LLaMA family) as a thin composition of layers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.config import ModelConfig
from llmjax.models.embedding import embed_inputs, vocab_projection
from llmjax.models.norms import make_norm
from llmjax.models.stack import Cache, TransformerStack
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain

ACT = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)


def default_positions(tokens: jax.Array, positions: jax.Array | None,
                      segment_ids: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Fills in arange(t) positions and all-ones segment ids for unpacked [b, t] inputs."""
  b, t = tokens.shape
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  if segment_ids is None:
    segment_ids = jnp.ones((b, t), jnp.int32)
  return positions, segment_ids


class DecoderOnly(nn.Module):
  """Embed -> (+ absolute positions) -> causal blocks -> final norm -> vocabulary logits."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, *, cache: Cache | None = None,
               deterministic: bool = True) -> tuple[jax.Array, Cache | None]:
    """Runs the model.

    Args:
      tokens: [b, t] int token ids.
      positions: [b, t] positions within each document (default arange(t)).
      segment_ids: [b, t] packed-document ids, 0 = padding (default: one document per row).
      cache: {"k", "v"} of shape [l, b, g, s, k] for decoding, or None.
      deterministic: disables dropout.

    Returns:
      ([b, t, v] float32 logits, updated cache or None).
    """
    cfg = self.config
    # Rows without segment ids stay None: one document per row, so the mask is just causal,
    # which a fused kernel takes as a flag (cuDNN's is_causal) instead of a dense mask.
    positions, _ = default_positions(tokens, positions, segment_ids)
    x, embed = embed_inputs(cfg, tokens, positions, deterministic)

    x, cache = TransformerStack(cfg, cfg.num_layers, causal=True, deterministic=deterministic,
                                name="decoder")(x, positions, segment_ids, cache)
    if cfg.norm_position == "pre":  # Post-norm blocks end normalized already.
      x = make_norm(cfg, "final_norm")(x)
    logits = vocab_projection(self, cfg, x, embed,
                              bias=cfg.use_bias and not cfg.tie_embeddings)
    return constrain(logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB)), cache
