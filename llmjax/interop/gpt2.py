"""GPT-2 (`GPT2LMHeadModel`) <-> an llmjax decoder: learned positions, pre-LayerNorm, GELU MLP,
biases everywhere, tied embeddings.

HF GPT-2 stores its projections as Conv1D weights, [in, out] (the llmjax orientation already),
and fuses q/k/v into one `c_attn` [d, 3d] that is split here.
"""

from __future__ import annotations

from typing import Any

from llmjax.interop.mapping import (
  Rule,
  activation_name,
  config_problems,
  norm_rules,
  rule,
  same,
  split,
  vector_rule,
)
from llmjax.models.config import ModelConfig

MODEL_TYPES = ("gpt2",)
BASE_PREFIX = "transformer."
# Buffers of old checkpoints (the causal mask) and the tied head's copy of wte.
IGNORED = (r"transformer\.h\.\d+\.attn\.(masked_)?bias", r"h\.\d+\.attn\.(masked_)?bias")
_ACTIVATIONS = {"gelu_new": ("gelu", True), "gelu_pytorch_tanh": ("gelu", True),
                "gelu_fast": ("gelu", True), "gelu": ("gelu", False), "relu": ("relu", True)}


def config_from_hf(hf: dict[str, Any], tensors: set[str]) -> dict[str, Any]:
  """ModelConfig fields of a GPT-2 config.json."""
  act = hf.get("activation_function", "gelu_new")
  if act not in _ACTIVATIONS:
    raise ValueError(f"GPT-2 activation_function={act!r} is not supported; llmjax maps "
                     f"{sorted(_ACTIVATIONS)}.")
  if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
    raise ValueError("GPT-2 configs with scale_attn_weights=False or "
                     "scale_attn_by_inverse_layer_idx=True have no llmjax equivalent.")
  if not hf.get("tie_word_embeddings", True):
    raise ValueError("an untied GPT-2 head (tie_word_embeddings=False) is not supported.")
  d = hf["n_embd"]
  mlp, approximate = _ACTIVATIONS[act]
  return dict(architecture="decoder", vocab_size=hf["vocab_size"], num_layers=hf["n_layer"],
              num_heads=hf["n_head"], embed_dim=d, mlp_dim=hf.get("n_inner") or 4 * d,
              max_seq_len=hf["n_positions"], position="learned", norm="layernorm",
              norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp=mlp, gelu_approximate=approximate,
              use_bias=True, tie_embeddings=True)


def export_problems(cfg: ModelConfig) -> list[str]:
  """Why `cfg` is not a GPT-2 (empty when it is)."""
  wanted = dict(architecture="decoder", position="learned", norm="layernorm",
                norm_position="pre", use_bias=True, tie_embeddings=True, sliding_window=None,
                attention_scale=None, embedding_norm=False, type_vocab_size=0)
  return config_problems(cfg, "GPT-2", wanted, mlps=("gelu", "relu"), plain_heads=True)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """The config.json fields of a GPT-2 equivalent to `cfg`."""
  act = activation_name(cfg)
  return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
          "vocab_size": cfg.vocab_size, "n_positions": cfg.max_seq_len, "n_embd": cfg.embed_dim,
          "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": cfg.mlp_dim,
          "activation_function": act, "layer_norm_epsilon": cfg.norm_eps,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
          "scale_attn_weights": True, "tie_word_embeddings": True}


def rules(cfg: ModelConfig) -> list[Rule]:
  """The tensor correspondence of a GPT-2 shaped like `cfg`."""
  d, h, k, f, v = cfg.embed_dim, cfg.num_heads, cfg.dim_per_head, cfg.mlp_dim, cfg.vocab_size
  layer = dict(stack="decoder", num_layers=cfg.num_layers)
  p = "transformer.h.{i}."
  out = [
      vector_rule("token_embed/embedding", "transformer.wte.weight", (v, d)),
      vector_rule("position_embed/embedding", "transformer.wpe.weight", (cfg.max_seq_len, d)),
      *norm_rules("final_norm", "transformer.ln_f", d, True),
      rule(("attention/query", "attention/key", "attention/value"), p + "attn.c_attn.weight",
           (d, 3 * d), split((d, 3 * d), 1, [(d, h, k)] * 3), **layer),
      rule(("attention/query_bias", "attention/key_bias", "attention/value_bias"),
           p + "attn.c_attn.bias", (3 * d,), split((3 * d,), 0, [(h, k)] * 3), **layer),
      rule("attention/out", p + "attn.c_proj.weight", (d, d),
           (lambda xs: [xs[0].reshape(h, k, d)], lambda ps: [ps[0].reshape(d, d)]), **layer),
      vector_rule("attention/out_bias", p + "attn.c_proj.bias", (d,), **layer),
      *norm_rules("attention_norm", p + "ln_1", d, True, **layer),
      *norm_rules("mlp_norm", p + "ln_2", d, True, **layer),
      rule("mlp/wi", p + "mlp.c_fc.weight", (d, f), same(), **layer),
      vector_rule("mlp/wi_bias", p + "mlp.c_fc.bias", (f,), **layer),
      rule("mlp/wo", p + "mlp.c_proj.weight", (f, d), same(), **layer),
      vector_rule("mlp/wo_bias", p + "mlp.c_proj.bias", (d,), **layer),
  ]
  return out


def duplicates(cfg: ModelConfig) -> dict[str, str]:
  """HF tensors that repeat another (a tied head): name -> the tensor it must equal."""
  return {"lm_head.weight": "transformer.wte.weight"}
