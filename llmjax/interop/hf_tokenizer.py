"""The tokenizer of a converted Hugging Face folder: its special ids and T5 sentinels.

config.json names only some special ids (a BERT's: pad_token_id alone). The rest live in the
folder's tokenizer files: vocab.txt (WordPiece, one token per line), tokenizer.json (the fast
tokenizer: its model's vocabulary and added tokens), tokenizer_config.json (token names, added
tokens by id, T5's `extra_ids`), special_tokens_map.json (token names) and the SentencePiece
model (tokenizer.model; T5's spiece.model). `hf_tokenizer` reads them into the llmjax tokenizer
a converted workdir keeps:

- the folder's SentencePiece model when it has one (LLaMA, T5), else an ids-only tokenizer
  (GPT-2's BPE and BERT's WordPiece, which llmjax does not read) that carries the special ids;
- special ids from config.json / generation_config.json first (what the model was trained
  with), the rest from the tokenizer files: an encoder's bos and eos are its [CLS] and [SEP]
  (what BERT frames every input with), plus unk, pad and the MLM [MASK];
- a T5's sentinels <extra_id_0>, <extra_id_1>, ...: the named tokens where the files list them
  (HF: 32099 - i for 32000 pieces and 100 extra ids, below the 32128-row padded vocabulary),
  else `extra_ids` laid out after the pieces as HF's T5 tokenizer does (T5's default: 100,
  when they fit the model's vocabulary). Without sentinels the sampler falls back to the
  convention of models trained here (model vocab_size - 1 - i).
"""

from __future__ import annotations

import os
import re
from typing import Any

import sentencepiece as spm

from llmjax import workdir as workdir_lib
from llmjax.data import tokenizer as tokenizer_lib
from llmjax.interop import hf
from llmjax.models.config import ModelConfig

CONFIG_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# The SentencePiece model's file name: transformers' (LLaMA) and T5's original one.
SENTENCEPIECE_FILES = (tokenizer_lib.MODEL_FILE, "spiece.model")
_ROLES = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")
_SENTINEL = re.compile(r"<extra_id_(\d+)>")


def special_ids(hf_dir: str, hf_config: dict[str, Any]) -> dict[str, int]:
  """bos/eos/pad/decoder-start ids from config.json, else generation_config.json (the ids an
  export writes back into config.json)."""
  ids = {k: hf_config[k] for k in CONFIG_IDS if isinstance(hf_config.get(k), int)}
  generation = _read_json(hf_dir, "generation_config.json")
  ids |= {k: generation[k] for k in CONFIG_IDS
          if k not in ids and isinstance(generation.get(k), int)}
  return ids


def _read_json(hf_dir: str, name: str) -> dict[str, Any]:
  """A JSON object file of the folder; {} when it is absent."""
  path = os.path.join(hf_dir, name)
  if not os.path.isfile(path):
    return {}
  try:
    value = workdir_lib.read_json(path)
  except workdir_lib.InvalidJsonError as e:
    raise ValueError(f"{e}; nothing was converted: repair the file, or copy the model folder "
                     "again from its source.") from None
  return value if isinstance(value, dict) else {}


