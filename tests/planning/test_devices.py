"""The device table and its overrides."""

import pytest

from llmjax.planning import devices


def test_vendor_figures():
  h100 = devices.get_device("h100")
  assert (h100.peak_flops("bfloat16"), h100.memory_bytes, h100.memory_bandwidth) == (
      989e12, 80e9, 3.35e12)
  assert h100.peak_flops("float32") < h100.peak_flops("bfloat16")  # TF32 is half the rate.
  assert devices.get_device("tpu-v5p").memory_bytes == 95e9
  assert devices.get_device("a100").peak_flops("bfloat16") == 312e12
  assert h100.usable_bytes == pytest.approx(0.75 * 80e9)  # JAX's GPU preallocation.


def test_overrides_and_cpu_share_of_the_host():
  spec = devices.get_device("h200", memory_gb=1.5, memory_fraction=1.0)
  assert spec.memory_bytes == 1.5e9 and spec.usable_bytes == 1.5e9
  cpu4 = devices.get_device("cpu", num_devices=4)
  cpu1 = devices.get_device("cpu", num_devices=1)
  assert cpu4.platform == "cpu"
  assert cpu4.memory_bytes == pytest.approx(devices.host_memory_bytes() / 4)
  assert cpu4.memory_bandwidth == pytest.approx(30e9 / 4)
  assert cpu4.peak_flops("float32") == pytest.approx(cpu1.peak_flops("float32") / 4)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "v100"}, "valid devices"),
    ({"name": "h100", "memory_gb": 0}, "positive"),
    ({"name": "h100", "memory_fraction": 1.5}, "(0, 1]"),
])
def test_bad_device_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
    devices.get_device(**kwargs)
