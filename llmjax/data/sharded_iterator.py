"""Global batches assembled from independent data streams, each host reading only its own.

The records are dealt into `shards` disjoint streams (record i goes to stream i % shards); each
stream shuffles, featurizes, packs and batches its records on its own into batch_size / shards
rows, and the global batch is the streams' rows in stream order. A process builds only the
streams that cover its rows of the global batch, so with `shards` = the number of processes
each host reads 1/processes of the data.

The global batch sequence depends on `shards`, not on how many processes share the work: a
run with shards=4 gives the same batches on 1, 2 or 4 hosts, and its iterator state (one Grain
state per stream) restores on any of them. With shards=1 the single stream is the plain
pipeline of `pipeline.make_train_iterator`, every host building it whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

STATE_KEY = "streams"


def stream_seed(seed: int, stream: int) -> int:
  """Shuffle/masking seed of stream `stream`: stream 0 keeps `seed` (so shards=1 is unchanged)."""
  if stream == 0:
    return seed
  return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def stream_slices(batch_size: int, shards: int, first: int,
                  rows: int) -> list[tuple[int, slice]]:
  """(stream, rows of that stream's batch) covering global rows [first, first + rows).

  Raises:
    ValueError: batch_size is not a multiple of shards.
  """
  if shards <= 0 or batch_size % shards:
    raise ValueError(f"the global batch_size={batch_size} is not divisible by DataConfig.shards="
                     f"{shards}: each data stream fills batch_size / shards rows; pick shards "
                     "among the divisors of batch_size.")
  per = batch_size // shards
  out = []
  for k in range(first // per, (first + rows - 1) // per + 1):
    lo, hi = max(first, k * per), min(first + rows, (k + 1) * per)
    out.append((k, slice(lo - k * per, hi - k * per)))
  return out


class ShardedBatchIterator:
  """Iterates this process's rows of global batches built from several data streams.

  Args:
    shards: the number of streams the global batch is made of.
    make_stream: `stream index -> iterator of [batch_size / shards, ...] batches` (a Grain
      DatasetIterator, with get_state / set_state).
    parts: `stream_slices(...)`: which streams this process builds and which of their rows it
      keeps.
  """

  def __init__(self, shards: int, make_stream: Callable[[int], Any],
               parts: Sequence[tuple[int, slice]]):
    self.shards = shards
    self._parts = list(parts)
    self._streams = {k: make_stream(k) for k, _ in self._parts}

  def __iter__(self) -> ShardedBatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    pieces = [(next(self._streams[k]), rows) for k, rows in self._parts]
    return {key: np.concatenate([b[key][rows] for b, rows in pieces])
            for key in pieces[0][0]}

  def get_state(self) -> dict[str, Any]:
    """This process's stream states: `{"shards": S, "streams": {"k": state}}` (JSON-able)."""
    return {"shards": self.shards,
            STATE_KEY: {str(k): it.get_state() for k, it in self._streams.items()}}

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores every stream this process builds from a (merged) state of any process count.

    Raises:
      ValueError: the state was saved with a different number of streams, or lacks a stream.
    """
    if state.get("shards") != self.shards:
      raise ValueError(f"the checkpointed data iterator has {state.get('shards')} streams but "
                       f"this run builds {self.shards} (DataConfig.shards): resume with "
                       f"DataConfig.shards={state.get('shards')}.")
    for k, it in self._streams.items():
      if str(k) not in state[STATE_KEY]:
        raise ValueError(f"the checkpointed data iterator state lacks stream {k}; it was saved "
                         "by an incomplete gather.")
      it.set_state(state[STATE_KEY][str(k)])


def is_sharded_state(state: Any) -> bool:
  """Whether `state` was saved by a ShardedBatchIterator (else: a plain Grain iterator)."""
  return isinstance(state, dict) and STATE_KEY in state and "shards" in state


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """One state holding every stream of per-process ShardedBatchIterator states."""
  merged: dict[str, Any] = {"shards": states[0]["shards"], STATE_KEY: {}}
  for state in states:
    merged[STATE_KEY].update(state[STATE_KEY])
  return merged


def allgather_json(value: Any) -> list[Any]:
  """Every process's JSON-able `value`, in process order (collective: all processes call it)."""
  import jax
  from jax.experimental import multihost_utils

  if jax.process_count() == 1:
    return [value]
  data = np.frombuffer(json.dumps(value, sort_keys=True).encode(), dtype=np.uint8)
  lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:int(n)]).decode())
          for row, n in zip(gathered, np.ravel(lengths), strict=True)]
