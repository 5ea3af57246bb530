"""Named precision policies: which dtype parameters are stored in and which one computes.

- `float32`: fp32 everywhere.
- `mixed_bfloat16`: parameters (and so the optimizer state, which follows them) in fp32,
  matmuls and activations in bf16, the loss and softmax statistics in fp32 (the layers upcast).
- `auto`: `mixed_bfloat16` on GPU and TPU, `float32` on CPU, where bf16 is not faster.

`ModelConfig.dtype` / `param_dtype`, when set, override the policy's compute / storage dtype.
Optimizer moments always stay fp32 whatever the parameters (training/optimizer.py).
"""

from __future__ import annotations

POLICIES: dict[str, tuple[str, str]] = {  # name -> (param dtype, compute dtype)
    "float32": ("float32", "float32"),
    "mixed_bfloat16": ("float32", "bfloat16"),
}
PRECISIONS = ("auto", *POLICIES)
ACCELERATED_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")


def resolve_policy(precision: str, platform: str | None = None) -> str:
  """The concrete policy `precision` means on `platform` (default: JAX's default backend).

  Raises:
    ValueError: `precision` is not one of PRECISIONS.
  """
  if precision not in PRECISIONS:
    raise ValueError(f"ModelConfig.precision={precision!r} is not one of {PRECISIONS}.")
  if precision != "auto":
    return precision
  if platform is None:
    import jax  # Only here: configs are built before any backend is chosen.
    platform = jax.default_backend()
  return "mixed_bfloat16" if platform.lower() in ACCELERATED_PLATFORMS else "float32"


def policy_dtypes(precision: str, platform: str | None = None) -> tuple[str, str]:
  """(param dtype, compute dtype) names of a precision policy on `platform`."""
  return POLICIES[resolve_policy(precision, platform)]
