"""Tokenizers: a lossless SentencePiece BPE model trained on the corpus, and raw UTF-8 bytes.

Both map text to ids and back with `decode(encode(text)) == text` for any string (a converted
SentencePiece model only as far as its own normalization allows). Ours use the special ids
pad=0, bos=1, eos=2; a SentencePiece model converted from elsewhere keeps its own (LLaMA: unk 0,
bos 1, eos 2, no pad; T5: pad 0, eos 1, unk 2, no bos), with overrides for the ones it lacks.
Both save to a directory as `tokenizer.json` (the kind and the ids in use) plus, for
SentencePiece, `tokenizer.model` (the serialized model proto; never pickle).
`load_tokenizer(directory)` reads either kind back.

Every kind exposes `special_ids`: the control ids that are not text (pad, bos, eos, unk, and a
converted model's others, e.g. BERT's [MASK]). Objectives never mask or sample them and
fill-mask never proposes them; nothing assumes they are 0-3 (a converted BERT's are 0 and
100-103, and ids 1-3 are ordinary tokens of LLaMA's and T5's vocabularies).

Two ids belong to objectives rather than text, and a converted tokenizer may bring its own:
- the MLM [MASK] id (`mask_id(tokenizer)`): the tokenizer's `mask_id` when it has one (a
  converted BERT's [MASK]), else `vocab_size`, the id just past the tokenizer's (models
  trained here);
- T5's sentinels <extra_id_0>, <extra_id_1>, ... (`sentinel_ids(tokenizer)`): a converted T5
  tokenizer's own ids (HF: 32099 - i for 32000 pieces + 100 extra ids), saved with it; none
  for tokenizers trained here, whose models put sentinel i at model vocab_size - 1 - i.
"""

from __future__ import annotations

import functools
import io
import json
import operator
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
# SentencePiece's whitespace symbol: a literal one in the text would decode as a space.
_META = "\u2581"


class Tokenizer(Protocol):
  """What the rest of llmjax needs from a tokenizer."""
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  special_ids: frozenset[int]  # Control ids that are not text (see the module docstring).
  # Optional (read through `mask_id()` / `sentinel_ids()`): mask_id: int | None, the
  # tokenizer's own [MASK]; sentinel_ids: tuple[int, ...], its own <extra_id_i> ids.

  def encode(self, text: str) -> list[int]: ...
  def decode(self, ids: Iterable[int]) -> str: ...
  def save(self, directory: str) -> None: ...


class ByteTokenizer:
  """UTF-8 bytes offset past the specials: pad 0, bos 1, eos 2, unk 3, byte b -> b + 4."""

  kind = "byte"
  pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
  mask_id = None  # MLM masks with vocab_size, past the bytes.
  sentinel_ids = ()
  offset = 4
  vocab_size = 256 + offset
  special_ids = frozenset(range(offset))

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
    _write_config(directory, self)


