"""Tiny random Hugging Face checkpoints, built locally, for the HF conversion tests.

Each `make_*` builds a `transformers` model from a config written here (never from the hub),
moves every parameter away from its initializer (so a converter that drops a LayerNorm weight,
a bias or the T5 position bias cannot pass by accident: no tensor is all ones or all zeros),
and saves it as an HF folder: `config.json`, `model.safetensors` (or, with `max_shard_size`,
shards plus `model.safetensors.index.json`) and, but for BERT, `generation_config.json`.
`torch_logits` and `hf_greedy` are the reference outputs; `write_sentencepiece` writes a small
`tokenizer.model` with LLaMA's or T5's special ids; `write_t5_tokenizer` and
`write_bert_tokenizer` write the tokenizer files of a hub T5 (spiece.model plus extra ids) or
BERT (vocab.txt with [CLS] ... away from ids 0-3) folder, as `transformers` saves them.

This module imports torch and transformers at the top: test modules call
`pytest.importorskip("torch", ...)` before importing it, so the suite skips cleanly without them.
"""

from __future__ import annotations

import glob
import inspect
import io
import json
import os
from typing import Any

import numpy as np

# Nothing here may reach the hub; set before transformers is imported so it never tries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

VOCAB_SIZE = 96
# Perturbation scales: 0.1 keeps activations and logits O(1) for these widths (48-80) without
# saturating softmaxes; T5's position bias gets more so the buckets visibly change attention.
MATRIX_SCALE = 0.1
VECTOR_SCALE = 0.1
T5_POSITION_BIAS_SCALE = 0.5


def make_gpt2(path: str, *, tied: bool = True, seed: int = 0,
              max_shard_size: str | None = None) -> dict[str, Any]:
  """Saves a 2-layer GPT2LMHeadModel (vocab 96, 48 wide, 4 heads, 32 positions) to path.

  Args:
    path: the folder to write.
    tied: tie lm_head to the token embedding (GPT-2's default).
    seed: torch seed for the perturbation.
    max_shard_size: e.g. "20KB" to write a sharded folder with an index.

  Returns:
    {"model": the torch model (eval mode), "config": its GPT2Config, "path": path}.
  """
  config = transformers.GPT2Config(
      vocab_size=VOCAB_SIZE, n_positions=32, n_embd=48, n_layer=2, n_head=4,
      activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
      attn_pdrop=0.0, summary_first_dropout=0.0, tie_word_embeddings=tied,
      # GPT-2's <|endoftext|> is its last id; the default 50256 is outside this vocab.
      bos_token_id=VOCAB_SIZE - 1, eos_token_id=VOCAB_SIZE - 1)
  return _build_and_save(transformers.GPT2LMHeadModel, config, path, seed=seed,
                         max_shard_size=max_shard_size)


def make_llama(path: str, *, tie: bool = False, seed: int = 0,
               max_shard_size: str | None = None) -> dict[str, Any]:
  """Saves a 2-layer LlamaForCausalLM with GQA (4 heads, 2 kv heads, rope theta 50000) to path.

  Args:
    path: the folder to write.
    tie: tie lm_head to the token embedding.
    seed: torch seed for the perturbation.
    max_shard_size: e.g. "20KB" to write a sharded folder with an index.

  Returns:
    {"model": the torch model (eval mode), "config": its LlamaConfig, "path": path}.
  """
  config = transformers.LlamaConfig(
      vocab_size=VOCAB_SIZE, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      # transformers 5 keeps theta in rope_parameters (config.json too), not top-level rope_theta.
      rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
      rms_norm_eps=1e-5, tie_word_embeddings=tie, hidden_act="silu", attention_bias=False,
      attention_dropout=0.0, pad_token_id=None, bos_token_id=1, eos_token_id=2)
  return _build_and_save(transformers.LlamaForCausalLM, config, path, seed=seed,
                         max_shard_size=max_shard_size)


