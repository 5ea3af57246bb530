"""Property tests of the MLM and span-corruption objectives (objectives.py), for any document.

The invariants are restated from the docstrings, not from the code: MLM predicts exactly
round(rate * n) (at least 1) of the n non-special tokens, never a special one, and corrupts only
those; span corruption's encoder input and targets give back the original ids, with the
sentinels in order, in exactly the lengths `span_corruption_lengths` promises, and every chunk
no longer than `span_corruption_chunk_length` fits its rows.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from llmjax.data import objectives

SETTINGS = settings(max_examples=150, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def mlm_cases(draw):
  """A vocabulary, its special ids (ours 0-3, a BERT's 0 and 100-103, or any), and a document."""
  vocab = draw(st.integers(8, 300))
  specials = draw(st.one_of(
      st.just({0, 1, 2, 3}),
      st.sets(st.integers(0, vocab - 1), min_size=2, max_size=min(vocab - 2, 12))))
  bos, eos = sorted(specials)[:2]
  mask = draw(st.one_of(st.just(vocab), st.sampled_from(sorted(specials))))
  ids = draw(st.lists(st.integers(0, vocab - 1), max_size=40))
  return vocab, frozenset(specials), bos, eos, mask, ids


@SETTINGS
@given(mlm_cases(), st.floats(0.01, 1.0), SEEDS)
def test_mlm_masks_only_maskable_tokens_at_the_promised_rate(case, rate, seed):
  vocab, specials, bos, eos, mask, ids = case
  ex = objectives.mlm_example(ids, np.random.default_rng(seed), mask_id=mask, vocab_size=vocab,
                              mlm_rate=rate, bos_id=bos, eos_id=eos, special_ids=specials)
  doc = np.asarray([bos, *ids, eos])
  np.testing.assert_array_equal(ex["targets"], doc)  # Targets are the original document.
  weights = ex["weights"]
  assert set(np.unique(weights)) <= {0.0, 1.0}
  chosen = weights == 1.0
  maskable = ~np.isin(doc, list(specials))
  n = int(maskable.sum())
  assert int(chosen.sum()) == (min(n, max(1, round(rate * n))) if n else 0)
  assert not (chosen & ~maskable).any()  # Never a special id, bos/eos included.
  # Unselected tokens are untouched; selected ones become the mask id, a random non-special id
  # below vocab_size, or themselves.
  np.testing.assert_array_equal(ex["inputs"][~chosen], doc[~chosen])
  replaced = ex["inputs"][chosen]
  ok = (replaced == mask) | ((replaced < vocab) & ~np.isin(replaced, list(specials)))
  assert ok.all()
  for key in ("inputs", "targets"):
    assert ex[key].dtype == np.int32 and ex[key].shape == doc.shape


@SETTINGS
@given(mlm_cases(), SEEDS)
def test_mlm_is_a_function_of_the_seed(case, seed):
  vocab, specials, bos, eos, mask, ids = case
  make = lambda: objectives.mlm_example(  # noqa: E731
      ids, np.random.default_rng(seed), mask_id=mask, vocab_size=vocab, bos_id=bos,
      eos_id=eos, special_ids=specials)
  a, b = make(), make()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


DENSITY = st.floats(0.05, 0.95)
SPAN = st.floats(1.0, 8.0)


@SETTINGS
@given(st.lists(st.integers(3, 999), max_size=80), DENSITY, SPAN, SEEDS)
def test_span_corruption_reconstructs_with_sentinels_in_order(ids, density, span, seed):
  sentinels = 10_000 - np.arange(100)  # Above every id, as for models trained here.
  eos = 2
  ex = objectives.span_corruption_example(
      ids, np.random.default_rng(seed), noise_density=density, mean_noise_span_length=span,
      sentinel_ids=sentinels, eos_id=eos)
  enc, tgt = ex["encoder_inputs"], ex["targets"]
  assert enc[-1] == eos and tgt[-1] == eos
  np.testing.assert_array_equal(objectives.reconstruct_from_spans(enc, tgt, sentinels), ids)
  # The same sentinels, in order, on both sides, starting at sentinel 0.
  used_enc = enc[np.isin(enc, sentinels)]
  used_tgt = tgt[np.isin(tgt, sentinels)]
  np.testing.assert_array_equal(used_enc, sentinels[:len(used_enc)])
  np.testing.assert_array_equal(used_tgt, used_enc)
  if len(used_tgt):
    assert tgt[0] == sentinels[0]
  # Lengths (and the number of spans) are exactly the promised, deterministic ones.
  enc_len, tgt_len, spans = objectives.span_corruption_lengths(len(ids), density, span)
  assert (len(enc), len(tgt), len(used_enc)) == (enc_len, tgt_len, spans)
  if len(ids) >= 2:  # Some noise, and some tokens kept.
    assert 1 <= len(tgt) - 1 - spans <= len(ids) - 1


@SETTINGS
@given(st.integers(0, 200), DENSITY, SPAN, SEEDS)
def test_noise_mask_alternates_kept_and_noise_spans(length, density, span, seed):
  mask = objectives.random_spans_noise_mask(length, np.random.default_rng(seed),
                                            noise_density=density, mean_noise_span_length=span)
  assert mask.shape == (length,) and mask.dtype == bool
  if length:
    assert not mask[0]  # Starts with kept tokens.
  if length >= 2:
    num_noise, num_spans = objectives._span_counts(length, density, span)
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    assert (int(mask.sum()), int(starts.sum())) == (num_noise, num_spans)


@SETTINGS
@given(st.integers(1, 64), st.integers(1, 64), DENSITY, SPAN, st.integers(1, 100), SEEDS)
def test_every_chunk_up_to_the_chunk_length_fits(encoder_len, target_len, density, span,
                                                 num_sentinels, seed):
  try:
    chunk = objectives.span_corruption_chunk_length(
        encoder_len, target_len, noise_density=density, mean_noise_span_length=span,
        num_sentinels=num_sentinels)
  except ValueError:
    # Refused only when a 2-token chunk really does not fit.
    enc, tgt, spans = objectives.span_corruption_lengths(2, density, span)
    assert enc > encoder_len or tgt > target_len or spans > num_sentinels
    return
  # The most: one more token would not fit.
  enc, tgt, spans = objectives.span_corruption_lengths(chunk + 1, density, span)
  assert enc > encoder_len or tgt > target_len or spans > num_sentinels
  rng = np.random.default_rng(seed)
  sentinels = 10_000 - np.arange(num_sentinels)
  for n in range(1, chunk + 1):  # The last chunk of a document is shorter.
    ex = objectives.span_corruption_example(
        np.arange(3, 3 + n), rng, noise_density=density, mean_noise_span_length=span,
        sentinel_ids=sentinels, eos_id=2)  # Would raise if it needed more sentinels.
    assert len(ex["encoder_inputs"]) <= encoder_len and len(ex["targets"]) <= target_len
