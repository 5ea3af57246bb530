"""`LanguageModel`: the one interface the trainer, evaluator and sampler use, for every family.

It wraps the Flax module a `ModelConfig` names (DecoderOnly, EncoderOnly or EncoderDecoder) and
exposes plain functions of explicit params: `init`, `apply`, `loss_fn`, `score`, `logits_fn`,
`decoder` (everything generation needs, as one typed `Decoder`: models/decoder.py), plus the
analytic `num_params` and `flops_per_token` used for logging and MFU. Callers never branch on
the architecture: batches carry the keys their family needs (see `batch_keys`).

Batch formats ([b, t] int32 unless said):
- decoder (causal LM) and encoder (MLM): inputs, targets, weights (float32), segment_ids,
  positions.
- encoder with a classification head: inputs, segment_ids, positions; labels [b] int32,
  weights [b] float32 (0 = padding row).
- encoders may also carry token_types [b, t] (BERT's segment A = 0 / B = 1: sentence pairs),
  added through the token-type embedding (ModelConfig.type_vocab_size); absent = type 0.
- encoder_decoder: encoder_inputs, encoder_segment_ids, encoder_positions [b, s]; inputs (the
  decoder input, BOS-started targets shifted right), targets, weights, segment_ids, positions
  [b, t].
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.attention import attention_num_params
from llmjax.models.config import ModelConfig
from llmjax.models.decoder import Decoder, unstack_layers
from llmjax.models.encoder import EncoderOnly
from llmjax.models.encoder_decoder import EncoderDecoder, cross_kv
from llmjax.models.heads import classification_head_num_params, mlm_transform_num_params
from llmjax.models.losses import cross_entropy_with_z_loss, token_log_likelihood
from llmjax.models.mlp import GATED, mlp_num_params
from llmjax.models.norms import norm_num_params
from llmjax.models.stack import Cache, cache_slots, split_cache
from llmjax.models.transformer import DecoderOnly

Batch = Mapping[str, Any]


def batch_keys(config: ModelConfig) -> tuple[str, ...]:
  """The batch keys a model of this config trains on."""
  if config.architecture == "encoder_decoder":
    return ("encoder_inputs", "encoder_segment_ids", "encoder_positions", "inputs", "targets",
            "weights", "segment_ids", "positions")
  if config.is_classifier:
    return ("inputs", "segment_ids", "positions", "labels", "weights")
  return ("inputs", "targets", "weights", "segment_ids", "positions")


class LanguageModel:
  """A transformer of any family with explicit parameters.

  Attributes:
    config: the ModelConfig.
    module: the Flax module (DecoderOnly, EncoderOnly or EncoderDecoder).
  """

  def __init__(self, config: ModelConfig):
    self.config = config
    arch = config.architecture
    if arch == "decoder":
      self.module = DecoderOnly(config)
    elif arch == "encoder":
      self.module = EncoderOnly(config)
    else:
      self.module = EncoderDecoder(config, deterministic=True)
      self._train_module = EncoderDecoder(config, deterministic=False)

  @property
  def is_encoder_decoder(self) -> bool:
    return self.config.architecture == "encoder_decoder"

  @property
  def can_decode(self) -> bool:
    """Whether the model generates text autoregressively (decoder or encoder_decoder)."""
    return self.config.architecture != "encoder"

  # Initialization.
  def dummy_batch(self, batch_size: int = 1, seq_len: int | None = None) -> dict[str, Any]:
    """An all-zero batch of the family's format (for init and shape inference)."""
    seq_len = min(self.config.max_seq_len, 8) if seq_len is None else seq_len
    tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
    batch = {"inputs": tokens, "segment_ids": jnp.ones_like(tokens),
             "positions": jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), tokens.shape)}
    if self.is_encoder_decoder:
      batch.update(encoder_inputs=tokens, encoder_segment_ids=batch["segment_ids"],
                   encoder_positions=batch["positions"])
    return batch

  def init_boxed(self, rng: jax.Array, batch_size: int = 1, seq_len: int | None = None) -> Any:
    """Params still boxed with logical axis names (`nn.Partitioned`), for sharding."""
    batch = self.dummy_batch(batch_size, seq_len)
    self._check_length(batch["inputs"].shape[-1])
    return self._module(True).init({"params": rng}, *self._module_args(batch))["params"]

  def init(self, rng: jax.Array, batch_size: int = 1, seq_len: int | None = None) -> Any:
    """Plain (unboxed) params."""
    # Jitted: far faster than running the init forward pass op by op.
    init = jax.jit(lambda r: nn.unbox(self.init_boxed(r, batch_size, seq_len)))
    return init(rng)

  def abstract_init(self, batch_size: int = 1, seq_len: int | None = None) -> Any:
    """Boxed abstract params (ShapeDtypeStructs in `nn.Partitioned`), allocating nothing."""
    return jax.eval_shape(lambda rng: self.init_boxed(rng, batch_size, seq_len),
                          jax.random.PRNGKey(0))

  def _module(self, deterministic: bool) -> nn.Module:
    return self.module if deterministic or not self.is_encoder_decoder else self._train_module

  def _module_args(self, batch: Batch) -> tuple:
    if self.is_encoder_decoder:
      return (batch["encoder_inputs"], batch.get("encoder_positions"),
              batch.get("encoder_segment_ids"), batch["inputs"], batch.get("positions"),
              batch.get("segment_ids"))
    return (batch["inputs"], batch.get("positions"), batch.get("segment_ids"))

  # Forward passes.
  def apply(self, params: Any, batch_or_tokens: Batch | jax.Array,
            positions: jax.Array | None = None, segment_ids: jax.Array | None = None, *,
            token_types: jax.Array | None = None, cache: Cache | None = None,
            deterministic: bool = True,
            rng: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
    """Logits for a batch dict or a [b, t] token array (decoder and encoder only).

    Args:
      token_types: encoder only: [b, t] token-type ids (or the batch's "token_types");
        None = type 0 everywhere.

    Returns:
      ([b, t, v] float32 logits, or [b, num_classes] for a classifier; updated cache or None).
    """
    if isinstance(batch_or_tokens, Mapping):
      batch = dict(batch_or_tokens)
      if positions is not None:
        batch["positions"] = positions
      if segment_ids is not None:
        batch["segment_ids"] = segment_ids
      if token_types is not None:
        batch["token_types"] = token_types
    else:
      if self.is_encoder_decoder:
        raise ValueError("an encoder_decoder model needs a batch dict with encoder_inputs and "
                         "(decoder) inputs, not a token array.")
      batch = {"inputs": batch_or_tokens, "positions": positions, "segment_ids": segment_ids,
               "token_types": token_types}
    if batch.get("token_types") is not None and self.config.architecture != "encoder":
      raise ValueError(f"token_types are an encoder's (BERT's segment A/B); a "
                       f"{self.config.architecture!r} model has no token-type embedding.")
    if "encoder_inputs" in batch and not self.is_encoder_decoder:
      raise ValueError(
          f"the batch has encoder_inputs, but a {self.config.architecture!r} model has no "
          "encoder to cross-attend to: use architecture='encoder_decoder' (or a causal_lm / "
          "mlm data objective).")
    if cache is None:
      self._check_length(batch["inputs"].shape[-1])
      if self.is_encoder_decoder:
        self._check_length(batch["encoder_inputs"].shape[-1])
    rngs = {} if rng is None else {"dropout": rng}
    variables = {"params": params}
    if self.is_encoder_decoder:
      if cache is not None:
        raise ValueError("decode an encoder_decoder model through LanguageModel.decoder(params): "
                         "its encode builds the cache.")
      return self._module(deterministic).apply(variables, *self._module_args(batch), rngs=rngs)
    if self.config.architecture == "encoder":
      if cache is not None:
        raise ValueError("an encoder-only model has no KV cache: it does not decode.")
      return self.module.apply(variables, *self._module_args(batch),
                               token_types=batch.get("token_types"),
                               deterministic=deterministic, rngs=rngs)
    return self.module.apply(variables, *self._module_args(batch), cache=cache,
                             deterministic=deterministic, rngs=rngs)

  def loss_fn(self, params: Any, batch: Batch, rng: jax.Array | None, *, z_loss: float = 0.0,
              deterministic: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted mean cross-entropy (+ z-loss) of targets, or of labels for a classifier."""
    logits, _ = self.apply(params, batch, deterministic=deterministic,
                           rng=None if deterministic else rng)
    if self.config.is_classifier:
      weights = batch.get("weights")
      return cross_entropy_with_z_loss(logits[:, None], batch["labels"][:, None],
                                       None if weights is None else weights[:, None], z_loss)
    return cross_entropy_with_z_loss(logits, batch["targets"], batch.get("weights"), z_loss)

  def score(self, params: Any, batch: Batch) -> jax.Array:
    """[b] per-example log-likelihood: summed over weighted targets, or log p(label)."""
    logits, _ = self.apply(params, batch)
    if self.config.is_classifier:
      log_lik, _ = token_log_likelihood(logits, batch["labels"])
      return log_lik
    log_lik, _ = token_log_likelihood(logits, batch["targets"])
    weights = batch.get("weights")
    if weights is not None:
      log_lik = log_lik * weights
    return jnp.sum(log_lik, axis=-1)

  def hidden_states(self, params: Any, tokens: jax.Array,
                    segment_ids: jax.Array | None = None) -> jax.Array:
    """[b, t, d] final hidden states: the last block's output after the final norm, before any
    head (for embeddings and probing).

    Decoder and encoder (MLM or classifier): of `tokens`; encoder_decoder: the encoder's
    output, `tokens` being the encoder input. segment_ids [b, t] (0 = padding) keep an
    encoder's padded positions out of attention; a decoder's right padding cannot change
    earlier (causal) positions. The normal forward pass is untouched: the output is captured
    from the module (Flax `capture_intermediates`), and under jit the unused head is dead code.
    """
    self._check_length(tokens.shape[-1])
    variables = {"params": params}
    if self.is_encoder_decoder:
      return self.module.apply(variables, tokens, None, segment_ids,
                               method=EncoderDecoder.encode)
    # Pre-norm models end with the top-level final_norm; post-norm stacks end normalized.
    stack = "decoder" if self.config.architecture == "decoder" else "encoder"
    name = "final_norm" if self.config.norm_position == "pre" else stack
    _, state = self.module.apply(
        variables, tokens, None, segment_ids,
        capture_intermediates=lambda module, method: method == "__call__"
        and module.path == (name,), mutable=["intermediates"])
    out = state["intermediates"][name]["__call__"][0]
    return out if name == "final_norm" else out[0]  # A stack returns (x, cache).

  def logits_fn(self, params: Any, tokens: jax.Array, positions: jax.Array,
                cache: Cache | None) -> tuple[jax.Array, Cache | None]:
    """([b, t, v] logits, cache) for decoder tokens at `positions`, params as trained.

    With cache=None it is a decoder's full forward pass. Generation goes through `decoder`,
    whose `logits_fn` is this function of an unrolled twin of the model.
    """
    if self.is_encoder_decoder:
      if cache is None:
        raise ValueError("encoder_decoder decoding needs the cache from "
                         "LanguageModel.decoder(params).encode.")
      return self.module.apply({"params": params}, tokens, positions, cache=cache,
                               method=EncoderDecoder.decode)
    if not self.can_decode:
      raise ValueError("an encoder-only model does not generate text: score or fill masks "
                       "instead (llmjax sample --mode=fill_mask).")
    return self.apply(params, tokens, positions, cache=cache)

  # Decoding.
  def decoder(self, params: Any) -> Decoder:
    """Everything generation needs, as one typed value (models/decoder.py).

    Build it inside the jitted program that decodes: the decode layout of `params` is then
    made inside that program, so no second copy of the weights outlives a call (or with
    `jax.eval_shape(model.decoder, params)` for its static facts alone).

    The decode layout is the model's own choice, identical on every backend today: the
    decoder stack of a scanned model unrolled (`decoder.unstack_layers`; reading stacked
    weights in a while loop slices every layer's weights at every step; an encoder, run once
    per call, stays scanned) and a cache of one [1, b, ...] array per layer
    (`stack.split_cache`; writing layer i back into a stacked cache copied the whole cache at
    every step, a third of a batch-8 CPU decode step, benchmarks/NOTES.md).

    Raises:
      ValueError: for an encoder-only model, which does not generate text.
    """
    cfg = self.config
    if cfg.is_classifier:
      raise ValueError("a classifier (an encoder with num_classes) does not generate text: "
                       "its output is class logits (LanguageModel.apply, LoadedModel.logits).")
    if not self.can_decode:
      raise ValueError("an encoder-only (MLM) model does not generate text: fill masks instead "
                       "(LoadedModel.fill_mask, llmjax sample --mode=fill_mask).")
    if cfg.scan_layers:
      params = {**params, "decoder": unstack_layers(params["decoder"])}
    return Decoder(
        params=params,
        # The unrolled twin reads the decoder's layers_<i>; decode never reads the encoder.
        logits_fn=self._unrolled.logits_fn,
        init_cache=self._decode_cache,
        cache_length=cache_slots,
        vocab_size=cfg.vocab_size,
        max_seq_len=cfg.max_seq_len,
        encode=self._encode if self.is_encoder_decoder else None,
        max_encoder_len=(cfg.max_seq_len if self.is_encoder_decoder and cfg.position == "learned"
                         else None))

  @functools.cached_property
  def _unrolled(self) -> LanguageModel:
    """This model with unscanned layers: it computes the same logits from unstacked params."""
    if not self.config.scan_layers:
      return self
    return LanguageModel(self.config.replace(scan_layers=False))

  def _init_cache(self, batch_size: int, max_len: int) -> Cache:
    """An all-zero self-attention cache {"k", "v"} [l, b, g, max_len, k] (compute dtype)."""
    if batch_size <= 0 or max_len <= 0:
      raise ValueError(f"a KV cache needs a positive batch_size and max_len, got batch_size="
                       f"{batch_size}, max_len={max_len}.")
    if max_len > self.config.max_seq_len:
      raise ValueError(
          f"cache max_len={max_len} exceeds the model's max_seq_len={self.config.max_seq_len}: "
          "positions past max_seq_len were never trained; lower max_len or use a model with a "
          "larger max_seq_len.")
    cfg = self.config
    layers = cfg.decoder_layers if self.is_encoder_decoder else cfg.num_layers
    shape = (layers, batch_size, cfg.kv_heads, max_len, cfg.dim_per_head)
    return {"k": jnp.zeros(shape, cfg.compute_dtype), "v": jnp.zeros(shape, cfg.compute_dtype)}

  def _decode_cache(self, batch_size: int, max_len: int) -> Cache:
    """`Decoder.init_cache`: the all-zero cache split per layer (see `decoder`)."""
    return split_cache(self._init_cache(batch_size, max_len))

  def _encode(self, params: Any, encoder_tokens: jax.Array,
              encoder_segment_ids: jax.Array | None, max_len: int) -> Cache:
    """`Decoder.encode`: runs the encoder once and returns the full decode cache.

    Args:
      params: the params, with the decoder stack scanned or unrolled (the decode layout).
      encoder_tokens: [b, s] encoder ids (right-padded).
      encoder_segment_ids: [b, s], 0 on padding (None = no padding).
      max_len: decoder cache slots per row.

    Returns:
      {"k", "v"} zeros with max_len slots, {"cross_k", "cross_v"} with s slots, each split per
      layer into [1, b, g, slots, k] arrays, and "encoder_mask" [1, b, s] (int32, 1 = real
      token).
    """
    self._check_length(encoder_tokens.shape[-1])
    if encoder_segment_ids is None:
      encoder_segment_ids = jnp.ones_like(encoder_tokens)
    encoded = self.module.apply({"params": params}, encoder_tokens, None, encoder_segment_ids,
                                method=EncoderDecoder.encode)
    cache = self._init_cache(encoder_tokens.shape[0], max_len)
    cache.update(cross_kv(params, encoded, self.config))
    cache["encoder_mask"] = (encoder_segment_ids > 0).astype(jnp.int32)[None]
    return split_cache(cache)

  def _check_length(self, length: int) -> None:
    # Learned tables silently clip past their end; catch that before compiling anything.
    if self.config.position == "learned" and length > self.config.max_seq_len:
      raise ValueError(
          f"Sequence length {length} exceeds ModelConfig.max_seq_len={self.config.max_seq_len} "
          "(the size of the learned position table): shorten the sequences or raise "
          "max_seq_len (or use a position scheme without a table, e.g. 'rope').")

  # Accounting.
  def num_params(self, *, embeddings: bool = True) -> int:
    """Analytic parameter count (equals the real tree's size).

    Args:
      embeddings: include the token and position tables (an untied output head always counts).
    """
    cfg = self.config
    d, v = cfg.embed_dim, cfg.vocab_size
    norm = norm_num_params(cfg)
    per_layer = attention_num_params(cfg) + mlp_num_params(cfg) + 2 * norm
    relpos = cfg.relative_num_buckets * cfg.num_heads if cfg.position == "t5_relative" else 0
    position_tables = 1
    if self.is_encoder_decoder:
      cross_layer = per_layer + attention_num_params(cfg) + norm
      count = (cfg.num_layers * per_layer + cfg.decoder_layers * cross_layer + 2 * norm
               + 2 * relpos)
      position_tables = 2
    else:
      final_norm = norm if cfg.norm_position == "pre" else 0
      count = cfg.num_layers * per_layer + final_norm + relpos + (norm if cfg.embedding_norm else 0)
    has_vocab_head = not cfg.is_classifier
    if cfg.architecture == "encoder":
      if cfg.is_classifier:
        count += classification_head_num_params(cfg)
      else:
        count += mlm_transform_num_params(cfg) + (v if cfg.use_bias else 0)
    elif cfg.use_bias and not cfg.tie_embeddings:
      count += v
    if has_vocab_head and not cfg.tie_embeddings:
      count += d * v
    if embeddings:
      count += (v + cfg.type_vocab_size) * d
      if cfg.position == "learned":
        count += position_tables * cfg.max_seq_len * d
    return count

  def flops_per_token(self, seq_len: int, decoder_seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward), PaLM-style.

    flops = 6 * N_matmul + 12 * l * h * k * context, where N_matmul counts the weights of every
    matmul a token passes through: per layer the q/k/v/out projections and the MLP matrices,
    plus the output head (d * v, or the classifier). Embedding lookups, norms, biases and
    position biases are not matmuls. The second term is QK^T and AV (2 * 2 * h * k * context
    forward, x3 with the backward pass), without halving for the causal mask, as in PaLM.

    For encoder_decoder, a "token" is any encoder or decoder token: the FLOPs of one example
    (seq_len encoder + decoder_seq_len decoder tokens; default decoder_seq_len = seq_len) are
    divided by seq_len + decoder_seq_len, so tokens/s counted over both sides gives the MFU.
    Decoder tokens also pay the cross-attention projections (q/out on the decoder side, k/v
    on each encoder token) and attention over the encoder length.
    """
    cfg = self.config
    d, h, g, k, f = (cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head,
                     cfg.mlp_dim)
    mlp_matrices = 3 if cfg.mlp in GATED else 2
    attn = 2 * d * h * k + 2 * d * g * k
    per_layer = attn + mlp_matrices * d * f
    if cfg.is_classifier:  # Only the first/pooled row feeds the head; count it per token.
      head = (d * d + d * cfg.num_classes) / seq_len
    elif cfg.architecture == "encoder":
      head = d * d + d * cfg.vocab_size
    else:
      head = d * cfg.vocab_size
    if not self.is_encoder_decoder:
      matmul = cfg.num_layers * per_layer + head
      return float(6 * matmul + 12 * cfg.num_layers * h * k * seq_len)
    te, td = seq_len, seq_len if decoder_seq_len is None else decoder_seq_len
    encoder = te * (6 * cfg.num_layers * per_layer + 12 * cfg.num_layers * h * k * te)
    cross_kv_flops = te * 6 * cfg.decoder_layers * 2 * d * g * k
    decoder_per_token = (6 * (cfg.decoder_layers * (per_layer + 2 * d * h * k) + head)
                         + 12 * cfg.decoder_layers * h * k * (td + te))
    return float((encoder + cross_kv_flops + td * decoder_per_token) / (te + td))
