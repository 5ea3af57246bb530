"""The accelerators the planner knows: peak FLOP/s, memory, memory and interconnect bandwidth.

Figures are the vendors' datasheet numbers for one chip, dense (no structured sparsity):
- H100 SXM5 80 GB (NVIDIA H100 Tensor Core GPU datasheet): 989 TFLOP/s bf16, 495 TFLOP/s TF32,
  80 GB HBM3 at 3.35 TB/s, NVLink 4 at 900 GB/s bidirectional (450 GB/s each way).
- H200 SXM 141 GB (NVIDIA H200 datasheet): the H100's compute, 141 GB HBM3e at 4.8 TB/s,
  NVLink 900 GB/s.
- A100 SXM4 80 GB (NVIDIA A100 datasheet): 312 TFLOP/s bf16, 156 TFLOP/s TF32, 80 GB HBM2e at
  2,039 GB/s, NVLink 3 at 600 GB/s bidirectional.
- TPU v5p (Google Cloud TPU v5p documentation): 459 TFLOP/s bf16, 95 GB HBM2e at 2,765 GB/s,
  4,800 Gbps (600 GB/s) of inter-chip interconnect per chip.
- cpu: this host. Peak = `llmjax.training.metrics.device_peak_flops()` (a timed fp32 matmul),
  memory = physical RAM (os.sysconf), bandwidth about 30 GB/s (a measured memory copy on the
  2-core reference machine, /work/shared/STACK.md); fake devices share all three, so each of n
  devices gets 1/n.

The bf16 peaks are those of `llmjax.training.accelerators.PEAK_FLOPS_BF16` (the table MFU is
computed with), under the device_kind each chip reports (`DEVICE_KINDS`).

The fp32 peak is what float32 matmuls reach: on A100/H100/H200 XLA's default matmul precision
runs them as TF32 on tensor cores; on TPU they run as bf16 passes at the bf16 rate.

`memory_fraction` is how much of the memory a JAX process may use: JAX preallocates 75% of a
GPU's memory by default (XLA_PYTHON_CLIENT_MEM_FRACTION raises it), so GPU plans are held to
0.75; on TPU and CPU 0.9 leaves room for the runtime and fragmentation.

Sizes are decimal (1 GB = 1e9 bytes), as the datasheets state them.
"""

from __future__ import annotations

import dataclasses
import math
import os

from llmjax.training.accelerators import PEAK_FLOPS_BF16

GB = 1e9


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  """One accelerator chip as the planner models it.

  Attributes:
    name: the --device name.
    platform: 'gpu', 'tpu' or 'cpu' (precision policy and remat support are resolved for it).
    peak_flops_bf16: dense bf16 (and fp16) FLOP/s.
    peak_flops_fp32: FLOP/s of float32 matmuls (TF32 on GPUs).
    memory_bytes: device memory.
    memory_bandwidth: bytes/s between device memory and the chip.
    interconnect_bandwidth: bytes/s one chip sends (or receives) to its peers in collectives.
    memory_fraction: share of memory_bytes a plan may use (see the module docstring).
  """

  name: str
  platform: str
  peak_flops_bf16: float
  peak_flops_fp32: float
  memory_bytes: float
  memory_bandwidth: float
  interconnect_bandwidth: float
  memory_fraction: float = 0.9

  def peak_flops(self, compute_dtype: str) -> float:
    """Peak FLOP/s for matmuls in `compute_dtype` ('bfloat16', 'float16' or 'float32')."""
    return self.peak_flops_fp32 if compute_dtype == "float32" else self.peak_flops_bf16

  @property
  def usable_bytes(self) -> float:
    return self.memory_bytes * self.memory_fraction


# The bf16 peaks come from the table MFU uses, by the device_kind each chip reports.
DEVICE_KINDS = {"h100": "NVIDIA H100 80GB HBM3", "h200": "NVIDIA H200",
                "a100": "NVIDIA A100-SXM4-80GB", "tpu-v5p": "TPU v5"}
