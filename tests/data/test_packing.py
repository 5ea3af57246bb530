"""Packing and the causal LM objective, against a straightforward NumPy reference."""

import json

import grain
import numpy as np
import pytest

from llmjax.data import objectives, packing

BOS, EOS = 1, 2


def _docs(lengths: list[int]) -> list[dict[str, np.ndarray]]:
  """Documents whose token values encode the document: doc k has ids 1000 * (k + 1) + j."""
  return [objectives.causal_lm_example(1000 * (k + 1) + np.arange(n), bos_id=BOS, eos_id=EOS)
          for k, n in enumerate(lengths)]


def _reference_pack(docs: list[dict[str, np.ndarray]], t: int) -> dict[str, np.ndarray]:
  """Concatenate everything, cut every t tokens, number the pieces inside each row."""
  inputs = np.concatenate([d["inputs"] for d in docs])
  targets = np.concatenate([d["targets"] for d in docs])
  doc_id = np.concatenate([np.full(len(d["inputs"]), k) for k, d in enumerate(docs)])
  rows = -(-len(inputs) // t)
  pad = rows * t - len(inputs)
  out = {
      "inputs": np.pad(inputs, (0, pad)).reshape(rows, t),
      "targets": np.pad(targets, (0, pad)).reshape(rows, t),
      "weights": np.pad(np.ones(len(inputs), np.float32), (0, pad)).reshape(rows, t),
  }
  doc_id = np.pad(doc_id, (0, pad), constant_values=-1).reshape(rows, t)
  seg = np.zeros((rows, t), np.int32)
  pos = np.zeros((rows, t), np.int32)
  for r in range(rows):
    s, p = 0, 0
    for i in range(t):
      if doc_id[r, i] < 0:
        break
      if i == 0 or doc_id[r, i] != doc_id[r, i - 1]:
        s, p = s + 1, 0
      seg[r, i], pos[r, i] = s, p
      p += 1
  out["segment_ids"], out["positions"] = seg, pos
  return out


def _pack(docs, t):
  ds = grain.MapDataset.source(docs).to_iter_dataset()
  return packing.PackIterDataset(ds, t)


def test_causal_lm_example_shifts_inside_document():
  ex = objectives.causal_lm_example([7, 8, 9], bos_id=BOS, eos_id=EOS)
  np.testing.assert_array_equal(ex["inputs"], [BOS, 7, 8, 9])
  np.testing.assert_array_equal(ex["targets"], [7, 8, 9, EOS])
  assert ex["inputs"].dtype == np.int32
  empty = objectives.causal_lm_example([], bos_id=BOS, eos_id=EOS)
  np.testing.assert_array_equal(empty["inputs"], [BOS])
  np.testing.assert_array_equal(empty["targets"], [EOS])


@pytest.mark.parametrize("t", [1, 5, 16])
def test_pack_matches_numpy_reference(t):
  lengths = list(np.random.default_rng(t).integers(0, 40, size=25))
  docs = _docs(lengths)
  got = list(_pack(docs, t))
  ref = _reference_pack(docs, t)
  assert len(got) == len(ref["inputs"])
  for k in packing.FEATURES:
    np.testing.assert_array_equal(np.stack([r[k] for r in got]), ref[k], err_msg=k)
  assert got[0]["weights"].dtype == np.float32
  assert all(r[k].dtype == np.int32 for r in got for k in packing.FEATURES[:-1])


def test_segments_never_mix_documents_and_targets_stay_inside():
  docs = _docs([3, 50, 0, 7, 12, 31, 2])
  for row in _pack(docs, 16):
    real = row["segment_ids"] > 0
    np.testing.assert_array_equal(row["weights"], real.astype(np.float32))
    assert np.all(row["positions"][~real] == 0) and np.all(row["inputs"][~real] == 0)
    for s in np.unique(row["segment_ids"][real]):
      m = row["segment_ids"] == s
      inp, tgt = row["inputs"][m], row["targets"][m]
      owners = {int(x) // 1000 for x in np.concatenate([inp, tgt]) if x not in (BOS, EOS)}
      assert len(owners) <= 1  # One document per segment, targets included.
      np.testing.assert_array_equal(row["positions"][m], np.arange(m.sum()))
      np.testing.assert_array_equal(inp[1:], tgt[:-1])  # Next-token targets within the piece.


def test_pack_state_resumes_exactly_after_json_round_trip():
  docs = _docs(list(np.random.default_rng(0).integers(0, 30, size=40)))
  full = list(_pack(docs, 8))
  it = _pack(docs, 8).__iter__()
  for k in range(len(full)):
    state = json.loads(json.dumps(it.get_state()))
    fresh = _pack(docs, 8).__iter__()
    fresh.set_state(state)
    rest = list(fresh)
    assert len(rest) == len(full) - k
    for a, b in zip(rest, full[k:], strict=True):
      for f in packing.FEATURES:
        np.testing.assert_array_equal(a[f], b[f])
    next(it)
