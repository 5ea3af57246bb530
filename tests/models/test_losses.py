"""Cross-entropy + z-loss against a NumPy oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.models.losses import cross_entropy_with_z_loss, token_log_likelihood


def _oracle(logits, targets, weights, z_loss):
  logits = logits.astype(np.float64)
  m = logits.max(-1, keepdims=True)
  logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
  true = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  ws = weights.sum()
  ce = ((logz - true) * weights).sum() / ws
  zl = z_loss * (logz**2 * weights).sum() / ws
  acc = ((logits.argmax(-1) == targets) * weights).sum() / ws
  return ce + zl, ce, zl, acc, ws


@pytest.mark.parametrize("z_loss", [0.0, 1e-4, 0.5])
def test_matches_numpy_oracle(z_loss):
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(3, 5, 11)) * 4).astype(np.float32)
  targets = rng.integers(0, 11, (3, 5))
  weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
  loss, aux = cross_entropy_with_z_loss(logits, targets, weights, z_loss)
  total, ce, zl, acc, ws = _oracle(logits, targets, weights, z_loss)
  np.testing.assert_allclose(loss, total, rtol=1e-5)
  np.testing.assert_allclose(aux["loss"], ce, rtol=1e-5)
  np.testing.assert_allclose(aux["z_loss"], zl, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(aux["accuracy"], acc, rtol=1e-6)
  np.testing.assert_allclose(aux["weight_sum"], ws)


def test_stable_for_huge_bf16_logits_and_zero_weights():
  logits = jnp.array([[[1e4, -1e4, 0.0], [3e4, 3e4, 3e4]]], jnp.bfloat16)
  targets = jnp.array([[0, 2]])
  loss, aux = cross_entropy_with_z_loss(logits, targets, jnp.ones((1, 2)), 0.0)
  assert np.isfinite(loss) and aux["loss"].dtype == jnp.float32
  np.testing.assert_allclose(loss, np.log(3) / 2, rtol=1e-2)
  zero, aux = cross_entropy_with_z_loss(logits, targets, jnp.zeros((1, 2)), 1e-4)
  assert zero == 0.0 and aux["weight_sum"] == 0.0
  grads = jax.grad(lambda x: cross_entropy_with_z_loss(x, targets, jnp.zeros((1, 2)))[0])(
      logits.astype(jnp.float32))
  assert np.all(np.isfinite(grads))


def test_default_weights_and_log_likelihood():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25]]]))
  loss, aux = cross_entropy_with_z_loss(logits, jnp.array([[1]]))
  np.testing.assert_allclose(loss, np.log(4), rtol=1e-6)
  assert aux["weight_sum"] == 1.0
  log_lik, logz = token_log_likelihood(logits, jnp.array([[0]]))
  np.testing.assert_allclose(log_lik, np.log([[0.5]]), rtol=1e-6)
  np.testing.assert_allclose(logz, 0.0, atol=1e-6)
