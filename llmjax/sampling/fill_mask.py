"""BERT-style fill-mask for encoder-only (MLM) models: the likeliest tokens at each [MASK].

Each text is split on the mask token; its pieces are tokenized and joined with the mask id
(the tokenizer's own [MASK] when it has one, else tokenizer.vocab_size, past the tokenizer's
ids: `data.tokenizer.mask_id`, as the MLM pipeline uses it), and the whole
is framed like a training document: [bos] + ids + [eos]. The batch runs through one compiled
forward pass (right-padded, segment id 0 on padding, batch and length bucketed to powers of
two so similar calls reuse the compilation).

Candidates are the tokenizer's ids that are not special (`tokenizer.special_ids`: pad, bos,
eos, unk, ...; not the mask id, not ids past the tokenizer's vocabulary): the probability of a
candidate is the softmax of the MLM logits at the mask position over those ids only
(renormalized), which is what a user asking "which token goes here" means. The special ids are
the tokenizer's own, not assumed to be 0-3: id 3 is an ordinary piece of a LLaMA or T5
SentencePiece model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.data import tokenizer as tokenizer_lib
from llmjax.sampling.params import check_int, check_prompts

MIN_LENGTH_BUCKET = 8


def _bucket(n: int, minimum: int = 1) -> int:
  """Smallest power of two >= max(n, minimum)."""
  return 1 << (max(n, minimum) - 1).bit_length()


def check_fill_mask_model(model: Any, tokenizer: Any) -> None:
  """Raises ValueError unless `model` is an MLM encoder whose vocab holds the mask id."""
  config = model.config
  if config.architecture == "decoder":
    raise ValueError("fill_mask needs an encoder-only (MLM) model; this one is a decoder: "
                     "generate completions instead (llmjax sample --mode=generate).")
  if config.architecture == "encoder_decoder":
    raise ValueError("fill_mask needs an encoder-only (MLM) model; this one is an "
                     "encoder_decoder: put <extra_id_0> where the gap is and generate (llmjax "
                     "sample --mode=generate --prompt='... <extra_id_0> ...').")
  if config.is_classifier:
    raise ValueError(f"this encoder has a classification head (num_classes="
                     f"{config.num_classes}), not an MLM head: it predicts classes, not tokens; "
                     "use LoadedModel.logits for its class logits.")
  mask_id = tokenizer_lib.mask_id(tokenizer)
  if config.vocab_size <= mask_id:
    raise ValueError(f"the mask id is {mask_id} (tokenizer.vocab_size={tokenizer.vocab_size}), "
                     f"but the model's vocab_size={config.vocab_size} has no room for it: it "
                     "was not trained with the mlm objective.")


def encode_masked(tokenizer: Any, text: str, mask_token: str = "[MASK]") -> list[int]:
  """[bos] + ids of text, with mask_token replaced by the mask id (`tokenizer.mask_id`, else
  tokenizer.vocab_size) + [eos].

  Raises:
    ValueError: text has no mask_token.
  """
  pieces = text.split(mask_token)
  if len(pieces) == 1:
    raise ValueError(f"no {mask_token!r} in {text!r}: mark each token to predict with it.")
  ids = [tokenizer.bos_id]
  for j, piece in enumerate(pieces):
    if j:
      ids.append(tokenizer_lib.mask_id(tokenizer))
    ids += tokenizer.encode(piece)
  return ids + [tokenizer.eos_id]


def candidate_ids(tokenizer: Any) -> np.ndarray:
  """The ids fill-mask may propose: [0, tokenizer.vocab_size) minus tokenizer.special_ids."""
  return np.setdiff1d(np.arange(tokenizer.vocab_size, dtype=np.int32),
                      np.fromiter(tokenizer.special_ids, np.int32))


@functools.partial(jax.jit, static_argnames=("model", "top_k"))
def _top_candidates(model: Any, params: Any, tokens: jax.Array, segment_ids: jax.Array,
                    mask_positions: jax.Array, candidates: jax.Array, *,
                    top_k: int) -> tuple[jax.Array, jax.Array]:
  """Top-k (probabilities, ids) [b, m, k] at mask_positions [b, m] of padded tokens [b, t],
  over the candidate ids [c]."""
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  logits, _ = model.apply(params, {"inputs": tokens, "segment_ids": segment_ids,
                                   "positions": positions})
  at_mask = jnp.take_along_axis(logits, mask_positions[:, :, None], axis=1)  # [b, m, v]
  # Renormalize over the candidates only.
  scores = jnp.take(at_mask, candidates, axis=-1).astype(jnp.float32)  # [b, m, c]
  probs, idx = jax.lax.top_k(jax.nn.softmax(scores, axis=-1), top_k)
  return probs, candidates[idx]


def fill_mask(model: Any, params: Any, tokenizer: Any, texts: Sequence[str] | str, *,
              top_k: int = 5,
              mask_token: str = "[MASK]") -> list[list[list[tuple[str, float]]]]:
  """The top_k most likely tokens at every mask of every text.

  Args:
    model: an encoder-only LanguageModel with an MLM head.
    params: its parameters.
    tokenizer: the tokenizer it was trained with (its mask id: `data.tokenizer.mask_id`).
    texts: a string or strings, each with at least one mask_token.
    top_k: candidates per mask (capped at the number of real token ids).
    mask_token: the marker in texts.

  Returns:
    Per text, per mask occurrence (left to right), [(token text, probability)] best first;
    probabilities are over the tokenizer's non-special ids (renormalized).

  Raises:
    TypeError: texts not a str or a list of str, top_k not an int, mask_token not a str.
    ValueError: a decoder, encoder_decoder or classifier model (naming what to use instead),
      no texts, a text without mask_token, a text too long for max_seq_len, or top_k < 1.
  """
  check_fill_mask_model(model, tokenizer)
  texts = check_prompts(texts, "texts")
  top_k = check_int("top_k", top_k, "an int >= 1 (candidates per mask)", lambda v: v >= 1)
  if not isinstance(mask_token, str):
    raise TypeError(f"mask_token must be a non-empty str such as '[MASK]', got {mask_token!r}.")
  if not mask_token:
    raise ValueError("mask_token must be a non-empty str such as '[MASK]', got ''.")
  candidates = candidate_ids(tokenizer)
  top_k = min(int(top_k), len(candidates))
  rows = [encode_masked(tokenizer, text, mask_token) for text in texts]
  max_len = model.config.max_seq_len
  for text, ids in zip(texts, rows, strict=True):
    if len(ids) > max_len:
      raise ValueError(f"{text[:40]!r}... is {len(ids)} tokens with BOS and EOS, more than the "
                       f"model's max_seq_len={max_len}: shorten it by {len(ids) - max_len} "
                       "tokens.")
  mask_id = tokenizer_lib.mask_id(tokenizer)
  masks = [[i for i, t in enumerate(ids) if t == mask_id] for ids in rows]
  batch = _bucket(len(rows))
  length = min(_bucket(max(map(len, rows)), MIN_LENGTH_BUCKET), max_len)
  num_masks = _bucket(max(map(len, masks)))
  tokens = np.full((batch, length), tokenizer.pad_id, np.int32)
  segment_ids = np.zeros((batch, length), np.int32)
  # Filler rows hold one BOS so no row attends to nothing; their results are dropped.
  tokens[:, 0], segment_ids[:, 0] = tokenizer.bos_id, 1
  mask_positions = np.zeros((batch, num_masks), np.int32)
  for i, (ids, pos) in enumerate(zip(rows, masks, strict=True)):
    tokens[i, :len(ids)], segment_ids[i, :len(ids)] = ids, 1
    mask_positions[i, :len(pos)] = pos
  probs, ids = _top_candidates(model, params, tokens, segment_ids, mask_positions,
                               jnp.asarray(candidates), top_k=top_k)
  probs, ids = np.asarray(probs), np.asarray(ids)
  return [[[(tokenizer.decode([int(ids[i, m, j])]), float(probs[i, m, j]))
            for j in range(top_k)] for m in range(len(masks[i]))] for i in range(len(rows))]
