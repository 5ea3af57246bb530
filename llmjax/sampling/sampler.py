"""Text in, text out: the user-facing `Sampler` for decoder and encoder-decoder models.

`Sampler` serves both generating families:
- decoder: the prompt is the start of the text (BOS first); completions continue it.
- encoder_decoder (T5): the prompt is the ENCODER input (ids + EOS, no BOS, as in training);
  the decoder starts from [BOS] and the output is the decoder's text. The encoder runs once per
  call, inside the compiled program (`Decoder.encode` builds the cache).
  `<extra_id_i>` in a prompt is T5 sentinel i, and sentinels the decoder emits are printed the
  same way. Sentinel i is the tokenizer's own <extra_id_i> id when it has them (a converted
  T5's: HF's 32099 - i, below the model's padded 32128-row vocabulary) and otherwise, for
  models trained here, model vocab_size - 1 - i (data/featurize.py places them there).

The model enters only through `model.decoder(params)`, the typed `Decoder` of
llmjax/models/decoder.py, built inside each compiled program. Prompts are right-padded into one
batch and run through the compiled loops of decoding.py (sampling) or beam.py (beam search).
Compiled shapes are bucketed (batch and prompt length rounded up to powers of two, the cache
length likewise, capped at the model's max_seq_len) so repeated calls with similar prompts
reuse one compilation per (shapes, settings).

`load(DIR)` (loading.py) rebuilds a trained model of any family from a workdir.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llmjax import workdir as workdir_lib
from llmjax.data import tokenizer as tokenizer_lib
from llmjax.data.tokenizer import Tokenizer
from llmjax.models.decoder import Cache, Decodable, Decoder, LogitsFn, Params
from llmjax.sampling import beam, decoding
from llmjax.sampling.params import SamplingParams, check_int, check_prompts
from llmjax.sampling.strategies import make_strategy

MIN_PROMPT_BUCKET = 8
_SENTINEL = re.compile(r"<extra_id_(\d+)>")


def _bucket(n: int, minimum: int = 1) -> int:
  """Smallest power of two >= max(n, minimum)."""
  return 1 << (max(n, minimum) - 1).bit_length()


class Sampler:
  """Generates text from a decoder or encoder_decoder LanguageModel, its params and tokenizer.

  Args:
    model: anything with `decoder(params) -> Decoder` (llmjax/models/decoder.py): a decoder or
      encoder_decoder LanguageModel.
    params: its parameters, as trained (the Decoder lays them out for decoding inside each
      compiled program).
    tokenizer: encode/decode/vocab_size/pad_id/bos_id/eos_id (llmjax/data/tokenizer.py).
    num_sentinels: encoder_decoder only: how many T5 sentinels the model may read and emit:
      the first num_sentinels of the tokenizer's own (`tokenizer.sentinel_ids`) when it has
      them, else the top ids of the model vocabulary. None = all the tokenizer's own, else
      every id past the tokenizer's vocabulary.

  Raises:
    ValueError: the model does not generate text (encoder-only), or the tokenizer or
      num_sentinels does not fit its vocabulary.
  """

  def __init__(self, model: Decodable, params: Params, tokenizer: Tokenizer, *,
               num_sentinels: int | None = None):
    self.model = model
    self.params = params
    self.tokenizer = tokenizer
    # The Decoder's static facts, traced abstractly: nothing is computed or copied here.
    facts: Decoder = jax.eval_shape(model.decoder, params)
    self.vocab_size = facts.vocab_size
    self.max_seq_len = facts.max_seq_len
    self.max_encoder_len = facts.max_encoder_len
    self.is_encoder_decoder = facts.is_encoder_decoder
    # A larger model vocabulary is fine: T5 sentinels live past the tokenizer's ids.
    workdir_lib.check_vocab(self.vocab_size, tokenizer.vocab_size)
    self.sentinel_ids = self._sentinels(num_sentinels)  # Sentinel i's id, [num_sentinels].
    self.num_sentinels = len(self.sentinel_ids)
    self._sentinel_index = {int(t): i for i, t in enumerate(self.sentinel_ids)}
    # The ids the decoder may emit: the tokenizer's and the sentinels. The rest (an embedding
    # padded for speed, the MLM mask id, a converted T5's untrained rows 32100-32127) have no
    # text.
    self._emittable = np.arange(self.vocab_size) < tokenizer.vocab_size
    self._emittable[self.sentinel_ids] = True
    self.num_compilations = 0  # Traces of the decode programs (tests check bucketing with it).
    self._decode = jax.jit(self._decode_impl,
                           static_argnames=("max_new_tokens", "strategy", "cache_len"))
    self._beam = jax.jit(self._beam_impl, static_argnames=(
        "max_new_tokens", "num_beams", "length_penalty", "num_return", "cache_len"))

  def _sentinels(self, num_sentinels: int | None) -> np.ndarray:
    """The ids of sentinels 0, 1, ... (see the class docstring), checked to fit the model."""
    if not self.is_encoder_decoder:
      return np.zeros((0,), np.int32)
    own = tokenizer_lib.sentinel_ids(self.tokenizer)
    if own:
      if num_sentinels is None:
        num_sentinels = len(own)
      if not 0 <= num_sentinels <= len(own):
        raise ValueError(f"num_sentinels={num_sentinels} must be in [0, {len(own)}]: the "
                         f"tokenizer has {len(own)} sentinels <extra_id_i>.")
      ids = np.asarray(own[:num_sentinels], np.int32)
      if ids.size and ids.max() >= self.vocab_size:
        raise ValueError(f"the tokenizer's sentinel ids reach {ids.max()}, past the model's "
                         f"vocab_size={self.vocab_size}: use the model's own tokenizer.")
      return ids
    extra = self.vocab_size - self.tokenizer.vocab_size
    num_sentinels = extra if num_sentinels is None else num_sentinels
    if not 0 <= num_sentinels <= extra:
      raise ValueError(f"num_sentinels={num_sentinels} must be in [0, {extra}] (model vocab "
                       f"{self.vocab_size} - tokenizer vocab {self.tokenizer.vocab_size}).")
    return tokenizer_lib.trained_here_sentinel_ids(self.vocab_size, num_sentinels)

  # Compiled programs. Each builds its Decoder from the params it is given, so the decode
  # layout of the weights (e.g. unstacked layers) is made inside the program, once per call.
  def _masked(self, logits_fn: LogitsFn) -> LogitsFn:
    """logits_fn with the ids the tokenizer cannot decode masked out."""

    def masked(params: Params, tokens: jax.Array, positions: jax.Array,
               cache: Cache) -> tuple[jax.Array, Cache]:
      logits, cache = logits_fn(params, tokens, positions, cache)
      if not self._emittable.all():
        logits = jnp.where(self._emittable, logits, -jnp.inf)
      return logits, cache

    return masked

  def _make_cache(self, decoder: Decoder, batch: int, cache_len: int,
                  encoder_tokens: jax.Array | None,
                  encoder_segment_ids: jax.Array | None) -> Cache:
    if decoder.is_encoder_decoder:
      # The encoder runs here, once per call; its keys/values become part of the cache.
      return decoder.encode(decoder.params, encoder_tokens, encoder_segment_ids, cache_len)
    # Made inside the compiled program: no transfer, and XLA can reuse the memory.
    return decoder.init_cache(batch, cache_len)

  def _decode_impl(self, params, tokens, lengths, rng, encoder_tokens, encoder_segment_ids, *,
                   max_new_tokens, strategy, cache_len):
    self.num_compilations += 1  # Runs only while tracing.
    decoder = self.model.decoder(params)
    cache = self._make_cache(decoder, tokens.shape[0], cache_len, encoder_tokens,
                             encoder_segment_ids)
    return decoding.decode(self._masked(decoder.logits_fn), decoder.params, tokens, lengths,
                           cache, rng,
                           max_new_tokens=max_new_tokens, strategy=strategy,
                           eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id)

  def _beam_impl(self, params, tokens, lengths, encoder_tokens, encoder_segment_ids, *,
                 max_new_tokens, num_beams, length_penalty, num_return, cache_len):
    self.num_compilations += 1  # Runs only while tracing.
    decoder = self.model.decoder(params)
    # A cache for the prompt batch: beam_search prefills once per prompt, then expands it.
    cache = self._make_cache(decoder, tokens.shape[0], cache_len, encoder_tokens,
                             encoder_segment_ids)
    return beam.beam_search(self._masked(decoder.logits_fn), decoder.params, tokens,
                            lengths, cache,
                            num_beams=num_beams, max_new_tokens=max_new_tokens,
                            eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                            length_penalty=length_penalty, num_return=num_return)

  # Tokens <-> text.
  def sentinel_id(self, i: int) -> int:
    """The id of T5 sentinel i (<extra_id_i>): the tokenizer's own, else vocab_size - 1 - i."""
    if not 0 <= i < self.num_sentinels:
      raise ValueError(f"<extra_id_{i}>: this model has {self.num_sentinels} sentinel ids"
                       + ("" if self.num_sentinels else " (only encoder_decoder models do)")
                       + ".")
    return int(self.sentinel_ids[i])

  def _encode_text(self, text: str) -> list[int]:
    if not self.is_encoder_decoder:
      return list(self.tokenizer.encode(text))
    ids, start = [], 0
    for match in _SENTINEL.finditer(text):
      ids += self.tokenizer.encode(text[start:match.start()])
      ids.append(self.sentinel_id(int(match.group(1))))
      start = match.end()
    return ids + list(self.tokenizer.encode(text[start:]))

  def decode_ids(self, ids: Sequence[int]) -> str:
    """Text of generated ids; sentinel ids become "<extra_id_i>" (T5's convention)."""
    pieces, run = [], []
    for i in map(int, ids):
      if i in self._sentinel_index:
        pieces += [self.tokenizer.decode(run), f"<extra_id_{self._sentinel_index[i]}>"]
        run = []
      elif i < self.tokenizer.vocab_size:
        run.append(i)
      # Any other id past the tokenizer has no text (the sampler never emits one).
    return "".join(pieces) + self.tokenizer.decode(run)

  def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
    """Decoder: BOS + ids of each prompt (an empty prompt is just BOS: start of a document).

    encoder_decoder: the encoder input, ids + EOS (as in training); `<extra_id_i>` is a
    sentinel.
    """
    if self.is_encoder_decoder:
      return [self._encode_text(p) + [self.tokenizer.eos_id] for p in prompts]
    return [[self.tokenizer.bos_id] + self._encode_text(p) for p in prompts]

  # Batching.
  def _pack(self, prompt_ids: Sequence[Sequence[int]],
            max_new_tokens: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Checks and right-pads (decoder) id prompts into bucketed (tokens, lengths, cache_len)."""
    if max_new_tokens <= 0:
      raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}.")
    prompt_ids = self.check_id_rows(prompt_ids, "prompt_ids")
    if not prompt_ids:
      raise ValueError("no prompts given.")
    lengths = [len(p) for p in prompt_ids]
    if min(lengths) == 0:
      raise ValueError("an empty prompt needs at least a BOS token (encode_prompts adds it).")
    max_len = self.max_seq_len
    longest = max(lengths)
    if longest + max_new_tokens > max_len:
      what = "decoder prefix" if self.is_encoder_decoder else "prompt"
      raise ValueError(
          f"{what} of {longest} tokens (with BOS) + max_new_tokens={max_new_tokens} exceeds the "
          f"model's max_seq_len={max_len}: lower max_new_tokens to "
          f"{max(max_len - longest, 0)} or shorten the prompt.")
    batch = _bucket(len(prompt_ids))
    padded_len = min(_bucket(longest, MIN_PROMPT_BUCKET), max_len)
    # >= longest + max_new_tokens because padded_len >= longest and max_len was checked above.
    cache_len = min(_bucket(padded_len + max_new_tokens), max_len)
    tokens = np.full((batch, padded_len), self.tokenizer.pad_id, np.int32)
    tokens[:, 0] = self.tokenizer.bos_id  # Filler rows are a lone BOS; their output is dropped.
    row_lengths = np.ones((batch,), np.int32)
    for i, ids in enumerate(prompt_ids):
      tokens[i, :len(ids)] = ids
      row_lengths[i] = len(ids)
    return tokens, row_lengths, cache_len

  def check_id_rows(self, rows: Sequence[Sequence[int]], name: str) -> list[list[int]]:
    """Rows of token ids as lists of ints in [0, vocab_size) (an id past the embedding would be
    clamped silently by the lookup)."""
    if isinstance(rows, str | bytes) or not isinstance(rows, Sequence | np.ndarray):
      raise TypeError(f"{name} must be a list of token-id lists, got {type(rows).__name__}.")
    accepted = f"a token id in [0, {self.vocab_size}) (the model's vocab_size)"
    checked = []
    for i, row in enumerate(rows):
      if isinstance(row, str | bytes) or not isinstance(row, Sequence | np.ndarray):
        raise TypeError(f"{name}[{i}] must be a list of token ids, got {row!r} "
                        f"({type(row).__name__}); text prompts go to generate().")
      try:
        ids = np.asarray(row) if len(row) else np.zeros((0,), np.int32)
      except ValueError:  # Ragged nesting.
        ids = np.zeros((0,), np.object_)
      if (ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer)
          and (not ids.size or 0 <= ids.min() <= ids.max() < self.vocab_size)):
        checked.append(ids.tolist())
      else:  # Name the offending entry (slow, on the error path only).
        checked.append([check_int(f"{name}[{i}][{j}]", t, accepted,
                                  lambda v: 0 <= v < self.vocab_size)
                        for j, t in enumerate(row)])
    return checked

  def _pack_encoder(self, encoder_ids: Sequence[Sequence[int]] | None,
                    batch: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Right-pads encoder inputs to [batch, bucket]; segment ids 1 on tokens, 0 on padding."""
    if not self.is_encoder_decoder:
      if encoder_ids is not None:
        raise ValueError("encoder_ids given, but this model has no encoder (it is "
                         "decoder-only).")
      return None, None
    if encoder_ids is None:
      raise ValueError("an encoder_decoder model needs encoder_ids (the encoder input of each "
                       "prompt: ids + EOS; encode_prompts makes them).")
    encoder_ids = self.check_id_rows(encoder_ids, "encoder_ids")
    lengths = [len(e) for e in encoder_ids]
    if min(lengths, default=0) == 0:
      raise ValueError("every encoder input needs at least one token (encode_prompts adds EOS).")
    longest, max_len = max(lengths), self.max_encoder_len
    if max_len is not None and longest > max_len:
      raise ValueError(
          f"encoder input of {longest} tokens (with EOS) exceeds max_seq_len={max_len}, the "
          f"size of the encoder's learned position table: shorten the prompt by "
          f"{longest - max_len} tokens or use a model with a larger max_seq_len.")
    padded = _bucket(longest, MIN_PROMPT_BUCKET)
    if max_len is not None:
      padded = min(padded, max_len)
    tokens = np.full((batch, padded), self.tokenizer.pad_id, np.int32)
    segments = np.zeros((batch, padded), np.int32)
    # Filler rows get a lone EOS: a row with no real token would attend to nothing.
    tokens[:, 0], segments[:, 0] = self.tokenizer.eos_id, 1
    for i, ids in enumerate(encoder_ids):
      tokens[i, :len(ids)] = ids
      segments[i, :len(ids)] = 1
    return tokens, segments

  def _check_rows(self, prompt_ids: Sequence[Sequence[int]],
                  encoder_ids: Sequence[Sequence[int]] | None) -> None:
    if encoder_ids is not None and len(encoder_ids) != len(prompt_ids):
      raise ValueError(f"{len(encoder_ids)} encoder inputs for {len(prompt_ids)} decoder "
                       "prompts: give one per row.")

  def _split_completion(self, ids: list[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] == self.tokenizer.eos_id else ids

  # Generation.
  def generate_ids(self, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int = 0,
                   encoder_ids: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Completes token-id prompts; returns the new ids without EOS/pad.

    Args:
      prompt_ids: decoder prompts, BOS included (encoder_decoder: usually [[bos_id]] * n).
      encoder_ids: encoder_decoder only: each row's encoder input (ids + EOS).
      The rest as in `generate`.
    """
    settings = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, seed=seed)
    max_new_tokens = settings.max_new_tokens
    strategy = make_strategy(settings.temperature, settings.top_k, settings.top_p)
    self._check_rows(prompt_ids, encoder_ids)
    tokens, row_lengths, cache_len = self._pack(prompt_ids, max_new_tokens)
    enc_tokens, enc_segments = self._pack_encoder(encoder_ids, tokens.shape[0])
    decoding.validate_decode_args(tokens.shape, row_lengths, max_new_tokens=max_new_tokens,
                                  cache_len=cache_len, max_seq_len=self.max_seq_len)
    rng = jax.random.PRNGKey(settings.seed)
    out = self._decode(self.params, tokens, row_lengths, rng, enc_tokens, enc_segments,
                       max_new_tokens=max_new_tokens, strategy=strategy, cache_len=cache_len)
    out_tokens, out_lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    return [self._split_completion(out_tokens[i, :out_lengths[i]].tolist())
            for i in range(len(prompt_ids))]

  def beam_search_ids(self, prompt_ids: Sequence[Sequence[int]], *, num_beams: int = 4,
                      max_new_tokens: int = 64, length_penalty: float = 1.0,
                      num_return: int | None = None,
                      encoder_ids: Sequence[Sequence[int]] | None = None,
                      ) -> list[list[tuple[list[int], float]]]:
    """Beam search on id prompts (as generate_ids): per prompt, the n best (new ids, score).

    Ids exclude the EOS; scores are summed log-probs / ((5 + length) / 6) ** length_penalty
    (length counting the EOS), best first; num_return defaults to num_beams.
    """
    settings = SamplingParams(num_beams=num_beams, max_new_tokens=max_new_tokens,
                              length_penalty=length_penalty)
    num_beams, max_new_tokens = settings.num_beams, settings.max_new_tokens
    if num_return is not None:
      num_return = check_int("num_return", num_return, f"an int in [1, num_beams={num_beams}]",
                             lambda v: 1 <= v <= num_beams)
    self._check_rows(prompt_ids, encoder_ids)
    tokens, row_lengths, cache_len = self._pack(prompt_ids, max_new_tokens)
    enc_tokens, enc_segments = self._pack_encoder(encoder_ids, tokens.shape[0])
    abstract_cache = jax.eval_shape(
        lambda p, e, s: self._make_cache(self.model.decoder(p), tokens.shape[0], cache_len, e,
                                         s),
        self.params, enc_tokens, enc_segments)
    beam.validate_beam_args(tokens.shape, row_lengths, abstract_cache, num_beams=num_beams,
                            max_new_tokens=max_new_tokens, eos_id=self.tokenizer.eos_id,
                            num_return=num_return, cache_len=cache_len,
                            max_seq_len=self.max_seq_len)
    out = self._beam(self.params, tokens, row_lengths, enc_tokens, enc_segments,
                     max_new_tokens=max_new_tokens, num_beams=num_beams,
                     length_penalty=settings.length_penalty, num_return=num_return,
                     cache_len=cache_len)
    out_tokens, out_lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    scores = np.asarray(out.scores)
    results = []
    for i in range(len(prompt_ids)):
      hyps = []
      for j in range(out_tokens.shape[1]):
        if not np.isfinite(scores[i, j]):
          continue  # Fewer distinct hypotheses than requested exist.
        ids = self._split_completion(out_tokens[i, j, :out_lengths[i, j]].tolist())
        hyps.append((ids, float(scores[i, j])))
      if not hyps:
        # Every score is NaN or -inf: the logits are not finite (a diverged checkpoint) or the
        # length penalty over/underflows float32.
        raise ValueError(
            f"beam search found no finite-scoring hypothesis for prompt {i}: the model's "
            f"log-probs are not finite (check the checkpoint for NaN/Inf parameters) or "
            f"length_penalty={settings.length_penalty} overflows; use a |length_penalty| "
            "of at most a few (0.6-1.0 is usual).")
      results.append(hyps)
    return results

  def _rows(self, prompts: Sequence[str]) -> tuple[list[list[int]], list[list[int]] | None]:
    """(decoder prompts, encoder inputs or None) of text prompts."""
    encoded = self.encode_prompts(list(prompts))
    if self.is_encoder_decoder:
      return [[self.tokenizer.bos_id] for _ in encoded], encoded
    return encoded, None

  def beam_search(self, prompts: Sequence[str] | str, *, num_beams: int = 4,
                  max_new_tokens: int = 64, length_penalty: float = 1.0,
                  num_return: int | None = None) -> list[list[tuple[str, float]]]:
    """N-best completions per prompt: [(text, score)] best first (see beam_search_ids)."""
    prompts = check_prompts(prompts)
    decoder_ids, encoder_ids = self._rows(prompts)
    nbest = self.beam_search_ids(decoder_ids, num_beams=num_beams,
                                 max_new_tokens=max_new_tokens, length_penalty=length_penalty,
                                 num_return=num_return, encoder_ids=encoder_ids)
    return [[(self.decode_ids(ids), score) for ids, score in hyps] for hyps in nbest]

  def generate(self, prompts: Sequence[str] | str, *, max_new_tokens: int = 64,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               num_samples: int = 1, num_beams: int = 1,
               length_penalty: float = 1.0) -> list[str]:
    """Completes each prompt `num_samples` times.

    Args:
      prompts: a string or a list of strings. Decoder: "" starts a fresh document.
        encoder_decoder: each is the encoder input; `<extra_id_i>` marks T5 sentinel i.
      max_new_tokens: most tokens generated per completion (it stops earlier at EOS).
      temperature: 0 = greedy; top_k: 0 = off; top_p: 1.0 = off (make_strategy).
      seed: PRNG seed in [0, 2**32); the same seed and settings give the same completions.
      num_samples: completions per prompt; with num_beams > 1, the num_samples best beam
        hypotheses (at most num_beams).
      num_beams: > 1 runs beam search (deterministic, ranked by the model's own log-probs:
        temperature, top_k and top_p must stay at their defaults, seed is not used); 1 samples
        as above.
      length_penalty: beam search's GNMT alpha (0 = rank by summed log-prob).

    Returns:
      The completions only (without the prompt, BOS or EOS), prompt-major: the j-th sample of
      prompt i is at index i * num_samples + j.

    Raises:
      TypeError: a prompt that is not a str, or a setting of the wrong type (SamplingParams).
      ValueError: no prompts, a setting out of range or settings that do not go together
        (SamplingParams), or a prompt + max_new_tokens longer than the model's max_seq_len.
    """
    settings = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, seed=seed, num_samples=num_samples,
                              num_beams=num_beams, length_penalty=length_penalty)
    prompts = check_prompts(prompts)
    num_samples, num_beams = settings.num_samples, settings.num_beams
    max_new_tokens, length_penalty = settings.max_new_tokens, settings.length_penalty
    decoder_ids, encoder_ids = self._rows(prompts)
    if settings.is_beam_search:
      nbest = self.beam_search_ids(decoder_ids, num_beams=num_beams,
                                   max_new_tokens=max_new_tokens, length_penalty=length_penalty,
                                   num_return=num_samples, encoder_ids=encoder_ids)
      # Pad with the best when fewer distinct hypotheses exist, keeping the prompt-major layout.
      return [self.decode_ids((hyps + hyps[:1] * num_samples)[j][0])
              for hyps in nbest for j in range(num_samples)]

    def repeat(rows: list[list[int]] | None) -> list[list[int]] | None:
      return None if rows is None else [r for r in rows for _ in range(num_samples)]

    completions = self.generate_ids(repeat(decoder_ids), max_new_tokens=max_new_tokens,
                                    temperature=settings.temperature, top_k=settings.top_k,
                                    top_p=settings.top_p, seed=settings.seed,
                                    encoder_ids=repeat(encoder_ids))
    return [self.decode_ids(ids) for ids in completions]
