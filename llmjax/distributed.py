"""Multi-process runs: `jax.distributed.initialize` from flags, the environment, or the cluster.

llmjax has no cluster code of its own: every process runs the same `llmjax train`, and JAX's
multi-controller runtime connects them. `initialize` decides whether this process is one of
many and how they meet, in this order:

1. explicit settings (`--coordinator_address --num_processes --process_id`, or the environment
   variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID);
2. a cluster JAX detects by itself: a SLURM step with more than one task, a multi-worker Cloud
   TPU slice (TPU_WORKER_HOSTNAMES), an Open MPI job (`mpirun`);
3. otherwise a single process.

Unreachable coordinators are caught here with a clear error: JAX itself aborts the whole
process (a C++ fatal error, no Python exception) when its connection attempt times out.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time

MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
  """How this process joins a multi-process run.

  Attributes:
    mode: 'auto' (initialize when settings or a cluster are found), 'on' (always initialize;
      JAX must find the settings itself if none are given), 'off' (single process).
    coordinator_address: HOST:PORT of process 0's coordinator service.
    num_processes: processes in the run.
    process_id: this process's index in [0, num_processes).
    local_device_ids: the local devices this process uses (None = all).
    timeout_s: how long to wait for the coordinator / the other processes.
  """

  mode: str = "auto"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  timeout_s: int = 300

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"--distributed={self.mode!r}; choose one of {MODES}.")
    if self.timeout_s <= 0:
      raise ValueError(f"--distributed_timeout={self.timeout_s} must be a positive number of "
                       "seconds.")
    given = {"--coordinator_address": self.coordinator_address,
             "--num_processes": self.num_processes, "--process_id": self.process_id}
    if any(v is not None for v in given.values()):
      missing = [k for k, v in given.items() if v is None]
      if missing:
        raise ValueError(f"a multi-process run needs {', '.join(given)} together; missing "
                         f"{', '.join(missing)} (or set JAX_COORDINATOR_ADDRESS, "
                         "JAX_NUM_PROCESSES, JAX_PROCESS_ID).")
      if self.num_processes < 1:
        raise ValueError(f"--num_processes={self.num_processes} must be >= 1.")
      if not 0 <= self.process_id < self.num_processes:
        raise ValueError(f"--process_id={self.process_id} must be in [0, "
                         f"{self.num_processes}) for --num_processes={self.num_processes}.")
      _split_address(self.coordinator_address)

  @property
  def explicit(self) -> bool:
    return self.coordinator_address is not None


def _split_address(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"--coordinator_address={address!r} is not HOST:PORT (e.g. "
                     "10.0.0.1:1234, or 127.0.0.1:1234 for processes on one machine).")
  return host.strip("[]"), int(port)


def from_env(config: DistributedConfig) -> DistributedConfig:
  """Fills settings the flags left out from JAX_COORDINATOR_ADDRESS/NUM_PROCESSES/PROCESS_ID."""
  if config.explicit or config.mode == "off":
    return config
  env = os.environ
  if "JAX_COORDINATOR_ADDRESS" not in env or "JAX_NUM_PROCESSES" not in env:
    return config
  try:
    num, pid = int(env["JAX_NUM_PROCESSES"]), int(env.get("JAX_PROCESS_ID", "-1"))
  except ValueError as e:
    raise ValueError(f"JAX_NUM_PROCESSES / JAX_PROCESS_ID must be integers: {e}") from None
  return dataclasses.replace(config, coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                             num_processes=num, process_id=pid)


def detect_cluster() -> str | None:
  """The multi-process cluster JAX can bootstrap from on its own, or None.

  Only environments that mean "more than one process" count, so a single-task SLURM job or a
  one-worker TPU VM runs as a plain single process.
  """
  env = os.environ
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))) > 1:
    if "SLURM_STEP_NODELIST" in env and "SLURM_PROCID" in env:  # Inside `srun`.
      return "slurm"
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "cloud_tpu"
  if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "open_mpi"
  return None


def wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Blocks until something accepts TCP connections at `address`.

  Raises:
    ConnectionError: nothing listened there within `timeout_s` seconds.
  """
  host, port = _split_address(address)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ConnectionError(
            f"could not reach the coordinator at {address} within {timeout_s:g} s ({e}): start "
            "process 0 (it hosts the coordinator), check the address and port are right and "
            "reachable from this host, or raise --distributed_timeout.") from None
      time.sleep(0.5)


def check_host_resolves(address: str) -> None:
  """Raises ConnectionError if the coordinator's host name does not resolve.

  JAX itself would retry until --distributed_timeout and then abort the process (a C++ fatal
  error with a stack trace, no Python exception).
  """
  host, _ = _split_address(address)
  try:
    socket.getaddrinfo(host, None)
  except OSError as e:
    raise ConnectionError(
        f"--coordinator_address={address}: the host {host!r} does not resolve ({e}): give "
        "process 0's host name or IP address, one every process can resolve (127.0.0.1 for "
        "processes on one machine).") from None


def check_port_free(address: str) -> None:
  """Raises ConnectionError if process 0 cannot listen on the coordinator's port."""
  _, port = _split_address(address)
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    try:
      s.bind(("", port))
    except OSError as e:
      raise ConnectionError(
          f"process 0 cannot host the coordinator on port {port} ({e}): another run (or a "
          "stale process) holds it; pick a free port in --coordinator_address.") from None


def initialize(config: DistributedConfig) -> bool:
  """Joins the multi-process run `config` describes; returns whether JAX was initialized.

  Must run before anything touches a JAX device.

  Raises:
    ValueError: inconsistent settings.
    ConnectionError: the coordinator could not be reached (or its host does not resolve, or
      its port is taken).
  """
  import jax

  config = from_env(config)
  if config.mode == "off":
    return False
  cluster = detect_cluster()
  if config.mode == "auto" and not config.explicit and cluster is None:
    return False
  kwargs = {"initialization_timeout": int(config.timeout_s)}
  if config.local_device_ids is not None:
    kwargs["local_device_ids"] = list(config.local_device_ids)
  if config.explicit:
    kwargs.update(coordinator_address=config.coordinator_address,
                  num_processes=config.num_processes, process_id=config.process_id)
    if config.process_id == 0:
      check_host_resolves(config.coordinator_address)
      check_port_free(config.coordinator_address)
      print(f"llmjax: process 0 of {config.num_processes}: coordinator on "
            f"{config.coordinator_address}; waiting up to {config.timeout_s} s for the others "
            "(if they never come, JAX aborts with DEADLINE_EXCEEDED).", file=sys.stderr)
    else:
      wait_for_coordinator(config.coordinator_address, config.timeout_s)
  jax.distributed.initialize(**kwargs)
  return True


def shutdown() -> None:
  """Leaves the multi-process run (a barrier: every process reaches the end together)."""
  import jax

  if jax.process_count() > 1:
    jax.distributed.shutdown()
