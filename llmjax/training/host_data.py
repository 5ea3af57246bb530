"""Host batches <-> global arrays, and the data iterator state, across processes.

Each process feeds only the rows of the global batch its own devices hold; which rows those
are follows from the batch sharding (not from the process index), so any mesh layout works.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from llmjax.data import sharded_iterator


def process_row_range(sharding: jax.sharding.Sharding, batch_size: int) -> tuple[int, int]:
  """(first row, rows) of a [batch_size, ...] global batch that this process's devices hold.

  Raises:
    ValueError: the rows are not one contiguous block (a mesh whose batch axes interleave the
      processes' devices), which per-process feeding cannot express.
  """
  index_map = sharding.addressable_devices_indices_map((batch_size,))
  spans = sorted({(s[0].indices(batch_size)[0], s[0].indices(batch_size)[1])
                  for s in index_map.values()})
  first, end = spans[0][0], spans[-1][1]
  covered = sum(hi - lo for lo, hi in spans)
  if covered != end - first or any(b[0] != a[1] for a, b in zip(spans, spans[1:], strict=False)):
    raise ValueError(f"this process's devices hold batch rows {spans}, not one contiguous "
                     "block; order the mesh so each process's devices are adjacent on the "
                     "data/fsdp axes (jax.make_mesh does this by default).")
  return first, end - first


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding,
              batch_size: int) -> dict[str, jax.Array]:
  """Global arrays of `batch_size` rows from this process's rows (see process_row_range)."""
  return {k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (batch_size,) + np.shape(v)[1:]) for k, v in batch.items()}


def global_iterator_state(local_state: Any) -> Any:
  """The data iterator state of the whole run, for the checkpoint (collective).

  A single-stream state is the same on every process; a multi-stream state holds only this
  process's streams, so the processes' states are gathered and merged.
  """
  if jax.process_count() == 1 or not sharded_iterator.is_sharded_state(local_state):
    return local_state
  return sharded_iterator.merge_states(sharded_iterator.allgather_json(local_state))


def saved_shards(iter_state: Any) -> int | None:
  """Data streams a checkpointed iterator state was written with (None: no state)."""
  if iter_state is None:
    return None
  if sharded_iterator.is_sharded_state(iter_state):
    return int(iter_state["shards"])
  return 1
