"""What a rule set does to a model on a mesh, without devices: every parameter's layout and
bytes per device, the main activations' layouts, and the mistakes worth a warning.

Everything here is a pure function of shapes, logical names, a rule set and a mesh *shape*
(`{axis: size}`; a `Mesh` works too), so `llmjax shardings` and tests can lay out a 64-device
run on a laptop. Shardings are computed by `partition.explain_spec`, the same code that
places real arrays, so the report cannot drift from what training does.

Two warnings: `unused_mesh_axes` (a mesh axis with devices that no rule uses, so they all
repeat the same work) and `check_replicated` (a large parameter left whole on every device of
a parameter-sharding axis, usually because a dimension did not divide the mesh axis, which
`partition.mesh_spec` silently tolerates).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import PartitionSpec

from llmjax.sharding import axes
from llmjax.sharding.partition import UnevenDim, explain_spec
from llmjax.sharding.rules import RULE_SETS, Rules, mesh_axes_used, rules_name

# 4 MiB: a replicated fp32 tensor this size costs 12 MiB per device once AdamW's two fp32
# moments follow it, which stops being noise next to activations; smaller tensors (norm scales,
# biases, the tiny configs' per-layer matrices) are cheaper replicated than all-gathered. Every
# embedding or stacked weight of a real model (LLaMA-1B's embedding: 250 MiB) is far above it.
DEFAULT_THRESHOLD_BYTES = 4 * 2**20
# The ModelConfig field that sets the size of a dimension, for "what to change" messages.
_CONFIG_FIELD = {axes.VOCAB: "vocab_size", axes.EMBED: "embed_dim", axes.MLP: "mlp_dim",
                 axes.HEADS: "num_heads", axes.KV_HEADS: "num_kv_heads",
                 axes.HEAD_DIM: "head_dim"}


@dataclasses.dataclass(frozen=True)
class Row:
  """One array's layout: a parameter (name = its path) or an activation.

  Attributes:
    name: parameter path ("decoder/layers/attention/query") or activation name.
    shape, dtype, logical_axes: the array.
    spec: its PartitionSpec under the rule set and mesh.
    bytes_total: bytes of the whole array.
    bytes_per_device: bytes of the shard each device holds (every shard is the same size:
      uneven dimensions are never split).
    uneven: dimensions the rule set splits but the mesh axes do not divide (left whole).
  """

  name: str
  shape: tuple[int, ...]
  dtype: str
  logical_axes: tuple[str | None, ...]
  spec: PartitionSpec
  bytes_total: int
  bytes_per_device: int
  uneven: tuple[UnevenDim, ...] = ()

  def to_json(self) -> dict[str, Any]:
    return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
            "logical_axes": list(self.logical_axes), "spec": spec_to_json(self.spec),
            "bytes_total": self.bytes_total, "bytes_per_device": self.bytes_per_device,
            "uneven": [f"{u.logical} {u.size} % {'x'.join(u.mesh_axes)}={u.ways}"
                       for u in self.uneven]}


def mesh_shape_of(mesh: jax.sharding.Mesh | Mapping[str, int]) -> dict[str, int]:
  """`{axis: size}` of a Mesh or of a shape dict (missing axes are 1)."""
  shape = dict(mesh.shape) if isinstance(mesh, jax.sharding.Mesh) else dict(mesh)
  return {name: int(shape.get(name, 1)) for name in axes.MESH_AXES} | shape


def spec_to_json(spec: PartitionSpec) -> list[Any]:
  """`P(None, ('fsdp', 'sequence'))` -> `[None, ['fsdp', 'sequence']]`."""
  return [list(e) if isinstance(e, tuple) else e for e in spec]


def _ways(entry: Any, mesh_shape: Mapping[str, int]) -> int:
  names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return math.prod(mesh_shape[name] for name in names)


def array_row(name: str, shape: Sequence[int], dtype: Any, logical_axes: Sequence[str | None],
              rules: Rules, mesh: jax.sharding.Mesh | Mapping[str, int]) -> Row:
  """The layout of one array of `shape` and `dtype` named `logical_axes`."""
  mesh_shape = mesh_shape_of(mesh)
  spec, uneven = explain_spec(shape, tuple(logical_axes), rules, mesh_shape)
  itemsize = np.dtype(dtype).itemsize
  local = [size // _ways(entry, mesh_shape) for size, entry in zip(shape, spec, strict=True)]
  return Row(name, tuple(int(s) for s in shape), np.dtype(dtype).name, tuple(logical_axes),
             spec, math.prod(shape) * itemsize, math.prod(local) * itemsize, tuple(uneven))


def _path(key_path: Sequence[Any]) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in key_path)


def param_rows(abstract_boxed: Any, rules: Rules,
               mesh: jax.sharding.Mesh | Mapping[str, int]) -> list[Row]:
  """One Row per parameter, in tree order.

  Args:
    abstract_boxed: boxed (abstract) params, e.g. `LanguageModel(cfg).abstract_init()` or
      `jax.eval_shape(boxed_init, rng)`; unboxed leaves count as replicated.
    rules: a rule set (`rules.get_rules(name)`).
    mesh: a Mesh or `{axis: size}`.
  """
  is_box = lambda x: isinstance(x, nn.Partitioned)
  rows = []
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(abstract_boxed, is_leaf=is_box)[0]:
    value, names = (leaf.value, leaf.names) if is_box(leaf) else (leaf, (None,) * leaf.ndim)
    rows.append(array_row(_path(key_path), value.shape, value.dtype, names, rules, mesh))
  return rows


def unused_mesh_axes(rules: Rules, mesh: jax.sharding.Mesh | Mapping[str, int]) -> list[str]:
  """Warnings for mesh axes with more than one device that no rule of `rules` uses."""
  used, name = mesh_axes_used(rules), rules_name(rules) or "custom"
  out = []
  for axis, size in mesh_shape_of(mesh).items():
    if size > 1 and axis not in used:
      users = sorted(n for n, r in RULE_SETS.items() if axis in mesh_axes_used(r))
      out.append(f"mesh axis {axis!r} has {size} devices but rule set {name!r} never uses it: "
                 "those devices hold the same shards and repeat the same work. "
                 f"Use a rule set that does ({', '.join(users)}) or move the devices to an "
                 "axis it uses.")
  return out


@dataclasses.dataclass(frozen=True)
class Replicated:
  """A large parameter some parameter-sharding mesh axis leaves whole on every device.

  Attributes:
    row: its layout.
    reason: why, and what to change.
  """

  row: Row
  reason: str

  def message(self) -> str:
    whole = "fully replicated" if self.row.bytes_per_device == self.row.bytes_total else (
        "partly replicated")
    return (f"{self.row.name} {list(self.row.shape)} {self.row.dtype}: "
            f"{format_bytes(self.row.bytes_per_device)} per device ({whole}). {self.reason}")


def _uneven_fix(u: UnevenDim) -> str:
  mesh = "x".join(u.mesh_axes)
  target = -(-u.size // u.ways) * u.ways
  field = _CONFIG_FIELD.get(u.logical)
  change = (f"pad {field} to a multiple of {u.ways} (e.g. ModelConfig.{field}={target})"
            if u.logical == axes.VOCAB else
            f"make ModelConfig.{field} a multiple of {u.ways}" if field else
            f"make it a multiple of {u.ways}")
  return (f"{u.logical} {u.size} is not divisible by {mesh}={u.ways}: {change}, or use a "
          f"mesh whose {mesh} size divides {u.size}.")


def _better_rules(row: Row, mesh_shape: Mapping[str, int]) -> str:
  """A rule set that would split this parameter on this mesh, for the message."""
  best = min(RULE_SETS, key=lambda n: array_row(
      row.name, row.shape, row.dtype, row.logical_axes, RULE_SETS[n], mesh_shape)
      .bytes_per_device)
  best_row = array_row(row.name, row.shape, row.dtype, row.logical_axes, RULE_SETS[best],
                       mesh_shape)
  if best_row.bytes_per_device >= row.bytes_per_device:
    return "no rule set splits these dimensions; it stays whole on every device."
  return (f"rules={best!r} would split it to {format_bytes(best_row.bytes_per_device)} per "
          f"device ({spec_to_json(best_row.spec)}).")


def check_replicated(abstract_boxed: Any, mesh: jax.sharding.Mesh | Mapping[str, int],
                     rules: Rules, *,
                     threshold_bytes: int = DEFAULT_THRESHOLD_BYTES) -> list[Replicated]:
  """Parameters of at least `threshold_bytes` per device that are left replicated.

  Flags a parameter when the mesh has more than one device on a parameter-sharding axis
  (fsdp, sequence or tensor) and the parameter is either fully replicated (no dimension split
  over any axis of size > 1) or has a dimension the rule set wanted split but the mesh axes do
  not divide (e.g. vocab 50257 on tensor=4), which `partition.mesh_spec` leaves whole.

  Args:
    abstract_boxed: boxed (abstract) params, e.g. `jax.eval_shape(boxed_init, rng)`.
    mesh: a Mesh or `{axis: size}`.
    rules: the rule set.
    threshold_bytes: smallest per-device size worth a warning (default 4 MiB).

  Returns:
    The flagged parameters, largest first, each with the reason and the fix.
  """
  mesh_shape = mesh_shape_of(mesh)
  if not any(mesh_shape.get(a, 1) > 1 for a in axes.PARAM_MESH_AXES):
    return []
  name = rules_name(rules) or "custom"
  found = []
  for row in param_rows(abstract_boxed, rules, mesh_shape):
    full = row.bytes_per_device == row.bytes_total
    if row.bytes_per_device < threshold_bytes or not (full or row.uneven):
      continue
    if row.uneven:
      reason = " ".join(_uneven_fix(u) for u in row.uneven)
    else:
      sharding = ", ".join(f"{a}={mesh_shape[a]}" for a in axes.PARAM_MESH_AXES
                           if mesh_shape.get(a, 1) > 1)
      reason = (f"Rule set {name!r} maps none of its dimensions {list(row.logical_axes)} onto "
                f"the mesh's {sharding}; {_better_rules(row, mesh_shape)}")
    found.append(Replicated(row, reason))
  return sorted(found, key=lambda r: -r.row.bytes_per_device)


def replicated_warning(found: Sequence[Replicated]) -> str:
  """One warning text naming every flagged parameter, its size and the fix ('' if none)."""
  if not found:
    return ""
  total = sum(r.row.bytes_per_device for r in found)
  lines = [f"{len(found)} large parameter(s) are replicated, {format_bytes(total)} per device "
           "(plus 2x that in fp32 Adam moments):"]
  return "\n".join(lines + [f"  - {r.message()}" for r in found])


def layout_warnings(abstract_boxed: Any, mesh: jax.sharding.Mesh | Mapping[str, int],
                    rules: Rules, *, threshold_bytes: int = DEFAULT_THRESHOLD_BYTES) -> list[str]:
  """Every layout warning for a run: unused mesh axes, then replicated large parameters.

  The trainer logs these once before compiling; an empty list means the layout is sound.
  """
  warnings = unused_mesh_axes(rules, mesh)
  found = check_replicated(abstract_boxed, mesh, rules, threshold_bytes=threshold_bytes)
  return warnings + ([replicated_warning(found)] if found else [])


def format_bytes(n: float) -> str:
  """1536 -> '1.5 KiB'."""
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  raise AssertionError("unreachable")


# Keys/values as attention.py constrains them (update with it: act_kv_length once it is used).
_KV_AXES = (axes.ACT_BATCH, axes.ACT_KV_LENGTH, axes.ACT_KV_HEADS, axes.ACT_HEAD_DIM)
_RESIDUAL = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)
_QUERY = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_HEAD_DIM)
_MLP = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP)


def activation_rows(config: Any, *, batch_size: int, seq_len: int, rules: Rules,
                    mesh: jax.sharding.Mesh | Mapping[str, int],
                    decoder_seq_len: int | None = None) -> list[Row]:
  """The main activations of one layer for one (micro)batch, with the model's logical names.

  Args:
    config: the ModelConfig.
    batch_size: rows of the (micro)batch.
    seq_len: tokens per row (the encoder side of an encoder_decoder model).
    rules, mesh: the rule set and a Mesh or `{axis: size}`.
    decoder_seq_len: encoder_decoder only: decoder tokens per row (default seq_len).
  """
  b, d, h, g = batch_size, config.embed_dim, config.num_heads, config.kv_heads
  k, dt = config.dim_per_head, config.compute_dtype
  row = lambda name, shape, names, dtype=dt: array_row(name, shape, dtype, names, rules, mesh)

  def stack(prefix: str, t: int) -> list[Row]:
    return [row(f"{prefix}residual", (b, t, d), _RESIDUAL),
            row(f"{prefix}attention q / out", (b, t, h, k), _QUERY),
            row(f"{prefix}attention k, v", (b, t, g, k), _KV_AXES),
            row(f"{prefix}mlp hidden", (b, t, config.mlp_dim), _MLP)]

  if config.architecture == "encoder_decoder":
    t = decoder_seq_len or seq_len
    rows = stack("encoder ", seq_len) + stack("decoder ", t)
    rows.append(row("decoder cross-attention k, v", (b, seq_len, g, k), _KV_AXES))
  else:
    t = seq_len
    rows = stack("", t)
  if config.is_classifier:
    rows.append(row("logits", (b, config.num_classes), (axes.ACT_BATCH, None), "float32"))
  else:
    rows.append(row("logits", (b, t, config.vocab_size),
                    (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB), "float32"))
  return rows


@dataclasses.dataclass(frozen=True)
class Report:
  """Everything `llmjax shardings` prints.

  Attributes:
    rules: the rule set's name.
    mesh_shape: `{axis: size}`.
    batch_size, seq_len: the (micro)batch the activations are for.
    params, activations: the rows.
    warnings: unused mesh axes, then the replicated-parameter warning.
  """

  rules: str
  mesh_shape: dict[str, int]
  batch_size: int
  seq_len: int
  params: list[Row]
  activations: list[Row]
  warnings: list[str]

  @property
  def totals(self) -> dict[str, int]:
    """Bytes: all parameters, and per device: parameters, AdamW moments (2 x fp32), both."""
    per_device = sum(r.bytes_per_device for r in self.params)
    elements = sum(r.bytes_per_device // np.dtype(r.dtype).itemsize for r in self.params)
    return {"params_bytes_total": sum(r.bytes_total for r in self.params),
            "params_bytes_per_device": per_device,
            "optimizer_bytes_per_device": 2 * 4 * elements,
            "params_and_optimizer_bytes_per_device": per_device + 2 * 4 * elements}

  def to_json(self) -> dict[str, Any]:
    return {"rules": self.rules, "mesh": self.mesh_shape,
            "devices": math.prod(self.mesh_shape.values()), "batch_size": self.batch_size,
            "seq_len": self.seq_len, "params": [r.to_json() for r in self.params],
            "activations": [r.to_json() for r in self.activations], "totals": self.totals,
            "warnings": self.warnings}


def build_report(abstract_boxed: Any, config: Any, *, rules: str,
                 mesh: jax.sharding.Mesh | Mapping[str, int], batch_size: int, seq_len: int,
                 decoder_seq_len: int | None = None,
                 threshold_bytes: int = DEFAULT_THRESHOLD_BYTES) -> Report:
  """Parameter rows, activation rows and warnings of a model under rule set `rules`."""
  rule_set, mesh_shape = RULE_SETS[rules], mesh_shape_of(mesh)
  warnings = layout_warnings(abstract_boxed, mesh_shape, rule_set,
                             threshold_bytes=threshold_bytes)
  return Report(rules, mesh_shape, batch_size, seq_len,
                param_rows(abstract_boxed, rule_set, mesh_shape),
                activation_rows(config, batch_size=batch_size, seq_len=seq_len, rules=rule_set,
                                mesh=mesh_shape, decoder_seq_len=decoder_seq_len),
                warnings)
