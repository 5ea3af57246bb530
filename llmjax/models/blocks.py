"""One pre-norm decoder block: x + Attn(Norm(x)), then x + Mlp(Norm(x)), with dropout."""

from __future__ import annotations

import flax.linen as nn
import jax

from llmjax.models.attention import Attention, LayerCache
from llmjax.models.config import ModelConfig
from llmjax.models.mlp import Mlp
from llmjax.models.norms import make_norm
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain

_RESIDUAL = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)


class DecoderBlock(nn.Module):
  """A transformer decoder layer.

  Attributes:
    config: the model config.
    deterministic: disables dropout (an attribute, not an argument, so that scan and remat
      never see a Python bool as a traced value).
  """

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, cache: LayerCache | None, positions: jax.Array,
               segment_ids: jax.Array) -> tuple[jax.Array, LayerCache | None]:
    """[b, t, d] -> ([b, t, d], updated layer cache or None)."""
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    y, cache = Attention(cfg, name="attention")(
        make_norm(cfg, "attention_norm")(x), positions, segment_ids, cache)
    x = constrain(x + dropout(y), _RESIDUAL)
    y = Mlp(cfg, name="mlp")(make_norm(cfg, "mlp_norm")(x))
    x = constrain(x + dropout(y), _RESIDUAL)
    return x, cache
