"""The unsharded reference the sharded == unsharded tests compare against."""

import jax
import numpy as np


def packed_batch() -> dict:
  """8 rows of 16 tokens with a document boundary inside rows and padded tails."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 64, (8, 17)).astype(np.int32)
  segment_ids = np.ones((8, 16), np.int32)
  segment_ids[::2, 10:] = 2
  segment_ids[1::3, 13:] = 0
  positions = np.where(segment_ids == 2, np.arange(16) - 10, np.arange(16)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segment_ids,
          "positions": positions, "weights": (segment_ids > 0).astype(np.float32)}


def loss_and_grads(lm):
  """`(params, batch) -> ((loss, (aux, logits)), grads)` of a LanguageModel."""
  def fn(params, batch):
    def loss(p):
      value, aux = lm.loss_fn(p, batch, None, z_loss=1e-3, deterministic=True)
      return value, (aux, lm.apply(p, batch)[0])
    return jax.value_and_grad(loss, has_aux=True)(params)
  return fn
