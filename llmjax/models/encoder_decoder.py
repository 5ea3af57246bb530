"""Encoder-decoder transformer (T5 family): a bidirectional encoder and a causal decoder whose
blocks cross-attend to the encoder output, sharing one token embedding.

For generation the encoder runs once: `cross_kv` projects its output into every decoder
layer's cross-attention keys/values, which the decode cache then carries as read-only leaves
({"cross_k", "cross_v"} [l, b, g, s_enc, k], plus "encoder_mask" [1, b, s_enc]; every leaf
has the batch at axis 1, so beam search reorders any cache by gathering that axis).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.config import ModelConfig
from llmjax.models.embedding import Embed, vocab_projection
from llmjax.models.masks import make_cross_mask
from llmjax.models.norms import make_norm
from llmjax.models.position import LearnedPositions, sinusoidal_embedding
from llmjax.models.stack import Cache, TransformerStack
from llmjax.models.transformer import ACT, default_positions
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain


class EncoderDecoder(nn.Module):
  """T5-style encoder-decoder.

  Attributes:
    config: the model config (num_layers encoder blocks, decoder_layers decoder blocks).
    deterministic: disables dropout (an attribute: the methods share one setup).
  """

  config: ModelConfig
  deterministic: bool = True

  def setup(self):
    cfg = self.config
    self.token_embed = Embed(cfg.vocab_size, cfg.embed_dim, cfg.compute_dtype,
                             cfg.weight_dtype)
    if cfg.position == "learned":
      self.encoder_position_embed = LearnedPositions(cfg.max_seq_len, cfg.embed_dim,
                                                     cfg.compute_dtype, cfg.weight_dtype)
      self.decoder_position_embed = LearnedPositions(cfg.max_seq_len, cfg.embed_dim,
                                                     cfg.compute_dtype, cfg.weight_dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    self.encoder = TransformerStack(cfg, cfg.num_layers, causal=False,
                                    deterministic=self.deterministic)
    self.encoder_norm = make_norm(cfg, None)
    self.decoder = TransformerStack(cfg, cfg.decoder_layers, causal=True, cross=True,
                                    deterministic=self.deterministic)
    self.decoder_norm = make_norm(cfg, None)
    self.head = _OutputHead(cfg)

  def _embed(self, tokens: jax.Array, positions: jax.Array, side: str) -> jax.Array:
    cfg = self.config
    x = self.token_embed(tokens)
    if cfg.position == "learned":
      table = self.encoder_position_embed if side == "encoder" else self.decoder_position_embed
      x = x + table(positions)
    elif cfg.position == "sinusoidal":
      x = x + sinusoidal_embedding(positions, cfg.embed_dim).astype(cfg.compute_dtype)
    return constrain(self.dropout(x), ACT)

  def encode(self, tokens: jax.Array, positions: jax.Array | None = None,
             segment_ids: jax.Array | None = None) -> jax.Array:
    """[b, s] encoder ids -> [b, s, d] encoder output (after the final norm)."""
    positions, segment_ids = default_positions(tokens, positions, segment_ids)
    x, _ = self.encoder(self._embed(tokens, positions, "encoder"), positions, segment_ids)
    return self.dropout(self.encoder_norm(x))

  def decode(self, tokens: jax.Array, positions: jax.Array | None = None,
             segment_ids: jax.Array | None = None, *, encoded: jax.Array | None = None,
             encoder_segment_ids: jax.Array | None = None,
             cache: Cache | None = None) -> tuple[jax.Array, Cache | None]:
    """Decoder logits [b, t, v] (float32) and the updated cache.

    Without a cache, `encoded` [b, s, d] and `encoder_segment_ids` [b, s] are required
    (decoder segment k cross-attends to encoder segment k). With a cache (from
    `Decoder.encode`), the encoder is not needed: its keys/values are in the cache.
    """
    positions, segment_ids = default_positions(tokens, positions, segment_ids)
    x = self._embed(tokens, positions, "decoder")
    if cache is None:
      cross_mask = make_cross_mask(segment_ids, encoder_segment_ids)
      x, new_cache = self.decoder(x, positions, segment_ids, None, encoded, cross_mask)
    else:
      layers = {k: v for k, v in cache.items() if k != "encoder_mask"}
      cross_mask = cache["encoder_mask"][0][:, None, None, :] > 0  # [b, 1, 1, s]
      x, layers = self.decoder(x, positions, segment_ids, layers, None, cross_mask)
      new_cache = {**layers, "encoder_mask": cache["encoder_mask"]}
    x = self.dropout(self.decoder_norm(x))
    logits = self.head(x, self.token_embed)
    return constrain(logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB)), new_cache

  def __call__(self, encoder_tokens: jax.Array, encoder_positions: jax.Array | None,
               encoder_segment_ids: jax.Array | None, tokens: jax.Array,
               positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, None]:
    """Teacher-forced forward pass: ([b, t, v] decoder logits, None)."""
    encoder_positions, encoder_segment_ids = default_positions(
        encoder_tokens, encoder_positions, encoder_segment_ids)
    encoded = self.encode(encoder_tokens, encoder_positions, encoder_segment_ids)
    logits, _ = self.decode(tokens, positions, segment_ids, encoded=encoded,
                            encoder_segment_ids=encoder_segment_ids)
    return logits, None


class _OutputHead(nn.Module):
  """The vocabulary projection (tied, as in T5 v1.0, scaled by d^-1/2; or an own kernel)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, embed: Embed) -> jax.Array:
    cfg = self.config
    if cfg.tie_embeddings:
      # T5 rescales before the tied projection so logits stay O(1) with unit-scale embeddings.
      x = x * (cfg.embed_dim ** -0.5)
    return vocab_projection(self, cfg, x, embed, bias=cfg.use_bias and not cfg.tie_embeddings)


def cross_kv(params: Any, encoded: jax.Array, config: ModelConfig) -> dict[str, jax.Array]:
  """Every decoder layer's cross-attention keys/values from the encoder output.

  Args:
    params: the EncoderDecoder params (plain, unboxed), the decoder stack scanned ("layers",
      [l, ...] leaves) or unrolled ("layers_<i>"; a scanned model's decode layout too).
    encoded: [b, s, d] encoder output.
    config: the model config.

  Returns:
    {"cross_k", "cross_v"}: [l, b, g, s, k] in the compute dtype.
  """
  decoder = params["decoder"]
  stacked = "layers" in decoder
  if stacked:
    layers = [decoder["layers"]["cross_attention"]]
  else:
    layers = [decoder[f"layers_{i}"]["cross_attention"] for i in range(config.decoder_layers)]
  dtype = config.compute_dtype
  x = encoded.astype(dtype)

  def project(p: dict, name: str) -> jax.Array:
    kernel = p[name].astype(dtype)
    if stacked:  # [l, d, g, k]
      out = jnp.einsum("bsd,ldgk->lbgsk", x, kernel)
      if config.use_bias:
        out = out + p[f"{name}_bias"].astype(dtype)[:, None, :, None]
      return out
    out = jnp.einsum("bsd,dgk->bgsk", x, kernel)
    if config.use_bias:
      out = out + p[f"{name}_bias"].astype(dtype)[:, None]
    return out[None]

  return {"cross_k": jnp.concatenate([project(p, "key") for p in layers]),
          "cross_v": jnp.concatenate([project(p, "value") for p in layers])}
