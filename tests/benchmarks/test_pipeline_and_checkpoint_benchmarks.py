"""benchmarks/checkpoint_overhead.py and benchmarks/input_pipeline.py, run in-process on tiny
settings: the JSON record, the checkpoint's exact restore, the pipeline's batch format, and
that the temporary directories are removed."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
  """Imports benchmarks/<name>.py (a script directory, not a package)."""
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def _finite_positive(result: dict, *keys: str) -> None:
  for key in keys:
    assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])


@pytest.fixture
def own_tempdir(tmp_path, monkeypatch):
  """Points tempfile at an empty directory, to see what a benchmark leaves behind."""
  root = tmp_path / "tmp"
  root.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(root))
  return root


def test_checkpoint_overhead_restores_exactly_and_cleans_up(own_tempdir):
  bench = _load("checkpoint_overhead")
  # 8 fake devices (tests/conftest.py): the batch must split over them.
  result = bench.main(["--checkpoint_every=2", "--steps=6", "--repeats=1", "--warmup=1",
                       "--gin.BATCH_SIZE=8", "--gin.SEQ_LEN=32"])
  json.dumps(result)  # The record is JSON as printed.
  assert result["benchmark"] == "checkpoint_overhead"
  assert result["gin_files"] == ["runs/benchmark.gin", "models/gpt_cpu_small.gin"]
  # Flags come after the default bindings, so they override them (12 x 64).
  assert result["bindings"] == ["BATCH_SIZE = 12", "SEQ_LEN = 64", "BATCH_SIZE = 8",
                                "SEQ_LEN = 32"]
  assert (result["batch_size"], result["seq_len"]) == (8, 32)
  _finite_positive(result, "tokens_per_sec", "tokens_per_sec_no_checkpoint",
                   "blocking_s_per_save", "first_save_blocking_s", "checkpoint_interval_s")
  assert (result["tokens_per_sec_min"] <= result["tokens_per_sec"]
          <= result["tokens_per_sec_max"])
  assert result["overhead_fraction"] == pytest.approx(
      1 - result["tokens_per_sec"] / result["tokens_per_sec_no_checkpoint"])
  assert result["saves_per_window"] == 3  # After steps 1, 3 and 5 of 6.
  assert result["target_overhead_fraction"] == 0.05
  # The state is float32 params + two Adam moments (plus a few scalars); Orbax writes all of it.
  assert result["checkpoint_bytes"] > 3 * 4 * result["num_params"] * 0.9
  assert result["restore_exact"] is True
  assert result["restored_params_exact"] is True
  # Warmup 1, a first save, 1 repeat x 2 windows x 6 steps, then the final save.
  assert result["restored_step"] == 13
  assert result["checkpoint_steps_kept"][-1] == 13
  assert len(result["checkpoint_steps_kept"]) == result["keep_checkpoints"]
  for key in ("device", "jax_version", "python", "orbax_version", "mesh"):
    assert result[key]
  assert list(own_tempdir.iterdir()) == []  # The checkpoint directory is gone.


def test_trees_equal_sees_one_changed_element():
  bench = _load("checkpoint_overhead")
  tree = {"a": jnp.arange(4.0), "b": {"c": jnp.ones((2, 2), jnp.int32)}}
  assert bench._trees_equal(tree, {"a": jnp.arange(4.0), "b": {"c": jnp.ones((2, 2), jnp.int32)}})
  assert not bench._trees_equal(tree, {"a": jnp.arange(4.0).at[3].set(3.5), "b": tree["b"]})
  assert not bench._trees_equal(tree, {"a": tree["a"], "b": {"c": jnp.ones((2, 2))}})  # dtype


def test_checkpoint_overhead_refuses_a_window_without_a_save():
  bench = _load("checkpoint_overhead")
  with pytest.raises(ValueError, match="at least one save"):
    bench.main(["--checkpoint_every=10", "--steps=5", "--gin.BATCH_SIZE=8"])


def test_input_pipeline_batches_fit_the_trainer_and_cache_is_removed(tmp_path, own_tempdir):
  bench = _load("input_pipeline")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("".join(f"def f{i}(x):\n    return x * {i}  # line {i}\n"
                            for i in range(400)), encoding="utf-8")
  result = bench.main([
      "--gin.TOKENIZER='byte'", "--gin.VOCAB_SIZE=260", f"--gin.TEXT_FILES={corpus}",
      "--gin.SEQ_LEN=32", "--batches=5", "--warmup=1", "--repeats=2", "--trainer_steps=1",
      "--trainer_repeats=1"])
  json.dumps(result)
  assert result["benchmark"] == "input_pipeline"
  assert result["gin_files"] == ["runs/quickstart.gin"]
  assert (result["tokenizer"], result["tokenizer_vocab_size"]) == ("byte", 260)
  _finite_positive(result, "tokens_per_sec", "trainer_tokens_per_sec", "ratio", "setup_s")
  assert result["ratio"] == pytest.approx(
      result["tokens_per_sec"] / result["trainer_tokens_per_sec"])
  assert result["target_ratio"] == 10
  assert result["dataset"]["num_files"] == 1
  # The batch the trainer's step is compiled for, and every timed batch had exactly it.
  assert result["batch_spec"] == {
      "inputs": [[8, 32], "int32"], "positions": [[8, 32], "int32"],
      "segment_ids": [[8, 32], "int32"], "targets": [[8, 32], "int32"],
      "weights": [[8, 32], "float32"]}
  assert result["batches_match_trainer_spec"] is True
  assert result["batches_checked"] == 1 + 2 * 5
  assert result["token_ids_in_vocab"] is True
  assert result["nonpadding_fraction"] == 1.0  # Packed rows: no padding in an endless stream.
  assert result["cache_dir"].startswith("temporary")
  # The prepared dataset is gone. TFDS itself leaves one empty mkdtemp("tfds") directory when
  # it opens a new dataset's info (DatasetInfo.initialize_from_bucket; GCS is disabled, so it
  # stays empty): that one is not the benchmark's.
  left = list(own_tempdir.iterdir())
  assert all(p.name.endswith("tfds") and p.is_dir() and not any(p.iterdir()) for p in left), left


def test_trainer_batch_spec_rejects_a_wrong_dtype_or_length():
  bench = _load("input_pipeline")
  from llmjax.data.pipeline import DataConfig
  from llmjax.models.config import ModelConfig
  model = ModelConfig(vocab_size=260, max_seq_len=32, num_layers=1, num_heads=2, embed_dim=16,
                      mlp_dim=32)
  expected = bench.trainer_batch_spec(model, DataConfig(tokenizer="byte"), 4, 16, rows=4)
  good = {k: np.zeros(shape, dtype) for k, (shape, dtype) in expected.items()}
  assert bench.batch_spec(good) == expected
  assert bench.batch_spec(dict(good, weights=good["weights"].astype(np.int32))) != expected
  assert bench.batch_spec(dict(good, inputs=good["inputs"][:, :8])) != expected
