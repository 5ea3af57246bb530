"""KV-cache sizes and logical axes, read from the model's own cache (Decoder.init_cache)."""

import jax
import jax.numpy as jnp

from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sampling import cache as cache_lib
from llmjax.sharding import axes

CONFIG = ModelConfig(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
                     mlp_dim=64, max_seq_len=32)


def _decoder(config=CONFIG):
  lm = LanguageModel(config)
  return jax.eval_shape(lm.decoder, jax.eval_shape(lm.init, jax.random.PRNGKey(0)))


def test_abstract_cache_is_the_models_cache_unallocated():
  decoder = _decoder()
  abstract = cache_lib.abstract_cache(decoder, 3, 16)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
  real = decoder.init_cache(3, 16)
  assert jax.tree.structure(abstract) == jax.tree.structure(real)
  assert decoder.cache_length(real) == 16
  assert all(x.shape[1] == 3 for x in jax.tree.leaves(real))  # Batch at axis 1.


def test_sizes_and_description():
  decoder = _decoder()
  expected = 2 * 2 * 2 * 16 * 2 * 8 * 4  # k, v x 2 layers x [2, 2 kv heads, 16, 8] float32
  assert cache_lib.cache_bytes(decoder.init_cache(2, 16)) == expected
  assert cache_lib.cache_size_bytes(decoder, 2, 16) == expected
  text = cache_lib.describe_cache(decoder, 2, 16)
  assert text == "KV cache 4 x [1x2x2x16x8] float32: 8.0 KiB (256 B per token)"
  assert "bfloat16" in cache_lib.describe_cache(_decoder(CONFIG.replace(dtype="bfloat16")), 1, 4)


def test_cache_logical_axes():
  spec = cache_lib.cache_logical_axes(_decoder().init_cache(1, 4))
  assert all(names == (axes.CACHE_LAYERS, axes.CACHE_BATCH, axes.CACHE_KV_HEADS,
                       axes.CACHE_LENGTH, axes.CACHE_HEAD_DIM) for names in spec["k"])
  assert cache_lib.cache_logical_axes({"mask": jnp.zeros((1, 2, 3))}) == {"mask": None}