_BF16 = {name: PEAK_FLOPS_BF16[kind] for name, kind in DEVICE_KINDS.items()}
DEVICES: dict[str, DeviceSpec] = {
    "h100": DeviceSpec("h100", "gpu", _BF16["h100"], 495e12, 80 * GB, 3.35e12, 450e9, 0.75),
    "h200": DeviceSpec("h200", "gpu", _BF16["h200"], 495e12, 141 * GB, 4.8e12, 450e9, 0.75),
    "a100": DeviceSpec("a100", "gpu", _BF16["a100"], 156e12, 80 * GB, 2.039e12, 300e9, 0.75),
    "tpu-v5p": DeviceSpec("tpu-v5p", "tpu", _BF16["tpu-v5p"], _BF16["tpu-v5p"], 95 * GB,
                          2.765e12, 600e9, 0.9),
}
CPU = "cpu"
DEVICE_NAMES = (*DEVICES, CPU)
CPU_MEMORY_BANDWIDTH = 30e9  # Measured memory copy on the reference machine (STACK.md).


def host_memory_bytes() -> float:
  """Physical RAM of this host."""
  return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_device_name(name: str) -> None:
  """Raises ValueError naming the valid devices if `name` is not one."""
  if name not in DEVICE_NAMES:
    raise ValueError(f"unknown --device {name!r}; valid devices: {', '.join(DEVICE_NAMES)} "
                     "(use --device_memory_gb to model another memory size).")


def check_device_args(name: str, *, memory_gb: float | None = None,
                      memory_fraction: float | None = None) -> None:
  """Raises ValueError naming the flag unless `name` is a known device and the overrides are
  finite and in range (NaN would compare false everywhere and pass as 'fits')."""
  check_device_name(name)
  if memory_gb is not None and not (math.isfinite(memory_gb) and memory_gb > 0):
    raise ValueError(f"--device_memory_gb must be a finite positive number (GB = 1e9 bytes), got "
                     f"{memory_gb}.")
  if memory_fraction is not None and not 0 < memory_fraction <= 1:  # Also rejects NaN.
    raise ValueError(f"--memory_fraction must be in (0, 1], got {memory_fraction}.")


def get_device(name: str, *, num_devices: int = 1, memory_gb: float | None = None,
               memory_fraction: float | None = None) -> DeviceSpec:
  """The DeviceSpec for `name`, with optional overrides.

  Args:
    name: one of DEVICE_NAMES.
    num_devices: devices in the mesh; only 'cpu' uses it (fake devices share the host).
    memory_gb: replaces the device's memory (GB = 1e9 bytes).
    memory_fraction: replaces the usable share of memory.

  Raises:
    ValueError: unknown name, or a non-positive override.
  """
  check_device_args(name, memory_gb=memory_gb, memory_fraction=memory_fraction)
  if name == CPU:
    spec = _cpu_spec(num_devices)
  else:
    spec = DEVICES[name]
  if memory_gb is not None:
    spec = dataclasses.replace(spec, memory_bytes=memory_gb * GB)
  if memory_fraction is not None:
    spec = dataclasses.replace(spec, memory_fraction=memory_fraction)
  return spec


def _cpu_spec(num_devices: int) -> DeviceSpec:
  import jax

  from llmjax.training.metrics import device_peak_flops

  # device_peak_flops() splits the measured rate over this process's local devices; the plan's
  # mesh may use fewer of them (in-process tests), so split it over the mesh instead.
  host_peak = device_peak_flops(jax.local_devices()[0]) * jax.local_device_count()
  n = max(1, num_devices)
  return DeviceSpec(CPU, "cpu", host_peak / n, host_peak / n, host_memory_bytes() / n,
                    CPU_MEMORY_BANDWIDTH / n, CPU_MEMORY_BANDWIDTH / n, 0.9)
