"""LayerNorm and RMSNorm with float32 statistics whatever the compute dtype."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.config import ModelConfig
from llmjax.sharding import axes


def _vector(module: nn.Module, name: str, init, size: int, dtype) -> jax.Array:
  return module.param(name, nn.with_logical_partitioning(init, (axes.NORM,)), (size,), dtype)


class RMSNorm(nn.Module):
  """x / rms(x) * scale (no mean subtraction, no bias)."""

  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = _vector(self, "scale", nn.initializers.ones, x.shape[-1], self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nn.Module):
  """(x - mean) / std * scale + bias."""

  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = _vector(self, "scale", nn.initializers.ones, x.shape[-1], self.param_dtype)
    bias = _vector(self, "bias", nn.initializers.zeros, x.shape[-1], self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def make_norm(config: ModelConfig, name: str) -> nn.Module:
  """The norm `config.norm` names, in the config's dtypes."""
  cls = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}[config.norm]
  return cls(eps=config.norm_eps, dtype=config.compute_dtype, param_dtype=config.weight_dtype,
             name=name)


def norm_num_params(config: ModelConfig) -> int:
  """Parameters of one norm layer."""
  return config.embed_dim * (2 if config.norm == "layernorm" else 1)
