"""The pipeline for every objective: batch formats, content vs the source, exact resume."""

import json

import numpy as np
import pytest

from llmjax.data import objectives, pipeline
from llmjax.data.pipeline import DataConfig
from llmjax.data.tokenizer import ByteTokenizer, SentencePieceTokenizer
from tests.data.batches import assert_same_batches, take

B, T, TD = 4, 32, 24
TOK = ByteTokenizer()  # Byte b is id b + 4; vocab 260.
MODEL_VOCAB = 260 + 100


@pytest.fixture(scope="module")
def texts():
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
  return [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(40)]


def _ids_text(ids):
  return bytes(int(i) - 4 for i in ids).decode()


def _iter(texts, cfg, seed=0, tok=TOK, **kw):
  return pipeline.make_train_iterator([{"text": t} for t in texts], tok, batch_size=B, seq_len=T,
                                      seed=seed, process_index=0, process_count=1, data_cfg=cfg,
                                      **kw)


def _check_formats(batch, t, td=None, classification=False):
  for k, v in batch.items():
    dtype = np.float32 if k == "weights" else np.int32
    assert v.dtype == dtype, k
    if k in ("labels", "weights") and classification:
      assert v.shape == (B,), k
    elif k.startswith("encoder_") or td is None:
      assert v.shape == (B, t), k
    else:
      assert v.shape == (B, td), k


MLM = DataConfig(objective="mlm", mlm_rate=0.15)
SPAN = DataConfig(objective="span_corruption", decoder_seq_len=TD)


def test_mlm_batches(texts):
  batch = next(_iter(texts, MLM))
  assert set(batch) == {"inputs", "targets", "weights", "segment_ids", "positions"}
  _check_formats(batch, T)
  w, seg = batch["weights"], batch["segment_ids"]
  assert set(np.unique(w)) <= {0.0, 1.0} and np.all(seg[w > 0] > 0)
  assert 0.05 < w.sum() / (seg > 0).sum() < 0.3
  np.testing.assert_array_equal(batch["inputs"][w == 0], batch["targets"][w == 0])
  assert np.all(batch["inputs"][(w > 0) & (batch["inputs"] >= 260)] == 260)  # Only the mask.
  # Targets are the documents: every piece decodes to part of one of the texts.
  for row_t, row_s in zip(batch["targets"], seg, strict=True):
    for s in np.unique(row_s[row_s > 0]):
      piece = [i for i in row_t[row_s == s] if i >= 4]
      assert any(_ids_text(piece) in t for t in texts)


@pytest.mark.parametrize("cfg", [MLM, SPAN], ids=["mlm", "span"])
def test_resume_is_exact_and_seeded(texts, cfg):
  it = _iter(texts, cfg, model_vocab_size=MODEL_VOCAB)
  take(it, 7)
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 25)  # Several epochs: each re-masks the documents.
  fresh = _iter(texts, cfg, model_vocab_size=MODEL_VOCAB)
  fresh.set_state(state)
  assert_same_batches(take(fresh, 25), expected)
  assert_same_batches(take(_iter(texts, cfg, model_vocab_size=MODEL_VOCAB), 3),
               take(_iter(texts, cfg, model_vocab_size=MODEL_VOCAB), 3))
  other = take(_iter(texts, cfg, seed=1, model_vocab_size=MODEL_VOCAB), 3)
  assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in
             zip(other, take(_iter(texts, cfg, model_vocab_size=MODEL_VOCAB), 3), strict=True))


def test_mlm_epochs_mask_the_same_document_differently():
  it = _iter(["one single document for every row"], DataConfig(objective="mlm", shuffle=False))
  weights = {tuple(np.flatnonzero(r)) for b in take(it, 3) for r in b["weights"]}
  assert len(weights) > 1


def test_span_corruption_batches_reconstruct_the_documents(texts):
  sentinels = MODEL_VOCAB - 1 - np.arange(100)
  doc_ids = [TOK.encode(t) for t in texts]
  chunk = objectives.span_corruption_chunk_length(T, TD, noise_density=0.15,
                                                  mean_noise_span_length=3.0, num_sentinels=100)
  chunks = {tuple(ids[i:i + chunk]) for ids in doc_ids for i in range(0, len(ids), chunk)}
  it = _iter(texts, SPAN, model_vocab_size=MODEL_VOCAB)
  seen = 0
  for batch in take(it, 6):
    assert set(batch) == {"encoder_inputs", "encoder_segment_ids", "encoder_positions", "inputs",
                          "targets", "weights", "segment_ids", "positions"}
    _check_formats(batch, T, TD)
    for r in range(B):
      es, ds = batch["encoder_segment_ids"][r], batch["segment_ids"][r]
      assert es.max() == ds.max()
      for s in range(1, es.max() + 1):
        enc, tgt = batch["encoder_inputs"][r][es == s], batch["targets"][r][ds == s]
        np.testing.assert_array_equal(batch["inputs"][r][ds == s], np.r_[1, tgt[:-1]])
        assert tuple(objectives.reconstruct_from_spans(enc, tgt, sentinels)) in chunks
        seen += 1
  assert seen > 20


