"""Sampling strategies on hand-written logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.sampling import strategies
from llmjax.sampling.strategies import Greedy, Temperature, TopK, TopKTopP, TopP, make_strategy

DRAWS = 20_000


def _random_logits(seed=0, batch=8, vocab=32):
  return jax.random.normal(jax.random.key(seed), (batch, vocab), jnp.float32) * 3.0


def _draw(strategy, probs, seed=0):
  """DRAWS samples of one distribution: a batch of identical rows, one call."""
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (DRAWS, len(probs)))
  tokens = np.asarray(jax.jit(strategy)(logits, jax.random.key(seed)))
  return np.bincount(tokens, minlength=len(probs)) / DRAWS


def test_greedy_is_argmax():
  logits = _random_logits()
  tokens = Greedy()(logits, jax.random.key(1))
  np.testing.assert_array_equal(tokens, np.argmax(np.asarray(logits), axis=-1))
  assert tokens.dtype == jnp.int32 and tokens.shape == (8,)


def test_greedy_argmax_equals_jnp_argmax_on_ties_infs_and_nans():
  inf, nan = np.inf, np.nan
  logits = np.array([
      [1.0, 3.0, 3.0, -2.0, 3.0],  # Ties: the lowest index.
      [-inf, -inf, -inf, -inf, -inf],  # All masked: index 0.
      [0.0, -inf, 2.0, inf, inf],
      [1.0, nan, 5.0, nan, 0.0],  # A NaN counts as the maximum, as in jnp.argmax.
      [-1e30, -1e30, -3e30, -1e30, -5.0],
  ], np.float32)
  expected = np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1))
  np.testing.assert_array_equal(expected, [1, 0, 3, 1, 4])
  for fn in (strategies.greedy_argmax, jax.jit(strategies.greedy_argmax)):
    tokens = fn(jnp.asarray(logits))
    np.testing.assert_array_equal(tokens, expected)
    assert tokens.dtype == jnp.int32
  big = jax.random.normal(jax.random.key(3), (4, 50257), jnp.float32)
  np.testing.assert_array_equal(strategies.greedy_argmax(big), jnp.argmax(big, axis=-1))


@pytest.mark.parametrize("strategy", [
    TopK(1), TopK(1, temperature=5.0), TopP(1e-6), TopP(1e-6, temperature=3.0),
    Temperature(0.0), TopKTopP(0.0, 5, 0.5), TopKTopP(2.0, 1, 1.0), TopKTopP(1.0, 4, 1e-6),
])
def test_degenerate_settings_equal_greedy(strategy):
  logits = _random_logits(seed=2)
  expected = np.argmax(np.asarray(logits), axis=-1)
  for seed in range(3):
    np.testing.assert_array_equal(strategy(logits, jax.random.key(seed)), expected)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_frequencies_match_softmax(temperature):
  probs = np.array([0.1, 0.2, 0.3, 0.4])
  freqs = _draw(Temperature(temperature), probs)
  expected = probs ** (1 / temperature) / np.sum(probs ** (1 / temperature))
  np.testing.assert_allclose(freqs, expected, atol=0.015)


def test_top_k_never_leaves_the_k_best():
  probs = np.array([0.05, 0.3, 0.1, 0.25, 0.2, 0.1])
  freqs = _draw(TopK(3), probs)
  best = [1, 3, 4]
  assert set(np.flatnonzero(freqs)) == set(best)
  expected = np.zeros_like(probs)
  expected[best] = probs[best] / probs[best].sum()
  np.testing.assert_allclose(freqs, expected, atol=0.015)


def test_top_k_larger_than_vocab_is_plain_sampling():
  probs = np.array([0.1, 0.2, 0.3, 0.4])
  np.testing.assert_allclose(_draw(TopK(100), probs), probs, atol=0.015)


def test_top_p_keeps_the_nucleus():
  probs = np.array([0.2, 0.4, 0.1, 0.3])
  # Sorted: 0.4 (1), 0.3 (3), 0.2 (0), 0.1 (2); mass before each: 0, .4, .7, .9 -> keep 3.
  freqs = _draw(TopP(0.75), probs)
  expected = np.array([0.2, 0.4, 0.0, 0.3]) / 0.9
  np.testing.assert_allclose(freqs, expected, atol=0.015)


def test_top_k_then_top_p_renormalizes_over_top_k():
  probs = np.array([0.2, 0.4, 0.1, 0.3])
  # After top-3 the mass is [.4, .3, .2] / .9: mass before the third is .78 >= .75, so only
  # two survive (without renormalization .7 < .75 would keep three).
  freqs = _draw(TopKTopP(1.0, 3, 0.75), probs)
  np.testing.assert_allclose(freqs, np.array([0.0, 4 / 7, 0.0, 3 / 7]), atol=0.015)


def test_sampling_ignores_minus_inf_logits():
  logits = jnp.array([[0.0, -jnp.inf, 0.0, -jnp.inf]] * 1000)
  for strategy in (Temperature(1.0), TopKTopP(0.7, 3, 0.9)):
    tokens = np.asarray(jax.jit(strategy)(logits, jax.random.key(0)))
    assert set(tokens.tolist()) == {0, 2}


def test_same_seed_same_samples():
  logits = _random_logits(seed=3)
  strategy = TopKTopP(0.8, 10, 0.9)
  a = strategy(logits, jax.random.key(7))
  b = strategy(logits, jax.random.key(7))
  np.testing.assert_array_equal(a, b)


def test_make_strategy_picks_the_simplest():
  assert make_strategy(0.0, 50, 0.9) == Greedy()
  assert make_strategy(1.0, 1, 1.0) == Greedy()
  assert make_strategy(0.7) == Temperature(0.7)
  assert make_strategy(1.0, 40) == TopK(40, 1.0)
  assert make_strategy(0.9, 0, 0.95) == TopP(0.95, 0.9)
  assert make_strategy(0.9, 40, 0.95) == TopKTopP(0.9, 40, 0.95)


def test_strategies_are_hashable_static_args():
  assert len({make_strategy(0.7), make_strategy(0.7), make_strategy(0.8)}) == 2
  f = jax.jit(lambda logits, rng, strategy: strategy(logits, rng), static_argnames="strategy")
  assert f(_random_logits(), jax.random.key(0), strategy=TopK(3)).shape == (8,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), r"top_p must be a float in \(0, 1\]"),
    (dict(top_p=1.5), "top_p"),
])
def test_make_strategy_rejects_bad_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    make_strategy(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(top_k=2.5), r"top_k must be an int >= 0 .*got 2.5 \(float\)"),
    (dict(temperature=None), r"temperature must be a finite float >= 0 .*got None"),
    (dict(top_p="0.9"), r"top_p must be a float in \(0, 1\] .*got '0.9' \(str\)"),
    (dict(top_k=True), r"top_k .*got True \(bool\)"),
])
def test_make_strategy_rejects_wrong_types(kwargs, match):
  with pytest.raises(TypeError, match=match):
    make_strategy(**kwargs)


def test_tiny_temperatures_draw_greedily():
  # float32 logits / 1e-300 overflow to +-inf (NaN where a logit is 0): greedy is the limit.
  assert make_strategy(1e-300) == make_strategy(0.0)
  assert isinstance(make_strategy(1e-3), Temperature)


def test_top_k_class_rejects_zero():
  with pytest.raises(ValueError, match="k >= 1"):
    TopK(0)


def test_top_p_mask_keeps_first_token():
  sorted_logits = jnp.log(jnp.array([[0.9, 0.05, 0.05]]))
  masked = np.asarray(strategies.top_p_mask(sorted_logits, 0.01))
  assert np.isfinite(masked[0, 0]) and np.all(np.isneginf(masked[0, 1:]))
