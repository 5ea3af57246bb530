"""`Decoder`: everything autoregressive decoding needs from a model, as one typed value.

`LanguageModel.decoder(params)` builds it (interface.py), and the sampling package (the decode
and beam-search loops, `Sampler`, `LoadedModel`) and benchmarks/decode_throughput.py use
nothing else of the model. A Decoder holds:

- `params`: the params laid out for decoding;
- `logits_fn(params, tokens [b, t], positions [b, t], cache) -> (logits [b, t, v], cache)`:
  writes each token's keys/values at slot `positions[b, t]` of its row, and a query at
  position p sees the slots <= p of its row;
- `init_cache(batch_size, max_len)`: an all-zero cache for `logits_fn`;
- `encode(params, encoder_tokens, encoder_segment_ids, max_len)` (encoder_decoder only): runs
  the encoder once and returns the full cache (the all-zero self-attention part plus the
  encoder's cross-attention keys/values and padding mask);
- `cache_length(cache)`: slots per row of such a cache;
- the facts a sampler checks requests against: `vocab_size`, `max_seq_len`,
  `max_encoder_len`, `is_encoder_decoder`.

What the params and the cache look like inside is the model's business: callers thread them
through `logits_fn` unopened. The one rule they may rely on: every cache leaf holds the batch
at axis 1, so beam search expands and reorders any cache by gathering that axis.

A Decoder is a pytree whose only leaves are `params` (everything else is static), so it can be
built inside `jax.jit` (the usual way: the decode layout of the params is then made inside the
compiled program, and no second copy of the weights outlives a call), passed into a jitted
function, or built abstractly with `jax.eval_shape(model.decoder, params)` to read its facts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax

Params = Any  # A pytree of arrays (nested dicts of a Flax module's params).
Cache = Any  # A pytree of arrays, every leaf batch-at-axis-1; opaque to callers.
LogitsFn = Callable[[Params, jax.Array, jax.Array, Cache], tuple[jax.Array, Cache]]
EncodeFn = Callable[[Params, jax.Array, jax.Array | None, int], Cache]


def _static(**kwargs: Any) -> Any:
  return dataclasses.field(metadata={"static": True}, **kwargs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)  # Arrays have no truth value.
class Decoder:
  """What decoding needs from a model (see the module docstring).

  Attributes:
    params: the params, laid out for `logits_fn` and `encode`.
    logits_fn: `(params, tokens [b, t], positions [b, t], cache) -> ([b, t, v] float32
      logits, cache)`.
    init_cache: `(batch_size, max_len) -> cache`: all zeros, `max_len` slots per row.
    cache_length: `cache -> int`: slots per row.
    vocab_size: width v of the logits.
    max_seq_len: the most decoder positions (prompt plus generated tokens) per row.
    encode: encoder_decoder only (else None): `(params, encoder_tokens [b, s],
      encoder_segment_ids [b, s] or None (0 = padding), max_len) -> cache`.
    max_encoder_len: encoder_decoder only: the longest encoder input (None = no limit).
  """

  params: Params
  logits_fn: LogitsFn = _static()
  init_cache: Callable[[int, int], Cache] = _static()
  cache_length: Callable[[Cache], int] = _static()
  vocab_size: int = _static()
  max_seq_len: int = _static()
  encode: EncodeFn | None = _static(default=None)
  max_encoder_len: int | None = _static(default=None)

  @property
  def is_encoder_decoder(self) -> bool:
    """Whether decoding starts from `encode` (the cache holds the encoder's keys/values)."""
    return self.encode is not None


class Decodable(Protocol):
  """A model that generates text: a decoder-only or encoder_decoder `LanguageModel`, or a
  test's toy model."""

  def decoder(self, params: Params) -> Decoder:
    """The Decoder over `params` (raises ValueError for a model that does not generate)."""
    ...


def unstack_layers(tree: Params) -> Params:
  """Replaces every scanned stack's {"layers": [l, ...] leaves} by {"layers_<i>": ...}.

  The unrolled layout of a scanned model's params: a decode loop that reads stacked weights
  slices (copies) every layer's weights out of them at every step (XLA does not hoist the
  slices out of the while loop; benchmarks/NOTES.md measures the cost). Inside the same jit as
  the loop it costs one copy of the weights per call.
  """
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for key, value in tree.items():
    if key == "layers" and isinstance(value, Mapping):
      depth = jax.tree.leaves(value)[0].shape[0]
      for i in range(depth):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], value)
    else:
      out[key] = unstack_layers(value)
  return out
