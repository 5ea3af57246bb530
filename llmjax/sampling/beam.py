"""Compiled beam search over a `logits_fn`, for decoder-only and encoder-decoder caches alike.

Same model contract as decoding.py:
`logits_fn(params, tokens [b, t], positions [b, t], cache) -> (logits [b, t, v], cache)`, and the
CACHE LAYOUT RULE: every cache leaf has the batch dimension at axis 1. Leaf names and the other
axes are never looked at, so any cache pytree works.

1. prefill the right-padded prompt [b, P] once per batch row, with the caller's batch-b cache,
   for the cache only; then feed each row's last prompt token again at its own slot for the
   first log-probs (so logits_fn must tolerate a rewrite of a slot, as in decoding.py);
2. expand the cache (repeat each row num_beams times along axis 1) and the last-token log-probs
   to b * num_beams rows (row r = batch_row * num_beams + beam);
3. a `lax.while_loop`: each step scores the top 2 * num_beams (beam, token) extensions per row
   by summed log-prob. Those ending in EOS go into a per-row "finished" buffer of the best
   num_return hypotheses (ranked by score = log_prob / length penalty); the best num_beams
   non-EOS ones stay alive (2 * num_beams candidates hold at most num_beams EOS ones, so
   num_beams alive beams always remain). The cache is reordered by gathering axis 1 of every
   leaf, then each alive beam's new token is fed at position = prompt length + step.

Length penalty (GNMT / T5X): score = log_prob / ((5 + length) / 6) ** alpha, with length the
generated tokens counting the EOS; alpha = 0 ranks by log-prob alone.

Early stop (exact, like HF `early_stopping="never"`; T5X's bound made sign-aware): a row is
done when its num_return-th finished score is >= an upper bound on any score its best alive
beam could still reach: log-probs only fall, so that bound is alive_log_prob / max(penalty(cur
+ 1), penalty(max_new_tokens)) (the penalty is monotone in length for either sign of alpha).
Stopping therefore never changes the result compared with running to max_new_tokens. When the
loop runs to max_new_tokens, the alive beams (no EOS, length max_new_tokens) are candidates too.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.models.decoder import LogitsFn
from llmjax.sampling.decoding import prefill, validate_decode_args


class BeamOutput(NamedTuple):
  """Result of beam search, best hypothesis first per row.

  Attributes:
    tokens: [b, n, max_new_tokens] int32 generated ids; pad_id after each hypothesis's end.
    lengths: [b, n] int32 generated tokens, counting the EOS when one was emitted.
    scores: [b, n] float32 log_probs / length penalty, sorted descending (-inf: fewer than n
      hypotheses exist, e.g. with a tiny vocabulary).
    log_probs: [b, n] float32 summed log-probs of the generated tokens.
  """

  tokens: jax.Array
  lengths: jax.Array
  scores: jax.Array
  log_probs: jax.Array


class _BeamState(NamedTuple):
  step: jax.Array  # tokens generated so far by every alive beam
  tokens: jax.Array  # [b * k] int32: each alive beam's newest token, fed next
  cache: Any  # b * k rows
  alive_seqs: jax.Array  # [b, k, T]
  alive_lp: jax.Array  # [b, k] summed log-probs, descending
  fin_seqs: jax.Array  # [b, n, T]
  fin_scores: jax.Array  # [b, n] descending
  fin_lp: jax.Array  # [b, n]
  fin_len: jax.Array  # [b, n]
  done: jax.Array  # [b] bool: no alive beam can enter the row's top n any more


def length_penalty_term(length: jax.Array | int, alpha: float) -> jax.Array:
  """GNMT/T5X brevity term ((5 + length) / 6) ** alpha; scores are log_prob / this."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def validate_beam_args(prompt_shape: tuple[int, ...], prompt_lengths: Any, cache: Any, *,
                       num_beams: int, max_new_tokens: int, eos_id: int | None,
                       num_return: int | None = None, cache_len: int | None = None,
                       max_seq_len: int | None = None) -> None:
  """Checks beam-search arguments before anything is compiled.

  Args:
    prompt_shape: [b, P] shape of the right-padded prompt tokens.
    prompt_lengths: [b] prompt lengths (value checks only when concrete).
    cache: the caller's batch-b cache pytree (arrays or `jax.eval_shape` structs); None skips
      the cache checks.
    num_beams: beams per row.
    max_new_tokens: tokens to generate per hypothesis at most.
    eos_id: the stop id; required.
    num_return: hypotheses returned per row (None: num_beams).
    cache_len: the cache's slots per row (`Decoder.cache_length(cache)`), when known.
    max_seq_len: the model's longest sequence, when known.

  Raises:
    ValueError: naming the offending value and what to change.
  """
  if not isinstance(num_beams, int | np.integer) or num_beams < 1:
    raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}.")
  if num_return is not None and not 1 <= num_return <= num_beams:
    raise ValueError(f"num_return={num_return} must be in [1, num_beams={num_beams}]: raise "
                     f"num_beams to at least {num_return} or return fewer hypotheses.")
  if eos_id is None:
    raise ValueError("beam search needs eos_id: finished hypotheses are those that emit it "
                     "(pass the tokenizer's eos_id).")
  validate_decode_args(prompt_shape, prompt_lengths, max_new_tokens=max_new_tokens,
                       cache_len=cache_len, max_seq_len=max_seq_len)
  batch = prompt_shape[0]
  # cache=None is an empty tree: nothing to check.
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
    shape = np.shape(leaf)
    if len(shape) < 2 or shape[1] != batch:
      raise ValueError(
          f"cache leaf {jax.tree_util.keystr(path)} has shape {shape}: every cache leaf must "
          f"hold the batch ({batch}) at axis 1 so beams can be expanded and reordered; make the "
          "cache for the prompt batch with that layout.")


