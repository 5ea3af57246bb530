"""Which attention implementation runs, with which arguments: a pure decision, testable anywhere.

`plan_attention` maps a mask's structure (models/masks.py), the operands' dtype and head
width, a bias, the cache layout and the platform to one of:

- 'einsum': llmjax's CPU attention (models/cpu_kernels.py) over the dense mask;
- 'xla': `jax.nn.dot_product_attention(implementation='xla')`, given the mask's structure
  (`is_causal`, `local_window_size`, sequence lengths) when that says all of it, else the
  dense mask;
- 'cudnn': `jax.nn.dot_product_attention(implementation='cudnn')`, cuDNN's fused flash
  attention, given only the structure (it never sees a dense mask).

The platform default (`ModelConfig.attention_impl=None`) is 'einsum' on CPU, 'cudnn' on a
CUDA GPU wherever cuDNN can run the attention (else 'xla', with the reason), 'xla' elsewhere.
In jax 0.10.2 `jax.nn.dot_product_attention(implementation=None)` always runs XLA, so cuDNN
has to be asked for by name, and only with the arguments its kernel accepts (the checks below
follow jax's `_src/cudnn/fused_attention_stablehlo.py`):

- bfloat16 or float16 operands; a head width that is a multiple of 8, at most 128 before
  Hopper (compute capability 9.0) and 256 from it; a GPU of compute capability 8.0 or later.
- masks given as structure: `is_causal`, a left-only (causal) window, per-row sequence
  lengths. A dense mask (packed segments, an explicit cross-attention mask) would reach cuDNN
  as an additive bias, and jax's cuDNN path always requests the bias gradient (dbias), which
  cuDNN supports only for some bias shapes (not yet checked on a GPU here); jax 0.10.2's
  public API has no segment ids or offsets for packed rows. Position biases (T5, ALiBi) stay
  on XLA for the same reason.
- queries not split along their length (sequence parallelism): jax's cuDNN partitioning rule
  rejects a sharded sequence axis.
- keys/values in [b, s, g, k]; a KV cache is [b, g, s, k], which jax.nn would transpose
  (a copy of every layer's cache at every step), so cached attention stays on XLA.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from llmjax.models.masks import MaskSpec

CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
IMPLEMENTATIONS = ("einsum", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class CudnnDevice:
  """A CUDA GPU that cuDNN flash attention runs on.

  Attributes:
    compute_capability: (major, minor), e.g. (9, 0) for H100/H200.
  """

  compute_capability: tuple[int, int]

  @property
  def max_head_dim(self) -> int:
    """The widest head cuDNN's bf16/fp16 flash attention takes on this GPU."""
    return 256 if self.compute_capability >= (9, 0) else 128


@dataclasses.dataclass(frozen=True)
class AttentionPlan:
  """How one attention call runs.

  Attributes:
    implementation: 'einsum', 'xla' or 'cudnn'.
    reason: why this implementation (a sentence).
    fallback: a self-attention on a cuDNN GPU that cannot use cuDNN (reason says why; the
      backend logs it once).
    dense_mask: the call reads the dense mask (`MaskSpec.dense_mask()`).
    is_causal: 'xla'/'cudnn': passed as `is_causal`. 'einsum': the dense mask is causal over
      the same tokens, so the kernel may skip the masked keys.
    local_window_size: passed as `local_window_size` (left, right), or None.
    seq_lengths: the spec's `lengths` are passed as query and key/value sequence lengths.
  """

  implementation: str
  reason: str
  fallback: bool = False
  dense_mask: bool = False
  is_causal: bool = False
  local_window_size: tuple[int, int] | None = None
  seq_lengths: bool = False

  def dot_product_attention_kwargs(self) -> dict:
    """The mask-related keyword arguments of `jax.nn.dot_product_attention` (not the mask)."""
    return {"is_causal": self.is_causal, "local_window_size": self.local_window_size,
            "implementation": self.implementation}


def uses_einsum(requested: str | None, platform: str) -> bool:
  """Whether attention runs llmjax's einsum attention: asked for, or the CPU default."""
  return requested == "einsum" or (requested is None and platform == "cpu")


def _structural(mask: MaskSpec) -> bool:
  """Whether is_causal / local_window_size / sequence lengths say all of the mask."""
  return mask.is_self_attention and not mask.packed


def _window_size(mask: MaskSpec) -> tuple[int, int] | None:
  if mask.window is None:
    return None
  # Keys fewer than `window` positions away: q - k <= window - 1 (and k - q, unless causal).
  return (mask.window - 1, 0 if mask.causal else mask.window - 1)


def _xla_plan(mask: MaskSpec, reason: str, fallback: bool = False) -> AttentionPlan:
  if not _structural(mask):
    return AttentionPlan("xla", reason, fallback, dense_mask=True)
  return AttentionPlan("xla", reason, fallback, is_causal=mask.causal,
                       local_window_size=_window_size(mask),
                       seq_lengths=mask.lengths is not None)


