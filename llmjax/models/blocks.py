"""One transformer block: x + Attn(Norm(x)), [x + CrossAttn(Norm(x)),] x + Mlp(Norm(x)) (pre-norm)
or Norm(x + Attn(x)), Norm(x + Mlp(x)) (post-norm: BERT, the original Transformer).

The same block serves every family: causal (GPT decoder), bidirectional (BERT / T5 encoder)
and causal with cross-attention (T5 decoder); masks and position biases arrive precomputed
from the stack, so the block itself is position-scheme agnostic (RoPE aside, applied inside
attention). The residual stream enters through the backend's `residual_barrier` (the
identity; models/backend.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from llmjax.models.attention import Attention, LayerCache
from llmjax.models.backend import backend_for
from llmjax.models.config import ModelConfig
from llmjax.models.masks import MaskSpec
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
               mask: MaskSpec, bias: jax.Array | None, encoded: jax.Array | None,
               cross_mask: jax.Array | None) -> tuple[jax.Array, LayerCache | None]:
    """[b, t, d] -> ([b, t, d], updated layer cache or None).

    Args:
      x: the residual stream.
      cache: {"k", "v"} (+ {"cross_k", "cross_v"} when cross) of this layer, or None.
      positions: [b, t] positions.
      mask / bias: self-attention mask and position bias (see masks.py, attention.py).
      encoded: [b, s, d] encoder output (cross, without a cache).
      cross_mask: [b, 1, t or 1, s] cross-attention mask (cross).
    """
    cfg = self.config
    x = backend_for(cfg).residual_barrier(x)
    dropout = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    post = cfg.norm_position == "post"

    def sublayer(x: jax.Array, norm_name: str, fn) -> tuple[jax.Array, object]:
      norm = make_norm(cfg, norm_name)
      y, extra = fn(x if post else norm(x))
      x = x + dropout(y)
      return constrain(norm(x) if post else x, _RESIDUAL), extra

    self_cache = None if cache is None else {"k": cache["k"], "v": cache["v"]}
    attention = Attention(cfg, name="attention")
    x, self_cache = sublayer(x, "attention_norm",
                             lambda h: attention(h, positions, mask, bias, self_cache))
    new_cache = self_cache
    if self.cross:
      cross_cache = None if cache is None else {"k": cache["cross_k"], "v": cache["cross_v"]}
      x, _ = sublayer(x, "cross_attention_norm", lambda h: Attention(
          cfg, cross=True, name="cross_attention")(h, positions, MaskSpec.explicit(cross_mask),
                                                   None, cross_cache, encoded))
      if cache is not None:
        new_cache = {**self_cache, "cross_k": cache["cross_k"], "cross_v": cache["cross_v"]}
    x, _ = sublayer(x, "mlp_norm", lambda h: (Mlp(cfg, name="mlp")(h), None))
    return x, new_cache
