"""MLM masking and T5 span corruption: statistics over many draws and exact reconstruction."""

import numpy as np
import pytest

from llmjax.data import objectives
from llmjax.data.tokenizer import ByteTokenizer, IdTokenizer

BOS, EOS, UNK = 1, 2, 3
VOCAB = 260  # Tokenizer vocab; the mask id sits just past it.
MASK = VOCAB
SPECIALS = ByteTokenizer().special_ids  # Ours: pad, bos, eos, unk = 0-3.


def _mlm_draws(num_docs=2000, seed=0):
  rng = np.random.default_rng(seed)
  docs, examples = [], []
  for _ in range(num_docs):
    ids = rng.integers(4, VOCAB, size=int(rng.integers(1, 120)))
    ids[rng.random(len(ids)) < 0.05] = UNK  # Unknown pieces are special: never predicted.
    docs.append(np.concatenate([[BOS], ids, [EOS]]))
    examples.append(objectives.mlm_example(ids, rng, mask_id=MASK, vocab_size=VOCAB,
                                           mlm_rate=0.15, bos_id=BOS, eos_id=EOS,
                                           special_ids=SPECIALS))
  return docs, examples


def test_mlm_selects_the_right_count_and_never_specials():
  docs, examples = _mlm_draws()
  for doc, ex in zip(docs, examples, strict=True):
    np.testing.assert_array_equal(ex["targets"], doc)  # Targets are the original document.
    assert ex["inputs"].dtype == np.int32 and ex["weights"].dtype == np.float32
    eligible = doc >= 4
    n = int(eligible.sum())
    selected = ex["weights"] == 1.0
    assert set(np.unique(ex["weights"])) <= {0.0, 1.0}
    k = int(selected.sum())
    assert (k == 0) if n == 0 else (k >= 1 and (k == 1 or abs(k - 0.15 * n) <= 0.5))
    assert not np.any(selected & ~eligible)
    # Unselected tokens are untouched; so the original is recovered from inputs + targets.
    np.testing.assert_array_equal(ex["inputs"][~selected], doc[~selected])


def test_mlm_80_10_10_split_and_random_tokens_are_regular_ids():
  docs, examples = _mlm_draws()
  orig = np.concatenate([d[e["weights"] == 1] for d, e in zip(docs, examples, strict=True)])
  got = np.concatenate([e["inputs"][e["weights"] == 1] for e in examples])
  assert len(got) > 10_000
  masked, kept = got == MASK, got == orig
  replaced = ~masked & ~kept
  # Random replacements hit the original id with probability 1/256 and count as kept.
  assert abs(masked.mean() - 0.8) < 0.015
  assert abs(kept.mean() - (0.1 + 0.1 / 256)) < 0.01
  assert abs(replaced.mean() - 0.1 * 255 / 256) < 0.01
  assert got[replaced].min() >= 4 and got[replaced].max() < VOCAB
  assert abs(got[replaced].mean() - (4 + VOCAB - 1) / 2) < 8  # Uniform over [4, VOCAB).


def test_mlm_selection_is_uniform_over_positions():
  rng = np.random.default_rng(1)
  ids = np.arange(100, 140)
  counts = np.zeros(42)
  for _ in range(4000):
    counts += objectives.mlm_example(ids, rng, mask_id=MASK, vocab_size=VOCAB, bos_id=BOS,
                                     eos_id=EOS, special_ids=SPECIALS)["weights"]
  assert counts[0] == counts[-1] == 0
  expected = 4000 * 6 / 40  # 6 = round(0.15 * 40) of the 40 tokens.
  assert np.all(np.abs(counts[1:-1] - expected) < 5 * np.sqrt(expected))


def test_mlm_without_regular_tokens_predicts_nothing():
  ex = objectives.mlm_example([UNK], np.random.default_rng(0), mask_id=MASK, vocab_size=VOCAB,
                              bos_id=BOS, eos_id=EOS, special_ids=SPECIALS)
  np.testing.assert_array_equal(ex["inputs"], [BOS, UNK, EOS])
  assert ex["weights"].sum() == 0


