"""Warm starts (TrainConfig.init_from): matching params copied, new ones initialized, bad shapes
refused before anything is written."""

import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from llmjax import workdir as workdir_lib
from llmjax.data.pipeline import DataConfig
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sharding.mesh import MeshConfig
from llmjax.training import loop, warm_start
from llmjax.training.config import TrainConfig

_MODEL = ModelConfig(vocab_size=272, num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64,
                     max_seq_len=32)


def _configs(corpus: str, model: ModelConfig, **train_changes) -> dict:
  data = DataConfig(text_files=os.path.join(corpus, "*.txt"), tokenizer="byte",
                    eval_fraction=0.0, cache_dir=os.path.join(corpus, "cache"))
  train = TrainConfig(train_steps=2, batch_size=8, seq_len=16, warmup_steps=1, log_every=1,
                      eval_batches=0, checkpoint_every=2, **train_changes)
  return {"model": model, "data": data, "train": train, "mesh": MeshConfig()}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[str, str]:
  corpus = tmp_path_factory.mktemp("ws_corpus")
  for i in range(4):
    (corpus / f"doc{i}.txt").write_text("def f(x):\n    return x\n" * (i + 3))
  workdir = str(tmp_path_factory.mktemp("ws_source"))
  loop.train(**_configs(str(corpus), _MODEL), workdir=workdir)
  return str(corpus), workdir


def _flat(params):
  return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def test_untied_head_is_new_and_everything_else_is_copied(source, tmp_path):
  corpus, src = source
  untied = _MODEL.replace(tie_embeddings=False)
  fresh = LanguageModel(untied).init(jax.random.PRNGKey(1))
  merged, report = warm_start.load_matching_params(src, fresh)
  saved = _flat(workdir_lib.restore_params(
      src, jax.eval_shape(LanguageModel(_MODEL).init, jax.random.PRNGKey(0))))
  merged, fresh = _flat(merged), _flat(fresh)
  assert report.initialized == ("output_kernel",)
  assert set(report.copied) == set(saved)
  for path, value in saved.items():
    np.testing.assert_array_equal(merged[path], value)
  np.testing.assert_array_equal(merged["output_kernel"], fresh["output_kernel"])


def test_train_with_init_from_starts_from_the_source_params(source, tmp_path):
  corpus, src = source
  cfg = _configs(corpus, _MODEL, init_from=src, learning_rate=1e-9)
  workdir = str(tmp_path / "fine")
  loop.train(**cfg, workdir=workdir)
  abstract = jax.eval_shape(LanguageModel(_MODEL).init, jax.random.PRNGKey(0))
  before = _flat(workdir_lib.restore_params(src, abstract))
  after = _flat(workdir_lib.restore_params(workdir, abstract))
  for path in before:  # A 1e-9 learning rate: two steps barely move the copied weights.
    np.testing.assert_allclose(after[path], before[path], atol=1e-6)


def test_shape_mismatch_is_refused_before_anything_is_written(source, tmp_path):
  corpus, src = source
  wider = _MODEL.replace(embed_dim=48)
  workdir = tmp_path / "bad"
  with pytest.raises(ValueError, match=r"token_embed/embedding: checkpoint \(272, 32\) vs model "
                     r"\(272, 48\)"):
    loop.train(**_configs(corpus, wider, init_from=src), workdir=str(workdir))
  assert not workdir.exists()


def test_init_from_a_directory_that_is_no_workdir(source, tmp_path):
  corpus, _ = source
  with pytest.raises(FileNotFoundError, match="TrainConfig.init_from=.* is not an llmjax workdir"):
    loop.train(**_configs(corpus, _MODEL, init_from=str(tmp_path)), workdir=str(tmp_path / "w"))
