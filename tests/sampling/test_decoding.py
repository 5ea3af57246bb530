"""Decoding loops against a hand-written toy model with a position-indexed cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.sampling import decoding
from llmjax.sampling.strategies import Greedy, Temperature
from tests.sampling.prompts import pad_prompts

VOCAB = 16
PAD = 0


def toy_logits_fn(params, tokens, positions, cache):
  """Next token = 5 * (sum of (token + 1) * (slot + 2) over slots <= p, + p) % 13 + offset.

  Like the real model, each token is written at slot `positions[b, t]` of its row and a query
  at position p reads slots <= p, so stale pad slots past a row's end must never matter.
  The cache also counts logits_fn calls.
  """
  b, t = tokens.shape
  rows = jnp.arange(b)[:, None]
  seen = cache["seen"].at[rows, positions].set(tokens + 1)  # [b, s]
  slots = jnp.arange(seen.shape[1])
  visible = slots[None, None, :] <= positions[:, :, None]  # [b, t, s]
  weighted = seen * (slots + 2)  # The slot weight makes a token written at the wrong slot show.
  total = jnp.sum(jnp.where(visible, weighted[:, None, :], 0), axis=-1)  # [b, t]
  nxt = (total + positions) * 5 % 13 + params["offset"]
  logits = 10.0 * jax.nn.one_hot(nxt, VOCAB)  # [b, t, v]
  return logits, {"seen": seen, "calls": cache["calls"] + 1}


def toy_cache(batch, length):
  return {"seen": jnp.zeros((batch, length), jnp.int32), "calls": jnp.zeros((), jnp.int32)}


def reference(prompt, n, offset=0, eos_id=None):
  """The toy model decoded greedily in plain Python, one full sequence at a time."""
  seq, out = list(prompt), []
  for _ in range(n):
    p = len(seq) - 1
    nxt = (sum((x + 1) * (j + 2) for j, x in enumerate(seq)) + p) * 5 % 13 + offset
    out.append(nxt)
    seq.append(nxt)
    if nxt == eos_id:
      break
  return out


PARAMS = {"offset": jnp.int32(3)}
GREEDY = Greedy()
PROMPTS = [[1, 5, 7], [1], [1, 9, 2, 4, 4, 11], [1, 2]]


def _generate(prompts, n, *, eos_id=None, cache_len=32, strategy=GREEDY, pad_to=None):
  tokens, lengths = pad_prompts(prompts, pad_to)
  return decoding.generate(
      toy_logits_fn, PARAMS, tokens, lengths, toy_cache(len(prompts), cache_len),
      jax.random.key(0), max_new_tokens=n, strategy=strategy, eos_id=eos_id, pad_id=PAD)


def test_greedy_matches_reference_for_lockstep_rows_of_different_lengths():
  out = _generate(PROMPTS, 8)
  for i, prompt in enumerate(PROMPTS):
    np.testing.assert_array_equal(out.tokens[i], reference(prompt, 8, offset=3))
  np.testing.assert_array_equal(out.lengths, [8] * 4)
  assert out.tokens.shape == (4, 8) and out.tokens.dtype == jnp.int32


def test_extra_right_padding_changes_nothing():
  a = _generate(PROMPTS, 6)
  b = _generate(PROMPTS, 6, pad_to=16)
  np.testing.assert_array_equal(a.tokens, b.tokens)


def test_each_row_stops_at_its_own_eos_and_then_pads():
  no_eos = [reference(p, 10, offset=3) for p in PROMPTS]
  eos_id = no_eos[0][2]  # Row 0 stops after 3 tokens; other rows stop wherever it occurs.
  expected = [reference(p, 10, offset=3, eos_id=eos_id) for p in PROMPTS]
  assert len({len(e) for e in expected}) > 1, "pick prompts whose rows stop at different steps"
  out = _generate(PROMPTS, 10, eos_id=eos_id)
  for i, e in enumerate(expected):
    np.testing.assert_array_equal(out.tokens[i, :len(e)], e)
    assert np.all(np.asarray(out.tokens[i, len(e):]) == PAD)
    assert int(out.lengths[i]) == len(e)


@pytest.mark.parametrize("n, eos_id, expected_tokens", [(1, None, 1), (7, None, 7), (7, 3, 2)])
def test_forward_passes_stop_with_the_last_row(n, eos_id, expected_tokens):
  calls = []

  def counting_fn(params, t, p, c):
    jax.debug.callback(lambda: calls.append(1), ordered=True)  # Counts executions, not traces.
    return _calls_in_logits(params, t, p, c)

  tokens, lengths = pad_prompts([[1, 5], [1]])
  out = decoding.generate(counting_fn, PARAMS, tokens, lengths, toy_cache(2, 32),
                          jax.random.key(0), max_new_tokens=n, eos_id=eos_id)
  jax.block_until_ready(out)
  jax.effects_barrier()
  # One prefill (cache only) plus one step per sampled token: step 1 re-feeds the last prompt
  # token and samples id 2 (= calls so far); the last sampled token is never fed.
  assert len(calls) == 1 + expected_tokens
  np.testing.assert_array_equal(out.lengths, [expected_tokens] * 2)
  np.testing.assert_array_equal(out.tokens[0, :expected_tokens], 2 + np.arange(expected_tokens))


def test_prefill_is_one_call_and_decode_feeds_one_token_per_row():
  shapes = []

  def recording_fn(params, t, p, c):
    shapes.append(t.shape)  # Runs at trace time: once for the prefill, once for the loop body.
    return toy_logits_fn(params, t, p, c)

  tokens, lengths = pad_prompts(PROMPTS)
  decoding.decode(recording_fn, PARAMS, tokens, lengths, toy_cache(4, 32), jax.random.key(0),
                  max_new_tokens=5)
  assert shapes == [(4, 6), (4, 1)]


def test_prefill_computes_no_vocabulary_logits():
  """The prefill is kept for its cache only: no [b, P, v] logits survive in the program."""
  from llmjax.models.config import ModelConfig
  from llmjax.models.interface import LanguageModel

  config = ModelConfig(vocab_size=96, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64,
                       max_seq_len=32)
  model = LanguageModel(config)
  decoder = jax.eval_shape(model.decoder, jax.eval_shape(model.init, jax.random.PRNGKey(0)))
  cache = jax.eval_shape(lambda: decoder.init_cache(3, 16))
  hlo = decoding._decode_jit.lower(
      decoder.logits_fn, decoder.params, jax.ShapeDtypeStruct((3, 8), jnp.int32),
      jax.ShapeDtypeStruct((3,), jnp.int32), cache, jax.random.key(0), max_new_tokens=4,
      strategy=GREEDY, eos_id=None, pad_id=PAD, return_logits=False).compile().as_text()
  assert "f32[3,96]" in hlo  # The per-step logits exist...
  assert "f32[3,8,96]" not in hlo  # ...the prompt's do not.


def _calls_in_logits(params, tokens, positions, cache):
  """Emits token id == number of calls so far (capped), to observe the call count."""
  logits, cache = toy_logits_fn(params, tokens, positions, cache)
  del logits
  logits = 10.0 * jax.nn.one_hot(jnp.broadcast_to(cache["calls"], tokens.shape), VOCAB)
  return logits, cache


def test_max_new_tokens_bounds_output():
  for n in (1, 3):
    out = _generate(PROMPTS, n)
    assert out.tokens.shape == (4, n)
    np.testing.assert_array_equal(out.lengths, [n] * 4)
    np.testing.assert_array_equal(out.tokens[1], reference(PROMPTS[1], n, offset=3))


def test_sampling_is_reproducible_and_seed_dependent():
  def run(seed):
    tokens, lengths = pad_prompts(PROMPTS)
    return np.asarray(decoding.generate(
        _uniform_logits, PARAMS, tokens, lengths, toy_cache(4, 32), jax.random.key(seed),
        max_new_tokens=12, strategy=Temperature(1.0)).tokens)

  np.testing.assert_array_equal(run(0), run(0))
  assert not np.array_equal(run(0), run(1))


def _uniform_logits(params, tokens, positions, cache):
  del params, positions
  return jnp.zeros(tokens.shape + (VOCAB,)), cache


def test_decode_is_jittable_end_to_end():
  tokens, lengths = pad_prompts(PROMPTS)
  f = jax.jit(lambda p, t, n, c, r: decoding.decode(toy_logits_fn, p, t, n, c, r,
                                                    max_new_tokens=4))
  out = f(PARAMS, tokens, lengths, toy_cache(4, 32), jax.random.key(0))
  np.testing.assert_array_equal(out.tokens[2], reference(PROMPTS[2], 4, offset=3))


def test_rejects_prompt_plus_new_tokens_longer_than_cache():
  tokens, lengths = pad_prompts(PROMPTS)  # Longest prompt: 6 tokens.
  with pytest.raises(ValueError, match="lower max_new_tokens to 4"):
    decoding.generate(toy_logits_fn, PARAMS, tokens, lengths, toy_cache(4, 10),
                      jax.random.key(0), max_new_tokens=5, cache_len=10)
  with pytest.raises(ValueError, match="max_seq_len 8"):
    decoding.generate(toy_logits_fn, PARAMS, tokens, lengths, toy_cache(4, 32),
                      jax.random.key(0), max_new_tokens=5, max_seq_len=8)


def test_rejects_empty_prompts():
  tokens, _ = pad_prompts([[1, 2], [1]])
  with pytest.raises(ValueError, match="at least a BOS"):
    decoding.generate(toy_logits_fn, PARAMS, tokens, np.array([2, 0]), toy_cache(2, 32),
                      jax.random.key(0), max_new_tokens=2)
  with pytest.raises(ValueError, match="at least one token"):
    decoding.generate(toy_logits_fn, PARAMS, np.zeros((2, 0), np.int32), np.array([0, 0]),
                      toy_cache(2, 32), jax.random.key(0), max_new_tokens=2)


def test_rejects_bad_max_new_tokens_and_lengths():
  tokens, lengths = pad_prompts(PROMPTS)
  with pytest.raises(ValueError, match="max_new_tokens must be positive"):
    decoding.generate(toy_logits_fn, PARAMS, tokens, lengths, toy_cache(4, 32),
                      jax.random.key(0), max_new_tokens=0)
  with pytest.raises(ValueError, match="exceed the padded length"):
    decoding.generate(toy_logits_fn, PARAMS, tokens, lengths + 1, toy_cache(4, 32),
                      jax.random.key(0), max_new_tokens=2)


def test_return_logits_records_each_sampled_step():
  tokens, lengths = pad_prompts(PROMPTS)
  out = decoding.generate(toy_logits_fn, PARAMS, tokens, lengths, toy_cache(4, 32),
                          jax.random.key(0), max_new_tokens=5, return_logits=True)
  assert out.logits.shape == (4, 5, VOCAB)
  np.testing.assert_array_equal(np.argmax(out.logits, -1), out.tokens)
  assert decoding.generate(toy_logits_fn, PARAMS, tokens, lengths, toy_cache(4, 32),
                           jax.random.key(0), max_new_tokens=5).logits is None


# --- The real model: KV-cache decoding equals repeated full forward passes. ---

MODEL_VARIANTS = {
    "rope_gqa_swiglu_scanned": dict(position="rope", num_kv_heads=2, norm="rmsnorm",
                                    mlp="swiglu"),
    "learned_mqa_gelu_unscanned": dict(position="learned", num_kv_heads=1, norm="layernorm",
                                       mlp="gelu", use_bias=True, tie_embeddings=False,
                                       scan_layers=False),
}


def random_params(model, seed=0):
  """Random params of the right shapes without compiling the model's init (slow on CPU)."""
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype), abstract)


