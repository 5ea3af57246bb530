"""KV-cache sizes for logs and benchmarks, and logical axis names for sharding a cache.

The model owns the cache: `Decoder.init_cache` (llmjax/models/decoder.py) builds it, and the
decoding loops thread it through `Decoder.logits_fn` unopened. This file only measures a cache
the model built (abstractly, with `jax.eval_shape`: nothing is allocated) and names its axes;
it knows one thing of the layout: key/value arrays are 5-d [l, b, g, s, k] (l may be 1 when the
model splits the cache per layer), with the batch at axis 1 like every cache leaf.
"""

from __future__ import annotations

import collections
import math

import jax
import numpy as np

from llmjax.models.decoder import Cache, Decoder
from llmjax.sharding import axes

# Logical axes of each 5-d cache array, for sharding the cache with the same rule sets as
# params.
CACHE_LOGICAL_AXES = (axes.CACHE_LAYERS, axes.CACHE_BATCH, axes.CACHE_KV_HEADS,
                      axes.CACHE_LENGTH, axes.CACHE_HEAD_DIM)


def abstract_cache(decoder: Decoder, batch_size: int, max_len: int) -> Cache:
  """The shapes and dtypes (ShapeDtypeStructs) of `decoder.init_cache(batch_size, max_len)`."""
  return jax.eval_shape(lambda: decoder.init_cache(batch_size, max_len))


def cache_bytes(cache: Cache) -> int:
  """Bytes held by all arrays of a cache pytree (works on abstract ShapeDtypeStructs too)."""
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache))


def cache_size_bytes(decoder: Decoder, batch_size: int, max_len: int) -> int:
  """Bytes of the model's (self-attention) cache for this size, without allocating it."""
  return cache_bytes(abstract_cache(decoder, batch_size, max_len))


def describe_cache(decoder: Decoder, batch_size: int, max_len: int) -> str:
  """One line for logs: the arrays, dtype and memory of the model's cache of this size."""
  cache = abstract_cache(decoder, batch_size, max_len)
  counts = collections.Counter(("x".join(map(str, x.shape)), np.dtype(x.dtype).name)
                               for x in jax.tree.leaves(cache))
  arrays = ", ".join(f"{n} x [{shape}] {dtype}" for (shape, dtype), n in counts.items())
  size = cache_bytes(cache)
  return (f"KV cache {arrays}: {_human(size)} "
          f"({_human(size / (batch_size * max_len))} per token)")


def cache_logical_axes(cache: Cache) -> Cache:
  """A pytree like `cache` holding the logical axis names of each 5-d array (else None)."""
  return jax.tree.map(lambda x: CACHE_LOGICAL_AXES if np.ndim(x) == 5 else None, cache)


def _human(num_bytes: float) -> str:
  if num_bytes < 1024:
    return f"{int(num_bytes)} B"
  for unit in ("KiB", "MiB", "GiB"):
    num_bytes /= 1024
    if num_bytes < 1024 or unit == "GiB":
      break
  return f"{num_bytes:.1f} {unit}"
