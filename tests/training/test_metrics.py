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


class FakeDevice:
  """What device_peak_flops reads of a jax.Device."""

  def __init__(self, device_kind: str, platform: str = "gpu", num_cores: int | None = None):
    self.device_kind, self.platform = device_kind, platform
    if num_cores is not None:
      self.num_cores = num_cores


# The device_kind strings JAX devices really report, with the vendors' dense bf16 datasheet peak
# of one device (TPU v2/v3/TPU7x: one of the chip's two TensorCores; v4/v5p: megacore chips).
REPORTED_KINDS = [
    ("TPU v2", 45e12 / 2), ("TPU v3", 123e12 / 2), ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5", 459e12),  # v5p
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU7x", 2307e12 / 2),  # Ironwood
    ("NVIDIA H100 80GB HBM3", 989e12),  # SXM5
    ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA B200", 2250e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100-SXM4-40GB", 312e12),
    ("NVIDIA A100-PCIE-40GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("Tesla V100-SXM2-16GB", 125e12),  # fp16: no bf16 on V100
]


@pytest.mark.parametrize("kind, peak", REPORTED_KINDS)
def test_peak_flops_by_the_device_kind_jax_reports(kind, peak):
  platform = "tpu" if kind.startswith("TPU") else "gpu"
  assert metrics_lib.device_peak_flops(FakeDevice(kind, platform)) == pytest.approx(peak)


def test_peak_flops_follows_the_cores_a_tpu_device_spans():
  # A device's num_cores overrides the default split (e.g. v5p run one device per core).
  assert metrics_lib.device_peak_flops(FakeDevice("TPU v5", "tpu", 1)) == 459e12 / 2
  assert metrics_lib.device_peak_flops(FakeDevice("TPU7x", "tpu", 2)) == 2307e12
  assert metrics_lib.device_peak_flops(FakeDevice("TPU v5 lite", "tpu", 1)) == 197e12


def test_unknown_accelerator_warns_and_measures_and_cpu_is_measured():
  with pytest.warns(UserWarning, match="no peak FLOP/s for device_kind 'NVIDIA H100 Future'"):
    measured = metrics_lib.device_peak_flops(FakeDevice("NVIDIA H100 Future"))
  assert measured != 989e12  # No substring match onto another part.
  cpu = metrics_lib.device_peak_flops()
  assert 1e8 < cpu < 1e13
  assert metrics_lib.device_peak_flops() == cpu  # Cached per process.


def test_planner_devices_use_the_same_table():
  from llmjax.planning import devices

  for name, kind in devices.DEVICE_KINDS.items():
    assert devices.get_device(name).peak_flops("bfloat16") == metrics_lib.PEAK_FLOPS_BF16[kind]
  assert devices.get_device("tpu-v5p").peak_flops("bfloat16") == metrics_lib.device_peak_flops(
      FakeDevice("TPU v5", "tpu"))


def test_mfu_arithmetic():
  assert metrics_lib.mfu(1000.0, 6e6, num_devices=2, peak_flops=1e10) == pytest.approx(0.3)


def test_count_tokens_counts_document_tokens_not_padding():
  rng = np.random.default_rng(0)
  # Packed causal LM / MLM rows: two documents, then padding (segment 0) of random length.
  seg = np.where(np.arange(16)[None] < rng.integers(3, 17, (8, 1)), 1, 0).astype(np.int32)
  seg[:, 2:5] *= 2
  lm = {"inputs": rng.integers(4, 64, (8, 16)), "segment_ids": seg,
        "weights": (rng.random((8, 16)) < 0.15).astype(np.float32)}  # MLM: weights don't count.
  want = int(np.count_nonzero(seg))
  assert want < seg.size and float(metrics_lib.count_tokens(lm)) == want
  # Classifier rows: text then padding; the last two rows are all padding (weights 0).
  cls = {"inputs": lm["inputs"], "segment_ids": seg.copy(), "labels": np.zeros(8, np.int32),
         "weights": np.r_[np.ones(6), np.zeros(2)].astype(np.float32)}
  cls["segment_ids"][6:] = 0
  assert float(metrics_lib.count_tokens(cls)) == np.count_nonzero(seg[:6])
  # Encoder-decoder: both sides' real tokens.
  enc_seg = np.where(np.arange(24)[None] < rng.integers(1, 25, (8, 1)), 1, 0).astype(np.int32)
  encdec = lm | {"encoder_inputs": np.zeros((8, 24), np.int32), "encoder_segment_ids": enc_seg}
  assert float(metrics_lib.count_tokens(encdec)) == want + np.count_nonzero(enc_seg)
  # No segment ids: every position is a token.
  assert float(metrics_lib.count_tokens({"inputs": lm["inputs"]})) == 8 * 16
