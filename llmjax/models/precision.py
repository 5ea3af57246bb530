"""Named precision policies: which dtype parameters are stored in, which one computes, and
which one the trainer keeps its master copy of the parameters in.

- `float32`: fp32 everywhere.
- `mixed_bfloat16`: parameters in fp32, matmuls and activations in bf16, the loss and softmax
  statistics in fp32 (the layers upcast).
- `bfloat16`: pure bf16: parameters stored *and trained* in bf16, with no fp32 master copy, and
  bf16 compute. It halves parameter memory, but an update smaller than half a bf16 step of the
  weight (about 0.4% of its magnitude) is lost; ask for it by name only.
- `auto`: `mixed_bfloat16` on GPU and TPU, `float32` on CPU, where bf16 is not faster.

`ModelConfig.dtype` / `param_dtype`, when set, override the policy's compute / storage dtype.
The storage dtype is what parameters are created, loaded and exported in (a converted bf16
checkpoint says `param_dtype='bfloat16'`, so serving it takes half the memory). Training does
not follow it: the trainer keeps fp32 master parameters (`master_dtype`) unless the policy is
`bfloat16`, and the optimizer state (Adam's moments, the clipped gradients, the updates) is fp32
whatever the parameters (training/optimizer.py).
"""

from __future__ import annotations

POLICIES: dict[str, tuple[str, str]] = {  # name -> (param dtype, compute dtype)
    "float32": ("float32", "float32"),
    "mixed_bfloat16": ("float32", "bfloat16"),
    "bfloat16": ("bfloat16", "bfloat16"),
}
PRECISIONS = ("auto", *POLICIES)
ACCELERATED_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")
# The one policy whose trainer updates the stored low-precision parameters in place.
LOW_PRECISION_MASTER_POLICIES = ("bfloat16",)


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


def master_dtype(precision: str, param_dtype: str | None = None,
                 platform: str | None = None) -> str:
  """The dtype the trainer keeps parameters in: 'float32' unless `precision` is 'bfloat16'.

  Under the `bfloat16` policy it is the storage dtype (`param_dtype`, else bf16); any other
  policy trains fp32 master parameters whatever `param_dtype` says.
  """
  if resolve_policy(precision, platform) in LOW_PRECISION_MASTER_POLICIES:
    return param_dtype or policy_dtypes(precision, platform)[0]
  return "float32"
