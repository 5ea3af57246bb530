"""The layer stack: decoder blocks under `nn.scan` (or a Python loop), with rematerialization.

Scanned, every parameter gets a leading LAYERS axis ([l, ...]) and the block is compiled once;
unrolled (`scan_layers=False`), each layer has its own `layers_<i>` subtree. The KV cache
`{"k": [l, b, s, g, k], "v": ...}` is split per layer the same way (scan xs/ys, or indexing).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.blocks import DecoderBlock
from llmjax.models.config import ModelConfig
from llmjax.sharding import axes

Cache = dict[str, jax.Array]

REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # Save nothing: recompute the whole block in the backward pass.
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def block_class(config: ModelConfig) -> type[nn.Module]:
  """DecoderBlock, wrapped in nn.remat when config.remat_policy asks for it."""
  if config.remat_policy == "none":
    return DecoderBlock
  # Under scan, CSE across iterations cannot happen, so prevent_cse only costs speed there.
  return nn.remat(DecoderBlock, policy=REMAT_POLICIES[config.remat_policy],
                  prevent_cse=not config.scan_layers)


class DecoderStack(nn.Module):
  """config.num_layers DecoderBlocks.

  Attributes:
    config: the model config.
    deterministic: disables dropout.
  """

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
               cache: Cache | None = None) -> tuple[jax.Array, Cache | None]:
    """[b, t, d] -> ([b, t, d], updated cache or None)."""
    cfg = self.config
    block = block_class(cfg)
    if cfg.scan_layers:
      scanned = nn.scan(
          block,
          variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(0, nn.broadcast, nn.broadcast),
          length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: axes.LAYERS},
      )
      return scanned(cfg, self.deterministic, name="layers")(x, cache, positions, segment_ids)

    new_layers = []
    for i in range(cfg.num_layers):
      layer_cache = None if cache is None else jax.tree.map(lambda c, i=i: c[i], cache)
      x, layer_cache = block(cfg, self.deterministic, name=f"layers_{i}")(
          x, layer_cache, positions, segment_ids)
      new_layers.append(layer_cache)
    if cache is None:
      return x, None
    return x, jax.tree.map(lambda *cs: jnp.stack(cs), *new_layers)
