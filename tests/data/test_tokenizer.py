"""Tokenizers: lossless round trips, specials, save/load, deterministic training."""

import json
import os

import pytest

from llmjax.data import tokenizer as tokenizer_lib
from llmjax.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, load_tokenizer

TRICKY = [
    "def f(x):\n\tif x  >  1:\r\n        return 'héllo 世界 🎉'\n\n\n",
    "   leading spaces and trailing   ",
    "\t\t\ttabs\tinside\t",
    "digits 1234567890 and 3.14159e-10",
    "unicode: Ωμέγα, ßtraße,日本語, emoji 🐍🚀, combining é, zero-width \u200b.",
    "control \x00\x01\x7f chars and a lone \r",
    "",
    " ",
    "\n",
]


def _corpus() -> list[str]:
  """~60 KB of code-like text, deterministic."""
  docs = []
  for i in range(300):
    docs.append(
        f"class Thing{i % 17}(object):\n"
        f"    \"\"\"Docstring number {i} with words alpha beta gamma.\"\"\"\n\n"
        f"    def method_{i % 11}(self, value={i}):\n"
        f"\tif value > {i * 7}:\n"
        f"            return self.value + {i}  # comment\n"
        f"        return None\n")
  return docs


@pytest.fixture(scope="module")
def sp_tok() -> SentencePieceTokenizer:
  return SentencePieceTokenizer.train(_corpus(), vocab_size=320)


def test_sentencepiece_round_trip_lossless(sp_tok):
  assert sp_tok.vocab_size == 320
  for text in TRICKY + _corpus()[:5]:
    ids = sp_tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < sp_tok.vocab_size for i in ids)
    assert sp_tok.decode(ids) == text


def test_sentencepiece_specials_and_no_bos_eos_added(sp_tok):
  assert (sp_tok.pad_id, sp_tok.bos_id, sp_tok.eos_id) == (0, 1, 2)
  ids = sp_tok.encode("x = 1\n")
  assert sp_tok.bos_id not in ids and sp_tok.eos_id not in ids
  assert sp_tok.decode([sp_tok.bos_id] + ids + [sp_tok.eos_id, 0, 0]) == "x = 1\n"


def test_sentencepiece_training_is_deterministic(sp_tok):
  again = SentencePieceTokenizer.train(_corpus(), vocab_size=320)
  assert again.model_proto == sp_tok.model_proto


def test_sentencepiece_vocab_too_small_raises():
  with pytest.raises(ValueError, match="vocab_size"):
    SentencePieceTokenizer.train(_corpus(), vocab_size=100)


def test_byte_round_trip_and_specials():
  tok = ByteTokenizer()
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 260)
  for text in TRICKY:
    ids = tok.encode(text)
    assert all(4 <= i < 260 for i in ids)
    assert tok.decode(ids) == text
  assert tok.decode([1] + tok.encode("hi") + [2, 0, 0]) == "hi"


def test_byte_decode_invalid_utf8_uses_replacement():
  tok = ByteTokenizer()
  ids = tok.encode("ok") + [0xFF + 4, 0xFE + 4]
  assert tok.decode(ids) == "ok\ufffd\ufffd"


@pytest.mark.parametrize("kind", ["byte", "sentencepiece"])
def test_save_load_round_trip(kind, sp_tok, tmp_path):
  tok = ByteTokenizer() if kind == "byte" else sp_tok
  tok.save(str(tmp_path))
  with open(os.path.join(tmp_path, tokenizer_lib.CONFIG_FILE)) as f:
    assert json.load(f)["kind"] == kind
  loaded = load_tokenizer(str(tmp_path))
  assert type(loaded) is type(tok)
  assert loaded.vocab_size == tok.vocab_size
  for text in TRICKY:
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.decode(loaded.encode(text)) == text


def test_load_tokenizer_missing_dir_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    load_tokenizer(str(tmp_path))