def test_span_corruption_needs_a_big_enough_model_vocab(texts):
  with pytest.raises(ValueError, match="model_vocab_size"):
    _iter(texts, SPAN)
  with pytest.raises(ValueError, match="ModelConfig.vocab_size"):
    _iter(texts, SPAN, model_vocab_size=MODEL_VOCAB - 1)
  with pytest.raises(ValueError, match=">= 261"):
    _iter(texts, MLM, model_vocab_size=260)


def test_required_vocab_size():
  assert pipeline.required_vocab_size(DataConfig(), TOK) == 260
  assert pipeline.required_vocab_size(MLM, TOK) == 261
  assert pipeline.required_vocab_size(DataConfig(objective="span_corruption", extra_ids=7),
                                      TOK) == 267
  # A tokenizer's own mask id and sentinels need no ids past it (or only up to its sentinels).
  assert pipeline.required_vocab_size(MLM, MaskingByteTokenizer()) == 261
  assert pipeline.required_vocab_size(DataConfig(objective="span_corruption", extra_ids=3),
                                      SentinelByteTokenizer()) == 270


class MaskingByteTokenizer(ByteTokenizer):
  """Bytes with a [MASK] of their own, as a converted BERT has: pad 0, bos 1, eos 2, unk 3,
  mask 4, byte b -> b + 5."""

  offset = 5
  vocab_size = 256 + offset
  mask_id = 4
  special_ids = frozenset(range(offset))


class SentinelByteTokenizer(ByteTokenizer):
  """Bytes with T5 sentinels of their own past them (HF's layout): <extra_id_i> = 269 - i."""

  sentinel_ids = tuple(range(269, 259, -1))


def test_mlm_masks_with_the_tokenizers_own_mask_id(texts):
  tok = MaskingByteTokenizer()
  it = _iter(texts, MLM, tok=tok, model_vocab_size=tok.vocab_size)  # No room past the ids.
  masked = 0
  for batch in take(it, 4):
    inputs, targets, w = batch["inputs"], batch["targets"], batch["weights"]
    assert inputs.max() < tok.vocab_size
    changed = (w > 0) & (inputs != targets)
    masked += int((inputs[changed] == 4).sum())
    # Changed tokens are the mask id or random non-special ids, never an id past the vocab.
    assert np.all((inputs[changed] == 4) | (inputs[changed] >= tok.offset))
  assert masked > 10


def test_span_corruption_uses_the_tokenizers_own_sentinels(texts):
  tok = SentinelByteTokenizer()
  cfg = DataConfig(objective="span_corruption", decoder_seq_len=TD, extra_ids=10)
  sentinels = np.asarray(tok.sentinel_ids)
  # The model vocab need not be given (the sentinels are the tokenizer's), and a larger one
  # (padded, as a real T5's 32128 rows for 32100 ids) does not move them to its top.
  for kw in ({}, {"model_vocab_size": 300}):
    batch = next(_iter(texts, cfg, tok=tok, **kw))
    enc = batch["encoder_inputs"][batch["encoder_segment_ids"] > 0]
    tgt = batch["targets"][batch["segment_ids"] > 0]
    assert np.isin(enc[enc >= 260], sentinels).all() and np.isin(sentinels[0], enc)
    assert np.isin(tgt[tgt >= 260], sentinels).all()
    assert tgt.max() < 270
  with pytest.raises(ValueError, match="only 10 sentinels"):
    _iter(texts, DataConfig(objective="span_corruption", decoder_seq_len=TD, extra_ids=11),
          tok=tok)


