"""llmjax models written out as Hugging Face checkpoints compute what `transformers` computes.

- The model files that name a public architecture (gpt2_small, llama_1b, bert_base, t5_small)
  build it: at full size their config is what transformers' own config of that architecture
  says, and a tiny-width instance (smaller widths and depths bound through gin) exports to HF
  and gives transformers' logits.
- BERT's MLM head follows `hidden_act` (relu, exact gelu, tanh gelu) when a model trained here
  is exported (the import direction is in test_hf_convert.py).
"""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="HF parity tests need torch (the test extra "
                            "installs torch==2.13.0, a CPU build)")
transformers = pytest.importorskip("transformers", reason="HF parity tests need transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from llmjax.cli import gin_config  # noqa: E402
from llmjax.interop import hf  # noqa: E402
from llmjax.interop.safetensors_io import write_tensors  # noqa: E402
from llmjax.models.config import ModelConfig  # noqa: E402
from llmjax.models.interface import LanguageModel  # noqa: E402
from tests.interop import hf_fixtures as fx  # noqa: E402

MODEL_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                 "bert": "BertForMaskedLM", "t5": "T5ForConditionalGeneration"}
VOCAB = 96


def export(config: ModelConfig, params, path: str) -> str:
  """Writes config + params as an HF folder the way `llmjax convert --to_hf` does (config.json
  from the architecture's config_to_hf, tensors from hf.hf_tensors); returns the model_type."""
  module = hf.export_architecture(config)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, hf.CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(module.config_to_hf(config) | {"dtype": config.weight_dtype.name}, f)
  write_tensors(os.path.join(path, "model.safetensors"), hf.hf_tensors(config, params, module),
                {"format": "pt"})
  return module.MODEL_TYPES[0]


def random_params(config: ModelConfig, seed: int = 0):
  """The model's init, every parameter moved off it (no all-zero bias or all-one norm scale that
  a wrong mapping could pass with)."""
  params = LanguageModel(config).init(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: x + jnp.asarray(rng.normal(0, 0.1, x.shape), x.dtype), params)


def assert_same_logits(config: ModelConfig, params, path: str) -> None:
  model_type = export(config, params, path)
  reference = getattr(transformers, MODEL_CLASSES[model_type]).from_pretrained(path).eval()
  rng = np.random.default_rng(1)
  ids = rng.integers(3, config.vocab_size, (2, 11))
  lm = LanguageModel(config)
  if config.architecture == "encoder_decoder":
    decoder = np.concatenate([np.zeros((2, 1), np.int64), rng.integers(3, VOCAB, (2, 6))], 1)
    want = fx.torch_logits(reference, ids, decoder)
    got, _ = lm.apply(params, {"encoder_inputs": jnp.asarray(ids, jnp.int32),
                               "inputs": jnp.asarray(decoder, jnp.int32)})
  else:
    want = fx.torch_logits(reference, ids)
    got, _ = lm.apply(params, jnp.asarray(ids, jnp.int32))
  got = np.asarray(got)
  assert got.shape == want.shape
  err, scale = np.abs(got - want).max(), np.abs(want).max()
  assert err <= 1e-4 * scale, f"max abs error {err:.3g} vs logits up to {scale:.3g}"


# Smaller widths and depths, bound after each file; everything else is the file's own.
TINY = {
    "models/gpt2_small.gin": ["ModelConfig.num_layers = 2", "ModelConfig.num_heads = 4",
                              "ModelConfig.embed_dim = 48", "ModelConfig.mlp_dim = 96"],
    "models/llama_1b.gin": ["ModelConfig.num_layers = 2", "ModelConfig.num_heads = 4",
                            "ModelConfig.num_kv_heads = 2", "ModelConfig.embed_dim = 48",
                            "ModelConfig.mlp_dim = 80"],
    "models/bert_base.gin": ["ModelConfig.num_layers = 2", "ModelConfig.num_heads = 4",
                             "ModelConfig.embed_dim = 48", "ModelConfig.mlp_dim = 96"],
    "models/t5_small.gin": ["ModelConfig.num_layers = 2", "ModelConfig.num_decoder_layers = 3",
                            "ModelConfig.num_heads = 4", "ModelConfig.head_dim = 8",
                            "ModelConfig.embed_dim = 48", "ModelConfig.mlp_dim = 80"],
}
ARCHITECTURE = {"models/gpt2_small.gin": "gpt2", "models/llama_1b.gin": "llama",
                "models/bert_base.gin": "bert", "models/t5_small.gin": "t5"}


