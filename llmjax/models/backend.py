"""The one seam where a platform swaps in its own form of a layer operation.

Layers compute the textbook transformer; the few operations whose fastest form depends on the
platform go through a `Backend`, chosen once per platform (`backend_for(config)`: from
`jax.default_backend()` and `ModelConfig.attention_impl`). Each has a textbook form (used
on GPU and TPU) and, where XLA:CPU needs one, a CPU form from models/cpu_kernels.py:

- `dense(x, kernel, contract)`: `jnp.tensordot`; on CPU one 2-D matmul (`matmul_2d`).
- `residual_barrier(x)`: the identity; on CPU `materialize_grad` (same value and gradient).
- `attention(...)`: softmax(q k^T * scale + bias, masked) v, run as
  `attention_plan.plan_attention` decides: `jax.nn.dot_product_attention` with cuDNN (CUDA
  GPUs, where it can run) or XLA, or, the CPU default, `einsum_attention`.
- `cached_attention(...)`: write the new keys/values into the KV cache, then attend over it;
  a batch-1 decode step on the CPU attention attends first, then writes, in that order
  (`einsum_step_attention`, `order_after`).
- `prepare_mask(spec)`: once per stack, attach the dense mask where the attention reads one
  (always for the CPU attention; for XLA when the mask's structure does not say it all).

Every variant computes the same function as the textbook form (to float rounding); why each
exists is in models/cpu_kernels.py and benchmarks/NOTES.md.

`dense` keeps the einsum form off CPU: XLA's GPU and TPU compilers lower it to one GEMM where
the layout allows, and the partitioner then works on the named batch and length axes; the
2-D form would merge a sequence-sharded length axis into its row axis, which a sharded layout
cannot always express.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.extend.backend
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning

from llmjax.models import cpu_kernels
from llmjax.models.attention_plan import AttentionPlan, CudnnDevice, plan_attention, uses_einsum
from llmjax.models.config import ModelConfig
from llmjax.models.masks import MaskSpec
from llmjax.sharding import axes
from llmjax.sharding.partition import constrain, mesh_spec

_LOG = logging.getLogger(__name__)
_QUERY_AXES = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_HEAD_DIM)
CACHE_AXES = (axes.ACT_BATCH, axes.ACT_KV_HEADS, axes.ACT_KV_LENGTH, axes.ACT_HEAD_DIM)


def write_cache(cache: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
  """Scatters new [b, t, g, k] into cache [b, g, s, k] at slots positions[b, t]."""
  rows = jnp.broadcast_to(jnp.arange(new.shape[0])[:, None], positions.shape)
  # Advanced indices split by a slice index [b, t, g, k]: the layout of `new`.
  return cache.at[rows, :, positions].set(new.astype(cache.dtype), mode="drop")


@functools.cache
def cudnn_device() -> CudnnDevice | None:
  """The default backend's first GPU when it is a CUDA GPU cuDNN flash attention runs on."""
  device = jax.devices()[0]
  runtime = jax.extend.backend.get_backend().platform_version.lower()  # CUDA or ROCm.
  if device.platform != "gpu" or "cuda" not in runtime:
    return None
  capability = tuple(int(p) for p in device.compute_capability.split(".")[:2])
  return CudnnDevice(capability) if capability >= (8, 0) else None


def _queries_split(shape: tuple[int, ...]) -> bool:
  """Whether the active mesh and logical rules split queries [b, t, h, k] along t."""
  rules = nn_partitioning.get_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return False
  return mesh_spec(shape, _QUERY_AXES, rules, dict(mesh.shape))[1] is not None


@functools.cache
def _log_once(message: str) -> None:
  _LOG.warning("llmjax attention: %s", message)


