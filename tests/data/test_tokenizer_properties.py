"""Property tests: both text tokenizers give back any Unicode text they are given.

The module docstring of llmjax/data/tokenizer.py promises `decode(encode(text)) == text` for any
string (lossless SentencePiece settings, STACK.md). Strings here are any sequence of Unicode
scalar values; lone surrogates (not text: no file or UTF-8 source can hold one) are left out.
The converted-model path (llmjax/interop/hf_tokenizer.py) reads a folder's SentencePiece model
into the same class, or an ids-only tokenizer that has no text to round-trip.
"""

import inspect
import json
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmjax.data import tokenizer as tokenizer_lib

# Any code point but surrogates, with the characters tokenizers mishandle most often (spaces,
# newlines, tabs, SentencePiece's own whitespace symbol U+2581, NUL, BOM) drawn more often.
# (Joined from pieces: st.text only takes single characters.)
_TRICKY = [" ", "  ", "\n", "\t", "\r\n", "\u2581", "\x00", "\ufeff", "\u3000", "e\u0301"]
_CHARACTER = st.characters(exclude_categories=("Cs",))  # Surrogates are not text.
TEXT = st.lists(st.one_of(_CHARACTER, st.sampled_from(_TRICKY)), max_size=40).map("".join)
SETTINGS = settings(max_examples=150, deadline=None)


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
  """A small lossless model trained once (about 0.1 s), and the same model saved and loaded."""
  corpus = [inspect.getsource(json), inspect.getsource(textwrap),
            "Grüße, ça va? 日本語のテキスト。 Ελληνικά. 🙂\n\tindented  twice\n"]
  tok = tokenizer_lib.SentencePieceTokenizer.train(corpus, vocab_size=400)
  directory = str(tmp_path_factory.mktemp("sp"))
  tok.save(directory)
  return tok, tokenizer_lib.load_tokenizer(directory)


@SETTINGS
@given(TEXT)
def test_byte_tokenizer_round_trips_any_text(text):
  tok = tokenizer_lib.ByteTokenizer()
  ids = tok.encode(text)
  assert len(ids) == len(text.encode("utf-8"))
  assert all(tok.offset <= i < tok.vocab_size for i in ids)  # No special id is text.
  assert tok.decode(ids) == text


@SETTINGS
@given(TEXT, st.lists(st.sampled_from(sorted(tokenizer_lib.ByteTokenizer.special_ids)),
                      max_size=4), st.randoms(use_true_random=False))
def test_byte_tokenizer_decode_skips_special_ids(text, specials, rnd):
  tok = tokenizer_lib.ByteTokenizer()
  ids = tok.encode(text)
  for special in specials:
    ids.insert(rnd.randint(0, len(ids)), special)
  assert tok.decode(ids) == text


@SETTINGS
@given(TEXT)
def test_sentencepiece_round_trips_any_text(sentencepiece, text):
  tok, loaded = sentencepiece
  ids = tok.encode(text)
  # Byte fallback: nothing is unknown, and no id is a control id.
  assert not set(ids) & tok.special_ids
  assert all(0 <= i < tok.vocab_size for i in ids)
  assert tok.decode(ids) == text
  assert loaded.encode(text) == ids  # What a workdir saves encodes the same.


@settings(max_examples=50, deadline=None)
@given(st.lists(TEXT, max_size=5))
def test_sentencepiece_encode_batch_matches_encode(sentencepiece, texts):
  tok, _ = sentencepiece
  assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
