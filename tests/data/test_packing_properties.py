"""Property tests of packing (packing.py, packing_seq2seq.py) for any lengths and row sizes.

Every token of document k at offset j carries the value (k, j) in it, so from the packed rows
alone a test can tell which token of which document landed where: none lost, none repeated,
each segment one contiguous piece of one document, positions counting from the piece's start.
"""

import json

import grain
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from llmjax.data import packing, packing_seq2seq

BOS = 1
SETTINGS = settings(max_examples=100, deadline=None)
# Document lengths (0 included: empty documents are skipped) and row lengths, small enough that
# documents are often longer than a row, shorter than one, and exactly one long.
LENGTHS = st.lists(st.integers(0, 30), max_size=12)


def _token(k: int, j: int) -> int:
  return 1 + 1000 * k + j  # Never 0, the padding value.


def _docs(lengths: list[int], weighted: bool) -> list[dict[str, np.ndarray]]:
  docs = []
  for k, n in enumerate(lengths):
    ids = np.asarray([_token(k, j) for j in range(n)], np.int32)
    doc = {"inputs": ids, "targets": ids + 500}
    if weighted:  # MLM-style weights: some tokens 0.
      doc["weights"] = (np.arange(n) % 3 == 0).astype(np.float32)
    docs.append(doc)
  return docs


def _rows(iterator) -> list[dict[str, np.ndarray]]:
  return list(iterator)


def _unbatch(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
  return [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["inputs"]))]


