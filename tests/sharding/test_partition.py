"""Sharded == unsharded for the real model, golden PartitionSpecs, sharded init, constrain."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import partitioning as nn_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sharding import axes, partition
from llmjax.sharding.mesh import make_mesh
from llmjax.sharding.rules import get_rules
from tests.sharding.sharded_reference import (
    assert_matches_reference,
    loss_and_grads,
    packed_batch,
    sharded_loss_and_grads,
)

# 8 heads, 2 kv heads: kv heads cannot split over a tensor axis of 4 and must stay replicated.
CONFIG = ModelConfig(vocab_size=64, num_layers=2, num_heads=8, num_kv_heads=2, embed_dim=32,
                     mlp_dim=64, max_seq_len=16)
MESHES = {"1x8": {"fsdp": 8}, "2x4": {"fsdp": 2, "tensor": 4}, "8x1": {"data": 8}}
# The 2-D meshes of the sharded == unsharded grid: "AxB" puts A devices on the first and B on
# the second of the two mesh axes the rule set shards over.
RULE_AXES = {"dp": ("data", "fsdp"), "fsdp": ("data", "fsdp"), "tp": ("data", "tensor"),
             "fsdp_tp": ("fsdp", "tensor")}
GRID = [(rules_name, shape) for rules_name in RULE_AXES for shape in ("1x8", "2x4", "8x1")]


def _grid_mesh(rules_name: str, shape: str) -> dict[str, int]:
  first, second = RULE_AXES[rules_name]
  a, b = (int(n) for n in shape.split("x"))
  return {"data": 1, "fsdp": 1, "tensor": 1} | {first: a, second: b}


@pytest.fixture(scope="module")
def lm():
  return LanguageModel(CONFIG)


@pytest.fixture(scope="module")
def reference(lm):
  """Params, batch, and the unsharded loss, logits and grads."""
  params = lm.init(jax.random.PRNGKey(0))
  batch = packed_batch()
  out = jax.jit(loss_and_grads(lm))(params, batch)
  return params, batch, jax.device_get(out)



@pytest.mark.parametrize("rules_name,mesh_name", GRID)
def test_sharded_matches_unsharded(lm, reference, rules_name, mesh_name):
  params, batch, expected = reference
  mesh, rules = make_mesh(_grid_mesh(rules_name, mesh_name)), get_rules(rules_name)
  sharded, shardings = sharded_loss_and_grads(lm, params, batch, mesh, rules)
  assert_matches_reference(sharded, expected, shardings)


GOLDEN = {  # Scanned params: [l, ...]. 2x4 mesh = fsdp 2, tensor 4.
    "dp": {"query": P(None, None, None, None), "key": P(None, None, None, None),
           "out": P(None, None, None, None), "wi_gate": P(None, None, None),
           "embedding": P(None, None)},
    "fsdp": {"query": P(None, "fsdp", None, None), "key": P(None, "fsdp", None, None),
             "out": P(None, None, None, "fsdp"), "wi_gate": P(None, "fsdp", None),
             "embedding": P(None, "fsdp")},
    "tp": {"query": P(None, None, "tensor", None), "key": P(None, None, None, None),
           "out": P(None, "tensor", None, None), "wi_gate": P(None, None, "tensor"),
           "embedding": P("tensor", None)},
    "fsdp_tp": {"query": P(None, "fsdp", "tensor", None), "key": P(None, "fsdp", None, None),
                "out": P(None, "tensor", None, "fsdp"), "wi_gate": P(None, "fsdp", "tensor"),
                "embedding": P("tensor", "fsdp")},
}


@pytest.mark.parametrize("rules_name", sorted(GOLDEN))
def test_golden_partition_specs(lm, rules_name):
  shardings = partition.param_shardings(lm, make_mesh(MESHES["2x4"]), get_rules(rules_name))
  layer = shardings["decoder"]["layers"]
  got = {"query": layer["attention"]["query"].spec, "key": layer["attention"]["key"].spec,
         "out": layer["attention"]["out"].spec, "wi_gate": layer["mlp"]["wi_gate"].spec,
         "embedding": shardings["token_embed"]["embedding"].spec}
  assert got == GOLDEN[rules_name]
  assert layer["attention_norm"]["scale"].spec == P(None, None)


def test_init_sharded_creates_params_in_place(lm, reference):
  mesh, rules = make_mesh(MESHES["2x4"]), get_rules("fsdp_tp")
  params, shardings = partition.init_sharded(lm.init_boxed, mesh, rules, jax.random.PRNGKey(0))
  assert jax.tree.map(lambda x: x.sharding, params) == shardings
  query = params["decoder"]["layers"]["attention"]["query"]
  assert query.sharding.spec == P(None, "fsdp", "tensor", None)
  assert query.addressable_shards[0].data.shape == (2, 16, 2, 4)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), reference[0])


def test_constrain_is_noop_without_mesh_and_drops_uneven_dims():
  x = jnp.ones((3, 4))
  assert partition.constrain(x, (axes.ACT_BATCH, axes.ACT_EMBED)) is x
  mesh, rules = make_mesh({"data": 2, "tensor": 4}), get_rules("fsdp_tp")
  spec = partition.mesh_spec((3, 8, 2), (axes.ACT_BATCH, axes.ACT_MLP, axes.ACT_KV_HEADS),
                             rules, dict(mesh.shape))
  assert spec == P(None, "tensor", None)  # Batch 3 over 2 and 2 kv heads over 4: replicated.
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    y = jax.jit(lambda v: partition.constrain(v * 2, (axes.ACT_BATCH, axes.ACT_MLP)))(
        jnp.ones((4, 8)))
  assert y.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), "tensor")), 2)
  assert partition.data_sharding(mesh) == NamedSharding(mesh, P(("data", "fsdp")))
  unboxed = nn.unbox(lm_abstract := LanguageModel(CONFIG).abstract_init())
  assert jax.tree.structure(unboxed) == jax.tree.structure(
      partition.logical_shardings(lm_abstract, mesh, rules))


def test_explain_spec_reports_uneven_dims_and_ignores_absent_mesh_axes():
  rules = get_rules("sp_tp")
  spec, uneven = partition.explain_spec((50257, 64), (axes.VOCAB, axes.EMBED), rules,
                                        {"data": 1, "fsdp": 2, "sequence": 2, "tensor": 4})
  assert spec == P(None, ("fsdp", "sequence"))
  assert uneven == [partition.UnevenDim(0, axes.VOCAB, 50257, ("tensor",), 4)]
  # 12 is split by fsdp=2 alone but not by fsdp x sequence = 8: the whole tuple is dropped.
  spec, uneven = partition.explain_spec((12,), (axes.EMBED,), rules,
                                        {"fsdp": 2, "sequence": 4, "tensor": 1})
  assert spec == P(None) and uneven[0].ways == 8
  # A mesh built without a sequence axis (e.g. by hand): rules naming it still work.
  assert partition.mesh_spec((8, 64), (axes.EMBED, axes.VOCAB), rules,
                             {"data": 1, "fsdp": 2, "tensor": 2}) == P("fsdp", "tensor")
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("fsdp", "tensor"))
  sharding = partition.logical_shardings(LanguageModel(CONFIG).abstract_init(), mesh, rules)
  assert sharding["token_embed"]["embedding"].spec == P("tensor", "fsdp")
