"""Learning-rate schedule values and the weight-decay mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llmjax.training.config import TrainConfig
from llmjax.training.optimizer import decay_mask, make_optimizer, make_schedule


def test_schedule_warmup_then_cosine_to_end_ratio():
  cfg = TrainConfig(train_steps=110, warmup_steps=10, learning_rate=1.0,
                    end_learning_rate_ratio=0.1)
  lr = make_schedule(cfg)
  np.testing.assert_allclose(lr(0), 0.1, rtol=1e-6)
  np.testing.assert_allclose(lr(4), 0.5, rtol=1e-6)
  np.testing.assert_allclose(lr(9), 1.0, rtol=1e-6)
  np.testing.assert_allclose(lr(10), 1.0, rtol=1e-6)
  np.testing.assert_allclose(lr(60), 0.1 + 0.9 * 0.5, rtol=1e-6)  # Half way: cos = 0.
  np.testing.assert_allclose(lr(110), 0.1, rtol=1e-6)
  np.testing.assert_allclose(lr(500), 0.1, rtol=1e-6)  # Flat after train_steps.
  assert all(float(lr(s)) >= float(lr(s + 1)) for s in range(10, 110))


def test_schedule_no_warmup_and_constant():
  lr = make_schedule(TrainConfig(train_steps=5, warmup_steps=0, learning_rate=2.0))
  np.testing.assert_allclose(lr(0), 2.0, rtol=1e-6)
  const = make_schedule(TrainConfig(train_steps=5, warmup_steps=0, learning_rate=2.0,
                                    end_learning_rate_ratio=1.0))
  np.testing.assert_allclose([const(s) for s in range(8)], 2.0, rtol=1e-6)


def test_decay_mask_skips_norms_biases_vectors_and_stacked_vectors():
  params = {
      "embed": jnp.zeros((8, 4)),
      "block": {
          "mlp": {"kernel": jnp.zeros((3, 4, 8)), "bias": jnp.zeros((3, 8))},
          "pre_attn_norm": {"scale": jnp.zeros((3, 4))},
          "attn_norm": {"weight": jnp.zeros((4,))},
      },
      "final_norm": {"scale": jnp.zeros((4,))},
      "vector": jnp.zeros((4,)),
  }
  mask = decay_mask(params)
  assert mask == {
      "embed": True,
      "block": {"mlp": {"kernel": True, "bias": False}, "pre_attn_norm": {"scale": False},
                "attn_norm": {"weight": False}},
      "final_norm": {"scale": False},
      "vector": False,
  }


def test_weight_decay_applies_only_to_masked_in_params():
  cfg = TrainConfig(train_steps=10, warmup_steps=0, learning_rate=0.1, weight_decay=0.5,
                    clip_norm=0.0, end_learning_rate_ratio=1.0)
  tx, _ = make_optimizer(cfg)
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["w"], 1.0 - 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(new["b"], 1.0)


def test_clipping_bounds_update_norm():
  cfg = TrainConfig(train_steps=10, warmup_steps=0, clip_norm=1.0)
  tx, _ = make_optimizer(cfg)
  params = {"w": jnp.ones((3,))}
  clipped, _ = tx.update({"w": jnp.full((3,), 1e6)}, tx.init(params), params)
  assert np.all(np.isfinite(clipped["w"]))


@pytest.mark.parametrize("changes, message", [
    ({"train_steps": 0}, "train_steps must be positive"),
    ({"batch_size": 6, "microbatches": 4}, "not divisible by microbatches"),
    ({"warmup_steps": 20, "train_steps": 10}, "exceeds train_steps"),
    ({"end_learning_rate_ratio": 2.0}, "end_learning_rate_ratio"),
])
def test_config_validation_messages(changes, message):
  with pytest.raises(ValueError, match=message):
    TrainConfig(**changes)
