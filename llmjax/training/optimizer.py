"""AdamW with linear warmup + cosine decay, global-norm clipping and a weight-decay mask.

What is decayed is decided by each parameter's role, read from its name, never from its ndim
(scanned layers stack every block parameter along a leading `layers` axis, so a stacked bias or
norm scale is 2-D and a stacked kernel 3-D or more):
- decayed: weight matrices (attention query/key/value/out, MLP wi/wi_gate/wi_up/wo, the heads'
  dense/pooler/classifier kernels, an untied output_kernel) and embedding tables (tokens,
  learned positions, token types), as in GPT-2 / nanoGPT;
- not decayed: biases (a leaf named `bias` or `*_bias`: query_bias, wo_bias, output_bias, ...),
  anything inside a module named `*_bias` (T5's relative-position bias table: an additive
  attention bias, which Hugging Face's Trainer does not decay either), and norm parameters
  (a leaf named `scale`, or any path with `norm` in a name: `mlp_norm/bias`, `norm_scale`).

Numerics: the optimizer runs in fp32 whatever the parameters' dtype. Gradients and parameters
are upcast before clipping and Adam, so every optimizer-state leaf (both Adam moments included)
is fp32 and the updates are fp32; `optax.apply_updates` rounds the sum once into the
parameters' dtype. The trainer keeps fp32 master parameters by default (training/state.py), so
that rounding is exact but for the explicit pure-bf16 precision policy (models/precision.py).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from llmjax.training import guard
from llmjax.training.config import TrainConfig


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


def is_decayed(path: tuple[str, ...]) -> bool:
  """Whether the parameter at `path` (module names, then the leaf name) is weight-decayed."""
  *modules, leaf = path
  if leaf == "scale" or any("norm" in name for name in path):
    return False  # Norm scales and LayerNorm biases.
  if leaf == "bias" or leaf.endswith("_bias") or any(name.endswith("_bias") for name in modules):
    return False  # Biases, including T5's relative-position bias table.
  return True  # Kernels and embedding tables.


def decay_mask(params: Any) -> Any:
  """A pytree of bools, True where weight decay applies (see the module docstring)."""

  def decayed(path, leaf) -> bool:
    # Attribute keys are a box's fields (flax's Partitioned `.value`), not parameter names.
    names = [_key_name(k).lower() for k in path if not isinstance(k, jax.tree_util.GetAttrKey)]
    return is_decayed(tuple(names))

  return jax.tree_util.tree_map_with_path(decayed, params)


def _to_float32(tree: Any) -> Any:
  return jax.tree.map(
      lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def in_float32(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` applied to fp32 copies of the gradients and parameters: its state (built from
  fp32 parameters) and its updates are fp32 whatever the parameters' dtype. A no-op for fp32
  parameters."""

  def init(params: Any) -> Any:
    return inner.init(_to_float32(params))

  def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
    return inner.update(_to_float32(updates), state,
                        None if params is None else _to_float32(params))

  return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule) for `cfg`; the schedule also feeds the metrics."""
  schedule = make_schedule(cfg)
  adamw = optax.adamw(learning_rate=schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=decay_mask, mu_dtype=jnp.float32)
  if cfg.clip_norm > 0:
    adamw = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
  if cfg.loss_spike_window:  # The window of recent losses lives in the optimizer state.
    return guard.with_loss_window(in_float32(adamw), cfg.loss_spike_window), schedule
  return in_float32(adamw), schedule
