"""The backend seam: each platform's form of an operation computes the textbook one, the XLA
path's structured mask arguments equal the dense mask, and a cuDNN fallback is logged once."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.models import backend as backend_lib
from llmjax.models.attention_plan import CudnnDevice
from llmjax.models.backend import Backend, backend_for, write_cache
from llmjax.models.config import ModelConfig
from llmjax.models.masks import MaskSpec

CPU, XLA, GPU = Backend("cpu"), Backend("cpu", "xla"), Backend("gpu")


def _qkv(b=2, t=12, h=4, g=2, k=8, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(keys[0], (b, t, h, k)), jax.random.normal(keys[1], (b, t, g, k)),
          jax.random.normal(keys[2], (b, t, g, k)))


def test_backend_for_follows_the_platform_and_config():
  config = ModelConfig(vocab_size=8, num_layers=1, num_heads=2, embed_dim=8, mlp_dim=8,
                       max_seq_len=8, attention_impl="xla")
  assert backend_for(config) == Backend(jax.default_backend(), "xla")
  assert backend_for(config) is backend_for(config.replace(num_layers=2))  # One per platform.


def test_dense_and_barrier_forms_agree():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, 8))
  kernel = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 16))
  np.testing.assert_allclose(np.asarray(CPU.dense(x, kernel, 2)),
                             np.asarray(GPU.dense(x, kernel, 2)), rtol=1e-5, atol=1e-5)
  assert GPU.residual_barrier(x) is x
  grad = lambda b: jax.grad(lambda x: jnp.sum(jnp.sin(b.residual_barrier(x))))(x)
  np.testing.assert_array_equal(np.asarray(grad(CPU)), np.asarray(grad(GPU)))


def test_prepare_mask_attaches_the_dense_mask_only_where_it_is_read():
  causal = MaskSpec.self_attention(4, causal=True)
  packed = MaskSpec.self_attention(4, causal=True, segment_ids=jnp.ones((1, 4), jnp.int32))
  assert CPU.prepare_mask(causal).dense is not None
  assert XLA.prepare_mask(causal).dense is None and GPU.prepare_mask(causal).dense is None
  assert XLA.prepare_mask(packed).dense is not None
  assert GPU.prepare_mask(MaskSpec.over_cache(jnp.zeros((1, 1), jnp.int32), 4)).dense is not None


@pytest.mark.parametrize("causal,window", [(True, None), (True, 3), (False, 3), (False, None)])
def test_xla_structured_arguments_equal_the_dense_mask(causal, window):
  """is_causal / local_window_size on jax's XLA path == the same mask as a dense array, with
  gradients; sequence lengths == padding segments on the real tokens."""
  q, key, value = _qkv()
  spec = MaskSpec.self_attention(12, causal=causal, window=window)
  assert XLA.plan(spec, q, False).dense_mask is False

  def loss(mask, q, key, value):
    out = XLA.attention(q, key, value, None, mask)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape)))

  dense = MaskSpec.explicit(spec.dense_mask())
  for argnums in (0, 1, 2):
    np.testing.assert_allclose(np.asarray(jax.grad(loss, argnums + 1)(spec, q, key, value)),
                               np.asarray(jax.grad(loss, argnums + 1)(dense, q, key, value)),
                               atol=1e-5, rtol=1e-5)
  lengths = jnp.array([7, 12], jnp.int32)
  padded = MaskSpec.self_attention(12, causal=causal, window=window, lengths=lengths)
  assert XLA.plan(padded, q, False).seq_lengths
  got = np.asarray(XLA.attention(q, key, value, None, padded))
  want = np.asarray(XLA.attention(q, key, value, None, MaskSpec.explicit(padded.dense_mask())))
  real = np.arange(12)[None] < np.asarray(lengths)[:, None]
  np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(got[~real], 0.0)  # Padding queries: zeros on this path.


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cached_attention_equals_write_then_attend(batch, with_bias):
  """The CPU form (batch 1: attend to the old cache, then write) and the textbook form
  (write, then XLA attention over the cache) give the same output and the same cache."""
  h, g, k, s = 4, 2, 8, 10
  q, key, value = _qkv(batch, 1, h, g, k, seed=3)
  cache = {n: jax.random.normal(jax.random.PRNGKey(i), (batch, g, s, k))
           for i, n in enumerate("kv")}
  positions = jnp.array([[6], [0], [9]])[:batch]
  mask = MaskSpec.over_cache(positions, s, window=5)
  bias = jax.random.normal(jax.random.PRNGKey(4), (1, h, 1, s)) if with_bias else None
  out, new = jax.jit(CPU.cached_attention)(q, key, value, cache, positions, bias,
                                           CPU.prepare_mask(mask), 0.5)
  ref_out, ref = XLA.cached_attention(q, key, value, cache, positions, bias,
                                      XLA.prepare_mask(mask), 0.5)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=1e-5, rtol=1e-5)
  for n in "kv":
    np.testing.assert_array_equal(np.asarray(new[n]), np.asarray(ref[n]))
  np.testing.assert_array_equal(np.asarray(ref["k"]),
                                np.asarray(write_cache(cache["k"], key, positions)))


def test_cudnn_fallback_runs_xla_and_is_logged_once(monkeypatch, caplog):
  """A GPU default that cannot use cuDNN (float32 here) runs XLA and says why, once."""
  monkeypatch.setattr(backend_lib, "cudnn_device", lambda: CudnnDevice((9, 0)))
  backend_lib._log_once.cache_clear()
  q, key, value = _qkv()
  spec = MaskSpec.self_attention(12, causal=True)
  with caplog.at_level(logging.WARNING, logger="llmjax.models.backend"):
    got = [GPU.attention(q, key, value, None, spec) for _ in range(2)]
  want = XLA.attention(q, key, value, None, spec)
  np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want), atol=1e-6)
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 1 and "bfloat16/float16" in messages[0], messages
