"""From logical axis names to shardings: activation constraints and sharded initialization.

Parameters are created already sharded: `jax.eval_shape` on a boxed init gives abstract
arrays carrying logical names, `logical_shardings` turns those into `NamedSharding`s under a
rule set, and `init_sharded` runs the init under `jax.jit(out_shardings=...)`.

A dimension whose size is not divisible by the mesh axes a rule assigns it is left replicated
(GQA kv heads on a wide tensor axis, a batch of 1 while decoding, ...): jit rejects uneven
shardings of inputs and outputs, and a replicated small dimension costs little. A replicated
large one costs a lot: `explain_spec` says which dimensions were dropped, and
`report.check_replicated` turns that into a warning with the fix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from flax.linen import partitioning as nn_partitioning
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llmjax.sharding import axes

LogicalAxes = Sequence[str | None]


@dataclasses.dataclass(frozen=True)
class UnevenDim:
  """A dimension a rule set splits over mesh axes that do not divide it, so it stays whole.

  Attributes:
    index: which dimension of the array.
    logical: its logical axis name.
    size: its size.
    mesh_axes: the mesh axes the rule set assigns it.
    ways: how many devices those axes span (`size % ways != 0`).
  """

  index: int
  logical: str
  size: int
  mesh_axes: tuple[str, ...]
  ways: int


def _present(mesh_axes: Any, mesh_shape: Mapping[str, int]) -> Any:
  """`mesh_axes` without the axes this mesh lacks (a mesh built without `sequence`, say)."""
  if mesh_axes is None:
    return None
  names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
  kept = tuple(name for name in names if name in mesh_shape)
  if kept == names:
    return mesh_axes
  return None if not kept else kept[0] if len(kept) == 1 else kept


def _axis_names(mesh_axes: Any) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def explain_spec(shape: Sequence[int], logical_axes: LogicalAxes, rules: Any,
                 mesh_shape: Mapping[str, int]) -> tuple[PartitionSpec, list[UnevenDim]]:
  """`mesh_spec`, plus the dimensions it left replicated because they were uneven.

  Args:
    shape: the array's shape.
    logical_axes: one logical name (or None) per dimension.
    rules: a logical axis rule set.
    mesh_shape: `{mesh axis: size}`; mesh axes a rule names but the mesh lacks are ignored.

  Returns:
    (PartitionSpec, the uneven dimensions).
  """
  if len(logical_axes) != len(shape):
    raise ValueError(f"Logical axes {tuple(logical_axes)} do not match an array of shape "
                     f"{tuple(shape)}.")
  spec = nn.logical_to_mesh_axes(logical_axes, rules)
  entries, uneven = [], []
  for index, (size, mesh_axes) in enumerate(zip(shape, spec, strict=True)):
    mesh_axes = _present(mesh_axes, mesh_shape)
    ways = math.prod(mesh_shape[name] for name in _axis_names(mesh_axes))
    if mesh_axes is not None and size % ways:
      uneven.append(UnevenDim(index, logical_axes[index], int(size), _axis_names(mesh_axes),
                              ways))
      mesh_axes = None  # Uneven: keep this dimension replicated.
    entries.append(mesh_axes)
  return PartitionSpec(*entries), uneven


def mesh_spec(shape: Sequence[int], logical_axes: LogicalAxes, rules: Any,
              mesh_shape: Mapping[str, int]) -> PartitionSpec:
  """PartitionSpec of an array of `shape` named `logical_axes`, dropping uneven dimensions."""
  return explain_spec(shape, logical_axes, rules, mesh_shape)[0]


def constrain(x: jax.Array, logical_axes: LogicalAxes) -> jax.Array:
  """Constrains activation `x` to the sharding its logical axes imply.

  A no-op outside `jax.set_mesh(...)` or without logical axis rules
  (`nn_partitioning.axis_rules(...)`), so layers can always call it.
  """
  rules = nn_partitioning.get_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  spec = mesh_spec(x.shape, logical_axes, rules, dict(mesh.shape))
  return jax.lax.with_sharding_constraint(x, spec)


def logical_shardings(abstract_boxed_tree: Any, mesh: Mesh, rules: Any) -> Any:
  """NamedShardings for a tree of (abstract) arrays boxed with logical names.

  Args:
    abstract_boxed_tree: e.g. `jax.eval_shape(model.init_boxed, rng)`; leaves are
      `nn.Partitioned` boxes (unboxed leaves are replicated).
    mesh: the device mesh.
    rules: a logical axis rule set (`rules.get_rules(name)`).

  Returns:
    A tree shaped like `nn.unbox(abstract_boxed_tree)` holding `NamedSharding`s.
  """
  mesh_shape = dict(mesh.shape)

  def one(leaf: Any) -> NamedSharding:
    if isinstance(leaf, nn.Partitioned):
      return NamedSharding(mesh, mesh_spec(leaf.value.shape, leaf.names, rules, mesh_shape))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(one, abstract_boxed_tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def init_sharded(init_fn: Callable[..., Any], mesh: Mesh, rules: Any,
                 *args: Any) -> tuple[Any, Any]:
  """Runs a boxed init directly into sharded arrays.

  Args:
    init_fn: `*args -> boxed params` (e.g. `LanguageModel.init_boxed`).
    mesh: the device mesh.
    rules: a logical axis rule set.
    *args: arguments of `init_fn` (e.g. an rng key).

  Returns:
    (params, shardings): unboxed params laid out on `mesh`, and their NamedShardings.
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_shardings(abstract, mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    params = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return params, shardings


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a [b, ...] batch: rows split over the `data` and `fsdp` axes."""
  return NamedSharding(mesh, PartitionSpec((axes.DATA, axes.FSDP)))


def param_shardings(model: Any, mesh: Mesh, rules: Any) -> Any:
  """NamedShardings of a LanguageModel's params (`model.abstract_init()` boxed shapes)."""
  return logical_shardings(model.abstract_init(), mesh, rules)
