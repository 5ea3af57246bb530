"""Metrics: JSONL lines, TensorBoard events, peak FLOPs table and MFU arithmetic."""

import json
import os

import jax
import numpy as np
import pytest

from llmjax.training import metrics as metrics_lib


def test_writer_appends_jsonl_and_tensorboard(tmp_path):
  with metrics_lib.MetricsWriter(str(tmp_path)) as writer:
    writer.write(1, {"loss": np.float32(2.5), "learning_rate": jax.numpy.asarray(1e-3)})
    writer.write(2, {"eval_loss": 1.25, "note": "x"})
  with metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False) as writer:
    writer.write(3, {"loss": 1.0})  # Appends: a resumed run continues the same file.
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines] == [1, 2, 3]
  assert lines[0]["loss"] == 2.5 and lines[0]["learning_rate"] == pytest.approx(1e-3)
  assert lines[1] == {"step": 2, "eval_loss": 1.25, "note": "x"}
  assert any(name.startswith("events") for name in os.listdir(tmp_path / "tensorboard"))


def test_peak_flops_table_and_cpu_measurement():
  class FakeDevice:
    platform = "gpu"
    device_kind = "NVIDIA H100 80GB HBM3"

  assert metrics_lib.device_peak_flops(FakeDevice()) == 989e12
  FakeDevice.device_kind = "TPU v5 lite"
  assert metrics_lib.device_peak_flops(FakeDevice()) == 197e12
  cpu = metrics_lib.device_peak_flops()
  assert 1e8 < cpu < 1e13
  assert metrics_lib.device_peak_flops() == cpu  # Cached per process.


def test_mfu_arithmetic():
  assert metrics_lib.mfu(1000.0, 6e6, num_devices=2, peak_flops=1e10) == pytest.approx(0.3)