def _top_k(values: jax.Array, k: int, *arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Top k of values [b, m] along axis 1 plus the matching entries of each [b, m, ...] array."""
  top, idx = jax.lax.top_k(values, k)
  return (top,) + tuple(jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)),
                                            axis=1) for a in arrays)


def beam_search(logits_fn: LogitsFn, params: Any, prompt_tokens: jax.Array,
                prompt_lengths: jax.Array, cache: Any, *, num_beams: int, max_new_tokens: int,
                eos_id: int, pad_id: int = 0, length_penalty: float = 1.0,
                num_return: int | None = None) -> BeamOutput:
  """Beam search; traceable (no value checks, see `generate_beam`).

  Args:
    logits_fn: `(params, tokens, positions, cache) -> (logits, cache)`.
    params: passed through to logits_fn.
    prompt_tokens: [b, P] int ids, right-padded with pad_id.
    prompt_lengths: [b] true lengths (>= 1).
    cache: cache pytree for b rows (batch at axis 1 of every leaf) with room for
      max(prompt_lengths) + max_new_tokens positions; expanded to b * num_beams rows here.
    num_beams: beams per row (static).
    max_new_tokens: most tokens per hypothesis (static).
    eos_id: ends a hypothesis (counted in its length).
    pad_id: fills tokens past each hypothesis's end.
    length_penalty: alpha of the GNMT penalty; 0 ranks by summed log-prob.
    num_return: hypotheses returned per row, <= num_beams (None: num_beams).

  Returns:
    BeamOutput(tokens [b, n, T], lengths [b, n], scores [b, n], log_probs [b, n]), best first.
  """
  k, n, steps = num_beams, num_return or num_beams, max_new_tokens
  batch = prompt_tokens.shape[0]
  prompt_tokens = prompt_tokens.astype(jnp.int32)
  prompt_lengths = prompt_lengths.astype(jnp.int32)
  # Prefill per row (not per beam), kept for its cache only.
  _, cache, last_token = prefill(logits_fn, params, prompt_tokens, prompt_lengths, cache)
  # The last prompt token again at its own slot (rewriting what the prefill wrote there): the
  # first log-probs come from a [b, 1, v] projection, as in decoding.py.
  logits, cache = logits_fn(params, last_token[:, None], (prompt_lengths - 1)[:, None], cache)
  last = logits[:, 0]  # [b, v]
  vocab = last.shape[-1]
  if 2 * k > k * vocab:
    raise ValueError(f"beam search needs a vocabulary of >= 2 ids, got {vocab}.")
  # Row r of the expanded batch is beam r % k of batch row r // k.
  cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=1), cache)
  beam_lengths = jnp.repeat(prompt_lengths, k)
  penalty = functools.partial(length_penalty_term, alpha=length_penalty)
  neg_inf = jnp.float32(-jnp.inf)

  def select(state: _BeamState, log_probs: jax.Array) -> _BeamState:
    """Extends every alive beam by one token given its log-probs [b * k, v]."""
    length = state.step + 1  # of every candidate, counting its new token
    cand = state.alive_lp[:, :, None] + log_probs.reshape(batch, k, vocab)
    cand_lp, flat = jax.lax.top_k(cand.reshape(batch, k * vocab), 2 * k)  # [b, 2k]
    beam, token = flat // vocab, flat % vocab
    seqs = jnp.take_along_axis(state.alive_seqs, beam[:, :, None], axis=1)  # [b, 2k, T]
    seqs = jax.lax.dynamic_update_slice(seqs, token[:, :, None], (0, 0, state.step))
    is_eos = token == eos_id
    # Finished: merge this step's EOS candidates into the row's best n.
    new_scores = jnp.where(is_eos, cand_lp / penalty(length), neg_inf)
    fin = _top_k(jnp.concatenate([state.fin_scores, new_scores], 1), n,
                 jnp.concatenate([state.fin_lp, cand_lp], 1),
                 jnp.concatenate([state.fin_len, jnp.broadcast_to(length, cand_lp.shape)], 1),
                 jnp.concatenate([state.fin_seqs, seqs], 1))
    # Alive: the best k candidates that did not end (at least k of the 2k did not).
    alive_lp, alive_seqs, src, token = _top_k(jnp.where(is_eos, neg_inf, cand_lp), k, seqs,
                                              beam, token)
    rows = (jnp.arange(batch)[:, None] * k + src).reshape(-1)  # [b * k] source rows
    cache = jax.tree.map(lambda x: jnp.take(x, rows, axis=1), state.cache)
    # Exact stop: nothing an alive beam can still become beats the n-th finished hypothesis.
    bound = alive_lp[:, 0] / jnp.maximum(penalty(length + 1), penalty(steps))
    done = state.done | (fin[0][:, n - 1] >= bound)
    return state._replace(step=length, tokens=token.reshape(-1), cache=cache,
                          alive_seqs=alive_seqs, alive_lp=alive_lp, fin_scores=fin[0],
                          fin_lp=fin[1], fin_len=fin[2], fin_seqs=fin[3], done=done)

  def cond(state: _BeamState) -> jax.Array:
    return (state.step < steps) & ~jnp.all(state.done)

  def body(state: _BeamState) -> _BeamState:
    position = (beam_lengths + state.step - 1)[:, None]
    logits, cache = logits_fn(params, state.tokens[:, None], position, state.cache)
    return select(state._replace(cache=cache), _log_softmax(logits[:, -1]))

  state = _BeamState(
      step=jnp.zeros((), jnp.int32), tokens=jnp.zeros((batch * k,), jnp.int32), cache=cache,
      alive_seqs=jnp.full((batch, k, steps), pad_id, jnp.int32),
      # Only beam 0 starts alive: the k copies are identical and must not be picked k times.
      alive_lp=jnp.where(jnp.arange(k) == 0, 0.0, neg_inf)[None].repeat(batch, 0),
      fin_seqs=jnp.full((batch, n, steps), pad_id, jnp.int32),
      fin_scores=jnp.full((batch, n), neg_inf), fin_lp=jnp.full((batch, n), neg_inf),
      fin_len=jnp.zeros((batch, n), jnp.int32), done=jnp.zeros((batch,), bool))
  # The first selection uses the prefill; the loop's last selected tokens are never fed.
  state = select(state, jnp.repeat(_log_softmax(last), k, axis=0))
  state = jax.lax.while_loop(cond, body, state)
  # Alive beams that reached max_new_tokens without EOS are complete hypotheses too; alive beams
  # of an early-stopped loop are unfinished and (by the stop rule) no better anyway.
  full = state.step >= steps
  alive_scores = jnp.where(full, state.alive_lp / penalty(steps), neg_inf)
  scores, log_probs, lengths, tokens = _top_k(
      jnp.concatenate([state.fin_scores, alive_scores], 1), n,
      jnp.concatenate([state.fin_lp, state.alive_lp], 1),
      jnp.concatenate([state.fin_len, jnp.full((batch, k), steps, jnp.int32)], 1),
      jnp.concatenate([state.fin_seqs, state.alive_seqs], 1))
  return BeamOutput(tokens=tokens, lengths=lengths, scores=scores, log_probs=log_probs)


def _log_softmax(logits: jax.Array) -> jax.Array:
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


@functools.partial(
    jax.jit, static_argnames=("logits_fn", "num_beams", "max_new_tokens", "eos_id", "pad_id",
                              "length_penalty", "num_return"))
def _beam_jit(logits_fn, params, prompt_tokens, prompt_lengths, cache, *, num_beams,
              max_new_tokens, eos_id, pad_id, length_penalty, num_return):
  return beam_search(logits_fn, params, prompt_tokens, prompt_lengths, cache,
                     num_beams=num_beams, max_new_tokens=max_new_tokens, eos_id=eos_id,
                     pad_id=pad_id, length_penalty=length_penalty, num_return=num_return)


def generate_beam(logits_fn: LogitsFn, params: Any, prompt_tokens: Any, prompt_lengths: Any,
                  cache: Any, *, num_beams: int, max_new_tokens: int, eos_id: int,
                  pad_id: int = 0, length_penalty: float = 1.0, num_return: int | None = None,
                  cache_len: int | None = None, max_seq_len: int | None = None) -> BeamOutput:
  """Validates, then runs `beam_search` under a jit cached per (logits_fn, shapes, settings).

  Args:
    logits_fn: hashable `(params, tokens, positions, cache) -> (logits, cache)`.
    params: model parameters.
    prompt_tokens: [b, P] int ids right-padded with pad_id.
    prompt_lengths: [b] true prompt lengths, each >= 1.
    cache: the cache for b rows (not b * num_beams), every leaf batch-at-axis-1.
    num_beams: beams per row; num_return: hypotheses returned per row (default num_beams).
    max_new_tokens: most tokens per hypothesis.
    eos_id: stop id (required); pad_id: fills tokens after each hypothesis.
    length_penalty: GNMT alpha; 0 = rank by summed log-prob.
    cache_len: the cache's slots per row (`Decoder.cache_length(cache)`), checked when given.
    max_seq_len: the model's longest sequence, checked when given.

  Returns:
    BeamOutput, best hypothesis first per row.

  Raises:
    ValueError: bad shapes, beam counts, eos_id, or prompts + max_new_tokens that do not fit.
  """
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  validate_beam_args(prompt_tokens.shape, prompt_lengths, cache, num_beams=num_beams,
                     max_new_tokens=max_new_tokens, eos_id=eos_id, num_return=num_return,
                     cache_len=cache_len, max_seq_len=max_seq_len)
  return _beam_jit(logits_fn, params, prompt_tokens, jnp.asarray(prompt_lengths, jnp.int32),
                   cache, num_beams=int(num_beams), max_new_tokens=int(max_new_tokens),
                   eos_id=int(eos_id), pad_id=int(pad_id), length_penalty=float(length_penalty),
                   num_return=None if num_return is None else int(num_return))
