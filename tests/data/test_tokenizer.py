"""Tokenizers: lossless round trips, specials, save/load, deterministic training."""

import io
import json
import os

import pytest
import sentencepiece as spm

from llmjax.data import tokenizer as tokenizer_lib
from llmjax.data.tokenizer import (
    ByteTokenizer,
    IdTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
)

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


def _hf_style_proto(style: str) -> bytes:
  """A small model with LLaMA's (unk 0, bos 1, eos 2, no pad) or T5's (pad 0, eos 1, unk 2,
  no bos) special ids, as a converted HF tokenizer.model has them."""
  ids = {"llama": dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1),
         "t5": dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)}[style]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_writer=model,
                                 vocab_size=300, model_type="bpe", num_threads=1, minloglevel=2,
                                 **ids)
  return model.getvalue()


@pytest.fixture(scope="module")
def llama_proto() -> bytes:
  return _hf_style_proto("llama")


@pytest.fixture(scope="module")
def t5_proto() -> bytes:
  return _hf_style_proto("t5")


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


def test_sentencepiece_llama_style_ids_pad_falls_back_to_unk(llama_proto):
  tok = SentencePieceTokenizer(llama_proto)
  assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)
  ids = tok.encode("def method")
  assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == tok.decode(ids)


def test_sentencepiece_t5_style_ids_with_bos_override(t5_proto):
  tok = SentencePieceTokenizer(t5_proto, bos_id=0)  # T5's decoder starts from pad (0).
  assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, 0)


def test_sentencepiece_no_bos_without_override_raises(t5_proto):
  with pytest.raises(ValueError, match="no bos piece; pass bos_id="):
    SentencePieceTokenizer(t5_proto)


@pytest.mark.parametrize("ids", [dict(bos_id=300), dict(eos_id=-1), dict(pad_id=10_000)])
def test_sentencepiece_out_of_range_override_raises(ids, llama_proto):
  name = next(iter(ids))
  with pytest.raises(ValueError, match=f"{name}={ids[name]} is outside .* \\[0, 300\\)"):
    SentencePieceTokenizer(llama_proto, **ids)


@pytest.mark.parametrize("style, overrides, expected", [
    ("llama", {}, (0, 1, 2)),
    ("t5", dict(bos_id=0), (0, 0, 1)),
    ("ours", dict(eos_id=7, pad_id=5), (5, 1, 7)),
])
def test_sentencepiece_save_load_keeps_ids(style, overrides, expected, sp_tok, llama_proto,
                                           t5_proto, tmp_path):
  proto = {"llama": llama_proto, "t5": t5_proto, "ours": sp_tok.model_proto}[style]
  tok = SentencePieceTokenizer(proto, **overrides)
  tok.save(str(tmp_path))
  with open(os.path.join(tmp_path, tokenizer_lib.CONFIG_FILE)) as f:
    saved = json.load(f)
  assert (saved["pad_id"], saved["bos_id"], saved["eos_id"]) == expected
  loaded = load_tokenizer(str(tmp_path))
  assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == expected
  assert loaded.model_proto == proto


def test_sentencepiece_from_file_or_directory(t5_proto, tmp_path):
  path = os.path.join(tmp_path, tokenizer_lib.MODEL_FILE)
  with open(path, "wb") as f:
    f.write(t5_proto)
  for where in (path, str(tmp_path)):
    tok = SentencePieceTokenizer.from_file(where, bos_id=0)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.model_proto) == (0, 0, 1, t5_proto)


