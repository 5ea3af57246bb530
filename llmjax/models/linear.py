"""Weight matmuls as plain 2-D matrix products.

`linear(x, kernel, n)` contracts the last n axes of x with the first n axes of kernel, like
`jnp.einsum("btd,dhk->bthk")`, but flattens both to matrices first. Same math and shapes; the
difference is the backward pass: an einsum's weight gradient contracts two axes (b and t) and
XLA:CPU lowers that through a transposed copy of the activations, which made the backward of
a GPT-sized MLP 2.2x slower than the [b*t, d] @ [d, f] form (benchmarks/NOTES.md). The
reshapes merge only leading axes, so they are free (bitcasts) and keep shardings representable
(batch/length shards merge into the row axis, head shards into the column axis).
"""

from __future__ import annotations

import math

import jax


def linear(x: jax.Array, kernel: jax.Array, contract: int = 1) -> jax.Array:
  """x [..., *in] @ kernel [*in, *out] -> [..., *out], with len(in) == contract."""
  lead, inner = x.shape[:x.ndim - contract], x.shape[x.ndim - contract:]
  if kernel.shape[:contract] != inner:
    raise ValueError(f"linear: x {x.shape} and kernel {kernel.shape} disagree on the "
                     f"{contract} contracted axes.")
  out = kernel.shape[contract:]
  y = x.reshape(math.prod(lead), math.prod(inner)) @ kernel.reshape(math.prod(inner), -1)
  return y.reshape(*lead, *out)
