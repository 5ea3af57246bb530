"""T5 (`T5ForConditionalGeneration`) <-> an llmjax encoder_decoder: RMSNorm ("T5LayerNorm"),
relative position buckets (one table per stack, stored in its first block), no biases, no
1/sqrt(d_kv) attention scaling (T5 folds it into the weights: attention_scale=1.0).

T5 v1.1 / flan-T5: gated-GELU MLP ("gated-gelu", tanh GELU) and an untied head. The original
T5: ReLU MLP and the head tied to the shared embedding, with the d_model ** -0.5 output scaling
llmjax applies to tied encoder_decoder heads.
"""

from __future__ import annotations

from typing import Any

from llmjax.interop.mapping import Rule, config_problems, linear_rule, norm_rules, vector_rule
from llmjax.models.config import ModelConfig

MODEL_TYPES = ("t5",)
BASE_PREFIX = ""
IGNORED: tuple[str, ...] = ()
# T5Tokenizer's default number of sentinels <extra_id_i>, laid out after the pieces.
EXTRA_IDS = 100
_FEED_FORWARD = {"relu": ("relu", True), "gated-gelu": ("geglu", True),
                 "gelu": ("gelu", False), "gelu_new": ("gelu", True)}


def config_from_hf(hf: dict[str, Any], tensors: set[str]) -> dict[str, Any]:
  """ModelConfig fields of a T5 config.json (`tensors`: the names in its checkpoint).

  Whether the head is tied comes from the checkpoint, not config.json: transformers >= 5
  always writes tie_word_embeddings=true and records the v1.0 output scaling in
  `scale_decoder_outputs` instead. llmjax ties exactly when the output is scaled (T5 v1.0);
  an unscaled head is an own kernel (T5 v1.1), copied from the shared embedding when the
  checkpoint has no lm_head.weight.
  """
  ff = hf.get("feed_forward_proj", "relu")
  if ff not in _FEED_FORWARD:
    raise ValueError(f"T5 feed_forward_proj={ff!r} is not supported; llmjax maps "
                     f"{sorted(_FEED_FORWARD)}.")
  mlp, approximate = _FEED_FORWARD[ff]
  heads = hf["num_heads"]
  scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
  if scaled and "lm_head.weight" in tensors:
    raise ValueError("this T5 has its own lm_head.weight but scales the decoder output by "
                     "d_model ** -0.5 (tie_word_embeddings / scale_decoder_outputs true): llmjax "
                     "scales only a tied head. Set tie_word_embeddings=false in config.json for "
                     "a T5 v1.1 checkpoint.")
  return dict(architecture="encoder_decoder", vocab_size=hf["vocab_size"],
              num_layers=hf["num_layers"],
              num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
              num_heads=heads, num_kv_heads=heads, embed_dim=hf["d_model"],
              head_dim=hf["d_kv"], mlp_dim=hf["d_ff"], max_seq_len=hf.get("n_positions", 512),
              position="t5_relative",
              relative_num_buckets=hf.get("relative_attention_num_buckets", 32),
              relative_max_distance=hf.get("relative_attention_max_distance", 128),
              norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6), mlp=mlp,
              gelu_approximate=approximate, use_bias=False, attention_scale=1.0,
              tie_embeddings=bool(scaled))


def export_problems(cfg: ModelConfig) -> list[str]:
  """Why `cfg` is not a T5 (empty when it is)."""
  wanted = dict(architecture="encoder_decoder", position="t5_relative", norm="rmsnorm",
                use_bias=False, attention_scale=1.0, sliding_window=None)
  problems = config_problems(cfg, "T5", wanted, mlps=("relu", "gelu", "geglu"))
  if cfg.mlp == "geglu" and not cfg.gelu_approximate:
    problems.append("mlp='geglu' with exact GELU (T5's gated-gelu is the tanh approximation)")
  if cfg.kv_heads != cfg.num_heads:
    problems.append("grouped-query heads (T5: num_kv_heads == num_heads)")
  return problems


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """The config.json fields of a T5 equivalent to `cfg`."""
  ff = {"relu": "relu", "geglu": "gated-gelu"}.get(
      cfg.mlp, "gelu_new" if cfg.gelu_approximate else "gelu")
  return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
          "vocab_size": cfg.vocab_size, "d_model": cfg.embed_dim, "d_kv": cfg.dim_per_head,
          "d_ff": cfg.mlp_dim, "num_layers": cfg.num_layers,
          "num_decoder_layers": cfg.decoder_layers, "num_heads": cfg.num_heads,
          "relative_attention_num_buckets": cfg.relative_num_buckets,
          "relative_attention_max_distance": cfg.relative_max_distance,
          "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": ff, "dropout_rate": 0.0,
          "n_positions": cfg.max_seq_len, "tie_word_embeddings": cfg.tie_embeddings,
          "scale_decoder_outputs": cfg.tie_embeddings,
          "is_encoder_decoder": True}