def make_bert(path: str, *, seed: int = 0, max_shard_size: str | None = None,
              hidden_act: str = "gelu") -> dict[str, Any]:
  """Saves a 2-layer BertForMaskedLM (vocab 96, 48 wide, 4 heads, exact-erf gelu) to path.

  Args:
    path: the folder to write.
    seed: torch seed for the perturbation.
    hidden_act: the MLP's and the MLM head transform's activation ("gelu" is exact erf GELU;
      "gelu_new" the tanh form; "relu").
    max_shard_size: e.g. "20KB" to write a sharded folder with an index.

  Returns:
    {"model": the torch model (eval mode), "config": its BertConfig, "path": path}.
  """
  config = transformers.BertConfig(
      vocab_size=VOCAB_SIZE, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=80, max_position_embeddings=64, type_vocab_size=2, hidden_act=hidden_act,
      layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      classifier_dropout=0.0, pad_token_id=0)
  return _build_and_save(transformers.BertForMaskedLM, config, path, seed=seed,
                         max_shard_size=max_shard_size)


def make_t5(path: str, *, v1_1: bool = True, seed: int = 0,
            max_shard_size: str | None = None) -> dict[str, Any]:
  """Saves a T5ForConditionalGeneration (2 encoder, 3 decoder layers, 4 heads of 16) to path.

  Shapes chosen to catch converters that guess one size from another: the attention inner width
  (heads * d_kv = 64) differs from d_model (48), d_model / num_heads (12) differs from d_kv, and
  the encoder and decoder depths differ.

  v1_1=True is T5 v1.1: gated-gelu (gelu_new) MLP and an lm_head of its own, no output scaling.
  v1_1=False is the original T5: relu MLP, lm_head tied to `shared`, and the decoder output
  scaled by d_model**-0.5 before it.

  transformers 5 always ties T5's lm_head to `shared` when it builds a model and keeps
  tie_word_embeddings=False only as "do not scale" (config.scale_decoder_outputs). Real v1.1
  checkpoints carry their own lm_head.weight and say tie_word_embeddings false, and transformers
  5 loads them untied, so for v1.1 this unties lm_head by hand and writes config.json's
  tie_word_embeddings as false, like the hub's v1.1 folders.

  Args:
    path: the folder to write.
    v1_1: T5 v1.1 (True) or the original T5 (False).
    seed: torch seed for the perturbation.
    max_shard_size: e.g. "20KB" to write a sharded folder with an index.

  Returns:
    {"model": the torch model (eval mode), "config": its T5Config, "path": path}.
  """
  config = transformers.T5Config(
      vocab_size=VOCAB_SIZE, d_model=48, d_kv=16, d_ff=80, num_layers=2, num_decoder_layers=3,
      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
      dropout_rate=0.0, classifier_dropout=0.0, layer_norm_epsilon=1e-6,
      feed_forward_proj="gated-gelu" if v1_1 else "relu", tie_word_embeddings=not v1_1,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  out = _build_and_save(transformers.T5ForConditionalGeneration, config, path, seed=seed,
                        max_shard_size=max_shard_size, untie_lm_head=v1_1)
  if v1_1:
    config_path = os.path.join(path, "config.json")
    with open(config_path, encoding="utf-8") as f:
      saved = json.load(f)
    saved["tie_word_embeddings"] = False
    with open(config_path, "w", encoding="utf-8") as f:
      json.dump(saved, f, indent=2, sort_keys=True)
  return out


def torch_logits(model: Any, input_ids: np.ndarray,
                 decoder_input_ids: np.ndarray | None = None,
                 token_type_ids: np.ndarray | None = None) -> np.ndarray:
  """Returns the model's float32 logits, [b, t, v] (decoder positions for T5), as NumPy.

  Args:
    model: a model from a `make_*` function.
    input_ids: [b, t] int ids (the encoder input for T5).
    decoder_input_ids: [b, t_dec] int ids, T5 only (start token included).
    token_type_ids: [b, t] int token types, BERT only (None: transformers' default, all 0).
  """
  kwargs = {"input_ids": torch.as_tensor(np.asarray(input_ids), dtype=torch.long)}
  if decoder_input_ids is not None:
    kwargs["decoder_input_ids"] = torch.as_tensor(np.asarray(decoder_input_ids), dtype=torch.long)
  if token_type_ids is not None:
    kwargs["token_type_ids"] = torch.as_tensor(np.asarray(token_type_ids), dtype=torch.long)
  with torch.no_grad():
    return model(**kwargs).logits.float().numpy()


def hf_greedy(model: Any, input_ids: np.ndarray, max_new_tokens: int,
              decoder_start: int | None = None,
              suppress_tokens: list[int] | None = None) -> np.ndarray:
  """Greedy-decodes max_new_tokens with transformers' `generate` (EOS never stops it early).

  Args:
    model: a model from `make_gpt2`, `make_llama` or `make_t5`.
    input_ids: [b, t] int prompt ids (unpadded; the encoder input for T5).
    max_new_tokens: how many tokens to generate.
    decoder_start: T5's decoder start id; None uses config.decoder_start_token_id.
    suppress_tokens: ids never generated (transformers' `suppress_tokens`), e.g. the rows of a
      padded vocabulary that no token of the tokenizer has.

  Returns:
    [b, max_new_tokens] int64: only the new tokens (no prompt; for T5, no start token).
  """
  ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
  config = model.config
  eos = config.eos_token_id
  pad = config.pad_token_id if config.pad_token_id is not None else eos
  kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                num_beams=1, pad_token_id=pad, eos_token_id=eos)
  if suppress_tokens:
    kwargs["suppress_tokens"] = list(suppress_tokens)
  if config.is_encoder_decoder:
    start = config.decoder_start_token_id if decoder_start is None else decoder_start
    # transformers 5.24 sizes the decoder's KV cache from num_layers (the encoder depth), so a
    # T5 with num_decoder_layers > num_layers fails in the cache update; decode uncached.
    kwargs.update(decoder_start_token_id=start, use_cache=False)
  with torch.no_grad():
    out = model.generate(**kwargs).numpy()
  # Decoder-only output is prompt + new; encoder-decoder output is start token + new.
  new = out[:, 1:] if config.is_encoder_decoder else out[:, ids.shape[1]:]
  assert new.shape == (ids.shape[0], max_new_tokens), new.shape
  return new


