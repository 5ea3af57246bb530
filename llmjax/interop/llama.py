"""LLaMA (`LlamaForCausalLM`) <-> an llmjax decoder: RoPE, RMSNorm, SwiGLU, grouped-query
attention, no biases, an untied (or tied) head.

HF stores torch Linear weights [out, in]; they are transposed into llmjax's [in, out] kernels.
HF LLaMA checkpoints already use the rotate-half rotary layout llmjax applies (pairs i, i + k/2),
so q/k need no permutation.
"""

from __future__ import annotations

from typing import Any

from llmjax.interop.mapping import Rule, config_problems, linear_rule, norm_rules, vector_rule
from llmjax.models.config import ModelConfig

MODEL_TYPES = ("llama",)
BASE_PREFIX = "model."
IGNORED = (r"(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)


def rope_theta(hf: dict[str, Any]) -> float:
  """The rotary base of a LLaMA config (transformers >= 5 nests it in rope_parameters)."""
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
  if kind != "default":
    raise ValueError(f"LLaMA rope_type={kind!r} (RoPE scaling) is not supported: llmjax applies "
                     "plain rotary embeddings (rope_type 'default').")
  return float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def config_from_hf(hf: dict[str, Any], tensors: set[str]) -> dict[str, Any]:
  """ModelConfig fields of a LLaMA config.json."""
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"LLaMA hidden_act={hf['hidden_act']!r} is not supported (only 'silu').")
  if hf.get("attention_bias") or hf.get("mlp_bias"):
    raise ValueError("LLaMA configs with attention_bias or mlp_bias set are not supported "
                     "(llmjax maps the bias-free LLaMA).")
  heads = hf["num_attention_heads"]
  return dict(architecture="decoder", vocab_size=hf["vocab_size"],
              num_layers=hf["num_hidden_layers"], num_heads=heads,
              num_kv_heads=hf.get("num_key_value_heads") or heads, embed_dim=hf["hidden_size"],
              head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
              mlp_dim=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
              position="rope", rope_theta=rope_theta(hf), norm="rmsnorm",
              norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", use_bias=False,
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def export_problems(cfg: ModelConfig) -> list[str]:
  """Why `cfg` is not a LLaMA (empty when it is)."""
  wanted = dict(architecture="decoder", position="rope", norm="rmsnorm", norm_position="pre",
                mlp="swiglu", use_bias=False, sliding_window=None, attention_scale=None,
                embedding_norm=False, type_vocab_size=0)
  return config_problems(cfg, "LLaMA", wanted)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """The config.json fields of a LLaMA equivalent to `cfg`."""
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
          "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim,
          "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
          "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
          "head_dim": cfg.dim_per_head, "max_position_embeddings": cfg.max_seq_len,
          "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
          "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
          "rope_theta": cfg.rope_theta, "attention_bias": False, "mlp_bias": False,
          "attention_dropout": 0.0, "tie_word_embeddings": cfg.tie_embeddings}


def rules(cfg: ModelConfig) -> list[Rule]:
  """The tensor correspondence of a LLaMA shaped like `cfg`."""
  d, h, g, k, f, v = (cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head,
                      cfg.mlp_dim, cfg.vocab_size)
  layer = dict(stack="decoder", num_layers=cfg.num_layers)
  p = "model.layers.{i}."
  out = [
      vector_rule("token_embed/embedding", "model.embed_tokens.weight", (v, d)),
      *norm_rules("final_norm", "model.norm", d, False),
      linear_rule("attention/query", p + "self_attn.q_proj.weight", (h * k, d), (d, h, k),
                  **layer),
      linear_rule("attention/key", p + "self_attn.k_proj.weight", (g * k, d), (d, g, k), **layer),
      linear_rule("attention/value", p + "self_attn.v_proj.weight", (g * k, d), (d, g, k),
                  **layer),
      linear_rule("attention/out", p + "self_attn.o_proj.weight", (d, h * k), (h, k, d), **layer),
      *norm_rules("attention_norm", p + "input_layernorm", d, False, **layer),
      *norm_rules("mlp_norm", p + "post_attention_layernorm", d, False, **layer),
      linear_rule("mlp/wi_gate", p + "mlp.gate_proj.weight", (f, d), (d, f), **layer),
      linear_rule("mlp/wi_up", p + "mlp.up_proj.weight", (f, d), (d, f), **layer),
      linear_rule("mlp/wo", p + "mlp.down_proj.weight", (d, f), (f, d), **layer),
  ]
  if not cfg.tie_embeddings:
    out.append(linear_rule("output_kernel", "lm_head.weight", (v, d), (d, v)))
  return out


def duplicates(cfg: ModelConfig) -> dict[str, str]:
  """HF tensors that repeat another (a tied head): name -> the tensor it must equal."""
  return {"lm_head.weight": "model.embed_tokens.weight"} if cfg.tie_embeddings else {}
