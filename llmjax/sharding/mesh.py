"""Device meshes from `{axis: size}` dictionaries, and the `MeshConfig` a run is built from.

The mesh always has the axes `data`, `fsdp`, `sequence`, `tensor` in that order (axes left out
have size 1) with `Auto` axis types, so GSPMD propagates shardings from
`with_sharding_constraint`s and jit shardings (the default `Explicit` axes of `jax.make_mesh`
would reject that style).

Shape dictionaries (`MeshConfig.shape`, `resolve_shape`, `parse_mesh_flag`) always list `data`,
`fsdp` and `tensor`, and list `sequence` only when it is not 1: shapes written before the
sequence axis existed (saved configs, gin files) stay equal to the ones built now.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh

from llmjax.config_checks import check_field_types
from llmjax.sharding import axes
from llmjax.sharding.rules import RULE_SETS


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
  """How a run lays out its devices.

  Attributes:
    shape: mesh axis sizes keyed by `data`, `fsdp`, `sequence`, `tensor`; missing axes are 1
      and one axis may be -1 to take all remaining devices.
    rules: name of a rule set in `llmjax.sharding.rules.RULE_SETS`.
  """

  shape: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: {axes.DATA: -1, axes.FSDP: 1, axes.TENSOR: 1})
  rules: str = "fsdp"

  def __post_init__(self):
    check_field_types(self)  # Sizes are ints (2.5 is not silently truncated to 2).
    # Normalize to a plain dict (see the module docstring), so configs compare and serialize
    # simply.
    object.__setattr__(self, "shape", _full_shape(self.shape))
    if self.rules not in RULE_SETS:
      raise ValueError(
          f"MeshConfig.rules={self.rules!r} is not a rule set; valid names: {sorted(RULE_SETS)}.")


def _full_shape(shape: Mapping[str, int]) -> dict[str, int]:
  unknown = sorted(set(shape) - set(axes.MESH_AXES))
  if unknown:
    raise ValueError(f"Unknown mesh axes {unknown}; the mesh axes are {axes.MESH_AXES}.")
  full = {name: int(shape.get(name, 1)) for name in axes.MESH_AXES}
  if full[axes.SEQUENCE] == 1:
    del full[axes.SEQUENCE]  # Listed only when used (see the module docstring).
  if sum(size == -1 for size in full.values()) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {full}.")
  bad = {k: v for k, v in full.items() if v == 0 or v < -1}
  if bad:
    raise ValueError(f"Mesh axis sizes must be positive (or one -1), got {bad}.")
  return full


def _working_shapes(num_devices: int) -> str:
  divisors = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
  examples = [{axes.DATA: num_devices // d, axes.FSDP: d, axes.TENSOR: 1} for d in divisors[:3]]
  examples.append({axes.DATA: -1, axes.FSDP: 1, axes.TENSOR: 1})
  return "; ".join(str(e) for e in examples)


def resolve_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills in a -1 axis and checks that the sizes multiply to `num_devices`.

  Raises:
    ValueError: the sizes cannot cover exactly `num_devices` devices; the message lists
      shapes that would work.
  """
  full = _full_shape(shape)
  known = math.prod(v for v in full.values() if v != -1)
  hint = (f"There are {num_devices} devices; axis sizes must multiply to {num_devices}, "
          f"e.g. {_working_shapes(num_devices)}.")
  if -1 in full.values():
    if num_devices % known:
      raise ValueError(f"Mesh shape {dict(shape)}: the fixed axes ({known} devices) do not "
                       f"divide the device count. {hint}")
    full = {k: (num_devices // known if v == -1 else v) for k, v in full.items()}
  elif known != num_devices:
    raise ValueError(f"Mesh shape {dict(shape)} uses {known} devices. {hint}")
  return full


def make_mesh(shape: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh with axes (data, fsdp, sequence, tensor) and Auto axis types.

  Args:
    shape: `{axis: size}`; missing axes are 1, one size may be -1.
    devices: the devices to use (default: all of `jax.devices()`).

  Returns:
    The `jax.sharding.Mesh`.

  Raises:
    ValueError: unknown axes, or sizes that do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_shape(shape, len(devices))
  return jax.make_mesh(tuple(sizes.get(name, 1) for name in axes.MESH_AXES), axes.MESH_AXES,
                       axis_types=(AxisType.Auto,) * len(axes.MESH_AXES), devices=devices)


def parse_mesh_flag(text: str) -> dict[str, int]:
  """`'data:8,fsdp:4,tensor:2'` -> `{'data': 8, 'fsdp': 4, 'tensor': 2}` (missing axes 1).

  Raises:
    ValueError: malformed entries, unknown axis names or non-positive sizes.
  """
  shape: dict[str, int] = {}
  for entry in filter(None, (e.strip() for e in text.split(","))):
    name, sep, size = entry.partition(":")
    if not sep or not size.strip().lstrip("-").isdigit():
      raise ValueError(f"--mesh entry {entry!r} is not AXIS:SIZE; write e.g. "
                       "--mesh=data:8,fsdp:4,tensor:2.")
    if name.strip() in shape:
      raise ValueError(f"--mesh names axis {name.strip()!r} twice.")
    shape[name.strip()] = int(size)
  if not shape:
    raise ValueError("--mesh is empty; write e.g. --mesh=data:8,fsdp:4,tensor:2.")
  return _full_shape(shape)
