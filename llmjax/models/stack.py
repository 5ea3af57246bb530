"""The layer stack: blocks under `nn.scan` (or a Python loop), with rematerialization.

Scanned, every parameter gets a leading LAYERS axis ([l, ...]) and the block is compiled once;
unrolled (`scan_layers=False`), each layer has its own `layers_<i>` subtree. The KV cache
`{"k": [l, b, s, g, k], "v": ...}` (plus "cross_k"/"cross_v" for a decoder with
cross-attention) is split per layer the same way (scan xs/ys, or indexing).

The stack builds the attention mask and the position bias ONCE per forward pass and hands
them to every layer: a T5 relative-position table belongs to the stack (shared by its layers,
as in T5), ALiBi needs no parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.attention import make_cache_mask, make_segment_mask
from llmjax.models.blocks import Block
from llmjax.models.config import ModelConfig
from llmjax.models.position import RelativePositionBias, alibi_bias
from llmjax.sharding import axes

Cache = dict[str, jax.Array]

REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # Save nothing: recompute the whole block in the backward pass.
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    # Weight-matmul outputs go to pinned host memory and come back for the backward pass.
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}
# Backends with a pinned host memory space that remat can offload to.
OFFLOAD_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")


def check_remat_supported(config: ModelConfig, platform: str | None = None) -> None:
  """Raises ValueError if `config.remat_policy` cannot run on `platform` (default backend)."""
  if config.remat_policy != "offload":
    return
  platform = (platform or jax.default_backend()).lower()
  if platform not in OFFLOAD_PLATFORMS:
    raise ValueError(
        f"ModelConfig.remat_policy='offload' saves activations to pinned host memory, which "
        f"the {platform!r} backend does not have: use 'dots_no_batch' or 'full' there.")


def block_class(config: ModelConfig) -> type[nn.Module]:
  """Block, wrapped in nn.remat when config.remat_policy asks for it."""
  if config.remat_policy == "none":
    return Block
  # Under scan, CSE across iterations cannot happen, so prevent_cse only costs speed there.
  return nn.remat(Block, policy=REMAT_POLICIES[config.remat_policy],
                  prevent_cse=not config.scan_layers)


class TransformerStack(nn.Module):
  """num_layers Blocks with their shared mask and position bias.

  Attributes:
    config: the model config.
    num_layers: depth.
    causal: causal self-attention (decoders) or bidirectional (encoders).
    cross: blocks cross-attend to an encoder output.
    deterministic: disables dropout.
  """

  config: ModelConfig
  num_layers: int
  causal: bool = True
  cross: bool = False
  deterministic: bool = True

  def _mask_and_bias(self, positions: jax.Array, segment_ids: jax.Array,
                     cache: Cache | None) -> tuple[jax.Array, jax.Array | None]:
    cfg = self.config
    if cache is None:
      mask = make_segment_mask(segment_ids, causal=self.causal, window=cfg.sliding_window)
      key_positions = positions
    else:
      if not self.causal:
        raise ValueError("a KV cache only serves causal (decoder) stacks.")
      length = cache["k"].shape[2]  # [l, b, s, g, k]
      mask = make_cache_mask(positions, length, window=cfg.sliding_window)
      key_positions = jnp.arange(length, dtype=positions.dtype)[None]  # Slot j holds position j.
    if cfg.position == "t5_relative":
      bias = RelativePositionBias(cfg.num_heads, cfg.relative_num_buckets,
                                  cfg.relative_max_distance, bidirectional=not self.causal,
                                  dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                                  name="relpos_bias")(positions, key_positions)
    elif cfg.position == "alibi":
      bias = alibi_bias(positions, key_positions, cfg.num_heads, cfg.compute_dtype)
    else:
      bias = None
    return mask, bias

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
               cache: Cache | None = None, encoded: jax.Array | None = None,
               cross_mask: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
    """[b, t, d] -> ([b, t, d], updated cache or None).

    Args:
      x: embedded inputs.
      positions / segment_ids: [b, t] (segment ids are unused with a cache).
      cache: layer-major cache ([l, b, ...] leaves) for decoding, or None.
      encoded: [b, s, d] encoder output for cross-attention without a cache.
      cross_mask: cross-attention mask, broadcastable to [b, 1, t, s].
    """
    cfg = self.config
    mask, bias = self._mask_and_bias(positions, segment_ids, cache)
    block = block_class(cfg)
    if cfg.scan_layers:
      scanned = nn.scan(
          block,
          variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(0,) + (nn.broadcast,) * 5,
          length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: axes.LAYERS},
          unroll=min(cfg.scan_unroll, self.num_layers),
      )
      return scanned(cfg, self.deterministic, self.cross, name="layers")(
          x, cache, positions, mask, bias, encoded, cross_mask)

    for i in range(self.num_layers):
      layer_cache = None if cache is None else jax.tree.map(lambda c, i=i: c[i], cache)
      x, layer_cache = block(cfg, self.deterministic, self.cross, name=f"layers_{i}")(
          x, layer_cache, positions, mask, bias, encoded, cross_mask)
      if cache is not None:
        # Written back slice by slice (in place in a decode loop), not re-stacked (a copy of
        # the whole cache per step).
        cache = jax.tree.map(lambda c, new, i=i: c.at[i].set(new), cache, layer_cache)
    return x, cache