def test_old_tokenizer_files_load_and_save_unchanged(sp_tok, tmp_path):
  # What the previous version wrote: the ids were always the constants 0/1/2.
  old_json = json.dumps({"kind": "sentencepiece", "vocab_size": 320, "pad_id": 0, "bos_id": 1,
                         "eos_id": 2}, indent=2)
  old, new = tmp_path / "old", tmp_path / "new"
  old.mkdir()
  (old / tokenizer_lib.MODEL_FILE).write_bytes(sp_tok.model_proto)
  (old / tokenizer_lib.CONFIG_FILE).write_text(old_json)
  loaded = load_tokenizer(str(old))
  assert (loaded.pad_id, loaded.bos_id, loaded.eos_id, loaded.unk_id) == (0, 1, 2, 3)
  assert loaded.encode(TRICKY[0]) == sp_tok.encode(TRICKY[0])
  loaded.save(str(new))
  assert (new / tokenizer_lib.CONFIG_FILE).read_text() == old_json
  ByteTokenizer().save(str(new))
  assert json.loads((new / tokenizer_lib.CONFIG_FILE).read_text()) == {
      "kind": "byte", "vocab_size": 260, "pad_id": 0, "bos_id": 1, "eos_id": 2}


def test_special_ids_are_each_tokenizers_own(sp_tok, llama_proto, t5_proto, tmp_path):
  assert ByteTokenizer().special_ids == {0, 1, 2, 3}
  assert sp_tok.special_ids == {0, 1, 2, 3}  # Trained here: pad, bos, eos, unk.
  # Converted: id 3 is an ordinary piece of LLaMA's and T5's vocabularies.
  assert SentencePieceTokenizer(llama_proto).special_ids == {0, 1, 2}
  assert SentencePieceTokenizer(t5_proto, bos_id=0).special_ids == {0, 1, 2}
  # A converted BERT's ids (WordPiece, read as ids only) keep unk and mask through a save.
  bert = IdTokenizer(30522, pad_id=0, bos_id=101, eos_id=102, unk_id=100, mask_id=103)
  assert bert.special_ids == {0, 100, 101, 102, 103}
  bert.save(str(tmp_path))
  loaded = load_tokenizer(str(tmp_path))
  assert (loaded.unk_id, loaded.mask_id, loaded.special_ids) == (100, 103, bert.special_ids)
  assert IdTokenizer(96, eos_id=95).special_ids == {95}


def test_mask_and_sentinel_ids_default_to_the_trained_here_conventions(sp_tok, t5_proto):
  # Trained here: MLM masks with vocab_size (past the ids); no sentinels of its own, so a
  # model puts sentinel i at its vocab_size - 1 - i.
  for tok in (ByteTokenizer(), sp_tok, SentencePieceTokenizer(t5_proto, bos_id=0)):
    assert tokenizer_lib.mask_id(tok) == tok.vocab_size
    assert tokenizer_lib.sentinel_ids(tok) == ()
  bert = IdTokenizer(30522, pad_id=0, bos_id=101, eos_id=102, unk_id=100, mask_id=103)
  assert tokenizer_lib.mask_id(bert) == 103


def test_converted_mask_and_sentinel_ids_survive_a_save(t5_proto, tmp_path):
  # A converted T5 keeps HF's sentinels past its pieces (<extra_id_i> = 300 + 10 - 1 - i).
  sentinels = tuple(range(309, 299, -1))
  tok = SentencePieceTokenizer(t5_proto, bos_id=0, mask_id=5, sentinel_ids=sentinels)
  assert tokenizer_lib.sentinel_ids(tok) == sentinels and tokenizer_lib.mask_id(tok) == 5
  assert tok.special_ids == {0, 1, 2, 5}
  tok.save(str(tmp_path / "sp"))
  loaded = load_tokenizer(str(tmp_path / "sp"))
  assert (loaded.sentinel_ids, loaded.mask_id, loaded.special_ids) == (sentinels, 5,
                                                                       tok.special_ids)
  # Sentinel ids past the pieces have no text: decode leaves them out (the sampler names them).
  ids = tok.encode("def f")
  assert tok.decode(ids + [309] + ids) == tok.decode(ids + ids)
  ids_only = IdTokenizer(96, eos_id=1, sentinel_ids=(89, 88))
  ids_only.save(str(tmp_path / "ids"))
  assert load_tokenizer(str(tmp_path / "ids")).sentinel_ids == (89, 88)
  with pytest.raises(ValueError, match="distinct"):
    IdTokenizer(96, sentinel_ids=(89, 89))