def _token_text(value: Any) -> str | None:
  """A token as the files name it: a string, or an AddedToken dict's "content"."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


def token_vocab(hf_dir: str, sp: spm.SentencePieceProcessor | None = None) -> dict[str, int]:
  """Token text -> id from every tokenizer file the folder has.

  Later sources win: vocab.txt, the SentencePiece pieces, tokenizer.json's model vocabulary
  and added tokens, tokenizer_config.json's added_tokens_decoder.
  """
  vocab: dict[str, int] = {}
  path = os.path.join(hf_dir, "vocab.txt")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      words = {}
      for i, line in enumerate(f):
        words.setdefault(line.rstrip("\r\n"), i)
    vocab |= words
  if sp is not None:
    vocab |= {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
  fast = _read_json(hf_dir, "tokenizer.json")
  model_vocab = (fast.get("model") or {}).get("vocab")
  if isinstance(model_vocab, dict):  # WordPiece, BPE: token -> id.
    vocab |= {t: i for t, i in model_vocab.items() if isinstance(i, int)}
  elif isinstance(model_vocab, list):  # Unigram: [token, score] in id order.
    vocab |= {e[0]: i for i, e in enumerate(model_vocab) if isinstance(e, list) and e}
  vocab |= {t["content"]: t["id"] for t in fast.get("added_tokens") or []
            if isinstance(t, dict) and isinstance(t.get("id"), int) and _token_text(t)}
  added = _read_json(hf_dir, "tokenizer_config.json").get("added_tokens_decoder") or {}
  vocab |= {_token_text(t): int(i) for i, t in added.items()
            if str(i).isdigit() and _token_text(t)}
  return vocab


def named_special_ids(hf_dir: str, model_type: str, vocab: dict[str, int]) -> dict[str, int]:
  """Role (bos, eos, pad, unk, cls, sep, mask) -> id of each special token the tokenizer files
  name (special_tokens_map.json, then tokenizer_config.json, over the family's defaults, e.g.
  BERT's "[CLS]") and the vocabulary holds."""
  names = dict(getattr(hf.architecture(model_type), "SPECIAL_TOKENS", {}))
  for file in ("special_tokens_map.json", "tokenizer_config.json"):
    data = _read_json(hf_dir, file)
    for role in _ROLES:
      if f"{role}_token" in data:  # An explicit null removes a default.
        names[role] = _token_text(data[f"{role}_token"])
  return {role: vocab[name] for role, name in names.items() if name in vocab}


def sentinel_ids(hf_dir: str, model_type: str, vocab: dict[str, int], num_pieces: int | None,
                 model_vocab_size: int) -> tuple[int, ...]:
  """The ids of <extra_id_0>, <extra_id_1>, ... (see the module docstring); () for none.

  Raises:
    ValueError: a sentinel id lies outside the model's vocabulary.
  """
  named = {int(m.group(1)): i for t, i in vocab.items() if (m := _SENTINEL.fullmatch(t))}
  count = 0
  while count in named:  # <extra_id_0> .. <extra_id_{n-1}>, as many as are contiguous.
    count += 1
  ids = tuple(named[i] for i in range(count))
  if not ids and num_pieces is not None:
    extra = _read_json(hf_dir, "tokenizer_config.json").get("extra_ids")
    if not isinstance(extra, int):
      default = getattr(hf.architecture(model_type), "EXTRA_IDS", 0)
      extra = default if num_pieces + default <= model_vocab_size else 0
    ids = tuple(num_pieces + extra - 1 - i for i in range(max(extra, 0)))
  if ids and max(ids) >= model_vocab_size:
    raise ValueError(f"{hf_dir}: the tokenizer's sentinels reach id {max(ids)}, past the "
                     f"model's vocab_size {model_vocab_size} in config.json.")
  return ids


def _first(*values: int | None) -> int | None:
  return next((v for v in values if v is not None), None)


def hf_tokenizer(hf_dir: str, config: ModelConfig, ids: dict[str, int],
                 model_type: str) -> tuple[tokenizer_lib.Tokenizer, str]:
  """(tokenizer, description) of a converted model (see the module docstring).

  Args:
    hf_dir: the HF folder.
    config: the converted ModelConfig.
    ids: config.json's special ids (`special_ids`).
    model_type: config.json's model_type.

  Raises:
    ValueError: the tokenizer has more ids than the model's vocabulary.
  """
  sp_path = next((p for p in (os.path.join(hf_dir, f) for f in SENTENCEPIECE_FILES)
                  if os.path.isfile(p)), None)
  proto = sp = None
  if sp_path is not None:
    with open(sp_path, "rb") as f:
      proto = f.read()
    sp = spm.SentencePieceProcessor(model_proto=proto)
  vocab = token_vocab(hf_dir, sp)
  named = named_special_ids(hf_dir, model_type, vocab)
  arch = config.architecture
  # T5 has no BOS: its decoder starts from decoder_start_token_id (the pad id). A BERT frames
  # its inputs with [CLS] ... [SEP], which config.json does not name.
  bos = _first(ids.get("decoder_start_token_id") if arch == "encoder_decoder" else None,
               ids.get("bos_token_id"), named.get("cls") if arch == "encoder" else None,
               named.get("bos"))
  eos = _first(ids.get("eos_token_id"), named.get("sep") if arch == "encoder" else None,
               named.get("eos"))
  pad = _first(ids.get("pad_token_id"), named.get("pad"))
  mask = named.get("mask")
  sentinels = ()
  if arch == "encoder_decoder":
    sentinels = sentinel_ids(hf_dir, model_type, vocab, None if sp is None
                             else sp.get_piece_size(), config.vocab_size)
  if sp is not None:
    pieces = sp.get_piece_size()
    tok = tokenizer_lib.SentencePieceTokenizer(
        proto, pad_id=pad, bos_id=bos, eos_id=eos, sentinel_ids=sentinels,
        # A mask added past the pieces has no piece to encode; MLM then masks with vocab_size.
        mask_id=mask if mask is not None and mask < pieces else None)
    what = f"SentencePiece {os.path.basename(sp_path)} ({pieces} pieces)"
  else:
    tok = tokenizer_lib.IdTokenizer(config.vocab_size, pad_id=pad, bos_id=bos, eos_id=eos,
                                    unk_id=named.get("unk"), mask_id=mask,
                                    sentinel_ids=sentinels)
    what = ("ids only (no SentencePiece tokenizer.model in the folder: generate and score "
            "with token ids)")
  if tok.vocab_size > config.vocab_size:
    raise ValueError(f"{sp_path} has {tok.vocab_size} pieces, more than the model's vocab_size "
                     f"{config.vocab_size} in config.json: ids past {config.vocab_size - 1} "
                     "would have no embedding. Use the tokenizer the model was trained with.")
  specials = {"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id,
              "unk": getattr(tok, "unk_id", None), "mask": getattr(tok, "mask_id", None)}
  what += "; special ids " + ", ".join(f"{k} {v}" for k, v in specials.items() if v is not None)
  if sentinels:
    what += (f"; sentinels <extra_id_0..{len(sentinels) - 1}> = ids {sentinels[0]}.."
             f"{sentinels[-1]}")
  return tok, what
