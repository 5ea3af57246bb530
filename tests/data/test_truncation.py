"""Classification / seq2seq examples longer than the row: counted, one warning, or refused."""

import pytest

from llmjax.data import pipeline
from llmjax.data.tokenizer import ByteTokenizer
from tests.data.batches import take

TOK = ByteTokenizer()
T, TD = 8, 6
# Byte tokens: len(text) ids, + EOS on each seq2seq side. Inputs over T - 1 = 7 characters and
# targets over TD - 1 = 5 are cut.
SEQ2SEQ = [{"input": "abc", "target": "cba"}, {"input": "abcdefgh", "target": "x"},
           {"input": "a", "target": "abcdefghijk"}, {"input": "abcdefghijkl", "target": "abcdef"},
           {"input": "abcdefg", "target": "abcde"}]


def _cfg(objective="seq2seq", **kw):
  return pipeline.DataConfig(objective=objective, train_file="train.jsonl", decoder_seq_len=TD,
                             num_classes=2 if objective == "classification" else None, **kw)


def _train(source, cfg, row_range=(0, 4)):
  return pipeline.make_train_iterator(source, TOK, batch_size=4, seq_len=T, data_cfg=cfg,
                                      row_range=row_range)


def test_seq2seq_truncation_is_counted_in_one_warning_line(capsys):
  it = _train(SEQ2SEQ, _cfg())
  err = capsys.readouterr().err
  assert err.count("\n") == 1, err
  assert ("3 of 5 seq2seq training examples of train.jsonl do not fit the sequence (inputs over "
          "8 tokens with EOS: 2 (longest 13), targets over 6: 2 (longest 12))") in err
  assert "truncate_long_examples=False" in err
  take(it, 3)  # Reading the data adds nothing.
  assert capsys.readouterr().err == ""


def test_only_the_first_rows_process_warns(capsys):
  _train(SEQ2SEQ, _cfg(), row_range=(2, 2))
  assert capsys.readouterr().err == ""


def test_refusing_long_examples_names_the_count_and_the_fix():
  with pytest.raises(ValueError, match=r"3 of 5 seq2seq training examples .* raise "
                     r"TrainConfig.seq_len / DataConfig.decoder_seq_len .*"
                     r"truncate_long_examples=True"):
    _train(SEQ2SEQ, _cfg(truncate_long_examples=False))


def test_fitting_examples_say_nothing(capsys):
  fit = [{"input": "abcdefg", "target": "abcde"}] * 4
  _train(fit, _cfg(truncate_long_examples=False))
  assert capsys.readouterr().err == ""


def test_classification_counts_texts_cut_to_the_row(capsys):
  # [bos] + text: 7 characters fit T = 8 (the EOS is dropped, not text); 8 do not.
  rows = [{"text": "abcdefg", "label": 0}, {"text": "abcdefgh", "label": 1},
          {"text": "a" * 20, "label": 0}, {"text": "", "label": 1}]
  pipeline.make_eval_batches(rows, TOK, batch_size=4, seq_len=T, num_batches=1,
                             data_cfg=_cfg("classification"), row_range=(0, 4))
  err = capsys.readouterr().err
  assert ("2 of 4 classification evaluation examples of train.jsonl do not fit the sequence "
          "(over 8 tokens with the special tokens; longest 21)") in err


def test_sentence_pairs_count_both_texts():
  cfg = _cfg("classification", text_pair_field="b", truncate_long_examples=False)
  fits = [{"text": "abc", "text_pair": "de", "label": 0}]  # 3 + 2 + 3 specials = 8.
  _train(fits * 4, cfg)
  with pytest.raises(ValueError, match="1 of 4 classification training examples"):
    _train(fits * 3 + [{"text": "abc", "text_pair": "def", "label": 1}], cfg)
