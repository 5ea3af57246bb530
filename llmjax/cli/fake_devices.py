"""Fake CPU devices for commands that lay out a mesh without the hardware (plan, shardings)."""

from __future__ import annotations

import os

# The most fake devices a command builds. Each is a real XLA CPU device with its own host
# state, and the cost grows faster than linearly. Measured on the 2-core reference machine:
# 4,096 devices start in ~8 s (650 MB), a plan on 8,192 takes ~30 s (1.1 GB), 16,384 start in
# ~22 s but the process then takes over 10 minutes to shut down, and 1,000,000 run for minutes
# and use 12 GB. 8,192 covers a TPU v5p pod slice of 8,192 chips and 1,024 8-GPU nodes.
MAX_FAKE_DEVICES = 8192


def check_fake_device_count(count: int, flag: str) -> None:
  """Raises ValueError, naming `flag` (e.g. "--mesh=fsdp:1000000"), if `count` is too many.

  Called before any device is built, so an absurd mesh costs nothing.
  """
  if count > MAX_FAKE_DEVICES:
    raise ValueError(
        f"{flag} needs {count:,} devices; at most {MAX_FAKE_DEVICES:,} can be faked on this "
        f"host (each is a CPU device with its own memory; {2 * MAX_FAKE_DEVICES:,} take minutes "
        f"to start and stop): use a mesh of at most {MAX_FAKE_DEVICES:,} devices, e.g. shrink "
        "the data axis and the batch with it (no rule set splits parameters over data, so "
        "per-device memory does not depend on its size).")


def use_fake_cpu_devices(count: int) -> None:
  """Makes JAX expose `count` CPU devices (and only CPU), before its backend starts.

  Raises:
    ValueError: count > MAX_FAKE_DEVICES.
    RuntimeError: a JAX backend is already running with a different device count (the count
      can only be set before the first JAX computation in the process).
  """
  check_fake_device_count(count, "the mesh")
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  from jax._src import xla_bridge  # The only way to ask whether a backend exists yet.

  if xla_bridge.backends_are_initialized():
    if jax.device_count() != count:
      raise RuntimeError(
          f"JAX already started with {jax.device_count()} devices; {count} fake devices must "
          "be requested before the first JAX computation (run the command in a new process).")
    return
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", count)
