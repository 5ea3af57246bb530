"""One pre-norm transformer block: x + Attn(Norm(x)), [x + CrossAttn(Norm(x)),] x + Mlp(Norm(x)).

The same block serves every family: causal (GPT decoder), bidirectional (BERT / T5 encoder)
and causal with cross-attention (T5 decoder); masks and position biases arrive precomputed
from the stack, so the block itself is position-scheme agnostic (RoPE aside, applied inside
attention).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from llmjax.models.attention import Attention, LayerCache
from llmjax.models.barriers import materialize_grad
from llmjax.models.config import ModelConfig
from llmjax.models.mlp import Mlp
from llmjax.models.norms import make_norm
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain

_RESIDUAL = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)
CROSS_KEYS = ("cross_k", "cross_v")


class Block(nn.Module):
  """A transformer layer.

  Attributes:
    config: the model config.
    deterministic: disables dropout (an attribute, not an argument, so that scan and remat
      never see a Python bool as a traced value).
    cross: add a cross-attention sub-layer over the encoder output (T5 decoder).
  """

  config: ModelConfig
  deterministic: bool = True
  cross: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, cache: LayerCache | None, positions: jax.Array,
               mask: jax.Array, bias: jax.Array | None, encoded: jax.Array | None,
               cross_mask: jax.Array | None) -> tuple[jax.Array, LayerCache | None]:
    """[b, t, d] -> ([b, t, d], updated layer cache or None).

    Args:
      x: the residual stream.
      cache: {"k", "v"} (+ {"cross_k", "cross_v"} when cross) of this layer, or None.
      positions: [b, t] positions.
      mask / bias: self-attention mask and position bias (see attention.py).
      encoded: [b, s, d] encoder output (cross, without a cache).
      cross_mask: [b, 1, t or 1, s] cross-attention mask (cross).
    """
    cfg = self.config
    x = materialize_grad(x)
    dropout = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    self_cache = None if cache is None else {"k": cache["k"], "v": cache["v"]}
    y, self_cache = Attention(cfg, name="attention")(
        make_norm(cfg, "attention_norm")(x), positions, mask, bias, self_cache)
    x = constrain(x + dropout(y), _RESIDUAL)
    new_cache = self_cache
    if self.cross:
      cross_cache = None if cache is None else {"k": cache["cross_k"], "v": cache["cross_v"]}
      y, _ = Attention(cfg, cross=True, name="cross_attention")(
          make_norm(cfg, "cross_attention_norm")(x), positions, cross_mask, None, cross_cache,
          encoded)
      x = constrain(x + dropout(y), _RESIDUAL)
      if cache is not None:
        new_cache = {**self_cache, "cross_k": cache["cross_k"], "cross_v": cache["cross_v"]}
    y = Mlp(cfg, name="mlp")(make_norm(cfg, "mlp_norm")(x))
    x = constrain(x + dropout(y), _RESIDUAL)
    return x, new_cache
