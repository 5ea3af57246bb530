"""Batched scoring of text: lm-evaluation-harness's request types over any LanguageModel.

`Scorer` answers the harness's three requests plus embeddings (`LoadedModel` exposes them):
- `loglikelihood([(context, continuation)])` -> [(sum log p(continuation | context), is_greedy)];
- `loglikelihood_rolling([text])` -> [log p(text)], the first token predicted from BOS;
- `generate_until([(context, gen_kwargs)])` -> [text] (the Sampler, cut at stop strings);
- `embed(texts, pooling)` -> [n, d] final hidden states pooled per text.

Tokenization follows lm-eval: trailing whitespace of a context moves to the front of its
continuation, context ids = encode(context), continuation ids =
encode(context + continuation)[len(encode(context)):]. A decoder's row starts with BOS (the
document start, as llmjax trains and samples; a converted GPT-2's BOS is <|endoftext|>, which is
lm-eval's prefix token when a tokenizer has no BOS). Too-long rows keep their last
max_seq_len + 1 tokens (the context is cut on the left, as the harness does); a continuation
longer than max_seq_len is refused.

Families: a decoder scores rows [context + continuation]; an encoder_decoder scores the
continuation as decoder targets (encoder input: context + EOS, left-truncated; decoder input:
[BOS] + continuation[:-1], BOS being its decoder start id); its rolling log-likelihood scores
the document with the decoder alone, the encoder input empty (just EOS). An MLM encoder or a
classifier has no left-to-right likelihood and is refused (embed works for every family).

Batching: requests become unique rows (identical rows are scored once, and a row that is a
prefix of another is read from the longer one's logits: causal logits of a prefix do not depend
on what follows, so the choices of a multiple-choice item with one-token answers share one row).
Rows are sorted longest first, cut into batches of a fixed row count per length bucket (powers
of two and 1.5x them, capped at max_seq_len) and padded on the right, so each (rows, length)
shape compiles once; the program returns only the [rows, length] log-probs of the scored
targets, never the [b, t, v] logits. Results come back in the input order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.data.tokenizer import Tokenizer
from llmjax.models.decoder import Params
from llmjax.models.interface import LanguageModel
from llmjax.sampling.params import check_int, check_prompts, check_setting, check_setting_names

MIN_LENGTH_BUCKET = 8
# Rows per batch when batch_size is None: as many as keep the [b, t, v] float32 logits (and
# their log-softmax temporaries) near 1 GiB, within [MIN, MAX] tokens.
LOGITS_BYTES_BUDGET = 2**30
MIN_BATCH_TOKENS, MAX_BATCH_TOKENS = 512, 16384
GENERATE_BATCH_SIZE = 32
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's; capped at half of max_seq_len when not given.
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p", "seed")
POOLINGS = ("mean", "first", "last")


def length_bucket(n: int, cap: int) -> int:
  """Smallest of 8, 12, 16, 24, 32, 48, ... (powers of two and 1.5x them) >= n, at most cap."""
  bucket = MIN_LENGTH_BUCKET
  while bucket < n:
    bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket // 3 * 4
  return min(bucket, cap)


def _pow2_at_least(n: int) -> int:
  return 1 << (max(n, 1) - 1).bit_length()


def _pow2_at_most(n: int) -> int:
  return 1 << (max(n, 1).bit_length() - 1)


def plan_batches(shapes: Sequence[tuple[int, int]], batch_size: int | None,
                 batch_tokens: int) -> list[tuple[int, int, int]]:
  """Cuts rows, sorted by their bucketed shapes, into batches: [(start, stop, rows)].

  Args:
    shapes: per row, its (length bucket, encoder length bucket or 0), in processing order.
    batch_size: rows per batch; None = as many as fit batch_tokens (a power of two).
    batch_tokens: the automatic batch's token budget (rows x the longer bucket).

  A batch holds rows of one shape only, so no row is padded past its bucket. Its row count
  `rows` >= stop - start is padded to a power of two (at most batch_size): one compilation per
  (rows, shape). In automatic mode a shape's leftover rows are split in powers of two rather
  than padded by more than a quarter.
  """
  batches, start = [], 0
  while start < len(shapes):
    stop = start
    while stop < len(shapes) and shapes[stop] == shapes[start]:
      stop += 1
    per_batch = batch_size or _pow2_at_most(batch_tokens // max(shapes[start]))
    while start < stop:
      n = min(stop - start, per_batch)
      rows = min(per_batch, _pow2_at_least(n))
      if batch_size is None and 4 * n < 3 * rows:
        n = rows = _pow2_at_most(n)
      batches.append((start, start + n, rows))
      start += n
  return batches


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_seq_len: int,
                    context_len: int = 1) -> list[tuple[list[int], list[int]]]:
  """lm-eval's `get_rolling_token_windows` + `make_disjoint_window`: (context, continuation)
  pairs whose continuations tile `tokens` exactly once.

  The first window predicts the first min(max_seq_len, n) tokens from [prefix_token] + tokens;
  each next one predicts up to max_seq_len - context_len + 1 new tokens, its row being the
  max_seq_len tokens before each predicted one (so a token sees up to max_seq_len - 1 earlier
  ones, as many as fit). An empty document has no windows.
  """
  if not 1 <= context_len <= max_seq_len:
    raise ValueError(f"context_len must be in [1, max_seq_len={max_seq_len}], got "
                     f"{context_len}.")
  tokens = list(tokens)
  if not tokens:
    return []
  pred_len = max_seq_len - context_len + 1
  first = min(max_seq_len, len(tokens))
  windows = [([prefix_token] + tokens[:first - 1], tokens[:first])]
  predicted = first
  while predicted < len(tokens):
    window_pred_len = min(len(tokens) - predicted, pred_len)
    end = predicted + window_pred_len
    windows.append((tokens[end - max_seq_len - 1:end - 1], tokens[end - window_pred_len:end]))
    predicted += window_pred_len
  # make_disjoint_window: drop the context tokens the continuation already provides.
  return [(ctx[:len(ctx) - (len(cont) - 1)], cont) for ctx, cont in windows]


def emittable_ids(vocab_size: int, tokenizer: Tokenizer,
                  sentinel_ids: Sequence[int] = ()) -> np.ndarray:
  """[vocab_size] bool: the ids the Sampler may emit (the tokenizer's and the sentinels)."""
  mask = np.arange(vocab_size) < tokenizer.vocab_size
  mask[np.asarray(sentinel_ids, np.int64)] = True
  return mask


def _describe(value: Any) -> str:
  return f"{value!r} ({type(value).__name__})"


def _check_list(value: Any, name: str, what: str) -> list:
  """value as a list (a sequence that is not text or a mapping), else TypeError."""
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
    raise TypeError(f"{name} must be a list of {what}, got {_describe(value)[:120]}.")
  return list(value)


def _check_pairs(requests: Any, second: type, what: str,
                 first: type = str) -> list[tuple[Any, Any]]:
  """requests as a list of (`first`, `second`) pairs; TypeError naming the bad entry."""
  requests = _check_list(requests, "requests", what)
  for i, request in enumerate(requests):
    if (not isinstance(request, tuple | list) or len(request) != 2
        or not isinstance(request[0], first) or not isinstance(request[1], second)):
      raise TypeError(f"requests[{i}] must be {what}, got {_describe(request)[:120]}.")
  return [tuple(r) for r in requests]


def _check_batch_size(batch_size: Any) -> int | None:
  if batch_size is None:
    return None
  return check_int("batch_size", batch_size, "an int >= 1 (rows per forward pass) or None "
                   "(automatic)", lambda v: v >= 1)


@dataclasses.dataclass(frozen=True)
class _Span:
  """One scored continuation: `targets` predicted at positions [start, start + len) of the
  row (encoder ids, input ids); encoder ids are () for a decoder."""

  row: tuple[tuple[int, ...], tuple[int, ...]]
  start: int
  targets: tuple[int, ...]


class Scorer:
  """Scores, generates and embeds text with a LanguageModel, its params and tokenizer.

  Args:
    model: a LanguageModel of any family.
    params: its parameters.
    tokenizer: its tokenizer (text methods need one that encodes text).
    sampler: the Sampler generate_until runs (None for an encoder-only model).
    emittable: [vocab] bool, the ids greedy decoding may pick (`emittable_ids`); is_greedy
      compares each continuation token with the argmax over these, as the Sampler decodes.
      None = every id.
  """

  def __init__(self, model: LanguageModel, params: Params, tokenizer: Tokenizer, *,
               sampler: Any = None, emittable: np.ndarray | None = None):
    self.model, self.params, self.tokenizer, self.sampler = model, params, tokenizer, sampler
    self.config = model.config
    self.max_seq_len = self.config.max_seq_len
    vocab = self.config.vocab_size
    self.emittable = np.ones((vocab,), bool) if emittable is None else np.asarray(emittable)
    budget = LOGITS_BYTES_BUDGET // (2 * 4 * vocab)
    self.batch_tokens = min(max(budget, MIN_BATCH_TOKENS), MAX_BATCH_TOKENS)
    self.num_compilations = 0  # Traces of the scoring/embedding programs (tests check shapes).
    # The last scoring call's work: spans, unique rows, batches, real and padded row tokens.
    self.stats: dict[str, int] = {}
    self._score = jax.jit(self._score_impl)
    self._embed = jax.jit(self._embed_impl)

  # Compiled programs.
  def _score_impl(self, params, encoder_tokens, encoder_segments, inputs, item_rows,
                  item_targets):
    """([m, t] log p(item_targets), [m, t] target == greedy id) of items on rows item_rows."""
    self.num_compilations += 1  # Runs only while tracing.
    if encoder_tokens is None:
      logits, _ = self.model.apply(params, inputs)  # [b, t, v]
    else:
      logits, _ = self.model.apply(params, {"encoder_inputs": encoder_tokens,
                                            "encoder_segment_ids": encoder_segments,
                                            "inputs": inputs})
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [b, t]
    greedy = jnp.argmax(jnp.where(self.emittable, logits, -jnp.inf), axis=-1)  # [b, t]
    t = inputs.shape[1]
    # Gathers m * t logits, never an [m, t, v] copy.
    picked = logits[item_rows[:, None], jnp.arange(t)[None, :], item_targets]  # [m, t]
    return picked - log_z[item_rows], greedy[item_rows] == item_targets

  def _embed_impl(self, params, tokens, segments, lengths):
    """[3, b, d]: the "mean", "first" and "last" poolings (one program serves all three)."""
    self.num_compilations += 1  # Runs only while tracing.
    # A decoder's right padding cannot reach earlier positions: no mask, the causal kernel.
    seg = None if self.config.architecture == "decoder" else segments
    hidden = self.model.hidden_states(params, tokens, seg).astype(jnp.float32)  # [b, t, d]
    mask = (segments > 0)[..., None]
    mean = jnp.sum(jnp.where(mask, hidden, 0.0), axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)
    last = hidden[jnp.arange(tokens.shape[0]), lengths - 1]
    return jnp.stack([mean, hidden[:, 0], last])

  # Checks.
  def _check_likelihood_model(self, what: str) -> None:
    if self.config.architecture != "encoder":
      return
    if self.config.is_classifier:
      raise ValueError(f"{what} needs a decoder or encoder_decoder model; this is a classifier "
                       "(encoder with num_classes): use LoadedModel.logits(token_ids) for class "
                       "logits or embed(texts) for embeddings.")
    raise ValueError(f"{what} needs a decoder or encoder_decoder model: an encoder-only (MLM) "
                     "model has no left-to-right likelihood. Use embed(texts) for hidden-state "
                     "embeddings or fill_mask(texts) for masked-token predictions.")

  # Token-level API.
  def _span(self, index: int, context: Sequence[int], continuation: Sequence[int]) -> _Span:
    """The scored row of one (context ids, continuation ids) request (see the module doc)."""
    limit = self.max_seq_len
    if not continuation:
      raise ValueError(f"requests[{index}] has an empty continuation (no tokens to score); "
                       "lm-eval refuses these too: give each request a non-empty continuation.")
    if len(continuation) > limit:
      raise ValueError(f"requests[{index}]: the continuation has {len(continuation)} tokens, "
                       f"more than the model's max_seq_len={limit}: shorten it (the context "
                       "alone is truncated from the left, a continuation is not).")
    if self.model.is_encoder_decoder:
      encoder = tuple(context[max(len(context) - (limit - 1), 0):]) + (self.tokenizer.eos_id,)
      inputs = (self.tokenizer.bos_id,) + tuple(continuation[:-1])
      return _Span((encoder, inputs), 0, tuple(continuation))
    if not context:
      raise ValueError(f"requests[{index}] has an empty context: a decoder row needs at least "
                       "its BOS to predict the first continuation token.")
    full = (tuple(context) + tuple(continuation))[-(limit + 1):]
    return _Span(((), full[:-1]), len(full) - 1 - len(continuation), tuple(continuation))

  def loglikelihood_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                           batch_size: int | None = None) -> list[tuple[float, bool]]:
    """loglikelihood on ids: per (context ids, continuation ids) request, (log p, is_greedy).

    A decoder's context must include its BOS; an encoder_decoder's is the encoder input
    without EOS (added here). Ids must be in [0, vocab_size).
    """
    self._check_likelihood_model("loglikelihood")
    requests = _check_pairs(requests, object, "(context ids, continuation ids) pairs", object)
    batch_size = _check_batch_size(batch_size)
    spans = [self._span(i, self._ids(ctx, f"requests[{i}][0]"),
                        self._ids(cont, f"requests[{i}][1]"))
             for i, (ctx, cont) in enumerate(requests)]
    return self._score_spans(spans, batch_size)

  def loglikelihood_rolling_tokens(self, documents: Sequence[Sequence[int]], *,
                                   batch_size: int | None = None) -> list[float]:
    """loglikelihood_rolling on ids (documents without BOS; the first token is predicted from
    BOS, rolling windows past max_seq_len)."""
    self._check_likelihood_model("loglikelihood_rolling")
    batch_size = _check_batch_size(batch_size)
    spans, owner = [], []
    documents = _check_list(documents, "documents", "token-id lists")
    for i, doc in enumerate(documents):
      doc = self._ids(doc, f"documents[{i}]")
      for context, continuation in rolling_windows(doc, self.tokenizer.bos_id,
                                                   self.max_seq_len):
        full = (tuple(context) + tuple(continuation))[-(self.max_seq_len + 1):]
        # encoder_decoder: the decoder alone models the text, the encoder input empty (EOS).
        encoder = (self.tokenizer.eos_id,) if self.model.is_encoder_decoder else ()
        spans.append(_Span((encoder, full[:-1]), len(full) - 1 - len(continuation),
                           tuple(continuation)))
        owner.append(i)
    totals = [0.0] * len(documents)
    for i, (logprob, _) in zip(owner, self._score_spans(spans, batch_size), strict=True):
      totals[i] += logprob
    return totals

  def _ids(self, ids: Any, name: str) -> list[int]:
    """ids as a list of ints in [0, vocab_size) (the embedding lookup would clamp others)."""
    vocab = self.config.vocab_size
    ids = _check_list(ids, name, "token ids")
    row = np.asarray(ids) if ids else np.zeros((0,), np.int32)
    if (row.ndim == 1 and np.issubdtype(row.dtype, np.integer)
        and (not row.size or 0 <= row.min() <= row.max() < vocab)):
      return row.tolist()
    return [check_int(f"{name}[{j}]", t, f"a token id in [0, {vocab}) (the model's vocab_size)",
                      lambda v: 0 <= v < vocab) for j, t in enumerate(ids)]

  def _score_spans(self, spans: list[_Span], batch_size: int | None) -> list[tuple[float, bool]]:
    """Scores spans in bucketed batches of unique rows (module docstring); input order."""
    # A row that is a prefix of another (same encoder input) is served by the longest such
    # row: in lexicographic order every extension of a row follows it directly.
    keys = sorted({s.row for s in spans})
    server: dict = {}
    for i in reversed(range(len(keys))):
      key, nxt = keys[i], keys[i + 1] if i + 1 < len(keys) else None
      shared = nxt is not None and nxt[0] == key[0] and nxt[1][:len(key[1])] == key[1]
      server[key] = server[nxt] if shared else key
    limit = self.max_seq_len

    def shape(row) -> tuple[int, int]:
      return length_bucket(len(row[1]), limit), length_bucket(len(row[0]), limit) if row[0] else 0

    # Longest first (by shape, then length): out-of-memory shows at once, rows of a shape meet.
    rows = sorted(set(server.values()), key=lambda k: (*(-x for x in shape(k)[::-1]),
                                                        -len(k[1]), k))
    spans_of: dict = {row: [] for row in rows}
    for j, span in enumerate(spans):
      spans_of[server[span.row]].append(j)
    results: list[tuple[float, bool] | None] = [None] * len(spans)
    self.stats = {"spans": len(spans), "rows": len(rows), "batches": 0, "padded_tokens": 0,
                  "row_tokens": sum(len(r[0]) + len(r[1]) for r in rows)}
    for start, stop, b in plan_batches([shape(r) for r in rows], batch_size, self.batch_tokens):
      self._score_chunk(rows[start:stop], b, spans, spans_of, results)
    return results

  def _score_chunk(self, chunk, b, spans, spans_of, results) -> None:
    """Runs one batch (b rows, padded) and writes its spans' (log p, is_greedy) into results."""
    tok = self.tokenizer
    t = length_bucket(max(len(r[1]) for r in chunk), self.max_seq_len)
    inputs = np.full((b, t), tok.pad_id, np.int32)
    inputs[:, 0] = tok.bos_id  # Filler rows: a lone BOS, their output dropped.
    encoder = segments = None
    if chunk[0][0]:
      s = length_bucket(max(len(r[0]) for r in chunk), self.max_seq_len)
      encoder = np.full((b, s), tok.pad_id, np.int32)
      segments = np.zeros((b, s), np.int32)
      encoder[:, 0], segments[:, 0] = tok.eos_id, 1  # A row must attend to something.
    items = [(r, j) for r, row in enumerate(chunk) for j in spans_of[row]]
    m = max(b, _pow2_at_least(len(items)))
    item_rows = np.zeros((m,), np.int32)
    item_targets = np.zeros((m, t), np.int32)
    for r, row in enumerate(chunk):
      inputs[r, :len(row[1])] = row[1]
      if encoder is not None:
        encoder[r, :len(row[0])] = row[0]
        segments[r, :len(row[0])] = 1
    for k, (r, j) in enumerate(items):
      span = spans[j]
      item_rows[k] = r
      item_targets[k, span.start:span.start + len(span.targets)] = span.targets
    self.stats["batches"] += 1
    self.stats["padded_tokens"] += inputs.size + (0 if encoder is None else encoder.size)
    logprobs, greedy = self._score(self.params, encoder, segments, inputs, item_rows,
                                   item_targets)
    logprobs, greedy = np.asarray(logprobs), np.asarray(greedy)
    for k, (_, j) in enumerate(items):
      span = spans[j]
      window = slice(span.start, span.start + len(span.targets))
      results[j] = (float(np.sum(logprobs[k, window], dtype=np.float64)),
                    bool(greedy[k, window].all()))

  # Text API.
  def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of a request, tokenized as lm-eval does (module doc);
    a decoder's context ids start with BOS."""
    spaces = len(context) - len(context.rstrip())
    if spaces:  # lm-eval: "a b " + "c" is scored as "a b" + " c".
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = list(self.tokenizer.encode(context))
    continuation_ids = list(self.tokenizer.encode(context + continuation))[len(context_ids):]
    if not self.model.is_encoder_decoder:
      context_ids = [self.tokenizer.bos_id] + context_ids
    return context_ids, continuation_ids

  def loglikelihood(self, requests: Sequence[tuple[str, str]], *,
                    batch_size: int | None = None) -> list[tuple[float, bool]]:
    """Per (context, continuation): (sum of log p(continuation tokens | context), whether each
    is the greedy choice). See the module docstring for tokenization and truncation.

    Raises:
      TypeError: requests not a list of (str, str) pairs, or a bad batch_size.
      ValueError: an encoder-only model, an empty continuation, or one longer than
        max_seq_len (naming the request's index).
    """
    self._check_likelihood_model("loglikelihood")
    requests = _check_pairs(requests, str, "(context, continuation) pairs of str")
    batch_size = _check_batch_size(batch_size)
    spans = []
    for i, (context, continuation) in enumerate(requests):
      if not continuation:
        raise ValueError(f"requests[{i}] has an empty continuation ''; lm-eval refuses these "
                         "too: give each request a non-empty continuation.")
      spans.append(self._span(i, *self.encode_pair(context, continuation)))
    return self._score_spans(spans, batch_size)

  def _check_texts(self, texts: Any) -> list[str]:
    if isinstance(texts, list | tuple) and not texts:
      return []
    return check_prompts(texts, "texts")

  def loglikelihood_rolling(self, texts: Sequence[str], *,
                            batch_size: int | None = None) -> list[float]:
    """Full-document log-likelihood of each text: the first token predicted from BOS, rolling
    windows past max_seq_len (`rolling_windows`); an empty text scores 0.

    Raises:
      TypeError: texts not a list of str. ValueError: an encoder-only model.
    """
    self._check_likelihood_model("loglikelihood_rolling")
    texts = self._check_texts(texts)
    return self.loglikelihood_rolling_tokens([self.tokenizer.encode(t) for t in texts],
                                             batch_size=batch_size)

  def _gen_settings(self, i: int, kwargs: Mapping[str, Any]) -> tuple[list[str], dict]:
    """(stop strings, Sampler settings) of request i's lm-eval gen kwargs."""
    name = f"requests[{i}][1]"
    check_setting_names(kwargs, GEN_KWARGS, f"generate_until {name}")
    until = kwargs.get("until", [])
    until = [until] if isinstance(until, str) else until
    if not isinstance(until, list | tuple) or not all(isinstance(u, str) for u in until):
      raise TypeError(f"{name}['until'] must be a str or a list of str (stop strings), got "
                      f"{_describe(until)}.")
    limit = self.max_seq_len - 1  # At least one context token (decoder) or the start id.
    if "max_gen_toks" in kwargs:
      max_gen = check_int(f"{name}['max_gen_toks']", kwargs["max_gen_toks"],
                          f"an int in [1, max_seq_len - 1 = {limit}]", lambda v: 1 <= v <= limit)
    else:
      max_gen = max(min(DEFAULT_MAX_GEN_TOKS, self.max_seq_len // 2), 1)
    do_sample = kwargs.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
      raise TypeError(f"{name}['do_sample'] must be True, False or absent, got "
                      f"{_describe(do_sample)}.")
    settings = {"max_new_tokens": max_gen}
    for key in ("temperature", "top_k", "top_p", "seed"):
      if key in kwargs:
        try:
          settings[key] = check_setting(key, kwargs[key])
        except (TypeError, ValueError) as e:
          raise type(e)(f"{name}: {e}") from None
    # lm-eval: greedy unless asked to sample; do_sample=True samples at temperature 1 by default.
    if do_sample is False:
      settings["temperature"] = 0.0
    else:
      settings.setdefault("temperature", 1.0 if do_sample else 0.0)
    return [u for u in until if u], settings

  def generate_until(self, requests: Sequence[tuple[str, dict]], *,
                     batch_size: int | None = None) -> list[str]:
    """Per (context, gen_kwargs): the generated text, cut before the earliest stop string.

    gen_kwargs (lm-eval's): "until" (a str or list of str), "max_gen_toks" (default 256, at most
    half of max_seq_len when not given), "do_sample" / "temperature" (greedy unless
    do_sample=True or temperature > 0), "top_k", "top_p", "seed". Generation also stops at EOS.
    Requests with the same settings run together; too-long contexts lose their left end.

    Raises:
      TypeError: requests not a list of (str, dict), an unknown or mistyped setting.
      ValueError: an encoder-only model, or a setting out of range.
    """
    self._check_likelihood_model("generate_until")
    requests = _check_pairs(requests, Mapping, "(context, gen_kwargs dict) pairs")
    batch_size = _check_batch_size(batch_size) or GENERATE_BATCH_SIZE
    stops, groups = [], {}
    for i, (_, kwargs) in enumerate(requests):
      until, settings = self._gen_settings(i, kwargs)
      stops.append(until)
      groups.setdefault(tuple(sorted(settings.items())), []).append(i)
    tok, limit = self.tokenizer, self.max_seq_len
    encoded = [list(tok.encode(context)) for context, _ in requests]
    outputs: list[str] = [""] * len(requests)
    for key, members in groups.items():
      settings = dict(key)
      room = limit - settings["max_new_tokens"]
      members = sorted(members, key=lambda i: -len(encoded[i]))
      for start in range(0, len(members), batch_size):
        chunk = members[start:start + batch_size]
        if self.model.is_encoder_decoder:
          encoder = [encoded[i][max(len(encoded[i]) - (limit - 1), 0):] + [tok.eos_id]
                     for i in chunk]
          ids = self.sampler.generate_ids([[tok.bos_id]] * len(chunk), encoder_ids=encoder,
                                          **settings)
        else:
          prompts = [([tok.bos_id] + encoded[i])[-room:] for i in chunk]
          ids = self.sampler.generate_ids(prompts, **settings)
        for i, new in zip(chunk, ids, strict=True):
          text = self.sampler.decode_ids(new)
          for stop in stops[i]:
            text = text.split(stop, 1)[0]  # The earliest stop string wins.
          outputs[i] = text
    return outputs

  def embed(self, texts: Sequence[str], pooling: str = "mean", *,
            batch_size: int | None = None) -> np.ndarray:
    """[n, d] float32 embeddings: final hidden states (after the final norm; the encoder's for
    an encoder_decoder) pooled per text: "mean" over its tokens (not padding), "first" or
    "last" token. Rows are framed as in training (decoder: BOS + text; encoder: BOS + text +
    EOS; encoder_decoder: text + EOS) and keep their first max_seq_len tokens.

    Raises:
      TypeError: texts not a list of str, pooling not a str, a bad batch_size.
      ValueError: an unknown pooling.
    """
    if not isinstance(pooling, str):
      raise TypeError(f"pooling must be one of {', '.join(POOLINGS)}, got {_describe(pooling)}.")
    if pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
    texts = self._check_texts(texts)
    batch_size = _check_batch_size(batch_size)
    tok, limit, arch = self.tokenizer, self.max_seq_len, self.config.architecture
    rows = []
    for text in texts:
      ids = list(tok.encode(text))
      if arch == "decoder":
        rows.append(([tok.bos_id] + ids)[:limit])
      else:
        head = [tok.bos_id] if arch == "encoder" else []
        rows.append((head + ids)[:limit - 1] + [tok.eos_id])
    out = np.zeros((len(rows), self.config.embed_dim), np.float32)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    shapes = [(length_bucket(len(rows[i]), limit), 0) for i in order]
    for start, stop, b in plan_batches(shapes, batch_size, self.batch_tokens):
      chunk, t = order[start:stop], shapes[start][0]
      tokens = np.full((b, t), tok.pad_id, np.int32)
      segments = np.zeros((b, t), np.int32)
      tokens[:, 0], segments[:, 0] = tok.bos_id, 1  # Filler rows; dropped.
      lengths = np.ones((b,), np.int32)
      for r, i in enumerate(chunk):
        tokens[r, :len(rows[i])], segments[r, :len(rows[i])] = rows[i], 1
        lengths[r] = len(rows[i])
      pooled = np.asarray(self._embed(self.params, tokens, segments, lengths))
      out[chunk] = pooled[POOLINGS.index(pooling), :len(chunk)]
    return out