@pytest.fixture
def sentiment(tmp_path):
  lines = [json.dumps({"review": f"{['bad', 'ok', 'great'][i % 3]} movie number {i}",
                       "stars": i % 3}) for i in range(30)]
  (tmp_path / "train.jsonl").write_text("\n".join(lines), encoding="utf-8")
  return DataConfig(objective="classification", train_file=str(tmp_path / "train.jsonl"),
                    text_field="review", label_field="stars", num_classes=3, tokenizer="byte",
                    eval_fraction=0.2)


def test_classification_batches(sentiment):
  train, valid, stats = pipeline.prepare_dataset(sentiment)
  assert len(train) + len(valid) == 30 and stats["num_validation_examples"] == len(valid)
  batch = next(pipeline.make_train_iterator(sentiment, TOK, batch_size=B, seq_len=T,
                                            process_index=0, process_count=1))
  assert set(batch) == {"inputs", "segment_ids", "positions", "labels", "weights"}
  _check_formats(batch, T, classification=True)
  np.testing.assert_array_equal(batch["weights"], np.ones(B))
  for row, seg, pos, label in zip(batch["inputs"], batch["segment_ids"], batch["positions"],
                                  batch["labels"], strict=True):
    n = int((seg > 0).sum())
    np.testing.assert_array_equal(seg, np.r_[np.ones(n), np.zeros(T - n)])
    np.testing.assert_array_equal(pos[:n], np.arange(n))
    assert row[0] == 1 and np.all(row[n:] == 0)
    text = _ids_text([i for i in row[:n] if i >= 4])
    assert ["bad", "ok", "great"].index(text.split()[0]) == label
    assert row[n - 1] == 2 or n == T  # eos when it fits.
  evals = pipeline.make_eval_batches(sentiment, TOK, batch_size=B, seq_len=T, num_batches=10,
                                     process_index=0, process_count=1)
  weights = np.concatenate([b["weights"] for b in evals])
  assert weights.sum() == len(valid) and weights.shape == (B * len(evals),)
  assert np.all(evals[-1]["inputs"][evals[-1]["weights"] == 0] == 0)


def test_classification_truncates_to_seq_len(sentiment):
  batch = next(pipeline.make_train_iterator(sentiment, TOK, batch_size=B, seq_len=8,
                                            process_index=0, process_count=1))
  assert np.all(batch["segment_ids"] == 1) and np.all(batch["inputs"][:, -1] != 2)


@pytest.fixture
def pairs(tmp_path):
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta"]
  rows = []
  for i in range(40):
    first = " ".join(rng.choice(words, size=int(rng.integers(1, 6))))
    second = " ".join(rng.choice(words, size=int(rng.integers(1, 6))))
    rows.append(json.dumps({"premise": first, "hypothesis": second, "label": i % 2}))
  (tmp_path / "pairs.jsonl").write_text("\n".join(rows), encoding="utf-8")
  return DataConfig(objective="classification", train_file=str(tmp_path / "pairs.jsonl"),
                    text_field="premise", text_pair_field="hypothesis", num_classes=2,
                    tokenizer="byte", eval_fraction=0.2, shuffle=False)


def _pair_row(a: str, b: str, seq_len: int) -> tuple[list[int], list[int]]:
  """NumPy-free oracle: [bos] a [eos] b [eos], types 0 / 1, the longer text cut first."""
  a, b = TOK.encode(a), TOK.encode(b)
  while len(a) + len(b) + 3 > seq_len:
    if len(a) > len(b):
      a = a[:-1]
    else:
      b = b[:-1]
  return [1, *a, 2, *b, 2], [0] * (len(a) + 2) + [1] * (len(b) + 1)


@pytest.mark.parametrize("seq_len", [T, 12])
def test_classification_pairs_give_cls_a_sep_b_sep_with_token_types(pairs, seq_len):
  train, _, _ = pipeline.prepare_dataset(pairs)
  assert set(train[0]) == {"text", "text_pair", "label"}
  batch = next(pipeline.make_train_iterator(pairs, TOK, batch_size=B, seq_len=seq_len,
                                            process_index=0, process_count=1))
  assert set(batch) == {"inputs", "segment_ids", "positions", "token_types", "labels",
                        "weights"}
  for r in range(B):
    ids, types = _pair_row(train[r]["text"], train[r]["text_pair"], seq_len)
    n = len(ids)
    np.testing.assert_array_equal(batch["inputs"][r], np.r_[ids, np.zeros(seq_len - n)])
    np.testing.assert_array_equal(batch["token_types"][r], np.r_[types, np.zeros(seq_len - n)])
    np.testing.assert_array_equal(batch["segment_ids"][r] > 0, np.arange(seq_len) < n)
    assert batch["labels"][r] == train[r]["label"]
  evals = pipeline.make_eval_batches(pairs, TOK, batch_size=B, seq_len=seq_len, num_batches=4,
                                     process_index=0, process_count=1)
  assert evals and all("token_types" in b for b in evals)