def build(model_file: str, bindings=()) -> ModelConfig:
  gin_config.parse([model_file], list(bindings))
  return gin_config.build("ModelConfig")


@pytest.mark.parametrize("model_file", list(TINY))
def test_tiny_instance_of_model_file_matches_transformers(model_file, tmp_path):
  config = build(model_file, [*TINY[model_file], f"VOCAB_SIZE = {VOCAB}", "MAX_SEQ_LEN = 64"])
  assert hf.export_architecture(config).MODEL_TYPES[0] == ARCHITECTURE[model_file]
  assert_same_logits(config, random_params(config), str(tmp_path / "hf"))


def _hf_fields(model_type: str, hf_config: dict) -> dict:
  """The architecture-defining fields of a config.json, with transformers' defaults filled in."""
  if model_type == "gpt2":
    keys = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "activation_function",
            "layer_norm_epsilon")
    fields = {k: hf_config[k] for k in keys}
    return fields | {"n_inner": hf_config.get("n_inner") or 4 * hf_config["n_embd"]}
  if model_type == "bert":
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
            "layer_norm_eps")
    return {k: hf_config[k] for k in keys}
  keys = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
          "relative_attention_num_buckets", "relative_attention_max_distance",
          "feed_forward_proj", "layer_norm_epsilon")
  fields = {k: hf_config[k] for k in keys}
  return fields | {"num_decoder_layers": hf_config.get("num_decoder_layers")
                   or hf_config["num_layers"],
                   "tied": hf_config.get("tie_word_embeddings", True) is not False}


# transformers' default config of each class is the architecture the file is named after.
HF_DEFAULTS = {"models/gpt2_small.gin": "GPT2Config", "models/bert_base.gin": "BertConfig",
               "models/t5_small.gin": "T5Config"}


@pytest.mark.parametrize("model_file", list(HF_DEFAULTS))
def test_model_file_is_the_architecture_it_names(model_file):
  config = build(model_file)
  module = hf.export_architecture(config)
  ours = module.config_to_hf(config) | {"tied": config.tie_embeddings}
  want = getattr(transformers, HF_DEFAULTS[model_file])().to_dict()
  model_type = module.MODEL_TYPES[0]
  assert _hf_fields(model_type, ours) == _hf_fields(model_type, want)


def test_llama_1b_is_tinyllama():
  # TinyLlama-1.1B's config.json (transformers has no default config of that size).
  config = build("models/llama_1b.gin")
  ours = hf.export_architecture(config).config_to_hf(config)
  want = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
          "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
          "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
  assert {k: ours[k] for k in want} == want


@pytest.mark.parametrize("hidden_act, fields", [
    ("relu", dict(mlp="relu")),
    ("gelu", dict(mlp="gelu", gelu_approximate=False)),
    ("gelu_new", dict(mlp="gelu", gelu_approximate=True)),
])
def test_bert_trained_here_exports_with_its_mlm_activation(hidden_act, fields, tmp_path):
  config = ModelConfig(architecture="encoder", vocab_size=VOCAB, num_layers=2, num_heads=4,
                       embed_dim=48, mlp_dim=80, max_seq_len=64, position="learned",
                       norm="layernorm", norm_eps=1e-12, norm_position="post",
                       embedding_norm=True, type_vocab_size=2, use_bias=True,
                       tie_embeddings=True, **fields)
  assert hf.export_architecture(config).config_to_hf(config)["hidden_act"] == hidden_act
  assert_same_logits(config, random_params(config), str(tmp_path / "hf"))
