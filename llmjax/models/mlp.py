"""Feed-forward blocks: GELU / ReLU (two matrices) and SwiGLU / GeGLU (gated, three matrices).

gelu(x W_in) W_out, or (act(x W_gate) * x W_up) W_out; the matmuls are the backend's `dense`
(models/backend.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax

from llmjax.models.backend import backend_for
from llmjax.models.config import ModelConfig
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain

_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
GATED = ("swiglu", "geglu")


def activation(config: ModelConfig, name: str) -> Callable[[jax.Array], jax.Array]:
  """The nonlinearity `name` ('gelu', 'relu', 'swiglu' -> SiLU, 'geglu' -> GELU); GELU is
  tanh-approximated ("gelu_new": GPT-2, T5 v1.1) unless config.gelu_approximate is False."""
  if name in ("gelu", "geglu"):
    return functools.partial(nn.gelu, approximate=config.gelu_approximate)
  return {"relu": nn.relu, "swiglu": nn.silu}[name]


class Mlp(nn.Module):
  """[b, t, d] -> [b, t, d] through a hidden width f = config.mlp_dim."""

  config: ModelConfig

  def _dense(self, name: str, x: jax.Array, shape: tuple[int, int],
             names: tuple[str, str]) -> jax.Array:
    cfg = self.config
    kernel = self.param(name, nn.with_logical_partitioning(_INIT, names), shape,
                        cfg.weight_dtype)
    y = backend_for(cfg).dense(x, kernel.astype(cfg.compute_dtype))
    if cfg.use_bias:
      bias = self.param(f"{name}_bias",
                        nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
                        shape[1:], cfg.weight_dtype)
      y = y + bias.astype(cfg.compute_dtype)
    return y

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    d, f = cfg.embed_dim, cfg.mlp_dim
    hidden_axes = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP)
    if cfg.mlp in GATED:
      gate = self._dense("wi_gate", x, (d, f), (axes.EMBED, axes.MLP))
      up = self._dense("wi_up", x, (d, f), (axes.EMBED, axes.MLP))
      h = constrain(activation(cfg, cfg.mlp)(gate) * up, hidden_axes)  # [b, t, f]
    else:
      h = self._dense("wi", x, (d, f), (axes.EMBED, axes.MLP))
      h = constrain(activation(cfg, cfg.mlp)(h), hidden_axes)
    out = self._dense("wo", h, (f, d), (axes.MLP, axes.EMBED))
    return constrain(out, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))


def mlp_num_params(config: ModelConfig) -> int:
  """Parameters of one Mlp."""
  d, f = config.embed_dim, config.mlp_dim
  inputs = 2 if config.mlp in GATED else 1
  count = (inputs + 1) * d * f
  if config.use_bias:
    count += inputs * f + d
  return count
