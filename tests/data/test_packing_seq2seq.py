"""Encoder-decoder packing: whole examples, aligned segments, shifted decoder inputs, resume."""

import json

import grain
import numpy as np
import pytest

from llmjax.data import packing_seq2seq

BOS = 1
TE, TD = 16, 12


def _examples(n, seed=0, max_enc=14, max_tgt=10):
  """Example k's tokens encode it: encoder ids 1000 * (k + 1) + j, target ids 500 + ... ."""
  rng = np.random.default_rng(seed)
  return [{"encoder_inputs": (1000 * (k + 1) + np.arange(int(rng.integers(1, max_enc + 1)))
                              ).astype(np.int32),
           "targets": (1000 * (k + 1) + 500 + np.arange(int(rng.integers(1, max_tgt + 1)))
                       ).astype(np.int32)} for k in range(n)]


def _pack(elements, te=TE, td=TD):
  ds = grain.MapDataset.source(elements).to_iter_dataset()
  return packing_seq2seq.Seq2SeqPackIterDataset(ds, te, td, bos_id=BOS)


def _segments(row):
  """[(encoder tokens, decoder inputs, targets, weights)] of each segment, checking layout."""
  out = []
  enc_seg, dec_seg = row["encoder_segment_ids"], row["segment_ids"]
  k = int(enc_seg.max())
  assert k >= 1 and int(dec_seg.max()) == k
  for seg, pos in ((enc_seg, row["encoder_positions"]), (dec_seg, row["positions"])):
    real = seg > 0
    n = int(real.sum())
    assert np.all(real[:n]) and not np.any(real[n:])  # Real tokens first, then padding.
    assert np.all(np.diff(seg[:n]) >= 0)  # Segments are contiguous, numbered in order.
    assert np.all(pos[n:] == 0)
  for s in range(1, k + 1):
    e, d = enc_seg == s, dec_seg == s
    assert e.any() and d.any()  # Every segment exists on both sides.
    np.testing.assert_array_equal(row["encoder_positions"][e], np.arange(e.sum()))
    np.testing.assert_array_equal(row["positions"][d], np.arange(d.sum()))
    out.append((row["encoder_inputs"][e], row["inputs"][d], row["targets"][d],
                row["weights"][d]))
  pad = dec_seg == 0
  assert np.all(row["weights"][pad] == 0) and np.all(row["targets"][pad] == 0)
  assert np.all(row["encoder_inputs"][row["encoder_segment_ids"] == 0] == 0)
  return out


def test_rows_hold_whole_examples_in_order_with_shifted_decoder_inputs():
  examples = _examples(60)
  rows = list(_pack(examples))
  placed = [seg for row in rows for seg in _segments(row)]
  assert len(placed) == len(examples)  # Every example exactly once, in stream order.
  for ex, (enc, dec_in, tgt, w) in zip(examples, placed, strict=True):
    np.testing.assert_array_equal(enc, ex["encoder_inputs"])
    np.testing.assert_array_equal(tgt, ex["targets"])
    np.testing.assert_array_equal(dec_in, np.concatenate([[BOS], ex["targets"][:-1]]))
    np.testing.assert_array_equal(w, np.ones(len(tgt)))
    owners = {int(x) // 1000 for x in np.concatenate([enc, tgt, dec_in[1:]])}
    assert len(owners) == 1  # Nothing crosses a segment.
  # Greedy: a row is closed only when the next example does not fit on one of the sides.
  for row, nxt in zip(rows[:-1], rows[1:], strict=True):
    first = _segments(nxt)[0]
    enc_free = TE - int((row["encoder_segment_ids"] > 0).sum())
    dec_free = TD - int((row["segment_ids"] > 0).sum())
    assert len(first[0]) > enc_free or len(first[2]) > dec_free
  r = rows[0]
  assert r["encoder_inputs"].shape == (TE,) and r["targets"].shape == (TD,)
  assert r["weights"].dtype == np.float32
  assert all(r[k].dtype == np.int32 for k in packing_seq2seq.FEATURES if k != "weights")


def test_too_long_examples_are_truncated_alone_in_a_row():
  examples = _examples(3, max_enc=8, max_tgt=6)
  examples.insert(1, {"encoder_inputs": np.arange(9000, 9040, dtype=np.int32),
                      "targets": np.arange(9500, 9503, dtype=np.int32)})
  rows = list(_pack(examples))
  long_rows = [r for r in rows if 9000 in r["encoder_inputs"]]
  assert len(long_rows) == 1
  segs = _segments(long_rows[0])
  assert len(segs) == 1
  np.testing.assert_array_equal(segs[0][0], np.arange(9000, 9000 + TE))


def test_list_elements_are_unpacked_and_empty_lists_skipped():
  examples = _examples(10)
  elements = [examples[0:3], [], examples[3:4], examples[4:10]]
  got = [s for row in _pack(elements) for s in _segments(row)]
  assert len(got) == 10
  for ex, seg in zip(examples, got, strict=True):
    np.testing.assert_array_equal(seg[2], ex["targets"])


@pytest.mark.parametrize("grouped", [False, True])
def test_state_resumes_exactly_after_json_round_trip(grouped):
  examples = _examples(40, seed=2)
  elements = [examples[i:i + 3] for i in range(0, 40, 3)] if grouped else examples
  full = list(_pack(elements))
  it = _pack(elements).__iter__()
  for k in range(len(full) + 1):
    state = json.loads(json.dumps(it.get_state()))
    fresh = _pack(elements).__iter__()
    fresh.set_state(state)
    rest = list(fresh)
    assert len(rest) == len(full) - k
    for a, b in zip(rest, full[k:], strict=True):
      for f in packing_seq2seq.FEATURES:
        np.testing.assert_array_equal(a[f], b[f])
    if k < len(full):
      next(it)
