"""Cross-entropy with z-loss: pure jnp, float32, weighted.

z-loss (PaLM) adds `z_loss * logsumexp(logits)**2` per token, which keeps the softmax
normalizer near 1 and bf16 logits from drifting; 1e-4 is the usual coefficient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_likelihood(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token log p(target) and log-normalizer.

  Args:
    logits: [..., v] (any float dtype; computed in float32).
    targets: [...] int ids.

  Returns:
    (log_likelihood [...], logz [...]) in float32.
  """
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  true = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return true - logz, logz


def cross_entropy_with_z_loss(logits: jax.Array, targets: jax.Array,
                              weights: jax.Array | None = None,
                              z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted mean cross-entropy plus z-loss.

  Args:
    logits: [..., v].
    targets: [...] int ids.
    weights: [...] per-token weights (None = all ones); means divide by their sum, and an
      all-zero batch gives a loss of 0 rather than NaN.
    z_loss: coefficient of the mean squared log-normalizer.

  Returns:
    (loss, aux): loss = CE + z-loss term; aux has `loss` (CE only), `z_loss` (the weighted
    z-loss term), `weight_sum` and `accuracy` (weighted argmax accuracy), all float32 scalars.
  """
  log_lik, logz = token_log_likelihood(logits, targets)
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  weights = weights.astype(jnp.float32)
  weight_sum = jnp.sum(weights)
  denom = jnp.where(weight_sum > 0, weight_sum, 1.0)
  ce = -jnp.sum(log_lik * weights) / denom
  z_term = z_loss * jnp.sum(jnp.square(logz) * weights) / denom
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  accuracy = jnp.sum(correct * weights) / denom
  aux = {"loss": ce, "z_loss": z_term, "weight_sum": weight_sum, "accuracy": accuracy}
  return ce + z_term, aux
