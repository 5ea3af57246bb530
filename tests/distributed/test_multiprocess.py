"""Real multi-process training on localhost: `llmjax train` in 2 (and 4) processes joined by
`jax.distributed` (gloo collectives on CPU) against one process with the same global mesh.

The global batch is made of 2 data streams in every run (DataConfig.shards=2), so the batch
sequence is the same whether 1, 2 or 4 processes build it; the losses and the final parameters
must then match the single-process run, and checkpoints must move between process counts.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import llmjax

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CODE = "def add(a, b):\n\treturn a + b\n\n\nclass Point:\n    x: int = 0\n"
DEVICES = 4  # Global devices in every run: mesh data:2 x fsdp:2.
_FLAGS = ["--gin_file=gin_configs/runs/quickstart.gin", "--gin.TOKENIZER='byte'",
          "--gin.VOCAB_SIZE=260", "--gin.WARMUP_STEPS=1", "--gin.BATCH_SIZE=8",
          "--gin.SEQ_LEN=32", "--gin.MAX_SEQ_LEN=64", "--gin.ModelConfig.num_layers=1",
          "--gin.ModelConfig.embed_dim=32", "--gin.ModelConfig.mlp_dim=64",
          "--gin.ModelConfig.num_heads=2", "--gin.ModelConfig.num_kv_heads=1",
          "--gin.TrainConfig.log_every=1", "--gin.CHECKPOINT_EVERY=4", "--gin.EVAL_EVERY=4",
          "--gin.TrainConfig.eval_batches=1", "--gin.DataConfig.shards=2",
          "--gin.TrainConfig.async_checkpointing=False",
          "--gin.MeshConfig.shape={'data': 2, 'fsdp': 2, 'tensor': 1}"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(local_devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def run_train(workdir: str, corpus: str, steps: int, processes: int, *extra: str,
              timeout: float = 240) -> list[subprocess.CompletedProcess]:
  """`llmjax train` in `processes` processes sharing DEVICES devices; returns their results."""
  flags = [*_FLAGS, f"--workdir={workdir}", f"--gin.TRAIN_STEPS={steps}",
           f"--gin.TEXT_FILES='{corpus}/*.py'", f"--gin.DataConfig.cache_dir='{corpus}/cache'",
           *extra]
  cmd = [sys.executable, "-m", "llmjax.cli", "train", *flags]
  if processes == 1:
    procs = [subprocess.Popen(cmd, cwd=REPO, env=_env(DEVICES), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)]
  else:
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(
        [*cmd, f"--coordinator_address={address}", f"--num_processes={processes}",
         f"--process_id={i}"], cwd=REPO, env=_env(DEVICES // processes),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
  results = []
  for p in procs:
    out, err = p.communicate(timeout=timeout)
    results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
  for r in results:
    assert r.returncode == 0, r.stderr[-3000:]
  return results


def losses(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def final_params(workdir: str) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(llmjax.load(workdir).params)]


def assert_same_run(workdir: str, reference: str) -> None:
  got, want = losses(workdir), losses(reference)
  assert sorted(got) == sorted(want)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=1e-5)
  for a, b in zip(final_params(workdir), final_params(reference), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
  directory = tmp_path_factory.mktemp("mp_corpus")
  for i in range(12):
    (directory / f"doc{i}.py").write_text(_CODE * (i + 2) + f"# file {i}\n", encoding="utf-8")
  return str(directory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> str:
  """One process, 4 devices, 8 steps: the run every multi-process variant must reproduce."""
  workdir = str(tmp_path_factory.mktemp("mp_reference"))
  run_train(workdir, corpus, 8, 1)
  return workdir


def test_two_processes_equal_one(tmp_path, corpus, reference):
  workdir = str(tmp_path / "two")
  results = run_train(workdir, corpus, 8, 2)
  assert_same_run(workdir, reference)
  # Progress and log lines come from process 0 only.
  assert "train:" in results[0].stderr and "train:" not in results[1].stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]


@pytest.mark.slow
def test_four_processes_equal_one(tmp_path, corpus, reference):
  workdir = str(tmp_path / "four")
  run_train(workdir, corpus, 8, 4)
  assert_same_run(workdir, reference)


@pytest.mark.slow
@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_checkpoint_moves_between_process_counts(tmp_path, corpus, reference, first, then):
  workdir = str(tmp_path / f"{first}to{then}")
  run_train(workdir, corpus, 8, first)
  # Forget the last checkpoint (as if the run had died after step 4), then resume from step 4
  # with the other process count; its steps 5-8 must be the uninterrupted run's.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
  results = run_train(workdir, corpus, 8, then)
  assert "train:" in results[0].stderr
  assert_same_run(workdir, reference)


def test_unreachable_coordinator_is_a_clear_error_within_the_timeout(tmp_path):
  start = time.monotonic()
  result = subprocess.run(
      [sys.executable, "-m", "llmjax.cli", "train", "--gin_file=gin_configs/runs/quickstart.gin",
       f"--workdir={tmp_path}", f"--coordinator_address=127.0.0.1:{_free_port()}",
       "--num_processes=2", "--process_id=1", "--distributed_timeout=3"],
      cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "could not reach the coordinator" in result.stderr
  assert "start process 0" in result.stderr
  assert time.monotonic() - start < 60
  assert not os.listdir(tmp_path)  # Nothing written.


@pytest.mark.parametrize("flags,message", [
    (["--coordinator_address=127.0.0.1:1234"], "missing --num_processes, --process_id"),
    (["--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2"],
     "must be in [0, 2)"),
    (["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"],
     "is not HOST:PORT"),
])
def test_inconsistent_flags_are_rejected_before_connecting(tmp_path, flags, message, capsys):
  from llmjax.cli import main

  code = main(["train", "--gin_file=gin_configs/runs/quickstart.gin", f"--workdir={tmp_path}",
               *flags])
  assert code == 2
  assert message in capsys.readouterr().err
