"""Masks: the dense forms against hand-written expectations, and MaskSpec's structure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.models.masks import MaskSpec, make_cache_mask, make_cross_mask, make_segment_mask


def test_masks():
  seg = jnp.array([[1, 1, 2, 0]])
  mask = np.asarray(make_segment_mask(seg))[0, 0]
  np.testing.assert_array_equal(mask, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
  cache_mask = np.asarray(make_cache_mask(jnp.array([[2], [0]]), 4))[:, 0, 0]
  np.testing.assert_array_equal(cache_mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
  cross = np.asarray(make_cross_mask(jnp.array([[1, 2]]), jnp.array([[1, 1, 2, 0]])))[0, 0]
  np.testing.assert_array_equal(cross, [[1, 1, 0, 0], [0, 0, 1, 0]])


@pytest.mark.parametrize("causal,window", [(True, None), (False, None), (True, 2), (False, 2)])
def test_spec_dense_masks_equal_the_builders(causal, window):
  t = 6
  seg = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
  packed = MaskSpec.self_attention(t, causal=causal, window=window, segment_ids=seg)
  np.testing.assert_array_equal(packed.dense_mask(),
                                make_segment_mask(seg, causal=causal, window=window))
  whole = MaskSpec.self_attention(t, causal=causal, window=window)
  np.testing.assert_array_equal(whole.dense_mask(), make_segment_mask(
      jnp.ones((1, t), jnp.int32), causal=causal, window=window))
  padded = MaskSpec.self_attention(t, causal=causal, window=window,
                                   lengths=jnp.array([4, 6], jnp.int32))
  as_segments = jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6])
  np.testing.assert_array_equal(padded.dense_mask(), make_segment_mask(
      as_segments, causal=causal, window=window))
  over_cache = MaskSpec.over_cache(jnp.array([[3], [1]]), 5, window=window)
  np.testing.assert_array_equal(over_cache.dense_mask(),
                                make_cache_mask(jnp.array([[3], [1]]), 5, window=window))


def test_spec_kinds_and_pytree():
  seg = jnp.ones((2, 4), jnp.int32)
  packed = MaskSpec.self_attention(4, causal=True, window=3, segment_ids=seg)
  assert packed.is_self_attention and packed.packed and not packed.is_over_cache
  assert MaskSpec.over_cache(seg, 8).is_over_cache
  explicit = MaskSpec.explicit(jnp.ones((1, 1, 4, 4), bool))
  assert explicit.is_explicit and explicit.with_dense() is explicit
  # Arrays are leaves; causal / window / length / slots are static (they shape the program).
  leaves, treedef = jax.tree.flatten(packed.with_dense())
  assert len(leaves) == 2
  rebuilt = jax.tree.unflatten(treedef, leaves)
  assert (rebuilt.causal, rebuilt.window, rebuilt.length) == (True, 3, 4)
  with pytest.raises(ValueError, match="not both"):
    MaskSpec.self_attention(4, causal=True, segment_ids=seg, lengths=jnp.array([4, 4]))
