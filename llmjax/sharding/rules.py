"""Named logical-axis rule sets, as data.

A rule set is an ordered tuple of `(logical axis, mesh axes)` pairs covering every name in
`axes.py`; Flax resolves each array dimension to the first rule whose mesh axes are still free
in that array. `None` means replicated. Rule sets never mention devices, only the mesh axes
`data`, `fsdp` and `tensor`, so the same rule set works on any mesh shape: an axis of size 1
simply does nothing.

- `dp`: parameters replicated; the batch is split over `data` and `fsdp` (on a dp run the
  fsdp axis is just more data parallelism, which keeps `partition.data_sharding` valid).
- `fsdp`: as dp, plus every parameter's `embed` dimension split over `fsdp` (ZeRO-3 style:
  each layer's weights are all-gathered when used).
- `tp`: Megatron-style tensor parallelism: heads, kv heads, MLP hidden and vocab dimensions
  of parameters, activations and the KV cache over `tensor`; batch over `data` and `fsdp`.
- `fsdp_tp`: both.

A dimension whose size is not divisible by its mesh axes (say 2 kv heads on a tensor axis of 4)
is left replicated by `partition.py` instead of failing, so GQA/MQA models work with any
tensor-parallel degree.
"""

from __future__ import annotations

from llmjax.sharding import axes

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

_BATCH = (axes.DATA, axes.FSDP)


def _rules(*, fsdp: bool, tensor: bool) -> Rules:
  embed = axes.FSDP if fsdp else None
  split = axes.TENSOR if tensor else None
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
      (axes.ACT_LENGTH, None),
      (axes.ACT_EMBED, None),
      (axes.ACT_MLP, split),
      (axes.ACT_HEADS, split),
      (axes.ACT_KV_HEADS, split),
      (axes.ACT_HEAD_DIM, None),
      (axes.ACT_VOCAB, split),
      # KV cache.
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
}


def get_rules(name: str) -> Rules:
  """The rule set called `name`.

  Raises:
    ValueError: `name` is not one of `RULE_SETS`.
  """
  if name not in RULE_SETS:
    raise ValueError(f"Unknown sharding rule set {name!r}; valid names: {sorted(RULE_SETS)}.")
  return RULE_SETS[name]
