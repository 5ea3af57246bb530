"""Training metrics: JSONL + TensorBoard writing, and FLOPs / MFU accounting.

`MetricsWriter` appends one JSON object per line to DIR/metrics.jsonl and mirrors the numbers
to TensorBoard event files in DIR/tensorboard; only process 0 writes. The lines are strict
JSON: a NaN or infinite value is written as null (and left out of TensorBoard). MFU is
`tokens_per_sec * flops_per_token / (peak_flops_per_device * num_devices)`, with the peak
looked up by `device_kind` on accelerators and measured (a timed fp32 matmul) on CPU; both
count only the tokens of documents, never padding (`count_tokens`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax import workdir as workdir_lib
from llmjax.training import accelerators

# Dense bf16 peaks keyed on the exact device_kind JAX reports (shared with the planner). fp32
# peaks on GPUs are far lower (H100 SXM: ~67e12 fp32, ~495e12 tf32), so fp32 runs show a low MFU.
PEAK_FLOPS_BF16 = accelerators.PEAK_FLOPS_BF16


class MetricsWriter:
  """Appends metric dicts to metrics.jsonl and TensorBoard (process 0 only).

  Args:
    workdir: the run directory.
    tensorboard: also write TensorBoard event files to DIR/tensorboard.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = workdir_lib.metrics_path(workdir)
    self._file = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close()).
    if tensorboard:
      from tensorboardX import SummaryWriter  # Imported lazily: it is slow to import.
      self._tb = SummaryWriter(workdir_lib.tensorboard_dir(workdir))

  def drop_after(self, step: int) -> None:
    """Removes lines logged after `step`: a resumed run recomputes them from its checkpoint.

    (A run killed after its last checkpoint has logged steps it will redo; without this they
    would appear twice.) TensorBoard event files are left alone.
    """
    if not self.enabled:
      return
    self._file.close()
    with open(self.path, encoding="utf-8") as f:
      lines = f.readlines()
    kept = [line for line in lines if _line_step(line) <= step]
    if len(kept) != len(lines):
      tmp = self.path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
      os.replace(tmp, self.path)
    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Writes one line {"step": step, **metrics}; returns the plain-Python record."""
    record = {"step": int(step)}
    for key, value in metrics.items():
      record[key] = _to_python(value)
    if not self.enabled:
      return record
    self._file.write(json.dumps(record, allow_nan=False) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, int | float):
          self._tb.add_scalar(key, value, int(step))
      self._tb.flush()
    return record

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _line_step(line: str) -> int:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return sys.maxsize  # A line torn by a kill: dropped, or the next line would be glued on.


def _to_python(value: Any) -> Any:
  if isinstance(value, jax.Array | np.ndarray | np.generic):
    value = np.asarray(value)
    value = value.item() if value.size == 1 else value.tolist()
  if isinstance(value, list):
    return [_to_python(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None  # Bare NaN/Infinity is not JSON: strict parsers reject the whole file.
  return value


@functools.cache
def _measured_cpu_flops(n: int = 1024, seconds: float = 0.5) -> float:
  """fp32 matmul FLOP/s of one CPU device, timed once per process."""
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()  # Compile outside the timing.
  runs, start = 0, time.perf_counter()
  while True:
    f(a).block_until_ready()
    runs += 1
    elapsed = time.perf_counter() - start
    if elapsed >= seconds:
      break
  return 2.0 * n**3 * runs / elapsed


def device_peak_flops(device: jax.Device | None = None) -> float:
  """Peak dense FLOP/s of one device: the bf16 datasheet peak by exact device_kind
  (training/accelerators.py), or measured on CPU.

  On CPU the fake devices of one host share its cores, so the measured single-device rate is
  divided among the local devices (MFU = achieved / (peak_per_device * num_devices)).
  An accelerator missing from the table falls back to that measurement, with a warning: its
  MFU is then relative to a timed fp32 matmul, not to the chip's peak.
  """
  device = device or jax.devices()[0]
  peak = accelerators.device_peak_flops_bf16(device)
  if peak is not None:
    return peak
  rate = _measured_cpu_flops()
  if device.platform == "cpu":
    return rate / max(1, jax.local_device_count())
  _warn_unknown_kind(device.device_kind)
  return rate


@functools.cache
def _warn_unknown_kind(kind: str) -> None:
  warnings.warn(f"llmjax: no peak FLOP/s for device_kind {kind!r}; MFU is computed against a "
                "timed fp32 matmul. Add its datasheet bf16 peak to "
                "llmjax/training/accelerators.py.", stacklevel=3)


def count_tokens(batch: Mapping[str, Any]) -> jax.Array:
  """The tokens of a training batch that `tokens_per_sec` and `mfu` count: padding excluded.

  A token is a position that holds part of a document, i.e. segment id > 0: packed causal LM
  and MLM rows (the padding after the last document is segment 0), classifier rows (the
  padding after the text and every all-padding row of a short last batch are segment 0; so
  a classifier's tokens are its rows' text tokens, not its labels) and both sides of an
  encoder-decoder batch (`segment_ids` and `encoder_segment_ids`: `flops_per_token` spreads an
  example's FLOPs over its encoder and decoder tokens alike). Masking does not matter: an MLM
  position with weight 0 is still read. A batch without segment ids counts every position of
  its inputs.

  Returns:
    A float32 scalar (a count; float so that it sums across steps without overflow).
  """
  total = jnp.zeros((), jnp.float32)
  for ids, tokens in (("segment_ids", "inputs"), ("encoder_segment_ids", "encoder_inputs")):
    if ids in batch:
      total += jnp.sum(jnp.asarray(batch[ids]) > 0, dtype=jnp.float32)
    elif tokens in batch:
      total += jnp.float32(np.size(batch[tokens]))
  return total


def mfu(tokens_per_sec: float, flops_per_token: float, num_devices: int | None = None,
        peak_flops: float | None = None) -> float:
  """Model FLOPs utilization: achieved model FLOP/s over the devices' peak (tokens_per_sec
  counting non-padding tokens, `count_tokens`)."""
  num_devices = num_devices or jax.device_count()
  peak = peak_flops if peak_flops is not None else device_peak_flops()
  return tokens_per_sec * flops_per_token / (peak * num_devices)
