"""Output heads of the encoder family: BERT's masked-LM transform and a pooled classifier."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.backend import backend_for
from llmjax.models.config import ModelConfig
from llmjax.models.mlp import activation
from llmjax.models.norms import make_norm, norm_num_params
from llmjax.sharding import axes

_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _dense(module: nn.Module, name: str, x: jax.Array, shape: tuple[int, int],
           names: tuple[str, str], use_bias: bool) -> jax.Array:
  cfg = module.config
  kernel = module.param(name, nn.with_logical_partitioning(_INIT, names), shape,
                        cfg.weight_dtype)
  y = backend_for(cfg).dense(x, kernel.astype(cfg.compute_dtype))
  if use_bias:
    bias = module.param(f"{name}_bias",
                        nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
                        shape[1:], cfg.weight_dtype)
    y = y + bias.astype(cfg.compute_dtype)
  return y


def mlm_activation(config: ModelConfig) -> str:
  """The MLM transform's nonlinearity: the MLP's own, as in BERT (both follow `hidden_act`):
  'relu' for a ReLU MLP, else GELU (exact or tanh by config.gelu_approximate; gated MLPs,
  which no BERT has, keep GELU)."""
  return "relu" if config.mlp == "relu" else "gelu"


class MlmTransform(nn.Module):
  """BERT's prediction-head transform before the vocabulary projection: dense, the MLP's
  activation (`mlm_activation`), norm."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[b, t, d] -> [b, t, d]."""
    d = self.config.embed_dim
    h = activation(self.config, mlm_activation(self.config))(
        _dense(self, "dense", x, (d, d), (axes.EMBED, axes.POOLED), self.config.use_bias))
    return make_norm(self.config, "norm")(h)


def pool(x: jax.Array, segment_ids: jax.Array, pooling: str) -> jax.Array:
  """[b, t, d] -> [b, d]: the first token (BERT's [CLS] slot, our BOS) or the mean over the
  row's non-padding tokens (segment id > 0)."""
  if pooling == "first":
    return x[:, 0]
  keep = (segment_ids > 0).astype(jnp.float32)[..., None]  # [b, t, 1]
  total = jnp.sum(x.astype(jnp.float32) * keep, axis=1)
  return (total / jnp.maximum(jnp.sum(keep, axis=1), 1.0)).astype(x.dtype)


class ClassificationHead(nn.Module):
  """Pool -> dense + tanh (BERT's pooler) -> dropout -> [b, num_classes] float32 logits.

  Attributes:
    config: the model config (num_classes, pooling, dropout_rate).
    deterministic: disables dropout.
  """

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """[b, t, d] final hidden states, [b, t] segment ids -> [b, num_classes] logits."""
    cfg = self.config
    d, c = cfg.embed_dim, cfg.num_classes
    pooled = pool(x, segment_ids, cfg.pooling)
    h = jnp.tanh(_dense(self, "pooler", pooled, (d, d), (axes.EMBED, axes.POOLED), True))
    h = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)(h)
    return _dense(self, "classifier", h, (d, c), (axes.POOLED, axes.CLASSES), True).astype(
        jnp.float32)


def mlm_transform_num_params(config: ModelConfig) -> int:
  """Parameters of MlmTransform."""
  d = config.embed_dim
  return d * d + (d if config.use_bias else 0) + norm_num_params(config)


def classification_head_num_params(config: ModelConfig) -> int:
  """Parameters of ClassificationHead."""
  d, c = config.embed_dim, config.num_classes
  return d * d + d + d * c + c
