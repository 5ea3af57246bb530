"""The CPU backend's kernels compute what the textbook operations compute: values and gradients
against jax.nn.dot_product_attention, jnp.tensordot and the plain identity."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.models import cpu_kernels
from llmjax.models.backend import write_cache
from llmjax.models.masks import make_cache_mask, make_segment_mask


def _xla(q, key, value, bias, mask, heads_major=False):
  if heads_major:
    key, value = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)
  return jax.nn.dot_product_attention(q, key, value, bias=bias, mask=mask, implementation="xla")


def _f(x):
  return jnp.sum(jnp.sin(x) * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape))


def test_materialize_grad_is_the_identity_with_the_same_gradient():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
  np.testing.assert_array_equal(np.asarray(cpu_kernels.materialize_grad(x)), np.asarray(x))
  expected = jax.grad(_f)(x)
  got = jax.jit(jax.grad(lambda x: _f(cpu_kernels.materialize_grad(x))))(x)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_materialize_grad_passes_nan_gradients_through():
  # A NaN first element makes the barrier loop run zero times: the gradient still arrives.
  x = jnp.asarray([jnp.nan, 1.0, 2.0])
  got = jax.jit(jax.grad(lambda x: _f(cpu_kernels.materialize_grad(x))))(x)
  expected = jax.grad(_f)(x)
  np.testing.assert_array_equal(np.isnan(np.asarray(got)), np.isnan(np.asarray(expected)))
  np.testing.assert_array_equal(np.asarray(got)[1:], np.asarray(expected)[1:])


@pytest.mark.parametrize("contract,kernel_shape", [(1, (16, 4, 8)), (2, (4, 8, 16))])
def test_matmul_2d_equals_tensordot(contract, kernel_shape):
  keys = jax.random.split(jax.random.PRNGKey(5), 2)
  x = jax.random.normal(keys[0], (2, 3) + kernel_shape[:contract])
  kernel = jax.random.normal(keys[1], kernel_shape)
  np.testing.assert_allclose(np.asarray(cpu_kernels.matmul_2d(x, kernel, contract)),
                             np.asarray(jnp.tensordot(x, kernel, contract)), rtol=1e-6)
  with pytest.raises(ValueError, match="disagree"):
    cpu_kernels.matmul_2d(x, kernel[1:], contract)


@pytest.mark.parametrize("kv_heads", [6, 2, 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_einsum_attention_equals_dot_product_attention_with_gradients(kv_heads, with_bias):
  """Same outputs and gradients as jax.nn.dot_product_attention, with GQA/MQA grouping, a
  per-head additive bias and a packed causal mask."""
  b, t, h, k = 2, 8, 6, 4
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(keys[0], (b, t, h, k))
  kv = jax.random.normal(keys[1], (2, b, t, kv_heads, k))
  bias = jax.random.normal(keys[2], (1, h, t, t)) if with_bias else None
  mask = make_segment_mask(jnp.asarray([[1] * 5 + [2] * 3, [1] * 8]))
  fns = {"xla": _xla, "einsum": cpu_kernels.einsum_attention}

  def loss(impl, q, key, value):
    out = fns[impl](q, key, value, bias, mask)
    return jnp.sum(out * jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size)

  for argnums in (0, 1, 2):
    ref = jax.grad(functools.partial(loss, "xla"), argnums)(q, kv[0], kv[1])
    got = jax.grad(functools.partial(loss, "einsum"), argnums)(q, kv[0], kv[1])
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(cpu_kernels.einsum_attention(q, *kv, bias, mask)),
                             np.asarray(_xla(q, *kv, bias, mask)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t,kv_heads,window,with_bias", [
    (256, 2, None, True),  # 4 query blocks, GQA, per-head bias
    (192, 6, 40, False),  # 3 blocks, sliding window
])
def test_causal_query_blocks_equal_dot_product_attention_with_gradients(t, kv_heads, window,
                                                                        with_bias):
  """Causal einsum attention split into query blocks that skip the masked keys: the outputs
  and gradients of jax.nn.dot_product_attention over the whole mask (packed segments, a
  padding tail, GQA, bias or window)."""
  b, h, k = 2, 6, 8
  assert cpu_kernels.causal_query_blocks(t) == t // 64
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  q = jax.random.normal(keys[0], (b, t, h, k))
  kv = jax.random.normal(keys[1], (2, b, t, kv_heads, k))
  bias = jax.random.normal(keys[2], (1, h, t, t)) if with_bias else None
  segments = np.ones((b, t), np.int32)
  segments[0, 100:] = 2
  segments[0, t - 20:] = 0  # Padding sees padding only.
  mask = make_segment_mask(jnp.asarray(segments), window=window)

  def loss(blocked, q, key, value):
    if blocked:
      out = cpu_kernels.einsum_attention(q, key, value, bias, mask, causal=True)
    else:
      out = _xla(q, key, value, bias, mask)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape)))

  for argnums in (0, 1, 2):
    ref = jax.grad(functools.partial(loss, False), argnums)(q, kv[0], kv[1])
    got = jax.grad(functools.partial(loss, True), argnums)(q, kv[0], kv[1])
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-5, rtol=2e-5)


def test_causal_query_blocks_count():
  assert [cpu_kernels.causal_query_blocks(t)
          for t in (12, 64, 100, 128, 192, 256, 1024, 4096, 4000)] == [1, 1, 1, 2, 3, 4, 8, 8, 8]


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_step_attention_equals_write_then_attend(kv_heads, with_bias):
  """The decode step that attends to the old cache plus the new token == writing the token
  into the cache and attending over it, per row at its own position (stale slot included)."""
  b, h, s, k = 3, 4, 8, 16
  keys = jax.random.split(jax.random.PRNGKey(3), 7)
  q = jax.random.normal(keys[0], (b, 1, h, k))
  k_new, v_new = (jax.random.normal(keys[i], (b, 1, kv_heads, k)) for i in (1, 2))
  # Old caches full of garbage, including the slot about to be overwritten and slots ahead.
  k_old, v_old = (jax.random.normal(keys[i], (b, kv_heads, s, k)) for i in (3, 4))
  positions = jnp.array([[0], [5], [7]])
  mask = make_cache_mask(positions, s, window=6)
  bias = jax.random.normal(keys[5], (1, h, 1, s)) if with_bias else None
  got = cpu_kernels.einsum_step_attention(q, k_new, v_new, k_old, v_old, bias, mask, positions,
                                          0.3)
  want = cpu_kernels.einsum_attention(q, write_cache(k_old, k_new, positions),
                                      write_cache(v_old, v_new, positions), bias, mask, 0.3,
                                      heads_major=True)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_order_after_keeps_positions_unless_the_row_is_nan():
  positions = jnp.array([[3], [5]])
  out = jnp.ones((2, 1, 2, 4)).at[1, 0, 0, 0].set(jnp.nan)
  np.testing.assert_array_equal(np.asarray(cpu_kernels.order_after(positions, out)),
                                [[3], [6]])
