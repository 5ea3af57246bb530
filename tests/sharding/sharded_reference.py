"""The sharded == unsharded tests' shared parts: the unsharded reference, the same computation
sharded on a mesh, and the comparison of the two."""

import jax
import numpy as np
from flax.linen import partitioning as nn_partitioning

from llmjax.sharding import partition


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


def sharded_loss_and_grads(lm, params, batch, mesh, rules):
  """`loss_and_grads` with params and batch sharded on `mesh` by `rules`.

  Returns:
    (((loss, (aux, logits)), grads), param shardings); the grads are asked for in the params'
    shardings.
  """
  shardings = partition.param_shardings(lm, mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    fn = jax.jit(loss_and_grads(lm), out_shardings=((None, None), shardings))
    out = fn(jax.device_put(params, shardings),
             jax.device_put(batch, partition.data_sharding(mesh)))
  return out, shardings


def assert_matches_reference(sharded, reference, shardings) -> None:
  """Sharded loss, accuracy, logits and grads equal the unsharded ones (float tolerance), and
  the grads are laid out like the params."""
  (s_loss, (s_aux, s_logits)), s_grads = sharded
  (loss, (aux, logits)), grads = reference
  np.testing.assert_allclose(s_loss, loss, rtol=1e-5)
  np.testing.assert_allclose(s_aux["accuracy"], aux["accuracy"])
  np.testing.assert_allclose(s_logits, logits, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
               jax.device_get(s_grads), grads)
  assert jax.tree.map(lambda g: g.sharding, s_grads) == shardings
