"""A backward-pass fusion barrier for the residual stream.

XLA fuses the elementwise backward of a norm (and the residual adds) into every consumer of the
residual-stream gradient. Across unrolled layers the chain of those adds grows with depth, and
XLA:CPU re-derives the whole chain inside each consumer fusion (e.g. the transposing copy that
feeds each weight-gradient matmul): quadratic work in depth, a third of the backward pass of
the small GPT shapes on CPU (benchmarks/NOTES.md). `materialize_grad` is the identity whose
cotangent passes through a one-trip while loop (`lax.optimization_barrier` would not do: the
CPU pipeline expands it away before fusion), so each block's input gradient is computed once,
written, and then read by its consumers. Values and gradients are unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def materialize_grad(x: jax.Array) -> jax.Array:
  """Identity; its gradient is materialized (no fusion across this point in the backward)."""
  return x


def _fwd(x: jax.Array) -> tuple[jax.Array, None]:
  return x, None


def _bwd(_, g: jax.Array) -> tuple[jax.Array]:
  # A while loop whose trip count XLA cannot know (1, unless g holds a NaN: then 0) is a
  # boundary no fusion crosses, also on CPU, where optimization barriers are expanded away.
  start = jnp.isnan(g.reshape(-1)[0]).astype(jnp.int32)
  # The body must touch g, or JAX hoists it out of the loop as a constant (+ 0.0 * i is exact).
  body = lambda c: (c[0] + 1, c[1] + (0.0 * c[0]).astype(c[1].dtype))
  _, g = jax.lax.while_loop(lambda c: c[0] < 1, body, (start, g))
  return (g,)


materialize_grad.defvjp(_fwd, _bwd)
