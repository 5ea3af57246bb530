"""KV-cache helpers for decoding: creation, length, logical axes and memory size.

The model owns the cache layout (see llmjax/models): a dict
`{"k": [l, b, g, s, k], "v": [l, b, g, s, k]}` in the compute dtype, where each token's keys
and values are written at slot `positions[b, t]` of its row. An encoder_decoder model's cache
(`LanguageModel.encode_for_decoding`) adds the encoder's cross-attention "cross_k"/"cross_v"
[l, b, g, s, k] and "encoder_mask" [1, b, s]; every leaf keeps the batch at axis 1, which beam
search relies on. This file only creates, inspects and measures caches of the self-attention
layout; decoding (decoding.py, beam.py) treats the cache as an opaque pytree threaded through
`logits_fn`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.models.config import ModelConfig
from llmjax.models.stack import cache_slots
from llmjax.sharding import axes

Cache = dict[str, jax.Array]

# Logical axes of each cache array, for sharding the cache with the same rule sets as params.
CACHE_LOGICAL_AXES = (axes.CACHE_LAYERS, axes.CACHE_BATCH, axes.CACHE_KV_HEADS,
                      axes.CACHE_LENGTH, axes.CACHE_HEAD_DIM)


def cache_shape(config: ModelConfig, batch_size: int, max_len: int) -> tuple[int, ...]:
  """Shape [l, b, g, s, k] of each of the cache's "k" and "v" arrays."""
  return (config.num_layers, batch_size, config.kv_heads, max_len, config.dim_per_head)


def _check_sizes(batch_size: int, max_len: int, max_seq_len: int | None) -> None:
  if batch_size <= 0:
    raise ValueError(f"cache batch_size must be positive, got {batch_size}.")
  if max_len <= 0:
    raise ValueError(f"cache max_len must be positive, got {max_len}.")
  if max_seq_len is not None and max_len > max_seq_len:
    raise ValueError(
        f"cache max_len={max_len} exceeds the model's max_seq_len={max_seq_len}: positions "
        "past max_seq_len were never trained; lower max_len or use a model with a larger "
        "max_seq_len.")


def init_cache(model: Any, batch_size: int, max_len: int) -> Any:
  """Returns an empty (all-zeros) cache for `batch_size` rows of up to `max_len` tokens.

  Args:
    model: a LanguageModel (anything with `init_cache(batch_size, max_len)` is delegated to,
      so the model stays the owner of its cache layout) or a ModelConfig of a decoder-only
      model, for which the contract layout above is built directly.
    batch_size: rows decoded together.
    max_len: cache slots per row (prompt plus generated tokens).

  Returns:
    The cache pytree.
  """
  config = model if isinstance(model, ModelConfig) else getattr(model, "config", None)
  _check_sizes(batch_size, max_len, None if config is None else config.max_seq_len)
  if not isinstance(model, ModelConfig) and hasattr(model, "init_cache"):
    return model.init_cache(batch_size, max_len)
  if config is None:
    raise TypeError(f"init_cache needs a ModelConfig or a model with init_cache, got {model!r}.")
  shape = cache_shape(config, batch_size, max_len)
  return {"k": jnp.zeros(shape, config.compute_dtype), "v": jnp.zeros(shape, config.compute_dtype)}


def cache_length(cache: Any) -> int | None:
  """Slots per row (s) of a contract-layout cache (stacked, or split per layer by
  LanguageModel.decoding_cache); None for any other pytree."""
  k = cache.get("k") if isinstance(cache, dict) else None
  first = k[0] if isinstance(k, tuple) and k else k
  return int(cache_slots(cache)) if getattr(first, "ndim", 0) == 5 else None


def cache_logical_axes(cache: Any) -> Any:
  """A pytree like `cache` holding the logical axis names of each 5-d array (else None)."""
  return jax.tree.map(lambda x: CACHE_LOGICAL_AXES if np.ndim(x) == 5 else None, cache)


def cache_bytes(cache: Any) -> int:
  """Bytes held by all arrays of a cache pytree (works on abstract ShapeDtypeStructs too)."""
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache))


def cache_size_bytes(config: ModelConfig, batch_size: int, max_len: int) -> int:
  """Bytes a cache for this model and size would take, without allocating it."""
  per_array = math.prod(cache_shape(config, batch_size, max_len)) * config.compute_dtype.itemsize
  return 2 * per_array


def describe_cache(config: ModelConfig, batch_size: int, max_len: int) -> str:
  """One line for logs: shape, dtype and memory of a cache of this size."""
  shape = "x".join(str(d) for d in cache_shape(config, batch_size, max_len))
  size = cache_size_bytes(config, batch_size, max_len)
  per_token = size / (batch_size * max_len)
  return (f"KV cache k,v [{shape}] {config.compute_dtype.name}: {_human(size)} "
          f"({_human(per_token)} per token)")


def _human(num_bytes: float) -> str:
  if num_bytes < 1024:
    return f"{int(num_bytes)} B"
  for unit in ("KiB", "MiB", "GiB"):
    num_bytes /= 1024
    if num_bytes < 1024 or unit == "GiB":
      break
  return f"{num_bytes:.1f} {unit}"
