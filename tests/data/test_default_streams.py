"""The default data streams: the same global batches on any process count that divides the
batch, including counts that do not divide the number of streams, and resume across them."""

import json

import numpy as np
import pytest

from llmjax.data import pipeline, sharded_iterator
from llmjax.data.tokenizer import ByteTokenizer
from tests.data.batches import assert_same_batches, take

B, T = 24, 16
RECORDS = [{"text": chr(65 + i % 26) * (3 + i % 11)} for i in range(60)]


def _iter(row_range=(0, B), records=RECORDS, batch_size=B):
  return pipeline.make_train_iterator(records, ByteTokenizer(), batch_size=batch_size,
                                      seq_len=T, seed=5, shards=None, row_range=row_range)


def _processes(count: int) -> list:
  rows = B // count
  return [_iter((p * rows, rows)) for p in range(count)]


def _global(parts: list, steps: int) -> list[dict]:
  """The global batches: each process's rows of each step, stacked in process order."""
  local = [take(it, steps) for it in parts]
  return [{k: np.concatenate([p[s][k] for p in local]) for k in local[0][s]}
          for s in range(steps)]


@pytest.mark.parametrize("batch_size,records,want", [
    (8, 100, 8), (24, 100, 8), (12, 100, 4), (6, 100, 2), (7, 100, 1), (32, 3, 2), (8, 1, 1)])
def test_default_streams_depend_on_batch_and_records_only(batch_size, records, want):
  assert pipeline.default_streams(batch_size, records) == want


@pytest.mark.parametrize("count", [2, 3])
def test_default_batches_are_the_same_on_any_process_count(count):
  assert_same_batches(_global(_processes(count), 4), take(_iter(), 4))


def test_default_is_not_one_stream_per_process():
  # The old default (one stream per process) changed the batches with the process count.
  one, two = take(_iter(), 2), _global([
      pipeline.make_train_iterator(RECORDS, ByteTokenizer(), batch_size=B, seq_len=T, seed=5,
                                   shards=2, row_range=(p * 12, 12)) for p in range(2)], 2)
  assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(one, two, strict=True))


def test_state_saved_by_three_processes_resumes_on_two():
  three = _processes(3)  # 8 streams over 3 processes: streams 2 and 5 are built twice.
  for it in three:
    take(it, 3)
  merged = json.loads(json.dumps(sharded_iterator.merge_states([it.get_state() for it in three])))
  two = _processes(2)
  for it in two:
    it.set_state(merged)
  reference = _iter()
  take(reference, 3)
  assert_same_batches(_global(two, 3), take(reference, 3))


def test_few_records_use_fewer_streams_instead_of_failing():
  it = _iter(records=RECORDS[:3])
  assert it.get_state()["shards"] == 2
  assert take(it, 2)[1]["inputs"].shape == (B, T)