class SentencePieceTokenizer:
  """A SentencePiece model held as its serialized proto, with the special ids llmjax uses.

  Models trained here have pad 0, bos 1, eos 2, unk 3, no mask id and no sentinels. A converted
  model (LLaMA, T5) keeps its proto's ids unless overridden: LLaMA's has no pad (pad falls back
  to unk), T5's has no bos (pass bos_id, e.g. T5's decoder start id 0) and brings its
  sentinels (HF's T5 tokenizer adds its 100 extra ids after the proto's pieces).
  """

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes, *, pad_id: int | None = None,
               bos_id: int | None = None, eos_id: int | None = None,
               mask_id: int | None = None, sentinel_ids: Sequence[int] = ()):
    """Loads model_proto; each given id overrides the proto's own.

    Args:
      model_proto: a serialized SentencePiece ModelProto (a `tokenizer.model` file's bytes).
      pad_id: defaults to the proto's pad, or its unk when it has none.
      bos_id: defaults to the proto's bos; required when the proto has none.
      eos_id: defaults to the proto's eos; required when the proto has none.
      mask_id: the MLM [MASK] piece, when the tokenizer has one (a special id); None = MLM
        masks with vocab_size, past the pieces.
      sentinel_ids: the ids of <extra_id_0>, <extra_id_1>, ...: pieces of the proto or ids past
        it (HF T5: vocab_size + extra_ids - 1 - i); () for none.

    Raises:
      ValueError: bos or eos is neither in the proto nor given, an id is outside
        [0, vocab_size), or a sentinel id is negative or repeated.
    """
    self.model_proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
    self.vocab_size = self._sp.get_piece_size()
    self.unk_id = self._sp.unk_id()
    # The proto says -1 for a special it lacks. Padding is only ever masked out, so unk can
    # stand in for a missing pad; bos and eos are fed to and read from the model, so a
    # stand-in would change what it computes: those the caller must name.
    proto_pad = self._sp.pad_id()
    self.pad_id = _resolve_id("pad", pad_id, proto_pad if proto_pad >= 0 else self.unk_id,
                              self.vocab_size)
    self.bos_id = _resolve_id("bos", bos_id, self._sp.bos_id(), self.vocab_size)
    self.eos_id = _resolve_id("eos", eos_id, self._sp.eos_id(), self.vocab_size)
    self.mask_id = None if mask_id is None else _resolve_id("mask", mask_id, -1,
                                                             self.vocab_size)
    self.sentinel_ids = _check_sentinels(sentinel_ids)
    self._meta_ids = _meta_symbol_ids(self._sp)

  @classmethod
  def from_file(cls, path: str, *, pad_id: int | None = None, bos_id: int | None = None,
                eos_id: int | None = None, mask_id: int | None = None,
                sentinel_ids: Sequence[int] = ()) -> SentencePieceTokenizer:
    """Loads a `tokenizer.model` file, or the one in directory path (e.g. an HF checkpoint).

    Args:
      path: the model file, or a directory holding `tokenizer.model`.
      pad_id, bos_id, eos_id, mask_id, sentinel_ids: as in the constructor.
    """
    if os.path.isdir(path):
      path = os.path.join(path, MODEL_FILE)
    with open(path, "rb") as f:
      return cls(f.read(), pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, mask_id=mask_id,
                 sentinel_ids=sentinel_ids)

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

  @functools.cached_property
  def special_ids(self) -> frozenset[int]:
    """pad, bos, eos, unk, the mask id and every other control piece of the proto."""
    control = (i for i in range(self.vocab_size) if self._sp.is_control(i))
    named = (self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.mask_id)
    return frozenset({*(i for i in named if i is not None), *control})

  def encode(self, text: str) -> list[int]:
    """Returns text's ids (no BOS/EOS)."""
    if self._meta_ids is None or _META not in text:
      return self._sp.encode(text)
    # SentencePiece reads a literal U+2581 as its own escaped space and decodes it as " ": the
    # text between them is encoded alone and each one becomes its three UTF-8 byte pieces.
    parts = self._sp.encode(text.split(_META))
    ids = parts[0]
    for part in parts[1:]:
      ids = ids + self._meta_ids + part
    return ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Encodes several texts at once (SentencePiece runs them in C++ threads)."""
    if self._meta_ids is not None and any(_META in text for text in texts):
      return [self.encode(text) for text in texts]
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Decodes ids; pad/bos/eos/unk/mask and ids past the proto's pieces (sentinels) are
    dropped, invalid UTF-8 becomes U+FFFD."""
    specials = (self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.mask_id)
    return self._sp.decode([int(i) for i in ids
                            if int(i) not in specials and 0 <= int(i) < self.vocab_size])

  def save(self, directory: str) -> None:
    """Writes tokenizer.json (with the ids in use) and tokenizer.model into directory."""
    os.makedirs(directory, exist_ok=True)
    _atomic_write(os.path.join(directory, MODEL_FILE), self.model_proto)
    _write_config(directory, self)


class IdTokenizer:
  """Token ids without text: the special ids and vocabulary size of a model whose own tokenizer
  llmjax does not read (a converted GPT-2's BPE, a BERT's WordPiece). Generation and scoring
  work on ids (`LoadedModel.generate_ids`, `llmjax sample --prompt_ids`); text raises."""

  kind = "ids"

  def __init__(self, vocab_size: int, *, pad_id: int | None = None, bos_id: int | None = None,
               eos_id: int | None = None, unk_id: int | None = None,
               mask_id: int | None = None, sentinel_ids: Sequence[int] = ()):
    """The vocabulary size and the special ids the model uses.

    Args:
      vocab_size: number of ids.
      pad_id, bos_id, eos_id: a BERT's are 0, 101 ([CLS]) and 102 ([SEP]); eos defaults to
        bos (else 0), bos and pad to eos.
      unk_id, mask_id: a BERT's are 100 and 103; None when the model has none.
      sentinel_ids: a T5's <extra_id_0>, <extra_id_1>, ... ids; () for none.
    """
    self.vocab_size = int(vocab_size)
    eos = eos_id if eos_id is not None else (bos_id if bos_id is not None else 0)
    self.eos_id = _resolve_id("eos", eos, -1, self.vocab_size)
    self.bos_id = _resolve_id("bos", bos_id if bos_id is not None else self.eos_id, -1,
                              self.vocab_size)
    self.pad_id = _resolve_id("pad", pad_id if pad_id is not None else self.eos_id, -1,
                              self.vocab_size)
    self.unk_id = None if unk_id is None else _resolve_id("unk", unk_id, -1, self.vocab_size)
    self.mask_id = None if mask_id is None else _resolve_id("mask", mask_id, -1,
                                                             self.vocab_size)
    self.special_ids = frozenset(
        i for i in (self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.mask_id)
        if i is not None)
    self.sentinel_ids = _check_sentinels(sentinel_ids)

  def _no_text(self, what: str):
    raise ValueError(f"this model has no text tokenizer (it was converted from a folder "
                     f"without a SentencePiece tokenizer.model), so it cannot {what}: work on "
                     "token ids (LoadedModel.logits / generate_ids, `llmjax sample "
                     "--prompt_ids=1,2,3`), tokenizing with the model's own tokenizer.")

  def encode(self, text: str) -> list[int]:
    self._no_text("encode text")

  def decode(self, ids: Iterable[int]) -> str:
    self._no_text("decode ids into text")

  def save(self, directory: str) -> None:
    """Writes tokenizer.json into directory."""
    _write_config(directory, self)


