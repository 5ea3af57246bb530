"""Global batches from several data streams: per-process pieces, disjoint reading, resume."""

import json

import numpy as np
import pytest

from llmjax.data import pipeline, sharded_iterator
from llmjax.data.tokenizer import ByteTokenizer
from tests.data.batches import assert_same_batches, take

B, T = 8, 16
# Documents tagged by index: a row's first token tells which record it came from.
RECORDS = [{"text": chr(65 + i % 26) * (5 + i % 7)} for i in range(40)]


def _iter(shards, row_range=(0, B), **kw):
  return pipeline.make_train_iterator(RECORDS, ByteTokenizer(), batch_size=B, seq_len=T, seed=3,
                                      shards=shards, row_range=row_range, **kw)


@pytest.mark.parametrize("first,rows,want", [
    (0, 8, [(0, slice(0, 4)), (1, slice(0, 4))]),
    (4, 4, [(1, slice(0, 4))]),
    (2, 4, [(0, slice(2, 4)), (1, slice(0, 2))]),
    (6, 2, [(1, slice(2, 4))]),
])
def test_stream_slices_cover_exactly_the_rows(first, rows, want):
  assert sharded_iterator.stream_slices(8, 2, first, rows) == want


def test_stream_slices_reject_a_batch_the_streams_do_not_divide():
  with pytest.raises(ValueError, match="not divisible by DataConfig.shards=3"):
    sharded_iterator.stream_slices(8, 3, 0, 8)


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_together_build_the_single_process_batches(processes):
  whole = take(_iter(4), 5)
  rows = B // processes
  parts = [take(_iter(4, (p * rows, rows)), 5) for p in range(processes)]
  for step, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(
          batch[key], np.concatenate([part[step][key] for part in parts]), err_msg=key)


def test_each_stream_reads_only_its_own_records():
  # Stream k holds records k, k + S, ...; with S=2 a process building stream 1 never sees an
  # even record (A, C, E, ... are the letters of even indices modulo 26).
  odd = {chr(65 + i % 26) for i in range(1, 40, 2)}
  even = {chr(65 + i % 26) for i in range(0, 40, 2)} - odd
  batches = take(_iter(2, (4, 4)), 6)
  seen = {chr(t) for b in batches for t in np.unique(b["inputs"]) if 65 <= t < 91}
  assert seen and seen <= odd and not seen & even


def test_one_stream_is_the_plain_pipeline():
  plain = take(pipeline.make_train_iterator(RECORDS, ByteTokenizer(), batch_size=B, seq_len=T,
                                             seed=3, process_index=0, process_count=1), 3)
  assert_same_batches(plain, take(_iter(1), 3))


def test_merged_per_process_states_resume_on_any_process_count():
  halves = [_iter(2, (0, 4)), _iter(2, (4, 4))]
  for it in halves:
    take(it, 3)
  merged = sharded_iterator.merge_states([it.get_state() for it in halves])
  merged = json.loads(json.dumps(merged))  # As it comes back from the checkpoint.
  resumed = _iter(2)
  resumed.set_state(merged)
  reference = _iter(2)
  take(reference, 3)
  assert_same_batches(take(resumed, 3), take(reference, 3))


def test_state_with_another_stream_count_is_refused():
  it = _iter(2)
  state = it.get_state()
  with pytest.raises(ValueError, match="resume with DataConfig.shards=2"):
    _iter(4).set_state(state)