def write_sentencepiece(path: str, style: str, *, vocab_size: int = 90,
                        model_type: str = "bpe") -> str:
  """Trains and writes a small SentencePiece `tokenizer.model` with HF-style special ids.

  Args:
    path: a folder (the file is written as path/tokenizer.model) or a path ending in ".model".
    style: "llama" (unk 0, bos 1, eos 2, no pad) or "t5" (pad 0, eos 1, unk 2, no bos).
    vocab_size: pieces; at most VOCAB_SIZE for every id to fit the fixture models (larger ones
      test the converter's refusal).
    model_type: "bpe" or "unigram" (T5's; what transformers' T5 tokenizer reimplements).

  Returns:
    The path of the written model file.
  """
  ids = {"llama": dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1),
         "t5": dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)}
  if style not in ids:
    raise ValueError(f"style must be 'llama' or 't5', got {style!r}.")
  model = io.BytesIO()
  spm.set_random_generator_seed(0)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_training_lines()), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, character_coverage=1.0, num_threads=1, minloglevel=2,
      input_sentence_size=0, shuffle_input_sentence=False, **ids[style])
  file = path if path.endswith(".model") else os.path.join(path, "tokenizer.model")
  os.makedirs(os.path.dirname(file) or ".", exist_ok=True)
  with open(file, "wb") as f:
    f.write(model.getvalue())
  return file


