"""KV-cache helpers: layout, delegation, length and memory reporting."""

import jax
import jax.numpy as jnp
import pytest

from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sampling import cache as cache_lib
from llmjax.sharding import axes

CONFIG = ModelConfig(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
                     mlp_dim=64, max_seq_len=32)


def test_init_cache_from_config_has_contract_layout():
  cache = cache_lib.init_cache(CONFIG, 3, 16)
  assert set(cache) == {"k", "v"}
  for x in cache.values():
    assert x.shape == (2, 3, 2, 16, 8)  # [l, b, g, s, k]
    assert x.dtype == jnp.float32
    assert not x.any()
  assert cache_lib.cache_length(cache) == 16


def test_init_cache_uses_compute_dtype():
  cache = cache_lib.init_cache(CONFIG.replace(dtype="bfloat16"), 1, 4)
  assert cache["k"].dtype == jnp.bfloat16


def test_init_cache_delegates_to_the_model():
  class Model:
    config = CONFIG

    def init_cache(self, batch_size, max_len):
      return {"mine": (batch_size, max_len)}

  assert cache_lib.init_cache(Model(), 2, 8) == {"mine": (2, 8)}


def test_init_cache_rejects_bad_sizes():
  with pytest.raises(ValueError, match="max_seq_len=32"):
    cache_lib.init_cache(CONFIG, 1, 64)
  with pytest.raises(ValueError, match="batch_size"):
    cache_lib.init_cache(CONFIG, 0, 8)


def test_sizes_and_description():
  cache = cache_lib.init_cache(CONFIG, 2, 16)
  expected = 2 * 2 * 2 * 16 * 2 * 8 * 4
  assert cache_lib.cache_bytes(cache) == expected
  assert cache_lib.cache_bytes(jax.eval_shape(lambda: cache)) == expected
  assert cache_lib.cache_size_bytes(CONFIG, 2, 16) == expected
  text = cache_lib.describe_cache(CONFIG, 2, 16)
  assert "[2x2x2x16x8]" in text and "8.0 KiB" in text and "float32" in text


def test_cache_length_of_other_pytrees_is_unknown():
  assert cache_lib.cache_length({"calls": jnp.zeros(())}) is None
  assert cache_lib.cache_length(None) is None


def test_cache_logical_axes():
  spec = cache_lib.cache_logical_axes(cache_lib.init_cache(CONFIG, 1, 4))
  assert spec["k"] == (axes.CACHE_LAYERS, axes.CACHE_BATCH, axes.CACHE_KV_HEADS,
                       axes.CACHE_LENGTH, axes.CACHE_HEAD_DIM)


def test_split_cache_keeps_the_layout_per_layer():
  lm = LanguageModel(CONFIG)
  split = lm.decoding_cache(lm.init_cache(3, 16))
  assert len(split["k"]) == len(split["v"]) == 2  # One [1, b, g, s, k] array per layer.
  assert all(x.shape == (1, 3, 2, 16, 8) for x in split["k"] + split["v"])
  assert cache_lib.cache_length(split) == 16