def test_text_pair_field_is_for_classification():
  with pytest.raises(ValueError, match="text_pair_field is for the 'classification'"):
    DataConfig(objective="mlm", text_pair_field="b")


@pytest.fixture
def reverse(tmp_path):
  rows = ["input,target"] + [f"w{i} x{i} y,y x{i} w{i}" for i in range(50)]
  (tmp_path / "rev.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
  return DataConfig(objective="seq2seq", train_file=str(tmp_path / "rev.csv"), tokenizer="byte",
                    decoder_seq_len=TD, eval_fraction=0.2)


def test_seq2seq_batches_and_resume(reverse):
  kw = dict(batch_size=B, seq_len=T, process_index=0, process_count=1)
  it = pipeline.make_train_iterator(reverse, TOK, **kw)
  for batch in take(it, 3):
    _check_formats(batch, T, TD)
    for r in range(B):
      es, ds = batch["encoder_segment_ids"][r], batch["segment_ids"][r]
      for s in range(1, es.max() + 1):
        enc, tgt = batch["encoder_inputs"][r][es == s], batch["targets"][r][ds == s]
        assert enc[-1] == 2 and tgt[-1] == 2
        words = _ids_text(enc[:-1]).split()
        assert _ids_text(tgt[:-1]) == " ".join(reversed(words))
        np.testing.assert_array_equal(batch["inputs"][r][ds == s], np.r_[1, tgt[:-1]])
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 10)
  fresh = pipeline.make_train_iterator(reverse, TOK, **kw)
  fresh.set_state(state)
  assert_same_batches(take(fresh, 10), expected)
  evals = pipeline.make_eval_batches(reverse, TOK, num_batches=5, **kw)
  assert evals and all(b["targets"].shape == (B, TD) for b in evals)


def test_file_objectives_train_sentencepiece_on_their_fields(tmp_path):
  rng = np.random.default_rng(0)
  words = ["".join(rng.choice(list("abcdefghijklmnop"), size=5)) for _ in range(6)]
  rows = [json.dumps({"q": " ".join(rng.choice(words[:3], 6)),
                      "a": " ".join(rng.choice(words[3:], 6))}) for _ in range(300)]
  (tmp_path / "qa.jsonl").write_text("\n".join(rows), encoding="utf-8")
  cfg = DataConfig(objective="seq2seq", train_file=str(tmp_path / "qa.jsonl"), input_field="q",
                   target_field="a", vocab_size=300)
  train, _, _ = pipeline.prepare_dataset(cfg)
  tok = pipeline.get_or_train_tokenizer(cfg, train)
  assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 300
  # Words of both fields were learned: each encodes to fewer ids than bytes.
  assert len(tok.encode(words[0])) < 5 and len(tok.encode(words[-1])) < 5


def test_data_config_objective_validation(tmp_path):
  with pytest.raises(ValueError, match="objective"):
    DataConfig(objective="prefix_lm")
  with pytest.raises(ValueError, match="train_file"):
    DataConfig(objective="seq2seq")
  with pytest.raises(ValueError, match="num_classes"):
    DataConfig(objective="classification", train_file="a.jsonl")
  with pytest.raises(ValueError, match="unset"):
    DataConfig(objective="mlm", train_file="a.jsonl")
  with pytest.raises(ValueError, match="not text_files"):
    DataConfig(objective="seq2seq", train_file="a.jsonl", text_files="*.txt")
  with pytest.raises(ValueError, match=r"\.jsonl or \.csv"):
    DataConfig(objective="seq2seq", train_file="a.txt")
  with pytest.raises(ValueError, match="mlm_rate"):
    DataConfig(objective="mlm", mlm_rate=0.0)
  with pytest.raises(ValueError, match="noise_density"):
    DataConfig(noise_density=1.0)
  with pytest.raises(ValueError, match="mean_noise_span_length"):
    DataConfig(mean_noise_span_length=0.5)
  with pytest.raises(ValueError, match="extra_ids"):
    DataConfig(objective="span_corruption", extra_ids=0)
  with pytest.raises(ValueError, match="decoder_seq_len"):
    DataConfig(decoder_seq_len=0)
