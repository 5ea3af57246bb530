"""Encoder-only transformer (BERT family): bidirectional blocks with an MLM or classifier head."""

from __future__ import annotations

import flax.linen as nn
import jax

from llmjax.models.config import ModelConfig
from llmjax.models.embedding import embed_inputs, vocab_projection
from llmjax.models.heads import ClassificationHead, MlmTransform
from llmjax.models.norms import make_norm
from llmjax.models.stack import TransformerStack
from llmjax.models.transformer import default_positions
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain


class EncoderOnly(nn.Module):
  """Embed -> (+ absolute positions) -> bidirectional blocks -> final norm -> head.

  The head is BERT's masked-LM head (transform + vocabulary projection with a bias) or, when
  config.num_classes is set, a pooled classifier.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, *, token_types: jax.Array | None = None,
               deterministic: bool = True) -> tuple[jax.Array, None]:
    """Runs the encoder.

    Args:
      tokens: [b, t] int token ids.
      positions: [b, t] positions within each document (default arange(t)).
      segment_ids: [b, t] packed-document ids, 0 = padding (default all ones); tokens attend
        to every token of their own segment, in both directions.
      token_types: [b, t] token-type ids when config.type_vocab_size > 0 (default type 0).
      deterministic: disables dropout.

    Returns:
      ([b, t, v] MLM logits or [b, num_classes] class logits, float32; None: no cache).
    """
    cfg = self.config
    positions, segment_ids = default_positions(tokens, positions, segment_ids)
    x, embed = embed_inputs(cfg, tokens, positions, deterministic, token_types)

    x, _ = TransformerStack(cfg, cfg.num_layers, causal=False, deterministic=deterministic,
                            name="encoder")(x, positions, segment_ids)
    if cfg.norm_position == "pre":  # Post-norm blocks end normalized already.
      x = make_norm(cfg, "final_norm")(x)
    if cfg.is_classifier:
      return ClassificationHead(cfg, deterministic, name="classifier")(x, segment_ids), None
    h = MlmTransform(cfg, name="mlm_transform")(x)
    logits = vocab_projection(self, cfg, h, embed, bias=cfg.use_bias)
    return constrain(logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB)), None
