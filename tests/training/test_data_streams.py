"""loop.data_streams: the config's streams, else a checkpoint's (old defaults included), else
the process-count-independent default (None)."""

import pytest

from llmjax.data.pipeline import DataConfig
from llmjax.training.loop import data_streams

GRAIN_STATE = {"parent": {"next_index": 3}}  # A single-stream (plain Grain) iterator state.


def _sharded(shards):
  return {"shards": shards, "streams": {str(k): GRAIN_STATE for k in range(shards)}}


def test_fresh_run_uses_the_default_whatever_the_process_count():
  assert data_streams(DataConfig(), None) is None
  assert data_streams(DataConfig(shards=4), None) == 4


@pytest.mark.parametrize("state,want", [
    (GRAIN_STATE, 1),  # Saved by a 1-process run under the old one-stream-per-process default.
    (_sharded(2), 2),  # ... by a 2-process run under it.
    (_sharded(8), 8),  # ... under the new default.
])
def test_resume_keeps_the_checkpoints_streams(state, want):
  assert data_streams(DataConfig(), state) == want


def test_resume_with_other_streams_is_refused():
  with pytest.raises(ValueError, match="resume with DataConfig.shards=2"):
    data_streams(DataConfig(shards=4), _sharded(2))
