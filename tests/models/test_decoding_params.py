"""The Decoder's private decode layout (unrolled decoder layers, per-layer cache) computes what
the model as trained (scanned layers, stacked cache) computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel


@pytest.mark.parametrize("architecture,position", [
    ("decoder", "rope"), ("decoder", "learned"), ("encoder_decoder", "t5_relative")])
def test_decode_layout_matches_scanned(architecture, position):
  cfg = ModelConfig(vocab_size=50, num_layers=3, num_heads=4, num_kv_heads=2, embed_dim=32,
                    mlp_dim=64, max_seq_len=16, position=position, architecture=architecture)
  lm = LanguageModel(cfg)
  params = lm.init(jax.random.PRNGKey(0), batch_size=1, seq_len=8)
  decoder = lm.decoder(params)
  dparams = decoder.params
  assert "layers" in params["decoder"] and "layers" not in dparams["decoder"]
  assert sorted(k for k in dparams["decoder"] if k.startswith("layers_")) == [
      "layers_0", "layers_1", "layers_2"]
  np.testing.assert_array_equal(
      np.asarray(jax.tree.leaves(dparams["decoder"]["layers_2"])[0]),
      np.asarray(jax.tree.leaves(params["decoder"]["layers"])[0][2]))
  if architecture == "encoder_decoder":  # Run once per call, outside the loop: kept scanned.
    assert dparams["encoder"] is params["encoder"]

  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, 50)
  positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
  if architecture == "encoder_decoder":
    split = decoder.encode(dparams, tokens, None, 8)
    # The same cache stacked, as the scanned model takes it.
    cache = {k: jnp.concatenate(v) if isinstance(v, tuple) else v for k, v in split.items()}
  else:
    split = decoder.init_cache(2, 8)
    cache = lm._init_cache(2, 8)
  assert all(len(split[key]) == 3 and split[key][0].shape == (1, *cache[key].shape[1:])
             for key in cache if key != "encoder_mask")
  want, want_cache = lm.logits_fn(params, tokens, positions, cache)
  got, got_cache = jax.jit(decoder.logits_fn)(dparams, tokens, positions, split)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  assert set(got_cache) == set(want_cache)
  for key in want_cache:
    got_key = got_cache[key]
    if isinstance(got_key, tuple):  # One [1, b, ...] array per layer.
      got_key = jnp.concatenate(got_key)
    np.testing.assert_allclose(np.asarray(got_key), np.asarray(want_cache[key]),
                               rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="split cache"):  # The scanned model cannot take it.
    lm.logits_fn(params, tokens, positions, split)
  # The unrolled layers also take the stacked cache: the same logits.
  stacked, _ = decoder.logits_fn(dparams, tokens, positions, cache)
  np.testing.assert_allclose(np.asarray(stacked), np.asarray(want), rtol=1e-5, atol=1e-5)
  # One more step on the written caches: the same next-token logits.
  step = jnp.full((2, 1), 7)
  want2, _ = lm.logits_fn(params, step, jnp.full((2, 1), 5), want_cache)
  got2, _ = decoder.logits_fn(dparams, step, jnp.full((2, 1), 5), got_cache)
  np.testing.assert_allclose(np.asarray(got2), np.asarray(want2), rtol=1e-5, atol=1e-5)


def test_unscanned_params_are_used_as_they_are():
  cfg = ModelConfig(vocab_size=50, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64,
                    max_seq_len=16, scan_layers=False)
  lm = LanguageModel(cfg)
  params = jax.eval_shape(lm.init, jax.random.PRNGKey(0))
  assert lm.decoder(params).params is params
