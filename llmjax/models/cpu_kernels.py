"""The CPU backend's variants of the layers' operations: same math, shaped for XLA:CPU.

Each function here computes what the textbook operation in models/backend.py computes, and
exists because XLA:CPU lowers the textbook form slowly at the small widths llmjax trains on a
laptop; benchmarks/NOTES.md gives the measurements (the `#` numbers below are its rows). They
are used only through `Backend` (models/backend.py), which picks them on CPU:

- `matmul_2d`: weight matmuls as [rows, in] @ [in, out] matrices (#5): an einsum's weight
  gradient contracts two axes (b, t), which XLA:CPU lowers through a transposed copy.
- `materialize_grad`: a fusion barrier on the residual stream's gradient (#3).
- `einsum_attention`: softmax attention as two einsums grouped by kv head (#4), split into
  causal query blocks that skip the masked keys (#28), with a softmax whose backward sums rows
  with a matrix-vector product (#19).
- `einsum_step_attention` and `order_after`: a batch-1 decode step that attends to the cache
  before writing the new token into it, and the data dependence that orders that write (#18).

This module does not pick a variant; it never looks at the platform.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Causal query blocks of einsum_attention: blocks of at least CAUSAL_BLOCK_ROWS queries
# (smaller ones lose more to per-op cost than the skipped keys save), at most MAX_CAUSAL_BLOCKS
# (NOTES #28 measured 4 and 8 blocks at t = 256).
CAUSAL_BLOCK_ROWS = 64
MAX_CAUSAL_BLOCKS = 8


def matmul_2d(x: jax.Array, kernel: jax.Array, contract: int = 1) -> jax.Array:
  """x [..., *in] @ kernel [*in, *out] -> [..., *out] (len(in) == contract) as one 2-D matmul.

  The reshapes merge only leading axes, so they are free (bitcasts) on CPU.
  """
  lead, inner = x.shape[:x.ndim - contract], x.shape[x.ndim - contract:]
  if kernel.shape[:contract] != inner:
    raise ValueError(f"dense: x {x.shape} and kernel {kernel.shape} disagree on the "
                     f"{contract} contracted axes.")
  out = kernel.shape[contract:]
  y = x.reshape(math.prod(lead), math.prod(inner)) @ kernel.reshape(math.prod(inner), -1)
  return y.reshape(*lead, *out)


@jax.custom_vjp
def materialize_grad(x: jax.Array) -> jax.Array:
  """Identity whose gradient is computed once and written, not fused into its consumers.

  Across unrolled layers, XLA:CPU fuses the chain of residual-gradient adds (and norm
  backwards) into every consumer of the residual-stream gradient, re-deriving the whole chain
  in each: work quadratic in depth. The cotangent here passes through a one-trip while loop,
  a boundary no fusion crosses (`lax.optimization_barrier` would not do: the CPU pipeline
  expands it away before fusion). Values and gradients are unchanged.
  """
  return x


def _barrier_fwd(x: jax.Array) -> tuple[jax.Array, None]:
  return x, None


def _barrier_bwd(_, g: jax.Array) -> tuple[jax.Array]:
  # A trip count XLA cannot know (1, unless g holds a NaN: then 0) keeps the loop.
  start = jnp.isnan(g.reshape(-1)[0]).astype(jnp.int32)
  # The body must touch g, or JAX hoists it out of the loop as a constant (+ 0.0 * i is exact).
  body = lambda c: (c[0] + 1, c[1] + (0.0 * c[0]).astype(c[1].dtype))
  _, g = jax.lax.while_loop(lambda c: c[0] < 1, body, (start, g))
  return (g,)


materialize_grad.defvjp(_barrier_fwd, _barrier_bwd)


@jax.custom_vjp
def softmax(x: jax.Array) -> jax.Array:
  """`jax.nn.softmax` over the last axis, with a backward pass that sums rows with a matmul.

  The backward needs sum(g * y) per row; XLA:CPU gives that reduction to a library fusion that
  is many times slower than the same sum as a matrix-vector product.
  """
  return jax.nn.softmax(x, axis=-1)


def _softmax_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  y = softmax(x)
  return y, y


def _softmax_bwd(y: jax.Array, g: jax.Array) -> tuple[jax.Array]:
  gy = g * y
  ones = jnp.ones((y.shape[-1], 1), y.dtype)
  row_sums = (gy.reshape(-1, y.shape[-1]) @ ones).reshape(*y.shape[:-1], 1)
  return (gy - y * row_sums,)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _group_heads(x: jax.Array, g: int, r: int) -> jax.Array:
  """A mask or bias [B, h or 1, t, s] as [B, g or 1, r or 1, t, s] (query heads by kv head)."""
  if x.shape[1] == 1:
    return x[:, :, None]
  return x.reshape(x.shape[0], g, r, *x.shape[2:])


def causal_query_blocks(t: int) -> int:
  """How many query blocks `einsum_attention` splits a causal length-t attention into: blocks
  of CAUSAL_BLOCK_ROWS queries or more, at most MAX_CAUSAL_BLOCKS, and a divisor of t."""
  blocks = min(t // CAUSAL_BLOCK_ROWS, MAX_CAUSAL_BLOCKS)
  while blocks > 1 and t % blocks:
    blocks -= 1
  return max(blocks, 1)


def _block_of(x: jax.Array | None, rows: slice, keys: int) -> jax.Array | None:
  """Rows `rows` and the first `keys` columns of a mask or bias broadcastable to [.., t, s]."""
  if x is None:
    return None
  if x.shape[-2] > 1:
    x = x[..., rows, :]
  return x[..., :keys] if x.shape[-1] > 1 else x


def einsum_attention(q: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None,
                     mask: jax.Array, scale: float | None = None,
                     heads_major: bool = False, causal: bool = False) -> jax.Array:
  """Softmax attention as two einsums, grouped by kv head; the math of
  `jax.nn.dot_product_attention` (scale default 1/sqrt(k), softmax in float32).

  q: [b, t, h, k]; key/value: [b, s, g, k], or [b, g, s, k] with `heads_major` (a cache);
  bias/mask broadcastable to [b, h, t, s]. Returns [b, t, h, k]. XLA's own implementation
  transposes to [b, h, t, k] and back, which dominates its backward pass on CPU.

  `causal`: the mask hides every key after the query's own index (causal self-attention over
  the same t tokens, no cache). Long sequences are then split into query blocks that read
  only the keys up to their last row, skipping the masked upper triangle: the same math, since
  those keys carry zero weight and no causal self-attention row is fully masked (the sums run
  over fewer terms, so the last bits can differ).
  """
  if causal and not heads_major and key.shape[1] == q.shape[1]:
    blocks = causal_query_blocks(q.shape[1])
    if blocks > 1:
      n = q.shape[1] // blocks
      outs = []
      for i in range(blocks):
        rows, end = slice(i * n, (i + 1) * n), (i + 1) * n
        outs.append(einsum_attention(q[:, rows], key[:, :end], value[:, :end],
                                     _block_of(bias, rows, end), _block_of(mask, rows, end),
                                     scale))
      return jnp.concatenate(outs, axis=1)
  b, t, h, k = q.shape
  g = key.shape[1 if heads_major else 2]
  kv = "bgsk" if heads_major else "bsgk"
  r = h // g
  scale = k ** -0.5 if scale is None else scale
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, g, r, k)
  scores = jnp.einsum(f"btgrk,{kv}->bgrts", q, key, preferred_element_type=jnp.float32)
  if bias is not None:
    scores = scores + _group_heads(bias, g, r).astype(jnp.float32)
  scores = jnp.where(_group_heads(mask, g, r), scores, jnp.finfo(jnp.float32).min)
  probs = softmax(scores).astype(value.dtype)
  return jnp.einsum(f"bgrts,{kv}->btgrk", probs, value).reshape(b, t, h, k)


def einsum_step_attention(q: jax.Array, k_new: jax.Array, v_new: jax.Array, k_old: jax.Array,
                          v_old: jax.Array, bias: jax.Array | None, mask: jax.Array,
                          positions: jax.Array, scale: float | None = None) -> jax.Array:
  """One new token per row attending to the cache as it was BEFORE this token's write, plus
  the token itself: the result of writing k_new/v_new at `positions` and then running
  `einsum_attention` over the cache, without any matmul reading the freshly written cache.

  Why: at batch 1, XLA:CPU turns the cache write into a dynamic-update-slice, fuses it into the
  attention matmuls' operands and copies (transposes) every layer's cache at every step;
  matmuls reading the loop's own cache buffer avoid that (the caller orders the write after
  them with `order_after`).

  q: [b, 1, h, k]; k_new/v_new: [b, 1, g, k]; k_old/v_old: [b, g, s, k]; mask (slots <=
  position) and bias broadcastable to [b, h, 1, s]; positions: [b, 1]. Returns [b, 1, h, k].
  """
  b, _, h, k = q.shape
  g, slots = k_old.shape[1], k_old.shape[2]
  r = h // g

  def grouped(x: jax.Array) -> jax.Array:  # [B, h or 1, 1, s] -> [B, g or 1, r or 1, s]
    return _group_heads(x, g, r)[..., 0, :]

  scale = k ** -0.5 if scale is None else scale
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, g, r, k)
  scores = jnp.einsum("bgrk,bgsk->bgrs", q, k_old, preferred_element_type=jnp.float32)
  own = jnp.einsum("bgrk,bgk->bgr", q, k_new[:, 0].astype(q.dtype),
                   preferred_element_type=jnp.float32)
  is_own = (jnp.arange(slots) == positions)[:, None, None, :]  # [b, 1, 1, s]
  scores = jnp.where(is_own, own[..., None], scores)  # The stale slot gets the new key's score.
  if bias is not None:
    scores = scores + grouped(bias).astype(jnp.float32)
  scores = jnp.where(grouped(mask), scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  own_prob = jnp.sum(jnp.where(is_own, probs, 0.0), axis=-1, keepdims=True)  # [b, g, r, 1]
  probs = jnp.where(is_own, 0.0, probs).astype(v_old.dtype)
  out = jnp.einsum("bgrs,bgsk->bgrk", probs, v_old)
  out = out + own_prob.astype(out.dtype) * v_new[:, 0, :, None].astype(out.dtype)
  return out.reshape(b, 1, h, k)


def order_after(positions: jax.Array, out: jax.Array) -> jax.Array:
  """`positions` [b, 1], made to depend on the attention output `out` [b, 1, h, k].

  The cache write after `einsum_step_attention` must come after every read of the old cache,
  or XLA keeps the old cache readable by copying all of it. A slot that depends on the output
  orders the write; the value is unchanged: +1 only in a row whose output is already NaN.
  """
  first = out[:, :, 0, 0]  # [b, 1]
  return positions + (first != first).astype(positions.dtype)
