"""BERT (`BertForMaskedLM`) <-> an llmjax encoder: post-LayerNorm blocks, embedding LayerNorm,
token-type embeddings, biases everywhere, the MLM head tied to the word embeddings. `hidden_act`
(exact "gelu", tanh "gelu_new" / "gelu_pytorch_tanh", or "relu") is the activation of both the
MLP and the MLM head's transform, in BERT and in llmjax (`models.heads.mlm_activation`).

Old TF-converted checkpoints name LayerNorm parameters gamma/beta; they are read as
weight/bias. A BertForPreTraining checkpoint's pooler and next-sentence head are not part of a
masked-LM model and are left out (listed as unused).
"""

from __future__ import annotations

from typing import Any

from llmjax.interop.mapping import (
  Rule,
  activation_name,
  config_problems,
  linear_rule,
  norm_rules,
  vector_rule,
)
from llmjax.models.config import ModelConfig

MODEL_TYPES = ("bert",)
BASE_PREFIX = "bert."
IGNORED = (r"(bert\.)?embeddings\.position_ids",)
UNUSED = (r"(bert\.)?pooler\..*", r"cls\.seq_relationship\..*")
# BertTokenizer's default special tokens, for folders whose tokenizer files do not name them.
SPECIAL_TOKENS = {"cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]", "unk": "[UNK]",
                  "pad": "[PAD]"}
_ACTIVATIONS = {"gelu": ("gelu", False), "gelu_new": ("gelu", True),
                "gelu_pytorch_tanh": ("gelu", True), "relu": ("relu", True)}


def config_from_hf(hf: dict[str, Any], tensors: set[str]) -> dict[str, Any]:
  """ModelConfig fields of a BERT config.json."""
  act = hf.get("hidden_act", "gelu")
  if act not in _ACTIVATIONS:
    raise ValueError(f"BERT hidden_act={act!r} is not supported; llmjax maps "
                     f"{sorted(_ACTIVATIONS)}.")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"BERT position_embedding_type={hf['position_embedding_type']!r} is not "
                     "supported (only 'absolute').")
  if hf.get("is_decoder"):
    raise ValueError("a BERT with is_decoder=True is not a masked-LM encoder.")
  mlp, approximate = _ACTIVATIONS[act]
  return dict(architecture="encoder", vocab_size=hf["vocab_size"],
              num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
              embed_dim=hf["hidden_size"], mlp_dim=hf["intermediate_size"],
              max_seq_len=hf["max_position_embeddings"], position="learned", norm="layernorm",
              norm_eps=hf.get("layer_norm_eps", 1e-12), norm_position="post",
              embedding_norm=True, type_vocab_size=hf.get("type_vocab_size", 2), mlp=mlp,
              gelu_approximate=approximate, use_bias=True, tie_embeddings=True)


def export_problems(cfg: ModelConfig) -> list[str]:
  """Why `cfg` is not a BERT masked-LM (empty when it is)."""
  wanted = dict(architecture="encoder", num_classes=None, position="learned", norm="layernorm",
                norm_position="post", embedding_norm=True, use_bias=True, tie_embeddings=True,
                sliding_window=None, attention_scale=None)
  return config_problems(cfg, "BERT", wanted, mlps=("gelu", "relu"), plain_heads=True)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """The config.json fields of a BERT equivalent to `cfg`."""
  act = activation_name(cfg)
  return {"architectures": ["BertForMaskedLM"], "model_type": "bert",
          "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim,
          "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
          "intermediate_size": cfg.mlp_dim, "hidden_act": act,
          "max_position_embeddings": cfg.max_seq_len, "type_vocab_size": cfg.type_vocab_size,
          "layer_norm_eps": cfg.norm_eps, "position_embedding_type": "absolute",
          "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
          "tie_word_embeddings": True}


def duplicates(cfg: ModelConfig) -> dict[str, str]:
  """HF tensors that repeat another (the tied decoder and its bias)."""
  return {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
          "cls.predictions.decoder.bias": "cls.predictions.bias"}


def rules(cfg: ModelConfig) -> list[Rule]:
  """The tensor correspondence of a BERT shaped like `cfg`."""
  d, h, k, f, v = cfg.embed_dim, cfg.num_heads, cfg.dim_per_head, cfg.mlp_dim, cfg.vocab_size
  layer = dict(stack="encoder", num_layers=cfg.num_layers)
  p = "bert.encoder.layer.{i}."
  e = "bert.embeddings."
  out = [
      vector_rule("token_embed/embedding", e + "word_embeddings.weight", (v, d)),
      vector_rule("position_embed/embedding", e + "position_embeddings.weight",
                  (cfg.max_seq_len, d)),
      *norm_rules("embed_norm", e + "LayerNorm", d, True),
      linear_rule("mlm_transform/dense", "cls.predictions.transform.dense.weight", (d, d),
                  (d, d)),
      vector_rule("mlm_transform/dense_bias", "cls.predictions.transform.dense.bias", (d,)),
      *norm_rules("mlm_transform/norm", "cls.predictions.transform.LayerNorm", d, True),
      vector_rule("output_bias", "cls.predictions.bias", (v,)),
  ]
  if cfg.type_vocab_size:
    out.append(vector_rule("token_type_embed/embedding", e + "token_type_embeddings.weight",
                           (cfg.type_vocab_size, d)))
  for name in ("query", "key", "value"):
    out += [linear_rule(f"attention/{name}", p + f"attention.self.{name}.weight", (d, d),
                        (d, h, k), **layer),
            vector_rule(f"attention/{name}_bias", p + f"attention.self.{name}.bias", (h, k),
                        (d,), **layer)]
  out += [
      linear_rule("attention/out", p + "attention.output.dense.weight", (d, d), (h, k, d),
                  **layer),
      vector_rule("attention/out_bias", p + "attention.output.dense.bias", (d,), **layer),
      *norm_rules("attention_norm", p + "attention.output.LayerNorm", d, True, **layer),
      linear_rule("mlp/wi", p + "intermediate.dense.weight", (f, d), (d, f), **layer),
      vector_rule("mlp/wi_bias", p + "intermediate.dense.bias", (f,), **layer),
      linear_rule("mlp/wo", p + "output.dense.weight", (d, f), (f, d), **layer),
      vector_rule("mlp/wo_bias", p + "output.dense.bias", (d,), **layer),
      *norm_rules("mlp_norm", p + "output.LayerNorm", d, True, **layer),
  ]
  return out
