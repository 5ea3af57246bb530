"""materialize_grad: the identity, with the exact gradient (NaNs included)."""

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.models.barriers import materialize_grad


def _f(x):
  return jnp.sum(jnp.sin(x) * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape))


def test_materialize_grad_is_the_identity_with_the_same_gradient():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
  np.testing.assert_array_equal(np.asarray(materialize_grad(x)), np.asarray(x))
  expected = jax.grad(_f)(x)
  got = jax.jit(jax.grad(lambda x: _f(materialize_grad(x))))(x)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_materialize_grad_passes_nan_gradients_through():
  # A NaN first element makes the barrier loop run zero times: the gradient still arrives.
  x = jnp.asarray([jnp.nan, 1.0, 2.0])
  got = jax.jit(jax.grad(lambda x: _f(materialize_grad(x))))(x)
  expected = jax.grad(_f)(x)
  np.testing.assert_array_equal(np.isnan(np.asarray(got)), np.isnan(np.asarray(expected)))
  np.testing.assert_array_equal(np.asarray(got)[1:], np.asarray(expected)[1:])
