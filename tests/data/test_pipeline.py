"""The Grain pipeline: batch format, determinism, exact resume, per-process rows, eval split."""

import json
import os

import numpy as np
import pytest

from llmjax.data import packing, pipeline
from llmjax.data.pipeline import DataConfig
from llmjax.data.tokenizer import ByteTokenizer, SentencePieceTokenizer
from tests.data.batches import assert_same_batches, take

B, T = 4, 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  for i in range(16):
    lines = [f"def f{i}_{j}(x):\n\treturn x * {int(rng.integers(1000))}  # é\n"
             for j in range(int(rng.integers(1, 8)))]
    (root / f"m{i:02d}.py").write_text("".join(lines), encoding="utf-8")
  cfg = DataConfig(text_files=str(root / "*.py"), tokenizer="byte", eval_fraction=0.25,
                   cache_dir=str(tmp_path_factory.mktemp("cache")))
  train, valid, stats = pipeline.prepare_dataset(cfg)
  return cfg, train, valid, stats


def _iter(source, seed=0, **kw):
  kw = {"process_index": 0, "process_count": 1, **kw}
  return pipeline.make_train_iterator(source, ByteTokenizer(), batch_size=B, seq_len=T,
                                      seed=seed, **kw)


def test_batch_format(corpus):
  _, train, _, _ = corpus
  batch = next(_iter(train))
  assert set(batch) == set(packing.FEATURES)
  for k, v in batch.items():
    assert v.shape == (B, T), k
    assert v.dtype == (np.float32 if k == "weights" else np.int32), k
  np.testing.assert_array_equal(batch["weights"], (batch["segment_ids"] > 0).astype(np.float32))


def test_same_seed_same_batches_and_other_seed_differs(corpus):
  _, train, _, _ = corpus
  a, b, c = take(_iter(train, 3), 6), take(_iter(train, 3), 6), take(_iter(train, 4), 6)
  assert_same_batches(a, b)
  assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c, strict=True))


def test_resume_is_exact_through_json(corpus):
  _, train, _, _ = corpus
  it = _iter(train)
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 30)  # Runs over several epochs of this tiny corpus.
  fresh = _iter(train)
  fresh.set_state(state)
  assert_same_batches(take(fresh, 30), expected)


def test_iterator_is_infinite_and_reshuffles_epochs(corpus):
  _, train, _, _ = corpus
  tokens_per_epoch = sum(len(r["text"]) + 2 for r in (train[i] for i in range(len(train))))
  n = 3 * tokens_per_epoch // (B * T) + 2
  assert len(take(_iter(train), n)) == n


def test_process_rows_together_equal_global_batch(corpus):
  _, train, _, _ = corpus
  full = take(_iter(train), 4)
  parts = [take(_iter(train, process_index=p, process_count=2), 4) for p in range(2)]
  for g, p0, p1 in zip(full, *parts, strict=True):
    for k in g:
      assert p0[k].shape == (B // 2, T)
      np.testing.assert_array_equal(np.concatenate([p0[k], p1[k]]), g[k])


def test_batch_not_divisible_by_processes_raises(corpus):
  _, train, _, _ = corpus
  with pytest.raises(ValueError, match="divisible"):
    _iter(train, process_index=0, process_count=3)


def test_eval_split_disjoint_and_batches_deterministic(corpus):
  cfg, train, valid, stats = corpus
  assert valid is not None and stats["num_validation_files"] == len(valid)
  paths = lambda src: {src[i]["path"] for i in range(len(src))}
  assert not paths(train) & paths(valid)
  kw = dict(batch_size=B, seq_len=T, num_batches=3, process_index=0, process_count=1)
  a = pipeline.make_eval_batches(valid, ByteTokenizer(), **kw)
  assert_same_batches(a, pipeline.make_eval_batches(valid, ByteTokenizer(), **kw))
  assert 1 <= len(a) <= 3 and all(b["inputs"].shape == (B, T) for b in a)
  valid_text = "".join(valid[i]["text"].decode() for i in range(len(valid)))
  assert sum(float(b["weights"].sum()) for b in a) <= len(valid_text.encode()) + 2 * len(valid)


def test_data_config_as_source_and_tokenizer_training(corpus, tmp_path):
  cfg, train, _, _ = corpus
  sp_cfg = DataConfig(text_files=cfg.text_files, vocab_size=300, eval_fraction=0.25,
                      cache_dir=cfg.cache_dir, max_train_text_mb=1.0)
  tok_dir = str(tmp_path / "tok")
  tok = pipeline.get_or_train_tokenizer(sp_cfg, train, tok_dir)
  assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 300
  assert os.path.exists(os.path.join(tok_dir, "tokenizer.model"))
  again = pipeline.get_or_train_tokenizer(sp_cfg, train, tok_dir)  # Loaded, not retrained.
  assert again.model_proto == tok.model_proto
  it = pipeline.make_train_iterator(sp_cfg, tok, batch_size=B, seq_len=T)  # jax defaults.
  batch = next(it)
  assert batch["inputs"].shape == (B, T) and batch["inputs"].max() < tok.vocab_size
  evals = pipeline.make_eval_batches(sp_cfg, tok, batch_size=B, seq_len=T, num_batches=2)
  assert evals and evals[0]["targets"].shape == (B, T)


def test_data_config_validation():
  with pytest.raises(ValueError, match="tokenizer"):
    DataConfig(tokenizer="wordpiece")
  with pytest.raises(ValueError, match="not both"):
    DataConfig(text_files="a.txt", tfds_name="lm1b")
  with pytest.raises(ValueError, match="eval_fraction"):
    DataConfig(eval_fraction=1.0)
  assert DataConfig(text_files=["a", "b"]).text_files == ("a", "b")


def test_unprepared_tfds_name_in_config_fails_clearly(tmp_path):
  cfg = DataConfig(tfds_name="surely_not_a_dataset", tfds_data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="never downloads"):
    pipeline.prepare_dataset(cfg)
