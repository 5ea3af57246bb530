"""Rule sets cover every logical axis; meshes validate their shape against the device count."""

import jax
import pytest
from jax.sharding import AxisType

from llmjax.sharding import axes
from llmjax.sharding.mesh import MeshConfig, make_mesh, resolve_shape
from llmjax.sharding.rules import RULE_SETS, get_rules


@pytest.mark.parametrize("name", sorted(RULE_SETS))
def test_rule_sets_cover_all_axes_once(name):
  logical = [rule[0] for rule in get_rules(name)]
  assert sorted(logical) == sorted(axes.ALL_AXES)
  for _, mesh_axes in get_rules(name):
    names = (mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ())
    assert set(names) <= set(axes.MESH_AXES)


def test_get_rules_unknown_name_lists_valid_ones():
  with pytest.raises(ValueError, match="dp.*fsdp.*fsdp_tp.*tp"):
    get_rules("zero3")


def test_make_mesh_fills_minus_one_with_auto_axes():
  mesh = make_mesh({"data": -1, "tensor": 2})
  assert mesh.axis_names == axes.MESH_AXES
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  assert all(t == AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("shape,match", [
    ({"data": 3}, "uses 3 devices. There are 8 devices"),
    ({"data": 3, "fsdp": -1}, "do not divide"),
    ({"data": -1, "fsdp": -1}, "At most one"),
    ({"model": 8}, "Unknown mesh axes"),
    ({"data": 0}, "positive"),
])
def test_make_mesh_errors(shape, match):
  with pytest.raises(ValueError, match=match):
    make_mesh(shape)


def test_resolve_shape_and_mesh_config():
  assert resolve_shape({"fsdp": 4, "tensor": -1}, 8) == {"data": 1, "fsdp": 4, "tensor": 2}
  config = MeshConfig(shape={"fsdp": -1}, rules="fsdp_tp")
  assert config.shape == {"data": 1, "fsdp": -1, "tensor": 1}
  assert MeshConfig().shape == {"data": -1, "fsdp": 1, "tensor": 1}
  with pytest.raises(ValueError, match="valid names"):
    MeshConfig(rules="nope")
  assert len(jax.devices()) == 8
