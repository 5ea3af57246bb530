"""Training objectives: turn one tokenized document into an (inputs, targets) example.

Shifting happens here, inside each document and before packing, so no target ever crosses a
document boundary no matter how documents are later packed or split into rows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np


def causal_lm_example(ids: Sequence[int] | np.ndarray, *, bos_id: int,
                      eos_id: int) -> dict[str, np.ndarray]:
  """Causal LM: doc = [bos] + ids + [eos]; inputs = doc[:-1], targets = doc[1:].

  Returns:
    {"inputs": int32 [n + 1], "targets": int32 [n + 1]} for a document of n tokens; an empty
    document still teaches bos -> eos.
  """
  doc = np.empty(len(ids) + 2, np.int32)
  doc[0], doc[-1] = bos_id, eos_id
  doc[1:-1] = ids
  return {"inputs": doc[:-1], "targets": doc[1:]}


def mlm_example(ids: Sequence[int] | np.ndarray, rng: np.random.Generator, *, mask_id: int,
                vocab_size: int, mlm_rate: float = 0.15, bos_id: int, eos_id: int,
                special_ids: Collection[int]) -> dict[str, np.ndarray]:
  """BERT masked LM on doc = [bos] + ids + [eos].

  Selects round(mlm_rate * n) (at least 1) of the n positions that hold no special id
  uniformly without replacement; each selected token becomes mask_id with probability 0.8, a
  token drawn uniformly from the non-special ids below vocab_size with probability 0.1, and
  stays unchanged otherwise.

  Args:
    ids: the document's token ids (no BOS/EOS).
    rng: the example's generator (the pipeline derives it from the seed and record index).
    mask_id: the [MASK] id (the pipeline uses tokenizer.vocab_size, past the tokenizer's ids).
    vocab_size: the tokenizer's vocabulary size; random replacements are drawn below it.
    mlm_rate: share of non-special tokens to predict.
    bos_id / eos_id: the document delimiters.
    special_ids: ids never selected and never drawn as replacements: the tokenizer's
      `special_ids` (ours: 0-3; a converted BERT's: 0 and 100-103, ids 1-3 being ordinary).
      bos_id and eos_id are always among them.

  Returns:
    {"inputs": int32 [n + 2] corrupted doc, "targets": int32 [n + 2] the original doc,
     "weights": float32 [n + 2], 1.0 exactly at the selected positions}.
  """
  doc = np.empty(len(ids) + 2, np.int32)
  doc[0], doc[-1] = bos_id, eos_id
  doc[1:-1] = ids
  inputs, weights = doc.copy(), np.zeros(len(doc), np.float32)
  special = np.asarray(sorted({int(i) for i in special_ids} | {bos_id, eos_id}), np.int32)
  # A tokenizer can emit unk inside a document; it is special too.
  candidates = np.flatnonzero(~np.isin(doc, special))
  n = len(candidates)
  if n:
    k = min(n, max(1, round(mlm_rate * n)))
    chosen = rng.choice(candidates, size=k, replace=False)
    u = rng.random(k)
    random_ids = _draw_excluding(rng, vocab_size, special[special < vocab_size], k)
    inputs[chosen] = np.where(u < 0.8, mask_id, np.where(u < 0.9, random_ids, doc[chosen]))
    weights[chosen] = 1.0
  return {"inputs": inputs, "targets": doc, "weights": weights}


def _draw_excluding(rng: np.random.Generator, vocab_size: int, excluded: np.ndarray,
                    size: int) -> np.ndarray:
  """`size` ids uniform over [0, vocab_size) minus the sorted, distinct `excluded`: one draw of
  [0, vocab_size - len(excluded)) per id, shifted past every excluded id at or below it (so
  for excluded = 0-3 these are exactly the draws of [4, vocab_size))."""
  ids = rng.integers(0, vocab_size - len(excluded), size=size, dtype=np.int32)
  for skip in excluded:  # Ascending: each shift can only move ids onto later excluded ids.
    ids += ids >= skip
  return ids


def _span_counts(length: int, noise_density: float,
                 mean_noise_span_length: float) -> tuple[int, int]:
  """(num_noise_tokens, num_noise_spans) for a sequence of length >= 2, as in T5."""
  num_noise = min(max(round(length * noise_density), 1), length - 1)
  num_spans = max(1, round(num_noise / mean_noise_span_length))
  # T5 assumes enough non-noise tokens to separate the spans; guarantee it for short chunks.
  num_spans = min(num_spans, num_noise, length - num_noise)
  return num_noise, num_spans


def _random_segmentation(num_items: int, num_segments: int,
                         rng: np.random.Generator) -> np.ndarray:
  """Splits num_items into num_segments non-empty parts, uniformly over such partitions."""
  first_in_segment = np.zeros(num_items, np.int64)
  first_in_segment[1:] = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
  segment_id = np.cumsum(first_in_segment)
  return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(length: int, rng: np.random.Generator, *,
                            noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
  """T5's noise mask: alternating non-noise / noise spans, starting with non-noise.

  num_noise = round(length * noise_density) clipped to [1, length - 1];
  num_spans = max(1, round(num_noise / mean_noise_span_length)); the noise and non-noise
  token counts are each split into num_spans random non-empty segments. As in T5, a length of
  0 or 1 is treated as 2 and the mask cut back (so one token is never noise).

  Returns:
    bool [length], True at noise tokens.
  """
  orig_length, length = length, max(length, 2)
  num_noise, num_spans = _span_counts(length, noise_density, mean_noise_span_length)
  noise_lengths = _random_segmentation(num_noise, num_spans, rng)
  nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
  interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
  span_num = np.repeat(np.arange(2 * num_spans), interleaved)
  return (span_num % 2 == 1)[:orig_length]


def span_corruption_example(ids: Sequence[int] | np.ndarray, rng: np.random.Generator, *,
                            noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                            sentinel_ids: Sequence[int] | np.ndarray,
                            eos_id: int) -> dict[str, np.ndarray]:
  """T5 span corruption of one chunk of ids (see random_spans_noise_mask).

  encoder_inputs = the non-noise tokens with noise span i replaced by sentinel_ids[i], + eos;
  targets = sentinel_ids[0] span_0 sentinel_ids[1] span_1 ... + eos.

  Raises:
    ValueError: the chunk has more noise spans than sentinel ids (chunk it shorter).
  """
  ids = np.asarray(ids, np.int32)
  noise = random_spans_noise_mask(len(ids), rng, noise_density=noise_density,
                                  mean_noise_span_length=mean_noise_span_length)
  starts = noise & ~np.concatenate([[False], noise[:-1]])
  num_spans = int(starts.sum())
  if num_spans > len(sentinel_ids):
    raise ValueError(f"{num_spans} noise spans but only {len(sentinel_ids)} sentinel ids: use "
                     "shorter chunks or more DataConfig.extra_ids.")
  sentinels = np.asarray(sentinel_ids, np.int32)[:num_spans]
  # Encoder: keep non-noise tokens and the first token of each span, which becomes its sentinel.
  encoder = ids.copy()
  encoder[starts] = sentinels
  encoder = encoder[~noise | starts]
  # Targets: the noise tokens with sentinel i inserted before span i.
  targets = np.insert(ids[noise], np.flatnonzero(starts[noise]), sentinels)
  eos = np.asarray([eos_id], np.int32)
  return {"encoder_inputs": np.concatenate([encoder, eos]),
          "targets": np.concatenate([targets, eos]).astype(np.int32)}


def reconstruct_from_spans(encoder_inputs: Sequence[int] | np.ndarray,
                           targets: Sequence[int] | np.ndarray,
                           sentinel_ids: Sequence[int] | np.ndarray) -> np.ndarray:
  """Inverts span_corruption_example: the original ids (both sequences end with eos)."""
  sentinel_set = {int(s) for s in sentinel_ids}
  spans: dict[int, list[int]] = {}
  current = None
  for tok in list(targets)[:-1]:
    if int(tok) in sentinel_set:
      current = spans.setdefault(int(tok), [])
    elif current is None:
      raise ValueError("targets do not start with a sentinel id.")
    else:
      current.append(int(tok))
  out: list[int] = []
  for tok in list(encoder_inputs)[:-1]:
    if int(tok) in sentinel_set:
      out.extend(spans[int(tok)])
    else:
      out.append(int(tok))
  return np.asarray(out, np.int32)


def span_corruption_lengths(n: int, noise_density: float,
                            mean_noise_span_length: float) -> tuple[int, int, int]:
  """(encoder length, target length, noise spans) of span-corrupting n raw tokens (with eos).

  These are deterministic: the random segmentation changes where spans are, not how many.
  """
  if n <= 1:
    return n + 1, 1, 0
  num_noise, num_spans = _span_counts(n, noise_density, mean_noise_span_length)
  return n - num_noise + num_spans + 1, num_noise + num_spans + 1, num_spans


def span_corruption_chunk_length(encoder_len: int, target_len: int, *, noise_density: float,
                                 mean_noise_span_length: float, num_sentinels: int) -> int:
  """The most raw tokens per chunk such that every chunk of at most that many tokens fits.

  Like T5's compute_input_and_target_lengths, but from both lengths: the pipeline cuts each
  document into chunks of this many tokens (the last one shorter), so the corrupted encoder
  input fits encoder_len, the target fits target_len and no chunk needs more sentinels than
  there are.

  Raises:
    ValueError: not even a 2-token chunk fits (lengths too small).
  """
  best = 0
  for n in range(1, encoder_len + target_len + 1):
    enc, tgt, spans = span_corruption_lengths(n, noise_density, mean_noise_span_length)
    if enc > encoder_len or tgt > target_len or spans > num_sentinels:
      break
    best = n
  if best < 2:
    raise ValueError(f"span corruption cannot fit a chunk into encoder length {encoder_len} and "
                     f"target length {target_len}; raise seq_len / DataConfig.decoder_seq_len.")
  return best
