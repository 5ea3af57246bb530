"""`LanguageModel`: the one interface the trainer, evaluator and sampler use.

It wraps a Flax module built from a `ModelConfig` and exposes plain functions of explicit
params: `init`, `apply`, `loss_fn`, `score`, `logits_fn`, `init_cache`, plus the analytic
`num_params` and `flops_per_token` used for logging and MFU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.attention import attention_num_params
from llmjax.models.config import ModelConfig
from llmjax.models.mlp import mlp_num_params
from llmjax.models.norms import norm_num_params
from llmjax.models.stack import Cache
from llmjax.models.transformer import DecoderOnly
from llmjax.training.losses import cross_entropy_with_z_loss, token_log_likelihood

Batch = Mapping[str, Any]


class LanguageModel:
  """A decoder-only language model with explicit parameters.

  Attributes:
    config: the ModelConfig.
    module: the Flax module (`DecoderOnly`).
  """

  def __init__(self, config: ModelConfig):
    self.config = config
    self.module = DecoderOnly(config)

  # Initialization.
  def init_boxed(self, rng: jax.Array, batch_size: int = 1, seq_len: int | None = None) -> Any:
    """Params still boxed with logical axis names (`nn.Partitioned`), for sharding."""
    seq_len = min(self.config.max_seq_len, 8) if seq_len is None else seq_len
    self._check_length(seq_len)
    tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
    return self.module.init({"params": rng}, tokens)["params"]

  def init(self, rng: jax.Array, batch_size: int = 1, seq_len: int | None = None) -> Any:
    """Plain (unboxed) params."""
    # Jitted: far faster than running the init forward pass op by op.
    init = jax.jit(lambda r: nn.unbox(self.init_boxed(r, batch_size, seq_len)))
    return init(rng)

  def abstract_init(self, batch_size: int = 1, seq_len: int | None = None) -> Any:
    """Boxed abstract params (ShapeDtypeStructs in `nn.Partitioned`), allocating nothing."""
    return jax.eval_shape(lambda rng: self.init_boxed(rng, batch_size, seq_len),
                          jax.random.PRNGKey(0))

  # Forward passes.
  def apply(self, params: Any, batch_or_tokens: Batch | jax.Array,
            positions: jax.Array | None = None, segment_ids: jax.Array | None = None, *,
            cache: Cache | None = None, deterministic: bool = True,
            rng: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
    """Logits for a batch dict (`inputs`, `positions`, `segment_ids`) or a [b, t] token array.

    Returns:
      ([b, t, v] float32 logits, updated cache or None).
    """
    if isinstance(batch_or_tokens, Mapping):
      tokens = batch_or_tokens["inputs"]
      positions = batch_or_tokens.get("positions") if positions is None else positions
      segment_ids = batch_or_tokens.get("segment_ids") if segment_ids is None else segment_ids
    else:
      tokens = batch_or_tokens
    if cache is None:
      self._check_length(tokens.shape[-1])
    rngs = {} if rng is None else {"dropout": rng}
    return self.module.apply({"params": params}, tokens, positions, segment_ids, cache=cache,
                             deterministic=deterministic, rngs=rngs)

  def loss_fn(self, params: Any, batch: Batch, rng: jax.Array | None, *, z_loss: float = 0.0,
              deterministic: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted mean next-token cross-entropy (+ z-loss); see `training.losses`."""
    logits, _ = self.apply(params, batch, deterministic=deterministic,
                           rng=None if deterministic else rng)
    return cross_entropy_with_z_loss(logits, batch["targets"], batch.get("weights"), z_loss)

  def score(self, params: Any, batch: Batch) -> jax.Array:
    """[b] summed log-likelihood of each row's targets (weights applied)."""
    logits, _ = self.apply(params, batch)
    log_lik, _ = token_log_likelihood(logits, batch["targets"])
    weights = batch.get("weights")
    if weights is not None:
      log_lik = log_lik * weights
    return jnp.sum(log_lik, axis=-1)

  def logits_fn(self, params: Any, tokens: jax.Array, positions: jax.Array,
                cache: Cache | None) -> tuple[jax.Array, Cache | None]:
    """Sampling entry point: ([b, t, v] logits, cache) for tokens at `positions`."""
    return self.apply(params, tokens, positions, cache=cache)

  def init_cache(self, batch_size: int, max_len: int) -> Cache:
    """An all-zero cache {"k", "v"} of shape [l, b, max_len, g, k] in the compute dtype."""
    self._check_length(max_len)
    cfg = self.config
    shape = (cfg.num_layers, batch_size, max_len, cfg.kv_heads, cfg.dim_per_head)
    return {"k": jnp.zeros(shape, cfg.compute_dtype), "v": jnp.zeros(shape, cfg.compute_dtype)}

  def _check_length(self, length: int) -> None:
    # Learned tables silently clip past their end; catch that before compiling anything.
    if self.config.position == "learned" and length > self.config.max_seq_len:
      raise ValueError(
          f"Sequence length {length} exceeds ModelConfig.max_seq_len={self.config.max_seq_len} "
          "(the size of the learned position table): shorten the sequences or raise "
          "max_seq_len (or use position='rope').")

  # Accounting.
  def num_params(self, *, embeddings: bool = True) -> int:
    """Analytic parameter count (equals the real tree's size).

    Args:
      embeddings: include the token and position tables (an untied output head always counts).
    """
    cfg = self.config
    per_layer = attention_num_params(cfg) + mlp_num_params(cfg) + 2 * norm_num_params(cfg)
    count = cfg.num_layers * per_layer + norm_num_params(cfg)
    if not cfg.tie_embeddings:
      count += cfg.embed_dim * cfg.vocab_size + (cfg.vocab_size if cfg.use_bias else 0)
    if embeddings:
      count += cfg.vocab_size * cfg.embed_dim
      if cfg.position == "learned":
        count += cfg.max_seq_len * cfg.embed_dim
    return count

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM-style.

    flops = 6 * N_matmul + 12 * l * h * k * seq_len, where N_matmul counts the weights of every
    matmul a token passes through: per layer the q/k/v/out projections and the MLP matrices,
    plus the d*v output projection (tied or not). Embedding lookups, norms and biases are not
    matmuls. The second term is QK^T and AV (2 * 2 * h * k * seq_len forward, x3 with the
    backward pass), without halving for the causal mask, as in the PaLM paper.
    """
    cfg = self.config
    d, h, g, k, f = (cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head,
                     cfg.mlp_dim)
    mlp_matrices = 3 if cfg.mlp == "swiglu" else 2
    per_layer = 2 * d * h * k + 2 * d * g * k + mlp_matrices * d * f
    matmul_params = cfg.num_layers * per_layer + d * cfg.vocab_size
    return float(6 * matmul_params + 12 * cfg.num_layers * h * k * seq_len)
