"""Property tests: every parameter of every shipped model gets a valid spec on any mesh shape.

What partition.py promises, checked for the abstract params (`jax.eval_shape`, nothing is
compiled) of each gin_configs/models/*.gin model, every rule set and any mesh sizes:
- JAX accepts the spec for the parameter's shape (`NamedSharding.shard_shape` refuses a mesh
  axis used twice and a dimension its axes do not divide);
- each dimension is split exactly as the rule set's design says (restated below, independently
  of rules.py) over the axes the mesh has, unless those axes do not divide it: then, and only
  then, it is replicated, and `explain_spec` reports it as uneven.
"""

import functools
import math
from pathlib import Path

import flax.linen as nn
import jax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AbstractMesh, NamedSharding

from llmjax.sharding import axes, partition
from llmjax.sharding.mesh import make_mesh
from llmjax.sharding.rules import RULE_SETS, get_rules

MODEL_FILES = sorted(p.name for p in (Path(__file__).resolve().parents[2] / "gin_configs"
                                      / "models").glob("*.gin"))
# The design: which mesh axes each rule set splits each parameter dimension over.
_TP = {"heads": ("tensor",), "kv_heads": ("tensor",), "mlp": ("tensor",), "vocab": ("tensor",)}
INTENDED = {
    "dp": {},
    "fsdp": {"embed": ("fsdp",)},
    "tp": _TP,
    "fsdp_tp": {"embed": ("fsdp",)} | _TP,
    "sp": {"embed": ("fsdp", "sequence")},
    "sp_tp": {"embed": ("fsdp", "sequence")} | _TP,
}
# Sizes that divide typical dimensions and sizes that do not (3, 5, 7, 12, 48).
SIZES = st.sampled_from([1, 1, 2, 3, 4, 5, 7, 8, 12, 16, 48, 64])


@functools.cache
def _params(model_file: str) -> list[tuple[str, tuple[int, ...], tuple[str | None, ...]]]:
  """(path, shape, logical axes) of every parameter of a shipped model (abstract)."""
  from llmjax.cli import gin_config
  from llmjax.models.interface import LanguageModel

  gin_config.parse([f"models/{model_file}"], [])
  abstract = LanguageModel(gin_config.build("ModelConfig")).abstract_init()
  flat = jax.tree_util.tree_flatten_with_path(
      abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  out = []
  for path, leaf in flat:
    assert isinstance(leaf, nn.Partitioned), path  # Every parameter carries logical names.
    out.append((jax.tree_util.keystr(path), tuple(leaf.value.shape), tuple(leaf.names)))
  return out


@pytest.fixture(scope="module", autouse=True)
def _all_params():
  """Builds every model's abstract params once (about 4 s), before the timed examples."""
  for name in MODEL_FILES:
    _params(name)


def _names(entry) -> tuple[str, ...]:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _check(params, rules_name, mesh_shape) -> None:
  rules = get_rules(rules_name)
  full = {a: mesh_shape.get(a, 1) for a in axes.MESH_AXES}
  mesh = AbstractMesh(tuple(full.values()), tuple(full))
  for path, shape, logical in params:
    spec, uneven = partition.explain_spec(shape, logical, rules, mesh_shape)
    assert len(spec) == len(shape), path
    # JAX's own validity check: no mesh axis twice, every split dimension divisible.
    shard = NamedSharding(mesh, spec).shard_shape(shape)
    dropped = set()
    for i, (size, name, entry) in enumerate(zip(shape, logical, spec, strict=True)):
      intended = tuple(a for a in INTENDED[rules_name].get(name, ()) if a in mesh_shape)
      ways = math.prod(full[a] for a in intended)
      if size % ways:
        dropped.add(i)
      expected = () if size % ways else intended
      assert _names(entry) == expected, (path, i, name, size, entry, expected)
      assert shard[i] * math.prod(full[a] for a in _names(entry)) == size
    assert {u.index for u in uneven} == dropped, path


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MODEL_FILES), st.sampled_from(sorted(RULE_SETS)),
       st.fixed_dictionaries({axes.DATA: SIZES, axes.FSDP: SIZES, axes.TENSOR: SIZES},
                             optional={axes.SEQUENCE: SIZES}))
def test_every_parameter_gets_a_valid_spec_on_any_mesh(model_file, rules_name, mesh_shape):
  _check(_params(model_file), rules_name, mesh_shape)


def _meshes_of(n: int) -> list[dict[str, int]]:
  """Every {data, fsdp, sequence, tensor} shape over n devices."""
  divisors = [d for d in range(1, n + 1) if n % d == 0]
  return [{axes.DATA: a, axes.FSDP: b, axes.SEQUENCE: c, axes.TENSOR: n // (a * b * c)}
          for a in divisors for b in divisors for c in divisors if n % (a * b * c) == 0]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(MODEL_FILES), st.sampled_from(sorted(RULE_SETS)),
       st.sampled_from(_meshes_of(8)))
def test_real_meshes_get_the_same_specs(model_file, rules_name, mesh_shape):
  """On the 8 test devices, `logical_shardings` (what init and checkpoints use) agrees."""
  params = _params(model_file)
  mesh = make_mesh(mesh_shape)
  rules = get_rules(rules_name)
  boxed = {path: nn.Partitioned(jax.ShapeDtypeStruct(shape, "float32"), logical)
           for path, shape, logical in params}
  shardings = partition.logical_shardings(boxed, mesh, rules)
  for path, shape, logical in params:
    assert shardings[path].spec == partition.mesh_spec(shape, logical, rules, dict(mesh.shape))
    assert shardings[path].shard_shape(shape)  # Valid on the real devices.
  _check(params, rules_name, dict(mesh.shape))
