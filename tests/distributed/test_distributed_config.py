"""When llmjax joins a multi-process run, and how it refuses bad settings (no processes start)."""

import socket

import pytest

from llmjax import distributed
from llmjax.distributed import DistributedConfig

_CLUSTER_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_STEP_NODELIST",
                 "SLURM_PROCID", "TPU_WORKER_HOSTNAMES", "OMPI_MCA_orte_hnp_uri",
                 "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                 "JAX_PROCESS_ID")


@pytest.fixture
def env(monkeypatch):
  for name in _CLUSTER_VARS:
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


@pytest.mark.parametrize("variables,want", [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "n1",
      "SLURM_PROCID": "0"}, None),  # One task: a plain single process.
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),  # The batch script, outside srun.
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "n[1-4]",
      "SLURM_PROCID": "2"}, "slurm"),
    ({"TPU_WORKER_HOSTNAMES": "t0"}, None),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "cloud_tpu"),
    ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "2"}, "open_mpi"),
])
def test_detect_cluster_only_for_multi_process_jobs(env, variables, want):
  for name, value in variables.items():
    env.setenv(name, value)
  assert distributed.detect_cluster() == want


def test_single_process_by_default(env):
  assert distributed.initialize(DistributedConfig()) is False
  assert distributed.initialize(DistributedConfig(mode="off")) is False


def test_environment_fills_missing_flags(env):
  env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  env.setenv("JAX_NUM_PROCESSES", "4")
  env.setenv("JAX_PROCESS_ID", "3")
  got = distributed.from_env(DistributedConfig())
  assert (got.coordinator_address, got.num_processes, got.process_id) == ("10.0.0.1:1234", 4, 3)
  flags = DistributedConfig(coordinator_address="h:1", num_processes=2, process_id=0)
  assert distributed.from_env(flags) == flags  # Flags win over the environment.


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "sometimes"}, "choose one of"),
    ({"timeout_s": 0}, "positive number of seconds"),
    ({"num_processes": 2, "process_id": 0}, "missing --coordinator_address"),
    ({"coordinator_address": "h:1", "num_processes": 0, "process_id": 0}, "must be >= 1"),
    ({"coordinator_address": "h:99999", "num_processes": 2, "process_id": 0}, "not HOST:PORT"),
])
def test_bad_settings(kwargs, message):
  with pytest.raises(ValueError, match=message):
    DistributedConfig(**kwargs)


def test_wait_for_coordinator_times_out_with_the_fix():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # Bound but not listening: connections are refused.
    with pytest.raises(ConnectionError, match="start process 0"):
      distributed.wait_for_coordinator(f"127.0.0.1:{port}", 1.0)


def test_wait_for_coordinator_returns_once_it_listens():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    s.listen()
    distributed.wait_for_coordinator(f"127.0.0.1:{s.getsockname()[1]}", 5.0)


def test_process_zero_refuses_a_port_in_use():
  with socket.socket() as s:
    s.bind(("", 0))
    s.listen()
    with pytest.raises(ConnectionError, match="pick a free port"):
      distributed.check_port_free(f"127.0.0.1:{s.getsockname()[1]}")


def test_batch_not_divisible_by_processes_is_refused_before_compiling(monkeypatch):
  import jax

  from llmjax.models.config import ModelConfig
  from llmjax.sharding.mesh import make_mesh
  from llmjax.training.config import TrainConfig
  from llmjax.training.validation import validate

  model = ModelConfig(vocab_size=64, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                      max_seq_len=16)
  train = TrainConfig(batch_size=8, seq_len=16, train_steps=10, warmup_steps=1)
  mesh = make_mesh({"data": 8})
  validate(model, train, mesh)  # One process: fine.
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match=r"batch_size=8 must be divisible by the number of "
                     r"processes \(3\)"):
    validate(model, train, mesh)


def test_seq_len_not_divisible_by_the_sequence_axis_is_refused():
  from llmjax.models.config import ModelConfig
  from llmjax.sharding.mesh import make_mesh
  from llmjax.training.config import TrainConfig
  from llmjax.training.validation import validate

  model = ModelConfig(vocab_size=64, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                      max_seq_len=16)
  train = TrainConfig(batch_size=8, seq_len=10, train_steps=10, warmup_steps=1)
  with pytest.raises(ValueError, match="pick seq_len as a multiple of 4"):
    validate(model, train, make_mesh({"data": 2, "sequence": 4}))
