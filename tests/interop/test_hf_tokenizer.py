"""What a Hugging Face folder's tokenizer files say: special ids and T5 sentinels, read from
hand-written files (no torch or transformers needed; test_hf_convert.py converts folders that
transformers itself wrote)."""

import json

import pytest

from llmjax.interop.hf_tokenizer import named_special_ids, sentinel_ids, token_vocab


def _write(directory, name: str, value) -> None:
  text = value if isinstance(value, str) else json.dumps(value)
  (directory / name).write_text(text, encoding="utf-8")


def test_bert_vocab_txt_alone_uses_bert_default_names(tmp_path):
  words = ["[PAD]"] + [f"w{i}" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  _write(tmp_path, "vocab.txt", "\n".join(words) + "\n")
  vocab = token_vocab(str(tmp_path))
  assert named_special_ids(str(tmp_path), "bert", vocab) == {
      "pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def test_tokenizer_files_name_the_specials_and_later_files_win(tmp_path):
  _write(tmp_path, "vocab.txt", "\n".join(["<p>", "<s>", "</s>", "<m>", "x", "[MASK]"]) + "\n")
  _write(tmp_path, "special_tokens_map.json", {"cls_token": "<s>", "sep_token": "</s>",
                                               "mask_token": "[MASK]"})
  # tokenizer_config.json wins over special_tokens_map.json; AddedToken dicts name by content;
  # an explicit null removes BERT's default "[PAD]" (absent from this vocabulary anyway).
  _write(tmp_path, "tokenizer_config.json", {
      "mask_token": {"content": "<m>", "special": True}, "pad_token": "<p>", "unk_token": None,
      "added_tokens_decoder": {"7": {"content": "<extra>"}}})
  vocab = token_vocab(str(tmp_path))
  assert vocab["<extra>"] == 7
  assert named_special_ids(str(tmp_path), "bert", vocab) == {
      "pad": 0, "cls": 1, "sep": 2, "mask": 3}


def test_t5_sentinels_named_in_tokenizer_json(tmp_path):
  added = [{"id": 0, "content": "<pad>"}] + [
      {"id": 109 - i, "content": f"<extra_id_{i}>"} for i in range(10)]
  _write(tmp_path, "tokenizer.json", {"added_tokens": added, "model": {"vocab": []}})
  vocab = token_vocab(str(tmp_path))
  assert sentinel_ids(str(tmp_path), "t5", vocab, 100, 128) == tuple(range(109, 99, -1))


def test_t5_sentinels_from_extra_ids_or_t5s_default(tmp_path):
  # tokenizer_config.json's count, laid out after the pieces as HF's T5 tokenizer does.
  _write(tmp_path, "tokenizer_config.json", {"extra_ids": 4})
  assert sentinel_ids(str(tmp_path), "t5", {}, 90, 96) == (93, 92, 91, 90)
  # No tokenizer files: T5Tokenizer's default of 100 extra ids, where they fit the model
  # (32000 pieces + 100 in T5's 32128 rows) ...
  bare = tmp_path / "bare"
  bare.mkdir()
  assert sentinel_ids(str(bare), "t5", {}, 32000, 32128)[:2] == (32099, 32098)
  assert len(sentinel_ids(str(bare), "t5", {}, 32000, 32128)) == 100
  # ... else none: the sampler then uses the convention of models trained here.
  assert sentinel_ids(str(bare), "t5", {}, 90, 96) == ()
  assert sentinel_ids(str(bare), "t5", {}, None, 96) == ()


def test_sentinels_past_the_model_vocab_are_refused(tmp_path):
  _write(tmp_path, "tokenizer_config.json", {"extra_ids": 10})
  with pytest.raises(ValueError, match="sentinels reach id 99, past the model's vocab_size 96"):
    sentinel_ids(str(tmp_path), "t5", {}, 90, 96)