@dataclasses.dataclass(frozen=True)
class Backend:
  """The platform's choice for each variant operation.

  Attributes:
    platform: `jax.default_backend()` when chosen: 'cpu', 'gpu', 'tpu', ...
    attention_impl: `ModelConfig.attention_impl` ('einsum', 'xla', 'cudnn' or None: the
      platform default; see `attention_plan.plan_attention`).
  """

  platform: str
  attention_impl: str | None = None

  def dense(self, x: jax.Array, kernel: jax.Array, contract: int = 1) -> jax.Array:
    """x [..., *in] @ kernel [*in, *out] -> [..., *out], contracting len(in) == contract axes."""
    if self.platform == "cpu":
      return cpu_kernels.matmul_2d(x, kernel, contract)
    return jnp.tensordot(x, kernel, contract)

  def residual_barrier(self, x: jax.Array) -> jax.Array:
    """The identity; on CPU its gradient is not fused across this point."""
    if self.platform == "cpu":
      return cpu_kernels.materialize_grad(x)
    return x

  def plan(self, mask: MaskSpec, q: jax.Array, has_bias: bool,
           kv_heads_major: bool = False) -> AttentionPlan:
    """How `attention` runs for queries `q` [b, t, h, k] under `mask`."""
    gpu = self.platform == "gpu"
    cudnn = cudnn_device() if gpu else None
    return plan_attention(mask, requested=self.attention_impl, platform=self.platform,
                          dtype=q.dtype, head_dim=q.shape[-1], has_bias=has_bias,
                          kv_heads_major=kv_heads_major, cudnn=cudnn,
                          queries_split=cudnn is not None and _queries_split(q.shape))

  def prepare_mask(self, mask: MaskSpec) -> MaskSpec:
    """`mask` as the layers will read it, once per stack: with its dense form attached when an
    attention path reads one (einsum always; XLA when the structure does not say it all)."""
    if uses_einsum(self.attention_impl, self.platform) or mask.is_over_cache or mask.packed:
      return mask.with_dense()
    return mask

  def attention(self, q: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None,
                mask: MaskSpec, scale: float | None = None,
                kv_heads_major: bool = False) -> jax.Array:
    """softmax(q k^T * scale + bias, masked) v: [b, t, h, k].

    Args:
      q: [b, t, h, k] queries.
      key / value: [b, s, g, k], or [b, g, s, k] with `kv_heads_major` (a cache); g divides h.
      bias: additive position bias broadcastable to [b, h, t, s], or None.
      mask: which keys each query sees.
      scale: factor on q k^T; None = k ** -0.5.
      kv_heads_major: see key / value.
    """
    plan = self.plan(mask, q, bias is not None, kv_heads_major)
    if plan.fallback:
      _log_once(plan.reason)
    dense = mask.dense_mask() if plan.dense_mask else None
    if plan.implementation == "einsum":
      return cpu_kernels.einsum_attention(q, key, value, bias, dense, scale, kv_heads_major,
                                          plan.is_causal)
    if kv_heads_major:
      key, value = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)
    if bias is not None:
      bias = bias.astype(q.dtype)
    lengths = mask.lengths if plan.seq_lengths else None
    return jax.nn.dot_product_attention(q, key, value, bias=bias, mask=dense, scale=scale,
                                        query_seq_lengths=lengths,
                                        key_value_seq_lengths=lengths,
                                        **plan.dot_product_attention_kwargs())

  def cached_attention(self, q: jax.Array, key: jax.Array, value: jax.Array,
                       cache: dict[str, jax.Array], positions: jax.Array,
                       bias: jax.Array | None, mask: MaskSpec, scale: float | None = None
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Writes the new keys/values into the cache at `positions`, then attends over it.

    Args:
      q: [b, t, h, k] queries.
      key / value: [b, t, g, k] new keys and values.
      cache: {"k", "v"} [b, g, s, k].
      positions: [b, t] their slots.
      bias / mask / scale: as in `attention`, over the cache's s slots.

    Returns:
      ([b, t, h, k] output, the updated cache).
    """
    if q.shape[:2] == (1, 1) and uses_einsum(self.attention_impl, self.platform):
      # A batch-1 decode step of the CPU attention: attend to the old cache plus the new token,
      # then write the token after those reads (larger batches are faster writing first).
      out = cpu_kernels.einsum_step_attention(
          q, key, value, cache["k"].astype(q.dtype), cache["v"].astype(q.dtype), bias,
          mask.dense_mask(), positions, scale)
      positions = cpu_kernels.order_after(positions, out)
      return out, {"k": write_cache(cache["k"], key, positions),
                   "v": write_cache(cache["v"], value, positions)}
    new_cache = {"k": write_cache(cache["k"], key, positions),
                 "v": write_cache(cache["v"], value, positions)}
    key, value = constrain(new_cache["k"], CACHE_AXES), constrain(new_cache["v"], CACHE_AXES)
    out = self.attention(q, key.astype(q.dtype), value.astype(q.dtype), bias, mask, scale,
                         kv_heads_major=True)
    return out, new_cache


@functools.cache
def _backend(platform: str, attention_impl: str | None) -> Backend:
  return Backend(platform, attention_impl)


def backend_for(config: ModelConfig) -> Backend:
  """The backend of the default JAX platform for this model's `attention_impl`."""
  return _backend(jax.default_backend(), config.attention_impl)
