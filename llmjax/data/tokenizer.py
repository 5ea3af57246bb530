"""Tokenizers: a lossless SentencePiece BPE model trained on the corpus, and raw UTF-8 bytes.

Both map text to ids and back with `decode(encode(text)) == text` for any string, share the
special ids pad=0, bos=1, eos=2, and save to a directory as `tokenizer.json` (the kind and
ids) plus, for SentencePiece, `tokenizer.model` (the serialized model proto; never pickle).
`load_tokenizer(directory)` reads either kind back.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np
import sentencepiece as spm

CONFIG_FILE = "tokenizer.json"
MODEL_FILE = "tokenizer.model"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# SentencePiece's defaults drop newlines and collapse runs of spaces, which ruins code. These
# settings keep every character: no normalization, whitespace-only pieces (indentation),
# newline and tab as their own symbols, and bytes for anything outside the vocabulary.
_LOSSLESS = dict(
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    allow_whitespace_only_pieces=True,
    split_by_whitespace=True,
    user_defined_symbols=["\n", "\t"],
    byte_fallback=True,
    split_digits=True,
)
# Training sentences are lines; SentencePiece silently skips sentences longer than this.
_MAX_LINE_BYTES = 8192


class Tokenizer(Protocol):
  """What the rest of llmjax needs from a tokenizer."""
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...
  def decode(self, ids: Iterable[int]) -> str: ...
  def save(self, directory: str) -> None: ...


class ByteTokenizer:
  """UTF-8 bytes offset past the specials: pad 0, bos 1, eos 2, unk 3, byte b -> b + 4."""

  kind = "byte"
  pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
  offset = 4
  vocab_size = 256 + offset

  def encode(self, text: str) -> list[int]:
    """Returns the ids of text's UTF-8 bytes (no BOS/EOS)."""
    data = np.frombuffer(text.encode("utf-8", errors="surrogatepass"), np.uint8)
    return (data.astype(np.int32) + self.offset).tolist()

  def decode(self, ids: Iterable[int]) -> str:
    """Decodes ids, skipping special ids; invalid UTF-8 becomes U+FFFD."""
    data = bytes(int(i) - self.offset for i in ids if self.offset <= int(i) < self.vocab_size)
    return data.decode("utf-8", errors="replace")

  def save(self, directory: str) -> None:
    """Writes tokenizer.json into directory."""
    _write_config(directory, {"kind": self.kind, "vocab_size": self.vocab_size})


class SentencePieceTokenizer:
  """A SentencePiece model (pad 0, bos 1, eos 2, unk 3) held as its serialized proto."""

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes):
    self.model_proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
    self.vocab_size = self._sp.get_piece_size()
    self.pad_id, self.bos_id = self._sp.pad_id(), self._sp.bos_id()
    self.eos_id, self.unk_id = self._sp.eos_id(), self._sp.unk_id()
    if (self.pad_id, self.bos_id, self.eos_id) != (PAD_ID, BOS_ID, EOS_ID):
      raise ValueError(f"SentencePiece model has pad/bos/eos ids {self.pad_id}/{self.bos_id}/"
                       f"{self.eos_id}; llmjax needs 0/1/2 (train it with "
                       "SentencePieceTokenizer.train).")

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int = 4096, *, max_text_mb: float = 8.0,
            model_type: str = "bpe", num_threads: int = 1) -> SentencePieceTokenizer:
    """Trains a lossless model on the first `max_text_mb` MB of `texts`.

    Args:
      texts: documents; only the first max_text_mb megabytes (UTF-8) are read, so training on
        a large corpus takes seconds (BPE: about 2 s for 5 MB of Python source).
      vocab_size: the size of the vocabulary, including specials, bytes and the newline and tab
        symbols; at least 300.
      max_text_mb: cap on the training text.
      model_type: 'bpe' (default) or 'unigram' (slower to train).
      num_threads: SentencePiece trainer threads; 1 keeps training bit-for-bit deterministic.

    Raises:
      ValueError: vocab_size too small, texts empty, or too little text for vocab_size.
    """
    if vocab_size < 300:
      raise ValueError(f"vocab_size={vocab_size} is too small for a SentencePiece model (it "
                       "holds 4 specials, 256 bytes and 2 symbols); use >= 300 or the 'byte' "
                       "tokenizer.")
    lines = list(_training_lines(texts, int(max_text_mb * 1e6)))
    if not lines:
      raise ValueError("no text to train the SentencePiece tokenizer on.")
    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
          model_type=model_type, character_coverage=1.0, input_sentence_size=0,
          shuffle_input_sentence=False, max_sentence_length=_MAX_LINE_BYTES,
          pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
          num_threads=num_threads, minloglevel=2, **_LOSSLESS)
    except RuntimeError as e:
      raise ValueError(f"SentencePiece training failed ({e}); with only "
                       f"{sum(map(len, lines)) / 1e6:.2f} MB of text, try a smaller vocab_size "
                       "or more text.") from e
    return cls(model.getvalue())

  def encode(self, text: str) -> list[int]:
    """Returns text's ids (no BOS/EOS)."""
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Encodes several texts at once (SentencePiece runs them in C++ threads)."""
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Decodes ids; pad/bos/eos/unk are dropped, invalid UTF-8 becomes U+FFFD."""
    specials = (self.pad_id, self.bos_id, self.eos_id, self.unk_id)
    return self._sp.decode([int(i) for i in ids if int(i) not in specials])

  def save(self, directory: str) -> None:
    """Writes tokenizer.json and tokenizer.model into directory."""
    os.makedirs(directory, exist_ok=True)
    _atomic_write(os.path.join(directory, MODEL_FILE), self.model_proto)
    _write_config(directory, {"kind": self.kind, "vocab_size": self.vocab_size})


def load_tokenizer(directory: str) -> ByteTokenizer | SentencePieceTokenizer:
  """Loads the tokenizer saved in directory (either kind)."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {CONFIG_FILE} in {directory!r}: not a saved llmjax tokenizer.")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  kind = config.get("kind")
  if kind == ByteTokenizer.kind:
    return ByteTokenizer()
  if kind == SentencePieceTokenizer.kind:
    with open(os.path.join(directory, MODEL_FILE), "rb") as f:
      return SentencePieceTokenizer(f.read())
  raise ValueError(f"{path} has unknown tokenizer kind {kind!r}; expected 'byte' or "
                   "'sentencepiece'.")


def _training_lines(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
  """Lines of texts (newlines are their own symbol, so no piece spans one) up to max_bytes."""
  total = 0
  for text in texts:
    for line in text.split("\n"):
      if not line:
        continue
      size = len(line.encode("utf-8", errors="surrogatepass"))
      if size > _MAX_LINE_BYTES:  # Would be skipped whole; keep its head instead.
        line = line[:_MAX_LINE_BYTES // 4]
        size = len(line.encode("utf-8", errors="surrogatepass"))
      yield line
      total += size
      if total >= max_bytes:
        return


def _write_config(directory: str, config: dict) -> None:
  os.makedirs(directory, exist_ok=True)
  _atomic_write(os.path.join(directory, CONFIG_FILE),
                json.dumps(dict(config, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID),
                           indent=2).encode())


def _atomic_write(path: str, data: bytes) -> None:
  with open(path + ".tmp", "wb") as f:
    f.write(data)
  os.replace(path + ".tmp", path)  # A killed write never leaves half a file.