@pytest.mark.parametrize("variant", sorted(MODEL_VARIANTS))
def test_decode_matches_full_forward(variant):
  from llmjax.models.config import ModelConfig
  from llmjax.models.interface import LanguageModel

  config = ModelConfig(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64,
                       max_seq_len=32, **MODEL_VARIANTS[variant])
  model = LanguageModel(config)
  params = random_params(model)
  prompts = [[1, 5, 9, 13, 2, 7], [1, 40], [1, 3, 3, 3, 60]]
  n, full_len = 8, 16
  tokens, lengths = pad_prompts(prompts)
  decoder = model.decoder(params)
  cache = decoder.init_cache(3, 16)
  out = decoding.generate(decoder.logits_fn, decoder.params, tokens, lengths, cache,
                          jax.random.key(0), max_new_tokens=n, return_logits=True,
                          cache_len=decoder.cache_length(cache), max_seq_len=decoder.max_seq_len)

  @jax.jit
  def full_forward(params, seqs):  # No cache; right padding cannot affect earlier positions.
    positions = jnp.broadcast_to(jnp.arange(full_len), seqs.shape)
    return model.logits_fn(params, seqs, positions, None)[0]

  seqs = [list(p) for p in prompts]
  for step in range(n):
    padded, seq_lengths = pad_prompts(seqs, full_len)
    logits = np.asarray(full_forward(params, padded))[np.arange(3), seq_lengths - 1]  # [b, v]
    np.testing.assert_allclose(out.logits[:, step], logits, atol=1e-5, rtol=1e-5)
    greedy = np.argmax(logits, axis=-1)
    np.testing.assert_array_equal(out.tokens[:, step], greedy)
    for seq, token in zip(seqs, greedy, strict=True):
      seq.append(int(token))