def _mlm_reference_ids_0_to_3(ids, rng, mask_id, vocab_size, rate=0.15):
  """The masking as specified for specials 0-3 (what every run before this change drew)."""
  doc = np.concatenate([[BOS], ids, [EOS]]).astype(np.int32)
  inputs, weights = doc.copy(), np.zeros(len(doc), np.float32)
  candidates = np.flatnonzero(doc >= 4)
  if len(candidates):
    k = min(len(candidates), max(1, round(rate * len(candidates))))
    chosen = rng.choice(candidates, size=k, replace=False)
    u = rng.random(k)
    random_ids = rng.integers(4, vocab_size, size=k, dtype=np.int32)
    inputs[chosen] = np.where(u < 0.8, mask_id, np.where(u < 0.9, random_ids, doc[chosen]))
    weights[chosen] = 1.0
  return inputs, weights


def test_mlm_with_our_specials_draws_exactly_as_before():
  rng, ref_rng = np.random.default_rng(7), np.random.default_rng(7)
  data = np.random.default_rng(8)
  for _ in range(300):
    ids = data.integers(0, VOCAB, size=int(data.integers(0, 60)))
    ex = objectives.mlm_example(ids, rng, mask_id=MASK, vocab_size=VOCAB, bos_id=BOS,
                                eos_id=EOS, special_ids=SPECIALS)
    inputs, weights = _mlm_reference_ids_0_to_3(ids, ref_rng, MASK, VOCAB)
    np.testing.assert_array_equal(ex["inputs"], inputs)
    np.testing.assert_array_equal(ex["weights"], weights)


# A converted BERT's WordPiece ids: [PAD] 0, [unused0..2] 1-3, [UNK] 100, [CLS] 101, [SEP] 102,
# [MASK] 103; 30522 ids.
BERT = IdTokenizer(30522, pad_id=0, bos_id=101, eos_id=102, unk_id=100, mask_id=103)


def test_mlm_takes_a_bert_tokenizers_special_ids():
  assert BERT.special_ids == {0, 100, 101, 102, 103}
  rng = np.random.default_rng(3)
  selected, replacements = [], []
  for _ in range(3000):
    # Ordinary ids 1-3 and 104.., with [UNK] sprinkled in.
    ids = rng.choice(np.r_[1:4, 104:140, 100], size=int(rng.integers(1, 40)))
    ex = objectives.mlm_example(ids, rng, mask_id=BERT.mask_id, vocab_size=BERT.vocab_size,
                                bos_id=BERT.bos_id, eos_id=BERT.eos_id,
                                special_ids=BERT.special_ids)
    doc, picked = ex["targets"], ex["weights"] == 1.0
    assert doc[0] == 101 and doc[-1] == 102
    selected.append(doc[picked])
    changed = picked & (ex["inputs"] != doc) & (ex["inputs"] != BERT.mask_id)
    replacements.append(ex["inputs"][changed])
  selected, replacements = np.concatenate(selected), np.concatenate(replacements)
  # [CLS], [SEP], [UNK] are never masked; [unused0..2] (ids 1-3) are, like any word.
  assert not np.isin(selected, list(BERT.special_ids)).any()
  assert set(np.unique(selected[selected < 4])) == {1, 2, 3}
  # Random replacements: uniform over the 30517 non-special ids, none of them special.
  assert not np.isin(replacements, list(BERT.special_ids)).any()
  assert len(replacements) > 500
  assert abs(replacements.mean() - 30522 / 2) < 4 * 30522 / np.sqrt(12 * len(replacements))


def _sentinels(v=1000, n=100):
  return v - 1 - np.arange(n)


