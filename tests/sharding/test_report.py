"""report.py: bytes per device against real shards, activation layouts against `constrain`,
replicated-parameter and unused-axis warnings."""

import math

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
from llmjax.sharding import partition, report
from llmjax.sharding.mesh import make_mesh
from llmjax.sharding.rules import RULE_SETS, get_rules

CONFIG = ModelConfig(vocab_size=64, num_layers=2, num_heads=8, num_kv_heads=2, embed_dim=32,
                     mlp_dim=64, max_seq_len=16)
MESH = {"fsdp": 2, "sequence": 2, "tensor": 2}


def _flat(tree):
  return {"/".join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("rules_name", sorted(RULE_SETS))
def test_param_bytes_per_device_match_numpy_and_jax(rules_name):
  lm, mesh, rules = LanguageModel(CONFIG), make_mesh(MESH), get_rules(rules_name)
  abstract = lm.abstract_init()
  shardings = _flat(partition.logical_shardings(abstract, mesh, rules))
  shapes = _flat(nn.unbox(abstract))
  rows = report.param_rows(abstract, rules, mesh)
  assert [r.name for r in rows] == list(shardings)
  for row in rows:
    sharding, value = shardings[row.name], shapes[row.name]
    ways = math.prod(math.prod(mesh.shape[a] for a in ((e,) if isinstance(e, str) else e))
                     for e in sharding.spec if e is not None)
    assert row.spec == sharding.spec
    assert row.bytes_total == value.size * value.dtype.itemsize
    assert row.bytes_per_device == value.size * value.dtype.itemsize // ways
    assert row.bytes_per_device == np.prod(sharding.shard_shape(value.shape)) * 4


def test_param_bytes_match_real_sharded_arrays():
  lm, mesh, rules = LanguageModel(CONFIG), make_mesh(MESH), get_rules("sp_tp")
  params, _ = partition.init_sharded(lm.init_boxed, mesh, rules, jax.random.PRNGKey(0))
  real = _flat(params)
  for row in report.param_rows(lm.abstract_init(), rules, MESH):
    shards = real[row.name].addressable_shards
    assert {s.data.nbytes for s in shards} == {row.bytes_per_device}, row.name
  rep = report.build_report(lm.abstract_init(), CONFIG, rules="sp_tp", mesh=MESH, batch_size=8,
                            seq_len=16)
  assert rep.totals["params_bytes_per_device"] == sum(
      x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(params))
  assert rep.totals["optimizer_bytes_per_device"] == 2 * rep.totals["params_bytes_per_device"]
  assert rep.totals["params_bytes_total"] == lm.num_params() * 4


@pytest.mark.parametrize("rules_name,mesh_shape", [("sp", {"data": 2, "sequence": 4}),
                                                   ("fsdp_tp", {"fsdp": 2, "tensor": 4})])
def test_activation_rows_match_constrain(rules_name, mesh_shape):
  mesh, rules = make_mesh(mesh_shape), get_rules(rules_name)
  rows = report.activation_rows(CONFIG, batch_size=4, seq_len=16, rules=rules, mesh=mesh)
  assert [r.name for r in rows] == ["residual", "attention q / out", "attention k, v",
                                    "mlp hidden", "logits"]
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    for row in rows:
      out = jax.jit(lambda x, names=row.logical_axes: partition.constrain(x * 2, names))(
          jnp.ones(row.shape, row.dtype))
      assert out.sharding.is_equivalent_to(NamedSharding(mesh, row.spec), len(row.shape))
      assert out.addressable_shards[0].data.nbytes == row.bytes_per_device, row.name
  if rules_name == "sp":  # The length is split 4 ways, the batch 2 ways.
    assert rows[0].spec == P(("data", "fsdp"), "sequence", None)
    assert rows[0].bytes_per_device == 4 * 16 * 32 * 4 // 8


def test_uneven_vocab_is_flagged_with_the_fix():
  config = CONFIG.replace(vocab_size=50257, embed_dim=256, mlp_dim=512)
  abstract = LanguageModel(config).abstract_init()
  found = report.check_replicated(abstract, {"tensor": 4}, get_rules("tp"))
  assert [r.row.name for r in found] == ["token_embed/embedding"]
  assert found[0].row.bytes_per_device == 50257 * 256 * 4
  text = report.replicated_warning(found)
  assert ("token_embed/embedding [50257, 256] float32: 49.1 MiB per device (fully "
          "replicated)") in text
  assert "vocab 50257 is not divisible by tensor=4" in text
  assert "ModelConfig.vocab_size=50260" in text
  # Padded to a multiple of 4: split, nothing to report.
  padded = LanguageModel(config.replace(vocab_size=50260)).abstract_init()
  assert report.check_replicated(padded, {"tensor": 4}, get_rules("tp")) == []
  # fsdp_tp splits the embed dim but not the vocab: partly replicated, still flagged.
  partly = report.check_replicated(abstract, {"fsdp": 2, "tensor": 4}, get_rules("fsdp_tp"))
  assert [r.row.name for r in partly] == ["token_embed/embedding"]
  assert "partly replicated" in partly[0].message()


def test_rule_set_that_splits_nothing_is_flagged_and_a_good_one_is_not():
  abstract = LanguageModel(CONFIG).abstract_init()
  threshold = 4 * 1024  # The embedding (8 KiB) and layer weights (16 KiB) are above it.
  found = report.check_replicated(abstract, {"fsdp": 8}, get_rules("dp"),
                                  threshold_bytes=threshold)
  assert {r.row.name for r in found} == {
      "token_embed/embedding", "decoder/layers/attention/query", "decoder/layers/attention/out",
      "decoder/layers/mlp/wi_gate", "decoder/layers/mlp/wi_up", "decoder/layers/mlp/wo"}
  assert all("rules='fsdp' would split it" in r.reason for r in found)
  # On a pure data-parallel mesh replication is the point of dp: nothing to warn about.
  assert report.check_replicated(abstract, {"data": 8}, get_rules("dp"),
                                 threshold_bytes=threshold) == []
  for rules_name, mesh_shape in [("fsdp_tp", {"fsdp": 2, "tensor": 4}),
                                 ("sp", {"fsdp": 2, "sequence": 4}), ("fsdp", {"fsdp": 8})]:
    assert report.check_replicated(abstract, mesh_shape, get_rules(rules_name),
                                   threshold_bytes=threshold) == [], rules_name
  # The kv projections ([2, 32, 2, 4] = 2 KiB) do not divide tensor=4 but are below threshold.
  assert report.check_replicated(abstract, {"tensor": 4}, get_rules("tp"),
                                 threshold_bytes=threshold) == []
  assert report.replicated_warning([]) == ""


def test_unused_mesh_axes_and_layout_warnings():
  messages = report.unused_mesh_axes(get_rules("fsdp"), {"fsdp": 2, "sequence": 4})
  assert len(messages) == 1
  assert "'sequence' has 4 devices but rule set 'fsdp' never uses it" in messages[0]
  assert "(sp, sp_tp)" in messages[0]
  assert report.unused_mesh_axes(get_rules("sp"), {"fsdp": 2, "sequence": 4}) == []
  assert report.unused_mesh_axes(get_rules("tp"), {"data": 2, "tensor": 4}) == []
  assert "'tensor'" in report.unused_mesh_axes(get_rules("fsdp"), {"tensor": 2})[0]
  # layout_warnings (what the trainer logs): both kinds, in that order.
  abstract = LanguageModel(CONFIG.replace(vocab_size=66)).abstract_init()
  warnings = report.layout_warnings(abstract, {"sequence": 2, "tensor": 4}, get_rules("tp"),
                                    threshold_bytes=4 * 1024)
  assert len(warnings) == 2 and "'sequence'" in warnings[0]
  assert "vocab 66 is not divisible by tensor=4" in warnings[1]
  assert report.layout_warnings(abstract, {"fsdp": 2, "sequence": 4}, get_rules("sp")) == []


def test_report_json_and_encoder_decoder_rows():
  config = CONFIG.replace(architecture="encoder_decoder", position="t5_relative",
                          num_kv_heads=None)
  rep = report.build_report(LanguageModel(config).abstract_init(), config, rules="sp",
                            mesh={"fsdp": 2, "sequence": 4}, batch_size=8, seq_len=16,
                            decoder_seq_len=8)
  names = [r.name for r in rep.activations]
  assert "encoder residual" in names and "decoder cross-attention k, v" in names
  logits = rep.to_json()["activations"][-1]
  assert logits["shape"] == [8, 8, 64] and logits["spec"] == [["data", "fsdp"], "sequence",
                                                               None]
  assert rep.to_json()["devices"] == 8
  assert report.format_bytes(1536) == "1.5 KiB" and report.format_bytes(12) == "12 B"