@SETTINGS
@given(LENGTHS, st.integers(1, 24), st.integers(1, 4), st.booleans())
def test_packing_keeps_every_token_once_in_consistent_segments(lengths, seq_len, batch_size,
                                                                weighted):
  docs = _docs(lengths, weighted)
  ds = packing.PackIterDataset(grain.MapDataset.source(docs).to_iter_dataset(), seq_len)
  rows = _unbatch(list(ds.batch(batch_size)))
  total = sum(lengths)
  assert len(rows) == -(-total // seq_len)  # Concat-then-split: no row is short but the last.
  real = [r["segment_ids"] > 0 for r in rows]
  for i, (row, mask) in enumerate(zip(rows, real, strict=True)):
    assert all(v.shape == (seq_len,) for v in row.values())
    n = int(mask.sum())
    assert mask[:n].all() and (n == seq_len or i == len(rows) - 1)  # Padding only at the end.
    for key in packing.FEATURES:  # Padding is all zeros, weights included.
      assert not row[key][n:].any(), key
    seg, pos, inputs = row["segment_ids"][:n], row["positions"][:n], row["inputs"][:n]
    # Segments are numbered 1, 2, ... and a new one starts exactly where the document changes.
    doc_of, offset = (inputs - 1) // 1000, (inputs - 1) % 1000
    starts = np.flatnonzero(np.diff(seg)) + 1
    np.testing.assert_array_equal(np.diff(seg)[starts - 1], 1)
    np.testing.assert_array_equal(starts, np.flatnonzero(np.diff(doc_of)) + 1)
    if n:
      assert seg[0] == 1
    # Inside a segment, consecutive offsets, and positions count from the segment's start.
    for piece in np.split(np.arange(n), starts):
      if len(piece):
        np.testing.assert_array_equal(offset[piece], offset[piece[0]] + np.arange(len(piece)))
        np.testing.assert_array_equal(pos[piece], np.arange(len(piece)))
  # No token lost or repeated, in stream order, with its own target and weight.
  got = {k: np.concatenate([r[k][m] for r, m in zip(rows, real, strict=True)] or [[]])
         for k in ("inputs", "targets", "weights")}
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(got[key], np.concatenate([d[key] for d in docs] + [[]]))
  want_weights = [d.get("weights", np.ones(len(d["inputs"]))) for d in docs]
  np.testing.assert_array_equal(got["weights"], np.concatenate(want_weights + [[]]))


@SETTINGS
@given(LENGTHS, st.integers(1, 24), st.data())
def test_packing_resumes_from_any_row(lengths, seq_len, data):
  docs = _docs(lengths, weighted=False)
  ds = packing.PackIterDataset(grain.MapDataset.source(docs).to_iter_dataset(), seq_len)
  rows = _rows(iter(ds))
  cut = data.draw(st.integers(0, len(rows)), label="cut")
  it = iter(ds)
  for _ in range(cut):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # As a checkpoint stores it.
  resumed = iter(ds)
  resumed.set_state(state)
  rest = _rows(resumed)
  assert len(rest) == len(rows) - cut
  for a, b in zip(rest, rows[cut:], strict=True):
    for key in packing.FEATURES:
      np.testing.assert_array_equal(a[key], b[key])


# Seq2seq: examples are never split, so lengths are >= 1 (an encoder input and a target always
# end with eos) and may exceed a row (then they are truncated to it).
EXAMPLE = st.tuples(st.integers(1, 20), st.integers(1, 14))
ELEMENTS = st.lists(st.one_of(EXAMPLE, st.lists(EXAMPLE, max_size=3)), max_size=8)


def _seq2seq_elements(spec) -> tuple[list, list[dict[str, np.ndarray]]]:
  """Parent elements (an example or a list of them) and the flat list of examples."""
  elements, flat = [], []
  for item in spec:
    group = []
    for enc_len, tgt_len in (item if isinstance(item, list) else [item]):
      k = len(flat)
      ex = {"encoder_inputs": np.asarray([_token(k, j) for j in range(enc_len)], np.int32),
            "targets": np.asarray([_token(k, j) + 500 for j in range(tgt_len)], np.int32)}
      flat.append(ex)
      group.append(ex)
    elements.append(group if isinstance(item, list) else group[0])
  return elements, flat


def _seq2seq(elements, te, td):
  return packing_seq2seq.Seq2SeqPackIterDataset(
      grain.MapDataset.source(elements).to_iter_dataset(), te, td, bos_id=BOS)


def _segments(row, side: str) -> list[np.ndarray]:
  """Token indices of each segment on one side, checking segments 1..k then padding."""
  prefix = "encoder_" if side == "encoder" else ""
  seg, pos = row[prefix + "segment_ids"], row[prefix + "positions"]
  n = int((seg > 0).sum())
  assert (seg[:n] > 0).all() and not seg[n:].any() and not pos[n:].any()
  out = []
  for s in range(1, int(seg.max(initial=0)) + 1):
    idx = np.flatnonzero(seg == s)
    assert len(idx) and (np.diff(idx) == 1).all()  # Contiguous, in order.
    np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
    out.append(idx)
  assert sum(map(len, out)) == n
  return out


@SETTINGS
@given(ELEMENTS, st.integers(1, 24), st.integers(1, 16))
def test_seq2seq_packing_places_every_example_whole_and_once(spec, te, td):
  elements, flat = _seq2seq_elements(spec)
  rows = list(_seq2seq(elements, te, td))
  placed = []  # (row, encoder tokens, targets) of each segment, in order.
  for r, row in enumerate(rows):
    enc_segments, dec_segments = _segments(row, "encoder"), _segments(row, "decoder")
    assert len(enc_segments) == len(dec_segments) >= 1  # Segment k is example k on both sides.
    for e, d in zip(enc_segments, dec_segments, strict=True):
      targets = row["targets"][d]
      np.testing.assert_array_equal(row["inputs"][d], np.concatenate([[BOS], targets[:-1]]))
      np.testing.assert_array_equal(row["weights"][d], 1.0)
      placed.append((r, row["encoder_inputs"][e], targets))
    assert not row["encoder_inputs"][sum(map(len, enc_segments)):].any()
    n_dec = sum(map(len, dec_segments))
    for key in ("inputs", "targets", "weights"):
      assert not row[key][n_dec:].any(), key
  # Every example exactly once, in stream order; whole, or cut to an empty row's size.
  assert len(placed) == len(flat)
  for (_, enc, tgt), ex in zip(placed, flat, strict=True):
    np.testing.assert_array_equal(enc, ex["encoder_inputs"][:te])
    np.testing.assert_array_equal(tgt, ex["targets"][:td])
  # An example too long for a row is cut to fit an empty one, so it is alone in its row.
  rows_used = [r for r, _, _ in placed]
  for (r, _, _), ex in zip(placed, flat, strict=True):
    if len(ex["encoder_inputs"]) > te or len(ex["targets"]) > td:
      assert rows_used.count(r) == 1
  # First fit in stream order: a row is closed only when the next example does not fit the
  # space left on both sides.
  for (r, _, _), (r_next, enc, tgt) in zip(placed, placed[1:], strict=False):
    if r_next != r:
      row = rows[r]
      free_enc = te - int((row["encoder_segment_ids"] > 0).sum())
      free_dec = td - int((row["segment_ids"] > 0).sum())
      assert len(enc) > free_enc or len(tgt) > free_dec


@SETTINGS
@given(ELEMENTS, st.integers(1, 24), st.integers(1, 16), st.data())
def test_seq2seq_packing_resumes_from_any_row(spec, te, td, data):
  elements, _ = _seq2seq_elements(spec)
  ds = _seq2seq(elements, te, td)
  rows = list(ds)
  cut = data.draw(st.integers(0, len(rows)), label="cut")
  it = iter(ds)
  for _ in range(cut):
    next(it)
  resumed = iter(ds)
  resumed.set_state(json.loads(json.dumps(it.get_state())))
  rest = list(resumed)
  assert len(rest) == len(rows) - cut
  for a, b in zip(rest, rows[cut:], strict=True):
    for key in packing_seq2seq.FEATURES:
      np.testing.assert_array_equal(a[key], b[key])
