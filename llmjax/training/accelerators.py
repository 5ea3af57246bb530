"""Peak bf16 FLOP/s of the accelerators JAX reports, keyed on their exact `device_kind`.

One table for MFU (training/metrics.py) and the planner (planning/devices.py). The keys are
the strings `jax.Device.device_kind` really returns, not marketing names: TPU v5p reports
"TPU v5", v5e "TPU v5 lite", v6e (Trillium) "TPU v6 lite", Ironwood "TPU7x"; GPUs report
CUDA's device name ("NVIDIA H100 80GB HBM3" for the SXM part, "NVIDIA H100 PCIe", ...). The
Cloud TPU names ("TPU v5p", "TPU v5e", "TPU v6e") are kept as aliases, as JAX's own Pallas
chip table accepts them. Lookups are exact (case aside): a substring match would price an
H100 PCIe as an SXM part.

Values are dense (no structured sparsity) bf16 matmul peaks of one chip, from the vendors'
datasheets: NVIDIA's H100, H200, A100, B200, L4 and V100 datasheets (their "with sparsity"
figures halved; V100 has no bf16, so its fp16 tensor-core peak) and the Cloud TPU
documentation's "peak compute per chip (bf16)" (v2: 180 TFLOP/s per 4-chip board).

A JAX device is not always a chip: TPU v2, v3 and TPU7x expose each of their two TensorCores
as a device, so a device gets half the chip's peak; v4 and v5p join their two cores into one
device (megacore). A device's own `num_cores` attribute, where it has one, decides.

No jax import here: the planner's device table loads without a backend.
"""

from __future__ import annotations

from typing import Any

PEAK_FLOPS_BF16: dict[str, float] = {
    # Cloud TPU documentation, per chip.
    "TPU v2": 45e12,
    "TPU v3": 123e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "TPU7x": 2307e12,  # Ironwood
    # NVIDIA datasheets, dense.
    "NVIDIA B200": 2250e12,
    "NVIDIA H200": 989e12,  # H200 SXM
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA H100 80GB HBM3": 989e12,  # H100 SXM5
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA L4": 121e12,
    "Tesla V100-SXM2-16GB": 125e12,  # fp16
    "Tesla V100-SXM2-32GB": 125e12,
    "Tesla V100-PCIE-16GB": 112e12,
    "Tesla V100-PCIE-32GB": 112e12,
}
# TensorCores per chip of the TPUs that have two, and whether JAX joins them into one device.
_TENSORCORES = {"TPU v2": 2, "TPU v3": 2, "TPU v4": 2, "TPU v5": 2, "TPU v5p": 2, "TPU7x": 2}
_MEGACORE = ("TPU v4", "TPU v5", "TPU v5p")
_BY_LOWER = {kind.lower(): kind for kind in PEAK_FLOPS_BF16}


def table_kind(device_kind: str) -> str | None:
  """The table's key for a device_kind (exact, case-insensitive), or None."""
  return _BY_LOWER.get(" ".join(device_kind.split()).lower())


def chip_peak_flops_bf16(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of one chip of this kind, or None if the table lacks it."""
  kind = table_kind(device_kind)
  return None if kind is None else PEAK_FLOPS_BF16[kind]


def device_peak_flops_bf16(device: Any) -> float | None:
  """Dense bf16 peak FLOP/s of one JAX device (a chip, or one TensorCore of it), or None.

  Args:
    device: anything with a `device_kind` (a jax.Device); its `num_cores`, when present, is how
      many TensorCores the device spans.
  """
  kind = table_kind(getattr(device, "device_kind", ""))
  if kind is None:
    return None
  cores = _TENSORCORES.get(kind, 1)
  default = cores if kind in _MEGACORE else 1
  spanned = getattr(device, "num_cores", None) or default
  return PEAK_FLOPS_BF16[kind] * min(spanned, cores) / cores
