"""LanguageModel.decoder: the typed decoding interface, for every family.

Decoding through the Decoder (prefill + one token per step, right-padded rows of different
lengths) equals the full forward pass; its cache follows the model's own layer count; it is a
pytree usable inside and across jax.jit; encoder-only models refuse it clearly.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.models.config import ModelConfig
from llmjax.models.decoder import Decoder
from llmjax.models.interface import LanguageModel
from llmjax.sampling.cache import cache_size_bytes, describe_cache

V, MAX_LEN, STEPS = 64, 16, 4
LENGTHS = np.array([5, 2, 7])  # Right-padded prompts of different lengths.


def _model(architecture="decoder", **changes):
  fields = dict(architecture=architecture, vocab_size=V, num_layers=2, num_heads=4,
                num_kv_heads=2, embed_dim=32, mlp_dim=64, max_seq_len=MAX_LEN) | changes
  lm = LanguageModel(ModelConfig(**fields))
  rng = np.random.default_rng(0)  # Random params without compiling init (slow on CPU).
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype),
                        jax.eval_shape(lm.init, jax.random.PRNGKey(0)))
  return lm, params


def _decode_through(decoder, full, cache):
  """[b, v] next-token logits after each prompt and after each of STEPS fed tokens."""
  rows = np.arange(len(LENGTHS))
  prompt = np.where(np.arange(7)[None] < LENGTHS[:, None], full[:, :7], 0)
  step = jax.jit(decoder.logits_fn)
  positions = np.broadcast_to(np.arange(7, dtype=np.int32), prompt.shape)
  logits, cache = step(decoder.params, prompt, positions, cache)
  out = [np.asarray(logits)[rows, LENGTHS - 1]]
  for i in range(STEPS):
    cur = (LENGTHS + i).astype(np.int32)[:, None]
    logits, cache = step(decoder.params, full[rows, LENGTHS + i][:, None], cur, cache)
    out.append(np.asarray(logits)[:, 0])
  return out


def _check(decoded, reference):
  rows = np.arange(len(LENGTHS))
  for i, got in enumerate(decoded):
    np.testing.assert_allclose(got, reference[rows, LENGTHS - 1 + i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("changes", [
    dict(position="rope", scan_layers=True),
    dict(position="learned", norm="layernorm", mlp="gelu", use_bias=True, scan_layers=False),
    dict(position="alibi", sliding_window=3, scan_layers=True),
], ids=["rope_scan", "learned_loop", "alibi_window_scan"])
def test_decoder_logits_match_full_forward(changes):
  lm, params = _model("decoder", **changes)
  full = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (3, MAX_LEN), 4, V), np.int32)
  decoder = lm.decoder(params)
  decoded = _decode_through(decoder, full, decoder.init_cache(3, MAX_LEN))
  _check(decoded, np.asarray(jax.jit(lambda p, t: lm.apply(p, t)[0])(params, full)))


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "loop"])
def test_encoder_decoder_decoder_logits_match_full_forward(scan_layers):
  lm, params = _model("encoder_decoder", num_decoder_layers=3, position="t5_relative",
                      norm="rmsnorm", scan_layers=scan_layers)
  full = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (3, MAX_LEN), 4, V), np.int32)
  enc = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (3, 10), 4, V), np.int32)
  enc_seg = (np.arange(10)[None] < np.array([[10], [4], [7]])).astype(np.int32)
  decoder = lm.decoder(params)
  cache = jax.jit(decoder.encode, static_argnums=3)(decoder.params, enc, enc_seg, MAX_LEN)
  assert decoder.cache_length(cache) == MAX_LEN
  decoded = _decode_through(decoder, full, cache)
  batch = {"encoder_inputs": enc, "encoder_segment_ids": enc_seg, "inputs": full}
  _check(decoded, np.asarray(jax.jit(lambda p, b: lm.apply(p, b)[0])(params, batch)))


def test_encoder_decoder_cache_has_decoder_layers():
  """num_layers (encoder) != decoder_layers: every cache of the model has decoder_layers."""
  lm, params = _model("encoder_decoder", num_layers=3, num_decoder_layers=2,
                      position="t5_relative", norm="rmsnorm")
  decoder = lm.decoder(params)
  empty = decoder.init_cache(2, 8)
  full = decoder.encode(decoder.params, jnp.ones((2, 5), jnp.int32), None, 8)
  for cache in (empty, full):
    assert len(jax.tree.leaves(cache["k"])) == len(jax.tree.leaves(cache["v"])) == 2
  assert len(jax.tree.leaves(full["cross_k"])) == 2
  # Sizes for logs are the model's own cache: 2 layers x k, v x [2, 2 kv heads, 8, 8] float32.
  assert cache_size_bytes(decoder, 2, 8) == 2 * 2 * (2 * 2 * 8 * 8) * 4
  assert describe_cache(decoder, 2, 8).startswith("KV cache 4 x [1x2x2x8x8] float32: 4.0 KiB")


@pytest.mark.parametrize("num_classes,match", [(None, "fill masks instead"),
                                               (3, "class logits")])
def test_encoder_only_model_has_no_decoder(num_classes, match):
  lm, params = _model("encoder", position="learned", num_classes=num_classes)
  with pytest.raises(ValueError, match=f"does not generate text.*{match}"):
    lm.decoder(params)


def test_decoder_facts_and_cache_checks():
  lm, params = _model("encoder_decoder", position="learned")
  facts = jax.eval_shape(lm.decoder, params)  # Nothing computed: shapes and static facts.
  assert isinstance(facts, Decoder) and facts.is_encoder_decoder
  assert (facts.vocab_size, facts.max_seq_len, facts.max_encoder_len) == (V, MAX_LEN, MAX_LEN)
  lm_rel, params_rel = _model("encoder_decoder", position="t5_relative")
  assert jax.eval_shape(lm_rel.decoder, params_rel).max_encoder_len is None
  lm_dec, params_dec = _model("decoder")
  assert not jax.eval_shape(lm_dec.decoder, params_dec).is_encoder_decoder
  with pytest.raises(ValueError, match="max_seq_len=16"):
    facts.init_cache(1, 32)
  with pytest.raises(ValueError, match="positive"):
    facts.init_cache(0, 8)
  with pytest.raises(ValueError, match="max_seq_len=16"):  # The learned encoder table.
    lm.decoder(params).encode(lm.decoder(params).params, jnp.ones((1, 20), jnp.int32), None, 8)


def test_decoder_is_a_pytree_for_jit():
  lm, params = _model("decoder")
  decoder = lm.decoder(params)
  leaves, treedef = jax.tree.flatten(decoder)
  assert len(leaves) == len(jax.tree.leaves(decoder.params))
  rebuilt = jax.tree.unflatten(treedef, leaves)
  assert (rebuilt.logits_fn, rebuilt.vocab_size) == (decoder.logits_fn, decoder.vocab_size)
  with pytest.raises(dataclasses.FrozenInstanceError):
    decoder.vocab_size = 3  # type: ignore[misc]
  tokens = jnp.ones((2, 3), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(3), (2, 3))

  @jax.jit
  def passed_in(dec):  # Params traced, the rest static.
    return dec.logits_fn(dec.params, tokens, positions, dec.init_cache(2, 8))[0]

  @jax.jit
  def built_inside(p):  # The Sampler's way: the decode layout is made inside the program.
    dec = lm.decoder(p)
    return dec.logits_fn(dec.params, tokens, positions, dec.init_cache(2, 8))[0]

  np.testing.assert_allclose(passed_in(decoder), built_inside(params), atol=1e-6)
  # A second Decoder of the same model hits the same compilation.
  assert passed_in._cache_size() == 1
  passed_in(lm.decoder(params))
  assert passed_in._cache_size() == 1
