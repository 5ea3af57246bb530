"""Sequence parallelism (rules sp, sp_tp): loss, grads and logits of the real decoder equal the
unsharded ones, and activations really are split along their length over `sequence`."""

import jax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sharding.mesh import make_mesh
from llmjax.sharding.rules import get_rules
from tests.sharding.sharded_reference import (
    assert_matches_reference,
    loss_and_grads,
    packed_batch,
    sharded_loss_and_grads,
)

# 8 heads, 2 kv heads: under sp_tp on tensor=4 the kv heads stay whole.
CONFIG = ModelConfig(vocab_size=64, num_layers=2, num_heads=8, num_kv_heads=2, embed_dim=32,
                     mlp_dim=64, max_seq_len=16)
CASES = {"sp-data2-seq4": ("sp", {"data": 2, "sequence": 4}),
         "sp-fsdp2-seq4": ("sp", {"fsdp": 2, "sequence": 4}),
         "sp_tp-seq2-tensor4": ("sp_tp", {"sequence": 2, "tensor": 4})}
# Each case compiles a program (~10 s on 2 shared cores); the fsdp variant runs in CI's slow step.
GRID = [pytest.param(c, marks=pytest.mark.slow if c == "sp-fsdp2-seq4" else ())
        for c in sorted(CASES)]



@pytest.fixture(scope="module")
def reference():
  """The model, params, a packed batch, and the unsharded (loss, (aux, logits)), grads."""
  lm = LanguageModel(CONFIG)
  params = lm.init(jax.random.PRNGKey(0))
  batch = packed_batch()
  return lm, params, batch, jax.device_get(jax.jit(loss_and_grads(lm))(params, batch))


@pytest.mark.parametrize("case", GRID)
def test_sequence_parallel_matches_unsharded(reference, case):
  lm, params, batch, expected = reference
  rules_name, mesh_shape = CASES[case]
  mesh, rules = make_mesh(mesh_shape), get_rules(rules_name)
  sharded, shardings = sharded_loss_and_grads(lm, params, batch, mesh, rules)
  assert_matches_reference(sharded, expected, shardings)
  (_, (_, s_logits)), _ = sharded
  # The logits come out split along the length: each device holds 16 / sequence positions.
  vocab = "tensor" if rules_name == "sp_tp" else None
  assert s_logits.sharding.is_equivalent_to(
      NamedSharding(mesh, P(("data", "fsdp"), "sequence", vocab)), 3)
  # Weights are split over fsdp x sequence: no device holds a whole matrix.
  query = shardings["decoder"]["layers"]["attention"]["query"].spec
  assert query[1] == ("fsdp", "sequence")
