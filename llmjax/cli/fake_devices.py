"""Fake CPU devices for commands that lay out a mesh without the hardware (plan, shardings)."""

from __future__ import annotations

import os


def use_fake_cpu_devices(count: int) -> None:
  """Makes JAX expose `count` CPU devices (and only CPU), before its backend starts.

  Raises:
    RuntimeError: a JAX backend is already running with a different device count (the count
      can only be set before the first JAX computation in the process).
  """
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
