"""Named logical-axis rule sets, as data.

A rule set is an ordered tuple of `(logical axis, mesh axes)` pairs covering every name in
`axes.py`; Flax resolves each array dimension to the first rule whose mesh axes are still free
in that array. `None` means replicated. Rule sets never mention devices, only the mesh axes
`data`, `fsdp`, `sequence` and `tensor`, so the same rule set works on any mesh shape: an axis
of size 1 simply does nothing.

- `dp`: parameters replicated; the batch is split over `data` and `fsdp` (on a dp run the
  fsdp axis is just more data parallelism, which keeps `partition.data_sharding` valid).
- `fsdp`: as dp, plus every parameter's `embed` dimension split over `fsdp` (ZeRO-3 style:
  each layer's weights are all-gathered when used).
- `tp`: Megatron-style tensor parallelism: heads, kv heads, MLP hidden and vocab dimensions
  of parameters, activations and the KV cache over `tensor`; batch over `data` and `fsdp`.
- `fsdp_tp`: both.
- `sp`: sequence (context) parallelism for long sequences: as fsdp, plus activations split
  along their length (`act_length`) over `sequence`, so each device holds t / sequence
  positions of the residual stream, queries, MLP hidden and logits. Attention all-gathers
  keys and values along the length (`act_kv_length` is never split), so each device scores
  its own t / sequence queries against all keys: exact, no ring. The
  parameters' `embed` dimension is split over `fsdp` x `sequence`, so devices along
  `sequence` do not hold replicated weights (the sequence axis acts as more fsdp for weights,
  gradients and optimizer state); the batch stays over `data` and `fsdp`.
- `sp_tp`: sp plus tensor parallelism (heads, MLP, vocab over `tensor`), for long contexts of
  models too wide for one device.

Only `sp` and `sp_tp` use the `sequence` axis. The other rule sets leave it out on purpose:
splitting the length is only worth its collectives when activations, not weights, dominate
memory, and keeping dp/fsdp/tp/fsdp_tp unchanged keeps their PartitionSpecs (and checkpoints)
as they were. A mesh with sequence > 1 under those rule sets just repeats work on the sequence
devices; `report.unused_mesh_axes` says so.

A dimension whose size is not divisible by its mesh axes (say 2 kv heads on a tensor axis of 4)
is left replicated by `partition.py` instead of failing, so GQA/MQA models work with any
tensor-parallel degree (`report.check_replicated` flags the large parameters this leaves
whole on every device).
"""

from __future__ import annotations

from llmjax.sharding import axes

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

_BATCH = (axes.DATA, axes.FSDP)


def _join(*names: str | None) -> MeshAxes:
  """None, one axis name, or a tuple of names, from the names that are not None."""
  kept = tuple(n for n in names if n is not None)
  return None if not kept else kept[0] if len(kept) == 1 else kept


def _rules(*, fsdp: bool, tensor: bool, sequence: bool = False) -> Rules:
  embed = _join(axes.FSDP if fsdp else None, axes.SEQUENCE if sequence else None)
  split = axes.TENSOR if tensor else None
  length = axes.SEQUENCE if sequence else None
  return (
      # Parameters.
      (axes.EMBED, embed),
      (axes.MLP, split),
      (axes.HEADS, split),
      (axes.KV_HEADS, split),
      (axes.VOCAB, split),
      (axes.HEAD_DIM, None),
      (axes.LAYERS, None),
      (axes.NORM, None),
      (axes.POSITION, None),
      (axes.RELPOS_BUCKETS, None),
      (axes.CLASSES, None),
      (axes.POOLED, None),
      # Activations.
      (axes.ACT_BATCH, _BATCH),
      (axes.ACT_LENGTH, length),
      (axes.ACT_KV_LENGTH, None),
      (axes.ACT_EMBED, None),
      (axes.ACT_MLP, split),
      (axes.ACT_HEADS, split),
      (axes.ACT_KV_HEADS, split),
      (axes.ACT_HEAD_DIM, None),
      (axes.ACT_VOCAB, split),
      # KV cache. Decoding writes one position at a time, so the cache is never split along
      # its length, even under sp.
      (axes.CACHE_LAYERS, None),
      (axes.CACHE_BATCH, _BATCH),
      (axes.CACHE_LENGTH, None),
      (axes.CACHE_KV_HEADS, split),
      (axes.CACHE_HEAD_DIM, None),
  )


RULE_SETS: dict[str, Rules] = {
    "dp": _rules(fsdp=False, tensor=False),
    "fsdp": _rules(fsdp=True, tensor=False),
    "tp": _rules(fsdp=False, tensor=True),
    "fsdp_tp": _rules(fsdp=True, tensor=True),
    "sp": _rules(fsdp=True, tensor=False, sequence=True),
    "sp_tp": _rules(fsdp=True, tensor=True, sequence=True),
}


def get_rules(name: str) -> Rules:
  """The rule set called `name`.

  Raises:
    ValueError: `name` is not one of `RULE_SETS`.
  """
  if name not in RULE_SETS:
    raise ValueError(f"Unknown sharding rule set {name!r}; valid names: {sorted(RULE_SETS)}.")
  return RULE_SETS[name]


def rules_name(rules: Rules) -> str | None:
  """The name of a rule set given as data (None for a custom one), for messages."""
  return next((name for name, value in RULE_SETS.items() if value == tuple(rules)), None)


def mesh_axes_used(rules: Rules) -> set[str]:
  """Every mesh axis some rule of `rules` maps a logical axis onto."""
  used: set[str] = set()
  for _, mesh_axes in rules:
    used.update((mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ()))
  return used
