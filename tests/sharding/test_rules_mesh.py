"""Rule sets cover every logical axis; meshes validate their shape against the device count."""

import jax
import pytest
from jax.sharding import AxisType

from llmjax.sharding import axes
from llmjax.sharding.mesh import MeshConfig, make_mesh, parse_mesh_flag, resolve_shape
from llmjax.sharding.rules import RULE_SETS, get_rules, mesh_axes_used, rules_name


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
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "sequence": 1, "tensor": 2}
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


def test_sequence_axis_in_meshes_and_shapes():
  mesh = make_mesh({"data": 2, "sequence": 4})
  assert mesh.axis_names == ("data", "fsdp", "sequence", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "sequence": 4, "tensor": 1}
  # Shape dicts list sequence only when it is used, so older configs compare equal.
  assert MeshConfig(shape={"data": 2, "sequence": 1}).shape == {"data": 2, "fsdp": 1,
                                                                 "tensor": 1}
  assert MeshConfig(shape={"sequence": -1}, rules="sp").shape == {
      "data": 1, "fsdp": 1, "tensor": 1, "sequence": -1}
  assert resolve_shape({"fsdp": 2, "sequence": -1}, 8) == {"data": 1, "fsdp": 2, "tensor": 1,
                                                          "sequence": 4}
  assert parse_mesh_flag("sequence:4,data:2") == {"data": 2, "fsdp": 1, "tensor": 1,
                                                  "sequence": 4}
  with pytest.raises(ValueError, match="'data', 'fsdp', 'sequence', 'tensor'"):
    parse_mesh_flag("seq:4")


def test_sp_rules_split_length_and_weights_over_sequence():
  sp, fsdp = dict(get_rules("sp")), dict(get_rules("fsdp"))
  assert sp[axes.ACT_LENGTH] == "sequence" and sp[axes.EMBED] == ("fsdp", "sequence")
  assert sp[axes.ACT_BATCH] == ("data", "fsdp") and sp[axes.ACT_KV_LENGTH] is None
  assert sp[axes.CACHE_LENGTH] is None
  # Apart from those two, sp is fsdp; sp_tp is fsdp_tp plus the same two.
  changed = {axes.ACT_LENGTH, axes.EMBED}
  assert {k: v for k, v in sp.items() if k not in changed} == {
      k: v for k, v in fsdp.items() if k not in changed}
  sp_tp, fsdp_tp = dict(get_rules("sp_tp")), dict(get_rules("fsdp_tp"))
  assert {k: v for k, v in sp_tp.items() if k not in changed} == {
      k: v for k, v in fsdp_tp.items() if k not in changed}
  assert sp_tp[axes.EMBED] == ("fsdp", "sequence") and sp_tp[axes.ACT_LENGTH] == "sequence"
  for name in ("dp", "fsdp", "tp", "fsdp_tp"):  # Unchanged: they never use sequence.
    assert "sequence" not in mesh_axes_used(get_rules(name))
  assert mesh_axes_used(get_rules("sp")) == {"data", "fsdp", "sequence"}
  assert rules_name(get_rules("sp_tp")) == "sp_tp" and rules_name(()) is None
