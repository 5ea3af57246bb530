"""Train step: gradient accumulation equals one big batch; sharded state creation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOY_RULES, ToyLM, make_test_mesh, toy_batch
from jax.sharding import NamedSharding, PartitionSpec

from llmjax.training import step as step_lib
from llmjax.training.config import TrainConfig
from llmjax.training.optimizer import make_optimizer
from llmjax.training.state import TrainState, create_train_state, state_shardings


def _run(cfg, batches, mesh_shape=None, rules="fsdp"):
  model = ToyLM()
  tx, schedule = make_optimizer(cfg)
  mesh = make_test_mesh(mesh_shape or {"fsdp": 8})
  state, shardings = create_train_state(model.init_boxed, tx, cfg.seed, mesh, TOY_RULES[rules])
  data_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
  abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batches[0])
  train_step = step_lib.compile_train_step(model, tx, cfg, mesh, TOY_RULES[rules], shardings,
                                           state, abstract_batch, data_sharding, schedule)
  metrics = []
  for batch in batches:
    batch = jax.device_put(batch, data_sharding)
    state, m = train_step(state, batch)
    metrics.append(jax.device_get(m))
  return state, metrics


@pytest.mark.parametrize("microbatches", [2, 4])
def test_microbatches_equal_one_big_batch(microbatches):
  base = TrainConfig(train_steps=4, batch_size=16, seq_len=8, warmup_steps=1, z_loss=1e-3,
                     learning_rate=1e-2)
  batches = [toy_batch(i, batch=16) for i in range(2)]
  one, m1 = _run(base, batches)
  many, mn = _run(base.replace(microbatches=microbatches), batches)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
               jax.device_get(one.params), jax.device_get(many.params))
  for a, b in zip(m1, mn, strict=True):
    for key in ("loss", "z_loss", "accuracy", "weight_sum", "grad_norm", "learning_rate"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
  assert int(many.step) == 2


def test_step_metrics_and_loss_decreases():
  cfg = TrainConfig(train_steps=20, batch_size=8, seq_len=8, warmup_steps=0, learning_rate=3e-2)
  batch = toy_batch(0)
  _, metrics = _run(cfg, [batch] * 20)
  assert set(metrics[0]) >= {"loss", "z_loss", "accuracy", "grad_norm", "learning_rate",
                             "weight_sum"}
  assert metrics[0]["weight_sum"] == batch["weights"].sum()
  assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5


def test_state_created_sharded_and_opt_state_follows_params():
  cfg = TrainConfig(train_steps=2, batch_size=8, seq_len=8, warmup_steps=0)
  tx, _ = make_optimizer(cfg)
  mesh = make_test_mesh({"fsdp": 4, "tensor": 2})
  model = ToyLM()
  rules = TOY_RULES["fsdp"] + TOY_RULES["tp"][:2]
  abstract, shardings = state_shardings(model.init_boxed, tx, mesh, rules)
  state, _ = create_train_state(model.init_boxed, tx, 0, mesh, rules)
  assert isinstance(state, TrainState)
  assert state.params["embed"].sharding.spec == PartitionSpec("tensor", "fsdp")
  assert state.params["mlp"]["kernel"].sharding.spec == PartitionSpec("fsdp", "tensor")
  adam = state.opt_state[1][0]  # chain(clip, adamw(scale_by_adam, ...))
  assert adam.mu["embed"].sharding.spec == PartitionSpec("tensor", "fsdp")
  assert adam.count.sharding.spec == PartitionSpec()
  same = jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s.sharding, a.ndim), state,
                      abstract)
  assert all(jax.tree.leaves(same))
  # Same init as an unsharded init with the same seed (up to fusion rounding).
  from llmjax.training.state import seed_keys
  ref = model.init(seed_keys(0)[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(state.params), ref)


def test_eval_step_is_deterministic_weighted():
  model = ToyLM(dropout_rate=0.5)
  params = model.init(jax.random.PRNGKey(0))
  eval_step = jax.jit(step_lib.make_eval_step(model))
  batch = toy_batch(3)
  a, b = eval_step(params, batch), eval_step(params, batch)
  assert float(a["loss"]) == float(b["loss"])
  assert float(a["weight_sum"]) == batch["weights"].sum()


def test_dropout_rng_depends_on_step_only():
  model = ToyLM(dropout_rate=0.5)
  cfg = TrainConfig(train_steps=2, batch_size=8, seq_len=8, warmup_steps=0)
  tx, _ = make_optimizer(cfg)
  step_fn = jax.jit(step_lib.make_train_step(model, tx, cfg))
  params = model.init(jax.random.PRNGKey(0))
  state = TrainState(step=jnp.int32(5), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(1))
  batch = toy_batch(0)
  (_, m1), (_, m2) = step_fn(state, batch), step_fn(state, batch)
  assert float(m1["loss"]) == float(m2["loss"])
  _, m3 = step_fn(state.replace(step=jnp.int32(6)), batch)
  assert float(m3["loss"]) != float(m1["loss"])


def test_num_tokens_counts_the_global_batchs_non_padding_tokens():
  # Sharded over 8 devices and split into microbatches: the count is still the whole batch's.
  batch = toy_batch(4, batch=16)
  lengths = np.random.default_rng(4).integers(0, 9, 16)
  batch["segment_ids"] = (np.arange(8)[None] < lengths[:, None]).astype(np.int32)
  cfg = TrainConfig(train_steps=2, batch_size=16, seq_len=8, warmup_steps=0, microbatches=2)
  _, metrics = _run(cfg, [batch])
  assert float(metrics[0]["num_tokens"]) == np.count_nonzero(batch["segment_ids"]) < 16 * 8


def test_microbatches_equal_one_big_batch_real_model():
  from llmjax.models.config import ModelConfig
  from llmjax.models.interface import LanguageModel
  from llmjax.sharding.mesh import make_mesh
  from llmjax.sharding.partition import data_sharding
  from llmjax.sharding.rules import get_rules

  model = LanguageModel(ModelConfig(vocab_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                                    embed_dim=32, mlp_dim=64, max_seq_len=16))
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = get_rules("fsdp_tp")
  batch = toy_batch(7, batch=16, length=8)
  batch["segment_ids"][:, 5:] = 2  # Two packed documents per row.
  batch["positions"][:, 5:] -= 5
  results = []
  for microbatches in (1, 4):
    cfg = TrainConfig(train_steps=3, batch_size=16, seq_len=8, warmup_steps=0,
                      microbatches=microbatches, z_loss=1e-4)
    tx, schedule = make_optimizer(cfg)
    init = lambda rng: model.init_boxed(rng, seq_len=8)
    state, shardings = create_train_state(init, tx, 0, mesh, rules)
    abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    step = step_lib.compile_train_step(model, tx, cfg, mesh, rules, shardings, state,
                                       abstract_batch, data_sharding(mesh), schedule)
    for _ in range(2):
      state, metrics = step(state, jax.device_put(batch, data_sharding(mesh)))
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
  (p1, m1), (pn, mn) = results
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), p1, pn)
  np.testing.assert_allclose(m1["loss"], mn["loss"], rtol=1e-5)
