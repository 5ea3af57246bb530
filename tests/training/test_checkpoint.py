"""Orbax checkpoints: round trip, another mesh, partial params restore (llmjax/workdir.py), torn
saves ignored."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import TOY_RULES, ToyLM, make_test_mesh

from llmjax import workdir as workdir_lib
from llmjax.training import checkpoint as ckpt_lib
from llmjax.training.config import TrainConfig
from llmjax.training.optimizer import make_optimizer
from llmjax.training.state import create_train_state, state_shardings

ITER_STATE = {"next_index": 17, "epoch": 2, "nested": {"seed": [1, 2]}}


def _state(mesh_shape, rules, seed=0):
  tx, _ = make_optimizer(TrainConfig(train_steps=2, warmup_steps=0))
  mesh = make_test_mesh(mesh_shape)
  model = ToyLM()
  state, _ = create_train_state(model.init_boxed, tx, seed, mesh, TOY_RULES[rules])
  abstract, _ = state_shardings(model.init_boxed, tx, mesh, TOY_RULES[rules])
  return state, abstract


def _assert_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_with_iterator_state(tmp_path, async_save):
  state, abstract = _state({"fsdp": 8}, "fsdp")
  with ckpt_lib.Checkpointer(str(tmp_path), keep=2, async_save=async_save) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, state, dict(ITER_STATE, next_index=step))
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 3]  # keep=2
    restored, it = ckpt.restore(abstract)
  assert it == dict(ITER_STATE, next_index=3)
  _assert_equal(restored, state)
  assert type(restored) is type(state)
  assert workdir_lib.latest_step(str(tmp_path)) == 3
  assert os.path.isdir(tmp_path / "checkpoints" / "3" / "state")


@pytest.mark.parametrize("mesh_shape, rules", [({"data": 2, "fsdp": 4}, "fsdp"),
                                               ({"fsdp": 2, "tensor": 4}, "tp"),
                                               ({"data": 8}, "dp")])
def test_restore_onto_another_mesh(tmp_path, mesh_shape, rules):
  state, _ = _state({"fsdp": 8}, "fsdp")
  with ckpt_lib.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(5, state, ITER_STATE)
  _, abstract = _state(mesh_shape, rules, seed=1)
  with ckpt_lib.Checkpointer(str(tmp_path)) as ckpt:
    restored, it = ckpt.restore(abstract, step=5)
  assert it == ITER_STATE
  _assert_equal(restored, state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract), strict=True):
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim)


def test_restore_params_only(tmp_path):
  state, abstract = _state({"fsdp": 8}, "fsdp")
  with ckpt_lib.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(4, state)
  params = workdir_lib.restore_params(str(tmp_path), abstract.params)
  _assert_equal(params, state.params)
  unsharded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract.params)
  params = workdir_lib.restore_params(str(tmp_path / "checkpoints"), unsharded, step=4)
  _assert_equal(params, state.params)
  with pytest.raises(FileNotFoundError, match="no checkpoint for step 9"):
    workdir_lib.restore_params(str(tmp_path), abstract.params, step=9)


def test_partially_written_checkpoint_is_ignored(tmp_path):
  state, abstract = _state({"fsdp": 8}, "fsdp")
  with ckpt_lib.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(2, state, ITER_STATE)
  # What a save killed half way leaves behind: Orbax's temporary directory, never renamed.
  torn = tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1234567890"
  (torn / "state").mkdir(parents=True)
  (torn / "state" / "garbage").write_text("half written")
  assert workdir_lib.latest_step(str(tmp_path)) == 2
  with ckpt_lib.Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() == 2
    restored, it = ckpt.restore(abstract)
    assert it == ITER_STATE
    _assert_equal(restored, state)
    ckpt.save(7, state, json.loads(json.dumps(ITER_STATE)))  # The step can be written again.
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 7]
  assert not torn.exists()


def test_restore_without_checkpoint_raises(tmp_path):
  _, abstract = _state({"fsdp": 8}, "fsdp")
  with ckpt_lib.Checkpointer(str(tmp_path)) as ckpt, pytest.raises(FileNotFoundError):
    ckpt.restore(abstract)
  assert workdir_lib.latest_step(str(tmp_path / "nothing")) is None
