"""A tiny hand-written language model with the LanguageModel interface, for trainer tests.

It keeps the trainer tests independent of the real model's details: boxed params with logical
axis names (a norm scale, a bias, a matrix, a tied embedding) and a weighted-mean CE loss.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.sharding import axes

VOCAB, WIDTH = 64, 32


class _Toy(nn.Module):
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, tokens, deterministic=True):
    init = nn.initializers.normal(0.1)
    embed = self.param("embed", nn.with_logical_partitioning(init, (axes.VOCAB, axes.EMBED)),
                       (VOCAB, WIDTH))
    scale = self.param("norm_scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                                  (axes.NORM,)), (WIDTH,))
    x = embed[tokens]
    x = nn.Dense(WIDTH, kernel_init=nn.with_logical_partitioning(init, (axes.EMBED, axes.MLP)),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.MLP,)),
                 name="mlp")(x)
    x = nn.Dropout(self.dropout_rate)(jnp.tanh(x), deterministic=deterministic) * scale
    return x @ embed.T


class ToyLM:
  """Just enough of LanguageModel for the trainer: init_boxed, init, loss_fn."""

  def __init__(self, dropout_rate: float = 0.0):
    self.module = _Toy(dropout_rate)

  def init_boxed(self, rng):
    return self.module.init(rng, jnp.zeros((1, 4), jnp.int32))["params"]

  def init(self, rng):
    return nn.unbox(self.init_boxed(rng))

  def loss_fn(self, params, batch, rng, *, z_loss=0.0, deterministic=False):
    logits = self.module.apply({"params": params}, batch["inputs"],
                               deterministic=deterministic, rngs={"dropout": rng})
    logz = jax.nn.logsumexp(logits, axis=-1)
    true = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    w = batch["weights"]
    ws = jnp.sum(w)
    denom = jnp.maximum(ws, 1e-8)
    ce = jnp.sum((logz - true) * w) / denom
    zl = jnp.sum(z_loss * logz**2 * w) / denom
    acc = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) * w) / denom
    return ce + zl, {"loss": ce, "z_loss": zl, "accuracy": acc, "weight_sum": ws}


def toy_batch(seed: int, batch: int = 8, length: int = 8) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, size=(batch, length + 1)).astype(np.int32)
  weights = (rng.random((batch, length)) > 0.2).astype(np.float32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights,
          "segment_ids": np.ones((batch, length), np.int32),
          "positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1))}


@pytest.fixture
def toy_lm():
  return ToyLM()


# Rule sets for the toy model (kept here so these tests do not depend on rules.py's choices).
TOY_RULES = {
    "dp": ((axes.ACT_BATCH, ("data", "fsdp")),),
    "fsdp": ((axes.EMBED, "fsdp"), (axes.ACT_BATCH, ("data", "fsdp"))),
    "tp": ((axes.MLP, "tensor"), (axes.VOCAB, "tensor"), (axes.ACT_BATCH, ("data", "fsdp"))),
}


def make_test_mesh(shape: dict[str, int]) -> jax.sharding.Mesh:
  names = ("data", "fsdp", "tensor")
  sizes = tuple(shape.get(n, 1) for n in names)
  devices = np.asarray(jax.devices()[:int(np.prod(sizes))]).reshape(sizes)
  return jax.sharding.Mesh(devices, names)
