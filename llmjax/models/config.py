"""Model configuration: one frozen, validated dataclass per model.

This file holds configuration only; modules live in their own files. Strings (not dtypes or
callables) are used for every choice so a config round-trips through gin and JSON unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

from llmjax.config_checks import check_field_types
from llmjax.models.precision import PRECISIONS, policy_dtypes

ARCHITECTURES = ("decoder", "encoder", "encoder_decoder")
POSITIONS = ("learned", "sinusoidal", "rope", "t5_relative", "alibi")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
MLPS = ("gelu", "relu", "swiglu", "geglu")
POOLINGS = ("first", "mean")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "offload")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"ModelConfig.{name}={value!r} is not one of {allowed}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Shape and options of a transformer of any family.

  Attributes:
    architecture: 'decoder' (GPT/LLaMA: causal LM), 'encoder' (BERT: bidirectional; MLM head,
      or a classification head when num_classes is set) or 'encoder_decoder' (T5).
    vocab_size: number of token ids (must cover the tokenizer's vocabulary).
    num_layers: transformer blocks (the encoder's, for encoder_decoder).
    num_decoder_layers: encoder_decoder only: decoder blocks (None = num_layers).
    num_heads: query heads.
    num_kv_heads: key/value heads; None means num_heads (MHA), 1 is MQA, else GQA.
    embed_dim: residual stream width.
    head_dim: per-head width; None means embed_dim // num_heads.
    mlp_dim: hidden width of the MLP.
    max_seq_len: longest sequence the model accepts (size of a learned position table).
    position: 'learned' or 'sinusoidal' absolute embeddings, 'rope' rotary embeddings, or an
      attention bias: 't5_relative' (bucketed, one table per stack shared by its layers) or
      'alibi' (fixed per-head linear slopes).
    rope_theta: rotary base frequency.
    relative_num_buckets / relative_max_distance: T5 relative-position buckets.
    sliding_window: local attention: a query sees keys fewer than this many positions away
      (causal stacks: behind it); None = global attention.
    norm: 'layernorm' or 'rmsnorm'; norm_eps its epsilon.
    norm_position: 'pre' (x + f(norm(x)), a final norm after the stack: GPT-2, LLaMA, T5) or
      'post' (norm(x + f(x)), no final norm: the original Transformer and BERT).
    embedding_norm: a norm on the summed embeddings before the first block (BERT).
    type_vocab_size: rows of a token-type (segment A/B) embedding added to the inputs (BERT's
      2); 0 = none. Inputs without token types use type 0.
    mlp: 'gelu' or 'relu' (two matrices), 'swiglu' or 'geglu' (gated, three matrices).
    gelu_approximate: GELU (in 'gelu', 'geglu' and BERT's MLM transform) by its tanh
      approximation (GPT-2's and T5's "gelu_new") or, when False, exactly (BERT's erf "gelu").
    tie_embeddings: reuse the input embedding as the output projection.
    use_bias: biases on dense layers.
    dropout_rate: dropout on attention output, MLP output and embeddings.
    precision: 'auto', 'float32', 'mixed_bfloat16' or 'bfloat16' (models/precision.py).
    dtype: compute dtype; param_dtype: storage dtype of parameters (as created, loaded, served
      and exported). Training keeps fp32 master parameters and fp32 optimizer state whatever
      param_dtype says; only precision='bfloat16' trains the parameters in bf16.
    scan_layers: run blocks under nn.scan (fast compile) instead of a Python loop.
    scan_unroll: layers per iteration of that scan. Parameters keep their stacked [layers, ...]
      layout whatever the value; >= num_layers compiles straight-line code (slower to compile;
      on CPU faster for small models: no per-layer dynamic slices and stacked residual writes,
      see benchmarks/NOTES.md).
    remat_policy: what the backward pass recomputes: 'none' (save every activation), 'full'
      (save only block inputs), 'dots' (save matmul outputs), 'dots_no_batch' (save only
      weight matmuls), 'offload' (as dots_no_batch, saved to host memory; GPU/TPU only).
    attention_scale: factor on the query-key products; None = head_dim ** -0.5. T5 folds that
      factor into its weights and uses 1.0.
    attention_impl: 'einsum' (llmjax's CPU attention, models/cpu_kernels.py), 'xla' or
      'cudnn' (jax.nn.dot_product_attention with that implementation; 'cudnn' fails for a
      self-attention cuDNN cannot run), or None, the platform default: 'einsum' on CPU; on CUDA
      GPUs cuDNN flash attention wherever it can run (bf16/fp16; head_dim a multiple of 8, at
      most 128, or 256 from Hopper; a causal, causal-window or no mask; no position bias,
      packed segments or KV cache), else XLA; XLA on TPU and elsewhere (attention_plan.py).
    num_classes: encoder only: a pooled classification head with this many classes replaces
      the masked-LM head.
    pooling: how the classification head pools the sequence: 'first' token or 'mean'.
  """

  vocab_size: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  max_seq_len: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  position: str = "rope"
  rope_theta: float = 10_000.0
  norm: str = "rmsnorm"
  norm_eps: float = 1e-6
  norm_position: str = "pre"
  embedding_norm: bool = False
  type_vocab_size: int = 0
  mlp: str = "swiglu"
  gelu_approximate: bool = True
  tie_embeddings: bool = True
  use_bias: bool = False
  dropout_rate: float = 0.0
  precision: str = "auto"
  dtype: str | None = None
  param_dtype: str | None = None
  scan_layers: bool = True
  scan_unroll: int = 1
  remat_policy: str = "none"
  attention_scale: float | None = None
  attention_impl: str | None = None
  architecture: str = "decoder"
  num_decoder_layers: int | None = None
  relative_num_buckets: int = 32
  relative_max_distance: int = 128
  sliding_window: int | None = None
  num_classes: int | None = None
  pooling: str = "first"

  def __post_init__(self):
    check_field_types(self)
    for name in ("vocab_size", "num_layers", "num_heads", "embed_dim", "mlp_dim", "max_seq_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}.")
    _choice("architecture", self.architecture, ARCHITECTURES)
    _choice("position", self.position, POSITIONS)
    _choice("pooling", self.pooling, POOLINGS)
    _choice("norm", self.norm, NORMS)
    _choice("norm_position", self.norm_position, NORM_POSITIONS)
    _choice("mlp", self.mlp, MLPS)
    _choice("remat_policy", self.remat_policy, REMAT_POLICIES)
    _choice("precision", self.precision, PRECISIONS)
    if self.attention_impl is not None:
      _choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    if self.dtype is not None:
      _choice("dtype", self.dtype, DTYPES)
    if self.param_dtype is not None:
      _choice("param_dtype", self.param_dtype, DTYPES)
    if self.head_dim is not None and self.head_dim <= 0:
      raise ValueError(f"ModelConfig.head_dim must be positive or None (embed_dim // num_heads), "
                       f"got {self.head_dim}.")
    if self.rope_theta <= 0:
      raise ValueError(f"ModelConfig.rope_theta must be positive (LLaMA uses 10000.0), got "
                       f"{self.rope_theta}.")
    if self.norm_eps < 0:
      raise ValueError(f"ModelConfig.norm_eps must be >= 0 (typically 1e-6 to 1e-5), got "
                       f"{self.norm_eps}.")
    if self.kv_heads <= 0 or self.num_heads % self.kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}: "
          "choose num_kv_heads among the divisors of num_heads (1 = MQA, num_heads = MHA).")
    if self.head_dim is None and self.embed_dim % self.num_heads:
      raise ValueError(
          f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}: "
          "set head_dim explicitly or change embed_dim/num_heads.")
    if self.position == "rope" and self.dim_per_head % 2:
      raise ValueError(f"rotary positions need an even head_dim, got {self.dim_per_head}.")
    if self.scan_unroll < 1:
      raise ValueError(f"ModelConfig.scan_unroll must be >= 1 (layers per scan iteration), got "
                       f"{self.scan_unroll}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}.")
    self._check_family()

  def _check_family(self) -> None:
    if self.num_decoder_layers is not None and self.architecture != "encoder_decoder":
      raise ValueError(
          f"num_decoder_layers={self.num_decoder_layers} asks for a decoder stack with "
          f"cross-attention, which a {self.architecture!r} model has none of: set "
          "architecture='encoder_decoder' or leave num_decoder_layers unset.")
    if self.num_decoder_layers is not None and self.num_decoder_layers <= 0:
      raise ValueError(f"num_decoder_layers must be positive, got {self.num_decoder_layers}.")
    if self.num_classes is not None:
      if self.architecture != "encoder":
        raise ValueError(
            f"num_classes={self.num_classes} adds a classification head, which only "
            f"architecture='encoder' has (got {self.architecture!r}): use an encoder or leave "
            "num_classes unset.")
      if self.num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {self.num_classes}.")
    if self.architecture == "encoder_decoder" and (
        self.norm_position != "pre" or self.embedding_norm or self.type_vocab_size):
      raise ValueError(
          "an encoder_decoder model is pre-norm with plain token embeddings (T5): leave "
          "norm_position='pre', embedding_norm=False and type_vocab_size=0.")
    if self.type_vocab_size < 0:
      raise ValueError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}.")
    if self.attention_scale is not None and not self.attention_scale > 0:
      raise ValueError(f"attention_scale must be positive or None, got {self.attention_scale}.")
    if self.sliding_window is not None and self.sliding_window <= 0:
      raise ValueError(f"sliding_window must be positive or None, got {self.sliding_window}.")
    if self.position == "t5_relative" and (
        self.relative_num_buckets < 4 or self.relative_max_distance <= self.relative_num_buckets
        // 2):
      raise ValueError(
          f"relative_num_buckets={self.relative_num_buckets} / relative_max_distance="
          f"{self.relative_max_distance}: need >= 4 buckets and a max distance above half of "
          "them (T5 uses 32 and 128).")
    if self.position == "sinusoidal" and self.embed_dim % 2:
      raise ValueError(f"sinusoidal positions need an even embed_dim, got {self.embed_dim}.")

  @property
  def decoder_layers(self) -> int:
    """Decoder depth of an encoder_decoder model."""
    return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

  @property
  def is_classifier(self) -> bool:
    return self.num_classes is not None

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def dim_per_head(self) -> int:
    return self.embed_dim // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def compute_dtype(self) -> jnp.dtype:
    """The dtype matmuls and activations use (dtype, else the precision policy's)."""
    return jnp.dtype(self.dtype or policy_dtypes(self.precision)[1])

  @property
  def weight_dtype(self) -> jnp.dtype:
    """The dtype parameters are stored in (param_dtype, else the precision policy's)."""
    return jnp.dtype(self.param_dtype or policy_dtypes(self.precision)[0])

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> ModelConfig:
    return cls(**json.loads(text))

  def replace(self, **changes: Any) -> ModelConfig:
    return dataclasses.replace(self, **changes)
