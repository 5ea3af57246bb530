"""Torn writes: `llmjax train` killed with SIGKILL while it writes a checkpoint (async and
synchronous saves, seeded moments), then rerun, never picks up a partial checkpoint and ends
bit-identical to a run that was never interrupted.

Each chain is one workdir whose run is killed KILLS times in a row (each rerun resumes and is
killed again) and then run to the end: every kill is followed by a resume, and a resume from a
wrong state would change the chain's final bits. After every kill: every step Orbax lists is
intact (its manifest) and bit-identical to the uninterrupted run's checkpoint of that step, and
the next run starts exactly at the newest of them (its progress bar's first position).
"""

import concurrent.futures
import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from llmjax import workdir as workdir_lib
from tests.distributed.test_multiprocess import REPO, _env
from tests.training.test_corrupt_checkpoints import saved_data_iter, saved_state

STEPS = 32
CHAINS = ({"seed": 0, "async": True, "every": 1}, {"seed": 1, "async": False, "every": 2})
KILLS = 6  # Per chain: 12 faults in all.
_CODE = "def add(a, b):\n\treturn a + b\n\n\nclass Point:\n    x: int = 0\n"
_FLAGS = ["--gin_file=gin_configs/runs/quickstart.gin", "--gin.TOKENIZER='byte'",
          "--gin.VOCAB_SIZE=260", f"--gin.TRAIN_STEPS={STEPS}", "--gin.WARMUP_STEPS=1",
          "--gin.BATCH_SIZE=8", "--gin.SEQ_LEN=32", "--gin.MAX_SEQ_LEN=64",
          "--gin.EVAL_EVERY=1000", "--gin.TrainConfig.eval_batches=0",
          "--gin.TrainConfig.log_every=1", "--gin.ModelConfig.num_layers=1",
          "--gin.ModelConfig.embed_dim=32", "--gin.ModelConfig.mlp_dim=64",
          "--gin.ModelConfig.num_heads=2", "--gin.ModelConfig.num_kv_heads=1"]
_TMP = ".orbax-checkpoint-tmp"


@dataclasses.dataclass
class Kill:
  chain: int
  landed_mid_save: bool  # A torn temporary step was left behind.
  steps: list[int]  # The steps Orbax lists afterwards.
  half_deleted: int  # Older listed steps Orbax's garbage collection was deleting (detected).


def _argv(workdir: str, corpus: str, *, every: int, async_save: bool, keep: int) -> list[str]:
  return [sys.executable, "-m", "llmjax.cli", "train", *_FLAGS, f"--workdir={workdir}",
          f"--gin.CHECKPOINT_EVERY={every}", f"--gin.TrainConfig.keep_checkpoints={keep}",
          f"--gin.TrainConfig.async_checkpointing={async_save}",
          f"--gin.TEXT_FILES='{corpus}/*.py'", f"--gin.DataConfig.cache_dir='{corpus}/cache'"]


def _start(argv: list[str], log: str) -> subprocess.Popen:
  # stderr to a file: a pipe nobody reads while polling would fill and stall the run.
  with open(log, "w", encoding="utf-8") as f:
    return subprocess.Popen(argv, cwd=REPO, env=_env(4), stdout=subprocess.DEVNULL, stderr=f)


def _first_position(log: str) -> int:
  """The step a run started at: its progress bar's first `N/STEPS`."""
  with open(log, encoding="utf-8") as f:
    found = re.search(rf"\| *(\d+)/{STEPS} \[", f.read())
  assert found, open(log, encoding="utf-8").read()[-3000:]
  return int(found.group(1))


def _torn(workdir: str) -> set[str]:
  try:
    return {n for n in os.listdir(workdir_lib.checkpoint_dir(workdir)) if _TMP in n}
  except FileNotFoundError:
    return set()