def cudnn_unsupported(mask: MaskSpec, *, dtype: jnp.dtype, head_dim: int, has_bias: bool,
                      kv_heads_major: bool, device: CudnnDevice | None,
                      queries_split: bool = False) -> str | None:
  """Why cuDNN flash attention cannot run this attention, or None when it can."""
  dtype = jnp.dtype(dtype)
  if device is None:
    return "no CUDA GPU of compute capability 8.0 or later with cuDNN"
  if dtype not in CUDNN_DTYPES:
    return f"cuDNN flash attention takes bfloat16/float16 operands, not {dtype}"
  if head_dim % 8 or head_dim > device.max_head_dim:
    return (f"head_dim={head_dim}: cuDNN needs a multiple of 8, at most {device.max_head_dim} "
            f"on compute capability {device.compute_capability[0]}."
            f"{device.compute_capability[1]}")
  if has_bias:
    return ("a position bias (T5 relative, ALiBi): jax's cuDNN path always requests its "
            "gradient (dbias), which cuDNN supports only for some bias shapes")
  if kv_heads_major or mask.is_over_cache:
    return ("attention over a [b, g, s, k] KV cache: jax.nn.dot_product_attention takes "
            "[b, s, g, k], so cuDNN would copy every layer's cache at every step")
  if mask.is_explicit:
    return ("an explicit dense mask (cross-attention): it would reach cuDNN as an additive "
            "bias with a requested gradient (see position biases)")
  if mask.packed:
    return ("packed segments: jax.nn.dot_product_attention has no segment-id or offset "
            "argument, and a dense mask would reach cuDNN as a bias")
  if mask.window is not None and not mask.causal:
    return "a bidirectional sliding window: cuDNN takes only left (causal) windows"
  if queries_split:
    return ("queries split along their length (sequence parallelism): jax's cuDNN "
            "partitioning rejects a sharded sequence axis")
  return None


def plan_attention(mask: MaskSpec, *, requested: str | None, platform: str,
                   dtype: jnp.dtype, head_dim: int, has_bias: bool = False,
                   kv_heads_major: bool = False, cudnn: CudnnDevice | None = None,
                   queries_split: bool = False) -> AttentionPlan:
  """Chooses the implementation of one attention call and its mask arguments.

  Args:
    mask: the mask's structure.
    requested: `ModelConfig.attention_impl`: 'einsum', 'xla', 'cudnn', or None (the
      platform default: 'einsum' on CPU, cuDNN where it can run on a CUDA GPU, else 'xla').
      'cudnn' is None on a GPU, except that a self-attention cuDNN cannot run is an error.
    platform: `jax.default_backend()`: 'cpu', 'gpu', 'tpu', ...
    dtype: the query/key/value dtype.
    head_dim: per-head width k.
    has_bias: an additive position bias is added to the scores.
    kv_heads_major: keys/values are a [b, g, s, k] cache rather than [b, s, g, k].
    cudnn: the GPU cuDNN would run on, or None where there is none.
    queries_split: the queries' length axis is sharded across devices.

  Returns:
    The plan.

  Raises:
    ValueError: `requested` is unknown, or 'cudnn' and cuDNN cannot run this self-attention.
  """
  if requested is not None and requested not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {requested!r} is not one of "
                     f"{IMPLEMENTATIONS} or None.")
  if uses_einsum(requested, platform):
    causal = mask.causal and mask.is_self_attention
    return AttentionPlan("einsum", "llmjax's einsum attention (the CPU default)",
                         dense_mask=True, is_causal=causal)
  if requested == "xla":
    return _xla_plan(mask, "attention_impl='xla'")
  if requested is None and cudnn is None:
    return _xla_plan(mask, f"the {platform} default: XLA")
  why_not = cudnn_unsupported(mask, dtype=dtype, head_dim=head_dim, has_bias=has_bias,
                              kv_heads_major=kv_heads_major, device=cudnn,
                              queries_split=queries_split)
  if why_not is not None:
    # Attention over a KV cache or an explicit cross-attention mask has no cuDNN form here:
    # XLA by design. A self-attention that misses cuDNN is worth reporting (or, when 'cudnn'
    # was asked for, an error).
    missed = mask.is_self_attention and not kv_heads_major
    if requested == "cudnn" and missed:
      raise ValueError(f"ModelConfig.attention_impl='cudnn' cannot run this attention: "
                       f"{why_not}. Use attention_impl=None (cuDNN where it can run, XLA "
                       "elsewhere) or 'xla'.")
    return _xla_plan(mask, f"XLA, not cuDNN: {why_not}", fallback=missed)
  return AttentionPlan("cudnn", "cuDNN flash attention", is_causal=mask.causal,
                       local_window_size=_window_size(mask),
                       seq_lengths=mask.lengths is not None)
