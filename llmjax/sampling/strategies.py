"""Sampling strategies: how to pick the next token from a row of logits.

Each strategy is a tiny frozen (hashable) dataclass with one method,
`__call__(logits [b, v] float32, rng) -> tokens [b] int32`, so it can be a static argument of
`jax.jit` and be swapped without touching the decoding loop. `make_strategy` validates user
settings and picks the simplest strategy that implements them.

Filters follow the Hugging Face order: temperature first, then top-k, then top-p (on the
distribution renormalized over the surviving top-k tokens), then a categorical draw.
This file does not know about models, caches or tokenizers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmjax.sampling.params import MIN_SAMPLING_TEMPERATURE, check_setting


def _check_temperature(temperature: float) -> float:
  return check_setting("temperature", temperature)


def _check_top_k(top_k: int) -> int:
  return check_setting("top_k", top_k)


def _check_top_p(top_p: float) -> float:
  return check_setting("top_p", top_p)


def greedy_argmax(logits: jax.Array) -> jax.Array:
  """`jnp.argmax(logits, -1)` as int32 (ties and NaNs alike: the lowest such index), faster.

  XLA:CPU runs argmax's (value, index) reduction as a scalar loop; a max followed by the
  lowest index holding it is two vectorized reductions, 2.5x faster over a [8, 50257] row
  block (~0.7 ms of a decode step). A NaN is treated as the maximum, as jnp.argmax does.
  """
  vocab = logits.shape[-1]
  top = jnp.max(logits, axis=-1, keepdims=True)  # NaN if the row holds one.
  hit = (logits == top) | jnp.isnan(logits)
  ids = jnp.arange(vocab, dtype=jnp.int32)
  return jnp.min(jnp.where(hit, ids, vocab), axis=-1).astype(jnp.int32)


def top_p_mask(sorted_logits: jax.Array, top_p: float) -> jax.Array:
  """Keeps the smallest prefix of descending-sorted logits whose probability reaches top_p.

  Args:
    sorted_logits: [b, n] logits sorted in descending order along the last axis.
    top_p: nucleus mass in (0, 1].

  Returns:
    [b, n] logits with the tokens outside the nucleus set to -inf. The most likely token is
    always kept, so a tiny top_p is greedy.
  """
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  # Probability mass strictly before each token: a token is kept while that is below top_p.
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = mass_before < top_p
  keep = keep.at[:, 0].set(True)
  return jnp.where(keep, sorted_logits, -jnp.inf)


def _sample(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int,
            top_p: float) -> jax.Array:
  """Temperature -> top-k -> top-p -> categorical, for temperature > 0."""
  logits = logits.astype(jnp.float32) / temperature
  vocab = logits.shape[-1]
  if top_k == 0 and top_p >= 1.0:
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
  # lax.top_k returns exactly k candidates sorted in descending order (ties broken by index),
  # which is also the order top-p needs; k = v sorts the whole row for top-p alone.
  k = vocab if top_k == 0 else min(top_k, vocab)
  candidates, indices = jax.lax.top_k(logits, k)  # [b, k], [b, k]
  if top_p < 1.0:
    candidates = top_p_mask(candidates, top_p)
  choice = jax.random.categorical(rng, candidates, axis=-1)  # [b]
  return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Greedy:
  """Always the most likely token (ties: the lowest id). Ignores rng."""

  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    del rng
    return greedy_argmax(logits)


@dataclasses.dataclass(frozen=True)
class Temperature:
  """Samples from softmax(logits / temperature); temperature == 0 means greedy."""

  temperature: float = 1.0

  def __post_init__(self):
    _check_temperature(self.temperature)

  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    if self.temperature < MIN_SAMPLING_TEMPERATURE:
      return greedy_argmax(logits)
    return _sample(logits, rng, self.temperature, 0, 1.0)


@dataclasses.dataclass(frozen=True)
class TopK:
  """Samples among the k most likely tokens (after temperature); k == 1 is greedy."""

  k: int
  temperature: float = 1.0

  def __post_init__(self):
    _check_top_k(self.k)
    if self.k == 0:
      raise ValueError("TopK needs k >= 1; use Temperature for no top-k filtering.")
    _check_temperature(self.temperature)

  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    if self.temperature < MIN_SAMPLING_TEMPERATURE or self.k == 1:
      return greedy_argmax(logits)
    return _sample(logits, rng, self.temperature, self.k, 1.0)


@dataclasses.dataclass(frozen=True)
class TopP:
  """Nucleus sampling: the smallest set of most likely tokens with probability >= p."""

  p: float
  temperature: float = 1.0

  def __post_init__(self):
    _check_top_p(self.p)
    _check_temperature(self.temperature)

  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    if self.temperature < MIN_SAMPLING_TEMPERATURE:
      return greedy_argmax(logits)
    return _sample(logits, rng, self.temperature, 0, self.p)


@dataclasses.dataclass(frozen=True)
class TopKTopP:
  """Temperature, then top-k, then top-p (over the renormalized top-k), then a draw.

  top_k == 0 and top_p == 1.0 switch the respective filter off.
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    _check_temperature(self.temperature)
    _check_top_k(self.top_k)
    _check_top_p(self.top_p)

  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    if self.temperature < MIN_SAMPLING_TEMPERATURE or self.top_k == 1:
      return greedy_argmax(logits)
    return _sample(logits, rng, self.temperature, self.top_k, self.top_p)


Strategy = Greedy | Temperature | TopK | TopP | TopKTopP


def make_strategy(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Strategy:
  """Validates sampling settings and returns the simplest strategy implementing them.

  Args:
    temperature: a finite float >= 0; 0 means greedy (top_k/top_p are then irrelevant), and
      so does anything below MIN_SAMPLING_TEMPERATURE (1e-6: float32 logits divided by less
      overflow to inf; greedy is the limit of temperature -> 0).
    top_k: an int >= 0; 0 means no top-k filter, 1 means greedy.
    top_p: in (0, 1]; 1.0 means no nucleus filter.

  Returns:
    A hashable strategy: Greedy, Temperature, TopK, TopP or TopKTopP.

  Raises:
    TypeError: a setting of the wrong type (None, a str, a bool, a float top_k).
    ValueError: for a setting out of range, naming the valid range.
  """
  temperature = _check_temperature(temperature)
  top_k = _check_top_k(top_k)
  top_p = _check_top_p(top_p)
  if temperature < MIN_SAMPLING_TEMPERATURE or top_k == 1:
    return Greedy()
  if top_k == 0 and top_p == 1.0:
    return Temperature(temperature)
  if top_p == 1.0:
    return TopK(top_k, temperature)
  if top_k == 0:
    return TopP(top_p, temperature)
  return TopKTopP(temperature, top_k, top_p)