def _kill_during_a_save(proc: subprocess.Popen, workdir: str, rng: random.Random) -> bool:
  """SIGKILLs `proc` a seeded moment after its 1st or 2nd save starts; False if it finished.

  A save here takes 0.1-0.3 s (the first one of a process seconds), so most kills land inside
  one, some in the commit, the manifest or the garbage collection of an old step.
  """
  target, delay = rng.randint(1, 2), rng.uniform(0.0, 0.5)
  stale = _torn(workdir)  # A previous kill's leftovers, until this run's Orbax removes them.
  seen: set[str] = set()
  while proc.poll() is None:
    names = _torn(workdir)
    stale &= names
    seen |= names - stale
    if len(seen) >= target:  # A temporary step dir: Orbax is writing a checkpoint.
      time.sleep(delay)
      os.kill(proc.pid, signal.SIGKILL)
      assert proc.wait(timeout=60) == -signal.SIGKILL
      return True
    time.sleep(0.001)
  return False


def _assert_bitwise(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _check_after_kill(workdir: str, reference: str) -> tuple[list[int], int]:
  """The newest listed step is intact, and every intact one equals the reference's checkpoint
  of that step. Orbax deletes an old step in place, so a kill during its garbage collection
  leaves an older step half deleted: its manifest must say so (it is never the one resumed).

  Returns:
    The listed steps, and how many older ones were half deleted.
  """
  steps = workdir_lib.checkpoint_steps(workdir)
  half_deleted = 0
  for step in steps:
    if workdir_lib.checkpoint_damage(workdir, step) is not None:
      assert step != steps[-1], (step, workdir_lib.checkpoint_damage(workdir, step))
      half_deleted += 1
      continue
    _assert_bitwise(saved_state(workdir, step), saved_state(reference, step))
    assert saved_data_iter(workdir, step) == saved_data_iter(reference, step)
  return steps, half_deleted


def _chain(index: int, config: dict, corpus: str, reference: str, tmp: str) -> list[Kill]:
  rng = random.Random(1000 + config["seed"])
  workdir = os.path.join(tmp, f"chain{index}")
  argv = _argv(workdir, corpus, every=config["every"], async_save=config["async"], keep=2)
  kills, expected_start = [], 0
  for attempt in range(KILLS + 1):
    log = os.path.join(tmp, f"chain{index}-{attempt}.log")
    proc = _start(argv, log)
    if attempt < KILLS and _kill_during_a_save(proc, workdir, rng):
      assert _first_position(log) == expected_start
      mid_save = bool(_torn(workdir))
      steps, half_deleted = _check_after_kill(workdir, reference)
      kills.append(Kill(chain=index, landed_mid_save=mid_save, steps=steps,
                        half_deleted=half_deleted))
      expected_start = steps[-1] if steps else 0
      continue
    assert proc.wait(timeout=300) == 0, open(log, encoding="utf-8").read()[-3000:]
    assert _first_position(log) == expected_start
    assert "damaged" not in open(log, encoding="utf-8").read()
    break
  assert workdir_lib.latest_step(workdir) == STEPS
  _assert_bitwise(saved_state(workdir, STEPS), saved_state(reference, STEPS))
  assert saved_data_iter(workdir, STEPS) == saved_data_iter(reference, STEPS)
  return kills


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_never_loses_or_corrupts_a_run(tmp_path):
  start = time.monotonic()
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(12):
    (corpus / f"doc{i}.py").write_text(_CODE * (i + 2) + f"# file {i}\n", encoding="utf-8")
  # The uninterrupted run keeps every step, to compare each checkpoint a killed chain lists.
  reference = str(tmp_path / "reference")
  log = str(tmp_path / "reference.log")
  proc = _start(_argv(reference, str(corpus), every=1, async_save=True, keep=STEPS), log)
  assert proc.wait(timeout=300) == 0, open(log, encoding="utf-8").read()[-3000:]
  # The two chains run side by side (one per core).
  with concurrent.futures.ThreadPoolExecutor(len(CHAINS)) as pool:
    futures = [pool.submit(_chain, i, config, str(corpus), reference, str(tmp_path))
               for i, config in enumerate(CHAINS)]
    kills = [kill for f in futures for kill in f.result()]
  mid_save = sum(k.landed_mid_save for k in kills)
  half_deleted = sum(k.half_deleted for k in kills)
  print(f"torn writes: {len(kills)} SIGKILLs in {len(CHAINS)} chains, {mid_save} inside a "
        f"checkpoint write (a torn temporary step left behind), {half_deleted} half-deleted old "
        f"steps detected; every resume exact; {time.monotonic() - start:.0f} s", file=sys.stderr)
  assert len(kills) >= 10 and mid_save >= len(kills) // 3