def write_t5_tokenizer(path: str, *, pieces: int = 80, extra_ids: int = 10) -> Any:
  """Writes a hub-style T5 tokenizer into the folder path: spiece.model (a unigram model of
  `pieces` pieces with T5's special ids) and the tokenizer.json / tokenizer_config.json that
  transformers' T5Tokenizer saves with `extra_ids` sentinels after the pieces (<extra_id_i> =
  pieces + extra_ids - 1 - i, as 32099 - i in a real T5; with the defaults the 96-row model
  vocabulary keeps 6 untrained rows past them, as a real T5's 32128 keeps 28).

  Returns:
    The transformers T5Tokenizer.
  """
  write_sentencepiece(os.path.join(path, "spiece.model"), "t5", vocab_size=pieces,
                      model_type="unigram")
  tokenizer = transformers.T5Tokenizer.from_pretrained(path, extra_ids=extra_ids)
  tokenizer.save_pretrained(path)
  return tokenizer


# BERT's special tokens sit at 100-103 in a real vocab.txt; here at 91-94, away from 0-3 too.
BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 91, "[CLS]": 92, "[SEP]": 93, "[MASK]": 94}


def write_bert_tokenizer(path: str) -> Any:
  """Writes a hub-style BERT tokenizer into the folder path: vocab.txt (VOCAB_SIZE tokens,
  the specials at BERT_SPECIALS, lowercase words and "##" pieces elsewhere) and the
  tokenizer.json / tokenizer_config.json transformers' BertTokenizer saves from it.

  Returns:
    The transformers BertTokenizer.
  """
  words = sorted({w for line in _training_lines() for w in line.split()}, key=len)
  pieces = list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "aeinost"]
  normal = iter(pieces + [w for w in words if w not in pieces])
  by_id = {i: t for t, i in BERT_SPECIALS.items()}
  vocab = [by_id[i] if i in by_id else next(normal) for i in range(VOCAB_SIZE)]
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(vocab) + "\n")
  tokenizer = transformers.BertTokenizer.from_pretrained(path)
  tokenizer.save_pretrained(path)
  return tokenizer


def _training_lines(max_bytes: int = 16_000) -> list[str]:
  """Lowercase words from the standard library's source: few symbols, so 90 pieces can hold
  every character plus merges; deterministic for a given Python."""
  lines, total = [], 0
  for name in sorted(glob.glob(os.path.join(os.path.dirname(inspect.__file__), "*.py")))[:40]:
    with open(name, encoding="utf-8", errors="ignore") as f:
      for raw in f:
        words = "".join(c if "a" <= c <= "z" else " " for c in raw.lower()).split()
        if words:
          lines.append(" ".join(words))
          total += len(lines[-1])
        if total >= max_bytes:
          return lines
  return lines


def _build_and_save(model_cls: Any, config: Any, path: str, *, seed: int,
                    max_shard_size: str | None, untie_lm_head: bool = False) -> dict[str, Any]:
  torch.manual_seed(seed)
  model = model_cls(config)
  if untie_lm_head:
    # Independent of the embedding (a converter that reads `shared` for lm_head must fail), and
    # small: T5 does not scale an untied head's input, so an embedding-sized (std 1) head would
    # give logits of std ~7.
    embedding = model.get_input_embeddings().weight
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(embedding) * MATRIX_SCALE)
  _perturb(model)
  model.eval()
  # transformers 5 writes safetensors only (safe_serialization is gone); the fixture test checks
  # that no pytorch_model.bin appears.
  kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(path, **kwargs)
  return {"model": model, "config": model.config, "path": path}


def _perturb(model: Any) -> None:
  """Adds noise to every parameter; tied parameters appear once, so ties survive."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "relative_attention_bias" in name:
        scale = T5_POSITION_BIAS_SCALE
      else:
        scale = MATRIX_SCALE if p.ndim >= 2 else VECTOR_SCALE
      p.add_(torch.randn_like(p) * scale)
