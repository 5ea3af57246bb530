"""The layer stack: blocks under `nn.scan` (or a Python loop), with rematerialization.

Scanned, every parameter gets a leading LAYERS axis ([l, ...]) and the block is compiled once;
unrolled (`scan_layers=False`), each layer has its own `layers_<i>` subtree. The KV cache
`{"k": [l, b, g, s, k], "v": ...}` (plus "cross_k"/"cross_v" for a decoder with
cross-attention) is split per layer the same way (scan xs/ys, or indexing). The unrolled stack
also takes the decode loop's split cache (`split_cache`): each of those entries a tuple of l
one-layer [1, b, ...] arrays, which a while loop updates in place; slicing layer i out of a
stacked array and writing it back copied the whole cache at every step.

The stack builds the attention mask and the position bias ONCE per forward pass and hands
them to every layer: a T5 relative-position table belongs to the stack (shared by its layers,
as in T5), ALiBi needs no parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.backend import backend_for
from llmjax.models.blocks import Block
from llmjax.models.config import ModelConfig
from llmjax.models.masks import MaskSpec
from llmjax.models.position import RelativePositionBias, alibi_bias
from llmjax.sharding import axes

Cache = dict[str, jax.Array]
# Cache entries that hold one slice per layer (the rest, e.g. "encoder_mask", are shared).
LAYER_KEYS = ("k", "v", "cross_k", "cross_v")


def split_cache(cache: Cache) -> Cache:
  """The per-layer entries of a stacked cache as tuples of one-layer [1, b, ...] arrays (the
  batch stays at axis 1, as beam search needs); other entries unchanged."""
  return {name: tuple(jnp.split(c, c.shape[0])) if name in LAYER_KEYS else c
          for name, c in cache.items()}


def is_split(cache: Cache) -> bool:
  """Whether `cache` has the per-layer tuples of `split_cache`."""
  return isinstance(cache.get("k"), tuple)


def cache_slots(cache: Cache) -> int:
  """Slots per row (s) of a stacked or split self-attention cache ([.., b, g, s, k])."""
  k = cache["k"][0] if is_split(cache) else cache["k"]
  return k.shape[3]


def _layer_cache(cache: Cache, i: int) -> Cache:
  if is_split(cache):
    return {name: cache[name][i][0] for name in LAYER_KEYS if name in cache}
  return {name: cache[name][i] for name in LAYER_KEYS if name in cache}


def _write_layer(cache: Cache, i: int, new: Cache) -> Cache:
  out, split = dict(cache), is_split(cache)
  for name, value in new.items():
    if split:
      out[name] = cache[name][:i] + (value[None],) + cache[name][i + 1:]
    else:
      # Slice by slice (in place in a decode loop), not re-stacked (a copy of the whole cache).
      out[name] = cache[name].at[i].set(value)
  return out

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

  def _mask_and_bias(self, positions: jax.Array, segment_ids: jax.Array | None,
                     cache: Cache | None) -> tuple[MaskSpec, jax.Array | None]:
    cfg = self.config
    # The dense form of the mask, where the backend's attention reads one, is built here once.
    prepare = backend_for(cfg).prepare_mask
    if cache is None:
      mask = prepare(MaskSpec.self_attention(positions.shape[1], causal=self.causal,
                                             window=cfg.sliding_window, segment_ids=segment_ids))
      key_positions = positions
    else:
      if not self.causal:
        raise ValueError("a KV cache only serves causal (decoder) stacks.")
      length = cache_slots(cache)
      mask = prepare(MaskSpec.over_cache(positions, length, window=cfg.sliding_window))
      key_positions = jnp.arange(length, dtype=positions.dtype)[None]  # Slot j holds position j.
    if cfg.position == "t5_relative":
      bias = RelativePositionBias(cfg.num_heads, cfg.relative_num_buckets,
                                  cfg.relative_max_distance, bidirectional=not self.causal,
                                  dtype=jnp.float32, param_dtype=cfg.weight_dtype,
                                  name="relpos_bias")(positions, key_positions)
    elif cfg.position == "alibi":
      bias = alibi_bias(positions, key_positions, cfg.num_heads, jnp.float32)
    else:
      bias = None
    return mask, bias

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None,
               cache: Cache | None = None, encoded: jax.Array | None = None,
               cross_mask: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
    """[b, t, d] -> ([b, t, d], updated cache or None).

    Args:
      x: embedded inputs.
      positions / segment_ids: [b, t] (segment ids: None = one document per row; unused with
        a cache).
      cache: layer-major cache ([l, b, ...] leaves) for decoding, or None.
      encoded: [b, s, d] encoder output for cross-attention without a cache.
      cross_mask: cross-attention mask, broadcastable to [b, 1, t, s].
    """
    cfg = self.config
    mask, bias = self._mask_and_bias(positions, segment_ids, cache)
    block = block_class(cfg)
    if cfg.scan_layers:
      if cache is not None and is_split(cache):
        raise ValueError("a split cache (from LanguageModel.decoder) serves the unrolled "
                         "layers of the Decoder's logits_fn, not a scanned stack.")
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
      layer_cache = None if cache is None else _layer_cache(cache, i)
      x, layer_cache = block(cfg, self.deterministic, self.cross, name=f"layers_{i}")(
          x, layer_cache, positions, mask, bias, encoded, cross_mask)
      if cache is not None:
        cache = _write_layer(cache, i, layer_cache)
    return x, cache
