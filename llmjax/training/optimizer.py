"""AdamW with linear warmup + cosine decay, global-norm clipping and a weight-decay mask.

What is decayed: a parameter is decayed when it is a matrix in its own right. Norm scales,
biases and other vectors are not. Scanned layers stack every block parameter along a leading
`layers` axis, so a stacked bias is 2-D; the mask therefore looks at the parameter's name first
(`bias`, `scale`, anything under a module whose name contains `norm`) and only then at ndim
(<= 1 is never decayed). Embedding tables are matrices and are decayed, as in GPT-2 / nanoGPT.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from llmjax.training.config import TrainConfig

_NO_DECAY_NAMES = ("bias", "scale")


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
  """Learning rate at (0-based) step: linear warmup, then cosine decay to the end ratio.

  Warmup reaches the peak at the last warmup step (`lr * (step + 1) / warmup_steps`), so no
  step is wasted at rate 0. The cosine runs from `warmup_steps` to `train_steps` and stays at
  `learning_rate * end_learning_rate_ratio` afterwards.
  """
  peak = cfg.learning_rate
  end = peak * cfg.end_learning_rate_ratio
  warmup = cfg.warmup_steps
  decay_steps = max(1, cfg.train_steps - warmup)

  def schedule(step: jax.Array | int) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    warm = peak * jnp.minimum(1.0, (step + 1.0) / max(1, warmup))
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup, warm, cosine)

  return schedule


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def decay_mask(params: Any) -> Any:
  """A pytree of bools, True where weight decay applies (see the module docstring)."""

  def decayed(path, leaf) -> bool:
    names = [_key_name(k).lower() for k in path]
    if names and names[-1] == "value":  # Tolerate flax's boxed (Partitioned) leaves.
      names = names[:-1]
    if jnp.ndim(leaf) <= 1:
      return False
    if names and names[-1] in _NO_DECAY_NAMES:
      return False
    return not any("norm" in name for name in names)

  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule) for `cfg`; the schedule also feeds the metrics."""
  schedule = make_schedule(cfg)
  adamw = optax.adamw(learning_rate=schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=decay_mask,
                      mu_dtype=jnp.float32)  # fp32 moments even if params are low precision.
  if cfg.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw), schedule
  return adamw, schedule
