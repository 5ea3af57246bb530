"""Attention masks: which keys each query may see, as structure (`MaskSpec`) and as dense arrays.

A stack describes its self-attention mask once per forward pass as a `MaskSpec`: causal or
not, a sliding window, and how rows are split into documents (packed segment ids, or right
padding given as lengths, or neither). Fused attention kernels take that structure directly
(`is_causal`, `local_window_size`, sequence lengths); the dense [b, 1, t, s] boolean mask is
derived from it (`MaskSpec.dense_mask`) only for the paths that read one.

Without a cache, a query attends to keys of the same segment of its row (causal stacks:
earlier-or-equal keys; sliding windows: only the nearest ones); padding, segment 0, only sees
padding, so no self-attention row is fully masked. With a cache, slot j holds position j, and
a query at position p attends to slots j <= p (and p - j < window).
Cross-attention masks come from the model (decoder segment k sees encoder segment k) and stay
explicit dense arrays. Their rows CAN be fully masked: a decoder padding position (segment 0)
sees only encoder segment 0, which a row without encoder padding lacks. Masked scores are a
large finite negative, never -inf (`finfo(float32).min` in the einsum attention,
`-0.7 * finfo(dtype).max` in `jax.nn.dot_product_attention`), so such a row's softmax is
uniform over its keys: finite, with zero gradient to its query, and losses give padding no
weight (tests/models/test_padding_rows.py). cuDNN never receives an explicit mask
(attention_plan.py); a kernel that masked with -inf would give NaN there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


def _window(offset: jax.Array, window: int | None, causal: bool) -> jax.Array | bool:
  """Sliding-window visibility of keys `offset = q - k` positions behind the query."""
  if window is None:
    return True
  return offset < window if causal else jnp.abs(offset) < window


def make_segment_mask(segment_ids: jax.Array, *, causal: bool = True,
                      window: int | None = None) -> jax.Array:
  """[b, t] segment ids -> [b, 1, t, t] bool: same segment (and causal / within the window)."""
  t = segment_ids.shape[-1]
  offset = jnp.arange(t)[:, None] - jnp.arange(t)[None, :]  # [t, s]: q - k
  visible = (offset >= 0) if causal else jnp.ones((t, t), bool)
  visible = visible & _window(offset, window, causal)
  same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [b, t, s]
  return (visible[None] & same)[:, None]


def make_cache_mask(positions: jax.Array, cache_len: int, *,
                    window: int | None = None) -> jax.Array:
  """[b, t] query positions -> [b, 1, t, s] bool: slot j visible iff j <= position (and
  position - j < window)."""
  offset = positions[:, :, None] - jnp.arange(cache_len)[None, None, :]  # [b, t, s]
  return ((offset >= 0) & _window(offset, window, True))[:, None]


def make_cross_mask(segment_ids: jax.Array, encoder_segment_ids: jax.Array) -> jax.Array:
  """[b, t] decoder and [b, s] encoder segment ids -> [b, 1, t, s]: decoder segment k sees
  encoder segment k (packed examples stay apart)."""
  return (segment_ids[:, :, None] == encoder_segment_ids[:, None, :])[:, None]


@struct.dataclass
class MaskSpec:
  """An attention mask by structure; a pytree (arrays are leaves, the rest is static).

  Build one with `self_attention`, `over_cache` or `explicit`. Exactly one kind applies:
  self-attention over the same t tokens (`length` set), queries over a KV cache (`slots`
  set), or an explicit dense mask (neither).

  Attributes:
    causal: self-attention: a query sees no key after it.
    window: sliding window (keys fewer than this many positions away; causal: behind the
      query), or None.
    length: self-attention: t, the tokens per row.
    segment_ids: self-attention over packed documents: [b, t] ids, 0 = padding; None when
      every row is one document.
    lengths: self-attention over right-padded rows, one document each: [b] int32 count of real
      tokens (the rest is padding). Outputs at padding positions are unspecified (the dense
      form lets padding attend to padding, fused kernels return zeros there): real tokens
      never attend to padding, and losses give padding no weight.
    positions: over a cache: [b, t] query positions (slot j holds position j).
    slots: over a cache: its slots per row (s).
    dense: the [b, 1, t, s] bool mask: the explicit mask, or the structured one attached by
      `with_dense` for paths that read a dense mask.
  """

  segment_ids: jax.Array | None = None
  lengths: jax.Array | None = None
  positions: jax.Array | None = None
  dense: jax.Array | None = None
  causal: bool = struct.field(pytree_node=False, default=False)
  window: int | None = struct.field(pytree_node=False, default=None)
  length: int | None = struct.field(pytree_node=False, default=None)
  slots: int | None = struct.field(pytree_node=False, default=None)

  @classmethod
  def self_attention(cls, length: int, *, causal: bool, window: int | None = None,
                     segment_ids: jax.Array | None = None,
                     lengths: jax.Array | None = None) -> MaskSpec:
    """Self-attention over `length` tokens per row: packed (`segment_ids`), right-padded
    (`lengths`) or neither (one document filling every row)."""
    if segment_ids is not None and lengths is not None:
      raise ValueError("give segment_ids (packed rows) or lengths (padded rows), not both.")
    return cls(segment_ids=segment_ids, lengths=lengths, causal=causal, window=window,
               length=length)

  @classmethod
  def over_cache(cls, positions: jax.Array, slots: int, *,
                 window: int | None = None) -> MaskSpec:
    """Queries at [b, t] `positions` over a KV cache of `slots` slots (slot j = position j)."""
    return cls(positions=positions, slots=slots, window=window)

  @classmethod
  def explicit(cls, mask: jax.Array) -> MaskSpec:
    """A dense bool mask broadcastable to [b, h, t, s] with no known structure."""
    return cls(dense=mask)

  @property
  def is_self_attention(self) -> bool:
    return self.length is not None

  @property
  def is_over_cache(self) -> bool:
    return self.slots is not None

  @property
  def is_explicit(self) -> bool:
    return not (self.is_self_attention or self.is_over_cache)

  @property
  def packed(self) -> bool:
    """Self-attention whose rows hold several documents (segment ids)."""
    return self.segment_ids is not None

  def dense_mask(self) -> jax.Array:
    """The [b or 1, 1, t, s] bool mask this spec describes."""
    if self.dense is not None:
      return self.dense
    if self.is_over_cache:
      return make_cache_mask(self.positions, self.slots, window=self.window)
    segment_ids = self.segment_ids
    if segment_ids is None:
      t = jnp.arange(self.length)[None]  # [1 or b, t]: real tokens are segment 1, padding 0.
      segment_ids = (jnp.ones_like(t) if self.lengths is None
                     else (t < self.lengths[:, None]).astype(jnp.int32))
    return make_segment_mask(segment_ids, causal=self.causal, window=self.window)

  def with_dense(self) -> MaskSpec:
    """This spec with its dense mask attached (built once, read by every layer)."""
    return self if self.dense is not None else self.replace(dense=self.dense_mask())