def _spans(mask):
  """Lengths of the runs of True in a bool array."""
  edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
  return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def test_span_corruption_statistics_and_exact_reconstruction():
  rng = np.random.default_rng(0)
  sent = _sentinels()
  total = noise_total = spans_total = 0
  for _ in range(1500):
    n = int(rng.integers(2, 400))
    ids = rng.integers(4, 900, size=n).astype(np.int32)
    ex = objectives.span_corruption_example(ids, rng, noise_density=0.15,
                                            mean_noise_span_length=3.0, sentinel_ids=sent,
                                            eos_id=EOS)
    enc, tgt = ex["encoder_inputs"], ex["targets"]
    assert enc[-1] == EOS and tgt[-1] == EOS
    np.testing.assert_array_equal(objectives.reconstruct_from_spans(enc, tgt, sent), ids)
    enc_sent, tgt_sent = enc[np.isin(enc, sent)], tgt[np.isin(tgt, sent)]
    k = len(enc_sent)
    np.testing.assert_array_equal(enc_sent, 999 - np.arange(k))  # Descending from the top.
    np.testing.assert_array_equal(tgt_sent, enc_sent)
    assert tgt[0] == 999 and enc[0] != 999  # Starts with non-noise, as T5.
    num_noise = len(tgt) - k - 1
    assert 1 <= num_noise <= n - 1
    assert abs(num_noise - 0.15 * n) <= 0.5 or num_noise == 1  # round(), clipped to >= 1.
    assert k == 1 or abs(k - num_noise / 3.0) <= 0.5
    assert len(enc) - k - 1 == n - num_noise
    total, noise_total, spans_total = total + n, noise_total + num_noise, spans_total + k
  assert abs(noise_total / total - 0.15) < 0.005
  assert abs(noise_total / spans_total - 3.0) < 0.1


def test_noise_mask_spans_are_random_and_nonempty():
  rng = np.random.default_rng(3)
  masks = [objectives.random_spans_noise_mask(100, rng) for _ in range(500)]
  for m in masks:
    assert m.sum() == 15 and not m[0]
    lengths = _spans(m)
    assert len(lengths) == 5 and lengths.min() >= 1
  assert len({m.tobytes() for m in masks}) == 500
  # Every non-initial position is noise sometimes: spans land anywhere.
  assert np.all(np.mean(masks, axis=0)[1:] > 0)
  # Span lengths are a random segmentation: 15 tokens in 5 spans, mean 3, not all 3.
  all_lengths = np.concatenate([_spans(m) for m in masks])
  assert all_lengths.mean() == 3.0 and all_lengths.std() > 0.5


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_span_corruption_tiny_chunks_round_trip(n):
  ids = np.arange(10, 10 + n)
  ex = objectives.span_corruption_example(ids, np.random.default_rng(n), sentinel_ids=[9, 8],
                                          eos_id=EOS)
  np.testing.assert_array_equal(
      objectives.reconstruct_from_spans(ex["encoder_inputs"], ex["targets"], [9, 8]), ids)


def test_span_corruption_too_few_sentinels_raises():
  with pytest.raises(ValueError, match="extra_ids"):
    objectives.span_corruption_example(np.arange(10, 110), np.random.default_rng(0),
                                       sentinel_ids=[9, 8], eos_id=EOS)


@pytest.mark.parametrize("te,td", [(32, 32), (64, 16), (16, 64), (512, 128)])
def test_chunk_length_is_the_largest_that_always_fits(te, td):
  rng = np.random.default_rng(te + td)
  kw = dict(noise_density=0.15, mean_noise_span_length=3.0)
  n = objectives.span_corruption_chunk_length(te, td, num_sentinels=100, **kw)

  def worst(m):
    exs = [objectives.span_corruption_example(np.arange(4, 4 + m), rng, sentinel_ids=_sentinels(),
                                              eos_id=EOS, **kw) for _ in range(20)]
    return max(len(e["encoder_inputs"]) for e in exs), max(len(e["targets"]) for e in exs)

  for m in range(1, n + 1):
    enc, tgt = worst(m)
    assert enc <= te and tgt <= td, m
  enc, tgt = worst(n + 1)
  assert enc > te or tgt > td


def test_chunk_length_too_small_raises():
  with pytest.raises(ValueError, match="decoder_seq_len"):
    objectives.span_corruption_chunk_length(2, 2, noise_density=0.15, mean_noise_span_length=3.0,
                                            num_sentinels=100)