def load_tokenizer(directory: str) -> ByteTokenizer | SentencePieceTokenizer | IdTokenizer:
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
    # The saved ids are the ones the model was trained or converted with; older files (all
    # 0/1/2) and files without them resolve exactly as the proto says.
    ids = {key: config[key] for key in ("pad_id", "bos_id", "eos_id", "mask_id")
           if key in config}
    return SentencePieceTokenizer.from_file(os.path.join(directory, MODEL_FILE), **ids,
                                            sentinel_ids=config.get("sentinel_ids", ()))
  if kind == IdTokenizer.kind:
    return IdTokenizer(config["vocab_size"], pad_id=config.get("pad_id"),
                       bos_id=config.get("bos_id"), eos_id=config.get("eos_id"),
                       unk_id=config.get("unk_id"), mask_id=config.get("mask_id"),
                       sentinel_ids=config.get("sentinel_ids", ()))
  raise ValueError(f"{path} has unknown tokenizer kind {kind!r}; expected 'byte', "
                   "'sentencepiece' or 'ids'.")


def mask_id(tokenizer: Tokenizer) -> int:
  """The MLM [MASK] id: the tokenizer's own (a converted BERT's [MASK]) when it has one, else
  tokenizer.vocab_size, the id just past its vocabulary (models trained here)."""
  own = getattr(tokenizer, "mask_id", None)
  return tokenizer.vocab_size if own is None else int(own)


def sentinel_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
  """The tokenizer's own T5 sentinel ids, <extra_id_0> first (a converted T5's); () for a
  tokenizer without them, whose model puts sentinel i at model vocab_size - 1 - i."""
  return tuple(getattr(tokenizer, "sentinel_ids", ()))


def trained_here_sentinel_ids(model_vocab_size: int, count: int) -> np.ndarray:
  """Sentinel i's id for a tokenizer without its own sentinels (models trained here, T5's
  layout): model_vocab_size - 1 - i, for i < count. The span-corruption data and the sampler
  both follow this one convention."""
  return model_vocab_size - 1 - np.arange(count, dtype=np.int32)


def _meta_symbol_ids(sp: spm.SentencePieceProcessor) -> list[int] | None:
  """The byte pieces of U+2581 when a literal one can be kept through them: the model has
  byte fallback and adds no dummy prefix (so text can be encoded in pieces); else None."""
  ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in _META.encode("utf-8")]
  if not all(sp.is_byte(i) for i in ids) or sp.encode("x", out_type=str)[:1] != ["x"]:
    return None
  return ids


def _check_sentinels(ids: Sequence[int]) -> tuple[int, ...]:
  """Sentinel ids as a tuple of ints, checked to be distinct and non-negative."""
  ids = tuple(operator.index(i) for i in ids)
  if len(set(ids)) != len(ids) or min(ids, default=0) < 0:
    raise ValueError(f"sentinel ids must be distinct non-negative ids, got {ids[:8]}...")
  return ids


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


def _resolve_id(name: str, override: int | None, proto_id: int, vocab_size: int) -> int:
  """The override if given, else the proto's id; checked to lie in [0, vocab_size)."""
  if override is None and proto_id < 0:
    fix = ("e.g. the decoder start id (T5: bos_id=0)" if name == "bos"
           else "e.g. the id of '</s>'")
    raise ValueError(f"the SentencePiece model has no {name} piece; pass {name}_id= to "
                     f"SentencePieceTokenizer ({fix}).")
  value = proto_id if override is None else operator.index(override)  # No floats.
  if not 0 <= value < vocab_size:
    raise ValueError(f"{name}_id={value} is outside the SentencePiece vocabulary "
                     f"[0, {vocab_size}).")
  return value


def _write_config(directory: str, tok: Tokenizer) -> None:
  """tokenizer.json: the kind, vocabulary size and the special ids in use."""
  config = {"kind": tok.kind, "vocab_size": tok.vocab_size, "pad_id": tok.pad_id,
            "bos_id": tok.bos_id, "eos_id": tok.eos_id}
  if tok.kind == IdTokenizer.kind:  # The others' unk comes from their kind or proto.
    config |= {k: getattr(tok, k) for k in ("unk_id",) if getattr(tok, k) is not None}
  # Written only when present, so the files of tokenizers without them stay as they were.
  if getattr(tok, "mask_id", None) is not None:
    config["mask_id"] = tok.mask_id
  if getattr(tok, "sentinel_ids", ()):
    config["sentinel_ids"] = list(tok.sentinel_ids)
  os.makedirs(directory, exist_ok=True)
  _atomic_write(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2).encode())


def _atomic_write(path: str, data: bytes) -> None:
  with open(path + ".tmp", "wb") as f:
    f.write(data)
  os.replace(path + ".tmp", path)  # A killed write never leaves half a file.