def fallbacks(cfg: ModelConfig) -> dict[str, str]:
  """HF tensors that a checkpoint may omit, and the tensor to read instead."""
  return {} if cfg.tie_embeddings else {"lm_head.weight": "shared.weight"}


def duplicates(cfg: ModelConfig) -> dict[str, str]:
  """HF tensors that repeat another (the stacks' views of the shared embedding, a tied head)."""
  dup = {"encoder.embed_tokens.weight": "shared.weight",
         "decoder.embed_tokens.weight": "shared.weight"}
  if cfg.tie_embeddings:
    dup["lm_head.weight"] = "shared.weight"
  return dup


def _attention(prefix: str, param: str, cfg: ModelConfig, **layer) -> list[Rule]:
  d, h, k = cfg.embed_dim, cfg.num_heads, cfg.dim_per_head
  return [linear_rule(f"{param}/query", prefix + "q.weight", (h * k, d), (d, h, k), **layer),
          linear_rule(f"{param}/key", prefix + "k.weight", (h * k, d), (d, h, k), **layer),
          linear_rule(f"{param}/value", prefix + "v.weight", (h * k, d), (d, h, k), **layer),
          linear_rule(f"{param}/out", prefix + "o.weight", (d, h * k), (h, k, d), **layer)]


def _mlp(prefix: str, cfg: ModelConfig, **layer) -> list[Rule]:
  d, f = cfg.embed_dim, cfg.mlp_dim
  if cfg.mlp == "geglu":
    ins = [linear_rule("mlp/wi_gate", prefix + "wi_0.weight", (f, d), (d, f), **layer),
           linear_rule("mlp/wi_up", prefix + "wi_1.weight", (f, d), (d, f), **layer)]
  else:
    ins = [linear_rule("mlp/wi", prefix + "wi.weight", (f, d), (d, f), **layer)]
  return ins + [linear_rule("mlp/wo", prefix + "wo.weight", (d, f), (f, d), **layer)]


def rules(cfg: ModelConfig) -> list[Rule]:
  """The tensor correspondence of a T5 shaped like `cfg`."""
  d, h, v, nb = cfg.embed_dim, cfg.num_heads, cfg.vocab_size, cfg.relative_num_buckets
  enc = dict(stack="encoder", num_layers=cfg.num_layers)
  dec = dict(stack="decoder", num_layers=cfg.decoder_layers)
  e, p = "encoder.block.{i}.layer.", "decoder.block.{i}.layer."
  out = [
      vector_rule("token_embed/embedding", "shared.weight", (v, d)),
      vector_rule("encoder/relpos_bias/embedding",
                  "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", (nb, h)),
      vector_rule("decoder/relpos_bias/embedding",
                  "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", (nb, h)),
      *norm_rules("encoder_norm", "encoder.final_layer_norm", d, False),
      *norm_rules("decoder_norm", "decoder.final_layer_norm", d, False),
      *_attention(e + "0.SelfAttention.", "attention", cfg, **enc),
      *norm_rules("attention_norm", e + "0.layer_norm", d, False, **enc),
      *_mlp(e + "1.DenseReluDense.", cfg, **enc),
      *norm_rules("mlp_norm", e + "1.layer_norm", d, False, **enc),
      *_attention(p + "0.SelfAttention.", "attention", cfg, **dec),
      *norm_rules("attention_norm", p + "0.layer_norm", d, False, **dec),
      *_attention(p + "1.EncDecAttention.", "cross_attention", cfg, **dec),
      *norm_rules("cross_attention_norm", p + "1.layer_norm", d, False, **dec),
      *_mlp(p + "2.DenseReluDense.", cfg, **dec),
      *norm_rules("mlp_norm", p + "2.layer_norm", d, False, **dec),
  ]
  if not cfg.tie_embeddings:
    out.append(linear_rule("head/output_kernel", "lm_head.weight", (v, d), (d, v)))
  return out
