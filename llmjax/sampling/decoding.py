"""Pure, compiled autoregressive decoding over a `logits_fn`.

The model enters only through
`logits_fn(params, tokens [b, t], positions [b, t], cache) -> (logits [b, t, v], cache)`, which
writes each token's keys/values at its own position and lets a query at position p see cache
slots <= p of its row: a model's `Decoder` (llmjax/models/decoder.py) supplies it, its params
and the cache; here they are explicit arguments, so a hand-written toy works as well.
Decoding is then:

1. prefill: the whole right-padded prompt [b, P] in one call (positions arange(P)), kept only
   for the cache it writes: its logits are unused, so XLA drops the [b, P, v] vocabulary
   projection (most of a prefill's work at GPT-2 vocabularies) and whatever else feeds only
   them. Pad tokens past a row's end write cache slots the row's later tokens overwrite before
   any query can see them.
2. a `lax.while_loop` feeding one token per row at position = that row's current length - 1,
   so rows with different prompt lengths decode in lockstep, each writing at its own slot. Its
   first step re-feeds each row's last prompt token (prompt_lengths - 1): that rewrites the
   slot the prefill wrote with the same keys/values and yields the first new token's logits
   from a [b, 1, v] projection. A row stops at EOS (it then emits pad); the loop stops when
   every row is done or after max_new_tokens steps. The last sampled token is never fed.

So logits_fn must tolerate a token being written again at the slot it already holds (any
cache indexed by position does).

Everything here is traceable: `decode` can be wrapped in `jax.jit` with `logits_fn`,
`max_new_tokens`, `strategy`, `eos_id` and `pad_id` static. `generate` validates first (shapes,
prompt lengths when concrete, cache length) and then runs a cached jit of `decode`. Text,
tokenizers and batching live in sampler.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.models.decoder import LogitsFn
from llmjax.sampling.strategies import Greedy

Strategy = Callable[[jax.Array, jax.Array], jax.Array]
GREEDY = Greedy()


class DecodeOutput(NamedTuple):
  """Result of decoding.

  Attributes:
    tokens: [b, max_new_tokens] int32 generated ids; pad_id after a row's EOS.
    lengths: [b] int32 generated tokens per row, counting the EOS when one was emitted.
    logits: [b, max_new_tokens, v] float32 logits each token was sampled from (zeros after a
      row stopped), only with `return_logits=True`; else None.
  """

  tokens: jax.Array
  lengths: jax.Array
  logits: jax.Array | None = None


class _LoopState(NamedTuple):
  step: jax.Array  # index of the token to sample next
  fed: jax.Array  # [b] the token fed this step (the last prompt token, then the last sampled)
  cache: Any
  tokens: jax.Array  # [b, n] output so far
  done: jax.Array  # [b] bool: row has emitted EOS
  lengths: jax.Array  # [b] tokens emitted per row
  all_logits: jax.Array | None  # [b, n, v] when return_logits


def validate_decode_args(prompt_shape: tuple[int, ...], prompt_lengths: Any, *,
                         max_new_tokens: int, cache_len: int | None = None,
                         max_seq_len: int | None = None) -> None:
  """Checks decode arguments before anything is compiled.

  Args:
    prompt_shape: shape [b, P] of the right-padded prompt tokens.
    prompt_lengths: [b] prompt lengths; value checks run only when it is concrete (not traced).
    max_new_tokens: tokens to generate per row.
    cache_len: slots per row of the cache (None when unknown).
    max_seq_len: the model's longest sequence (None when unknown).

  Raises:
    ValueError: naming the offending value and what to change.
  """
  if len(prompt_shape) != 2:
    raise ValueError(f"prompt_tokens must be [batch, length], got shape {prompt_shape}.")
  batch, padded_len = prompt_shape
  if batch == 0 or padded_len == 0:
    raise ValueError(
        f"prompt_tokens has shape {prompt_shape}: every row needs at least one token (a BOS; "
        "Sampler prepends it).")
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}.")
  limits = [(n, v) for n, v in (("cache length", cache_len), ("max_seq_len", max_seq_len))
            if v is not None]
  for name, limit in limits:
    if padded_len > limit:
      raise ValueError(
          f"padded prompt length {padded_len} exceeds the {name} {limit}: shorten the prompt "
          f"or use a larger {name}.")
  try:
    lengths = np.asarray(prompt_lengths)
  except jax.errors.TracerArrayConversionError:
    return  # Traced under an outer jit: only the static checks above apply.
  if lengths.shape != (batch,):
    raise ValueError(f"prompt_lengths must have shape ({batch},), got {lengths.shape}.")
  if (lengths <= 0).any():
    raise ValueError(
        f"empty prompt in rows {np.flatnonzero(lengths <= 0).tolist()}: every prompt needs at "
        "least a BOS token (Sampler prepends one).")
  if (lengths > padded_len).any():
    raise ValueError(f"prompt_lengths {lengths.tolist()} exceed the padded length {padded_len}.")
  longest = int(lengths.max())
  for name, limit in limits:
    if longest + max_new_tokens > limit:
      raise ValueError(
          f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} = "
          f"{longest + max_new_tokens} exceeds the {name} {limit}: lower max_new_tokens to "
          f"{max(limit - longest, 0)} or shorten the prompt.")


def prefill(logits_fn: LogitsFn, params: Any, prompt_tokens: jax.Array,
            prompt_lengths: jax.Array, cache: Any) -> tuple[jax.Array, Any, jax.Array]:
  """Runs the right-padded prompt [b, P] through logits_fn at positions arange(P).

  Returns (the [b, P, v] logits, the cache, each row's last prompt token [b] int32). Callers
  keep the cache and feed the last token again at its own slot for the first next-token
  logits, so the logits are normally dead code XLA removes with the [b, P, v] vocabulary
  projection that makes them (most of a prefill's work at GPT-2 vocabularies); their static
  shape gives the vocabulary size.
  """
  batch, padded_len = prompt_tokens.shape
  positions = jnp.broadcast_to(jnp.arange(padded_len, dtype=jnp.int32), (batch, padded_len))
  logits, cache = logits_fn(params, prompt_tokens, positions, cache)
  last = jnp.take_along_axis(prompt_tokens, (prompt_lengths - 1)[:, None], axis=1)[:, 0]
  return logits, cache, last


def decode(logits_fn: LogitsFn, params: Any, prompt_tokens: jax.Array,
           prompt_lengths: jax.Array, cache: Any, rng: jax.Array, *, max_new_tokens: int,
           strategy: Strategy = GREEDY, eos_id: int | None = None,
           pad_id: int = 0, return_logits: bool = False) -> DecodeOutput:
  """Prefill + while-loop decoding; traceable (no validation of values, see `generate`).

  Args:
    logits_fn: `(params, tokens, positions, cache) -> (logits, cache)`.
    params: passed through to logits_fn.
    prompt_tokens: [b, P] int32, right-padded with pad_id.
    prompt_lengths: [b] int32 true lengths (>= 1).
    cache: initial cache pytree for logits_fn, with room for max(prompt_lengths) +
      max_new_tokens positions per row.
    rng: PRNG key; step i samples with the i-th of max_new_tokens keys split from it.
    max_new_tokens: static number of tokens to generate per row.
    strategy: static `(logits [b, v] float32, rng) -> tokens [b]`.
    eos_id: a row stops after emitting this id; None never stops early.
    pad_id: emitted by rows that already stopped.
    return_logits: also return the logits of every sampled token (static).

  Returns:
    DecodeOutput(tokens [b, max_new_tokens], lengths [b], logits or None).
  """
  batch = prompt_tokens.shape[0]
  prompt_tokens = prompt_tokens.astype(jnp.int32)
  prompt_lengths = prompt_lengths.astype(jnp.int32)
  # Only the cache (and the logits' static shape) is kept.
  prefill_logits, cache, last_prompt = prefill(logits_fn, params, prompt_tokens, prompt_lengths,
                                               cache)
  keys = jax.random.split(rng, max_new_tokens)

  def cond(state: _LoopState) -> jax.Array:
    return (state.step < max_new_tokens) & ~jnp.all(state.done)

  def body(state: _LoopState) -> _LoopState:
    # Feed the row's newest token at its slot (step 0: the last prompt token, rewriting what
    # the prefill wrote there), then sample the next token from its logits.
    position = (prompt_lengths - 1 + state.step)[:, None]  # [b, 1]
    logits, cache = logits_fn(params, state.fed[:, None], position, state.cache)
    logits = logits[:, -1].astype(jnp.float32)  # [b, v]
    token = strategy(logits, keys[state.step]).astype(jnp.int32)
    token = jnp.where(state.done, pad_id, token)  # [b]
    tokens = jax.lax.dynamic_update_slice(state.tokens, token[:, None], (0, state.step))
    lengths = state.lengths + (~state.done).astype(jnp.int32)
    done = state.done if eos_id is None else state.done | (token == eos_id)
    all_logits = state.all_logits
    if return_logits:
      step_logits = jnp.where(state.done[:, None], 0.0, logits)
      all_logits = jax.lax.dynamic_update_slice(
          all_logits, step_logits[:, None], (0, state.step, 0))
    return _LoopState(step=state.step + 1, fed=token, cache=cache, tokens=tokens, done=done,
                      lengths=lengths, all_logits=all_logits)

  all_logits = None
  if return_logits:
    all_logits = jnp.zeros((batch, max_new_tokens, prefill_logits.shape[-1]), jnp.float32)
  state = _LoopState(
      step=jnp.zeros((), jnp.int32), fed=last_prompt, cache=cache,
      tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
      done=jnp.zeros((batch,), bool), lengths=jnp.zeros((batch,), jnp.int32),
      all_logits=all_logits)
  state = jax.lax.while_loop(cond, body, state)
  return DecodeOutput(tokens=state.tokens, lengths=state.lengths, logits=state.all_logits)


@functools.partial(
    jax.jit, static_argnames=("logits_fn", "max_new_tokens", "strategy", "eos_id", "pad_id",
                              "return_logits"))
def _decode_jit(logits_fn, params, prompt_tokens, prompt_lengths, cache, rng, *,
                max_new_tokens, strategy, eos_id, pad_id, return_logits):
  return decode(logits_fn, params, prompt_tokens, prompt_lengths, cache, rng,
                max_new_tokens=max_new_tokens, strategy=strategy, eos_id=eos_id, pad_id=pad_id,
                return_logits=return_logits)


def generate(logits_fn: LogitsFn, params: Any, prompt_tokens: Any, prompt_lengths: Any,
             cache: Any, rng: jax.Array, *, max_new_tokens: int, strategy: Strategy = GREEDY,
             eos_id: int | None = None, pad_id: int = 0, cache_len: int | None = None,
             max_seq_len: int | None = None, return_logits: bool = False) -> DecodeOutput:
  """Validates, then decodes under a jit cached per (logits_fn, shapes, static settings).

  Args:
    logits_fn: `(params, tokens, positions, cache) -> (logits, cache)`; must be hashable (a
      function or a bound method) since it is a static argument of the jit.
    params: model parameters.
    prompt_tokens: [b, P] int ids right-padded with pad_id.
    prompt_lengths: [b] true prompt lengths, each >= 1 (at least a BOS).
    cache: initial cache, with room for max(prompt_lengths) + max_new_tokens positions.
    rng: PRNG key.
    max_new_tokens: tokens to generate per row.
    strategy: a hashable sampling strategy (strategies.py).
    eos_id: stop id (None: always generate max_new_tokens).
    pad_id: id emitted after a row stopped.
    cache_len: the cache's slots per row (`Decoder.cache_length(cache)`), checked when given.
    max_seq_len: the model's longest sequence, checked like the cache length when given.
    return_logits: also return the logits each token was sampled from.

  Returns:
    DecodeOutput(tokens [b, max_new_tokens], lengths [b], logits or None).

  Raises:
    ValueError: empty prompts, prompts + max_new_tokens longer than the cache or max_seq_len.
  """
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  validate_decode_args(prompt_tokens.shape, prompt_lengths, max_new_tokens=max_new_tokens,
                       cache_len=cache_len, max_seq_len=max_seq_len)
  return _decode_jit(logits_fn, params, prompt_tokens, jnp.asarray(prompt_lengths, jnp.int32),
                     cache, rng, max_new_tokens=max_new_tokens, strategy=strategy, eos_id=eos_id,
                     pad_id=pad_id, return_logits=return_logits)
