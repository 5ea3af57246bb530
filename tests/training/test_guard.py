"""The loop's guards: nan_policy 'halt' and 'skip', finite checkpoints, strict-JSON metrics,
and SIGTERM to a real `llmjax train` (a checkpoint, exit 0, a bit-identical resume)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import TOY_RULES, ToyLM, make_test_mesh, toy_batch

from llmjax import workdir as workdir_lib
from llmjax.cli import main
from llmjax.data import pipeline
from llmjax.models.interface import LanguageModel
from llmjax.training import guard, loop
from llmjax.training import step as step_lib
from llmjax.training.config import TrainConfig
from llmjax.training.metrics import MetricsWriter
from llmjax.training.optimizer import make_optimizer
from llmjax.training.state import create_train_state
from tests.distributed.test_multiprocess import _FLAGS, REPO, _env, _free_port
from tests.training import test_loop
from tests.training.test_loop import _assert_bitwise, _configs, _final_params

corpus, trained = test_loop.corpus, test_loop.trained  # The fixtures, shared (module scope).


def _strict_json_lines(path: str) -> list[dict]:
  def refuse(constant):
    raise AssertionError(f"bare {constant} in {path}")

  with open(path, encoding="utf-8") as f:
    return [json.loads(line, parse_constant=refuse) for line in f]


@pytest.mark.parametrize("changes,message", [
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
    ({"learning_rate": 1e39}, "infinite in float32"),
    ({"clip_norm": float("nan")}, "clip_norm must be a finite number"),
    ({"nan_policy": "ignore"}, "choose one of"),
    ({"max_consecutive_skips": 0}, "max_consecutive_skips must be positive"),
])
def test_train_config_refuses_non_finite_and_unknown_policies(changes, message):
  with pytest.raises(ValueError, match=message):
    TrainConfig(**changes)


def test_metrics_jsonl_is_strict_json_with_null_for_non_finite(tmp_path):
  with MetricsWriter(str(tmp_path), tensorboard=False) as writer:
    record = writer.write(3, {"loss": np.float32("nan"), "grad_norm": float("inf"), "lr": 0.5})
  assert record == {"step": 3, "loss": None, "grad_norm": None, "lr": 0.5}
  assert _strict_json_lines(os.path.join(tmp_path, "metrics.jsonl")) == [record]


def test_tree_is_finite():
  assert bool(guard.tree_is_finite({"a": np.ones(3), "n": np.arange(2)}))
  assert not bool(guard.tree_is_finite({"a": np.array([1.0, np.inf]), "n": np.arange(2)}))


def test_skip_policy_drops_the_update_inside_the_step():
  cfg = TrainConfig(train_steps=4, batch_size=8, seq_len=8, warmup_steps=1, nan_policy="skip")
  model, (tx, schedule) = ToyLM(), make_optimizer(cfg)
  state, _ = create_train_state(model.init_boxed, tx, cfg.seed, make_test_mesh({"fsdp": 1}),
                                TOY_RULES["fsdp"])
  train_step = jax.jit(step_lib.make_train_step(model, tx, cfg, schedule))
  bad = toy_batch(0)
  bad["weights"] = np.full_like(bad["weights"], np.nan)
  after, metrics = train_step(state, bad)
  assert float(metrics["skipped"]) == 1.0 and int(after.step) == 1  # The counter advances.
  _assert_bitwise((state.params, state.opt_state), (after.params, after.opt_state))
  moved, metrics = train_step(after, toy_batch(1))
  assert float(metrics["skipped"]) == 0.0 and int(moved.step) == 2
  assert not np.array_equal(jax.tree.leaves(moved.params)[0], jax.tree.leaves(after.params)[0])


def _poison(monkeypatch, steps: set[int]) -> None:
  """Makes the float arrays (the loss weights) of the batches of these 0-based steps NaN."""
  make = pipeline.make_train_iterator

  class Poisoned:
    def __init__(self, inner):
      self.inner, self.step = inner, 0

    def __next__(self):
      batch, self.step = next(self.inner), self.step + 1
      if self.step - 1 in steps:
        batch = {k: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v
                 for k, v in batch.items()}
      return batch

    def __getattr__(self, name):
      return getattr(self.inner, name)

  monkeypatch.setattr(pipeline, "make_train_iterator", lambda *a, **k: Poisoned(make(*a, **k)))


def test_halt_keeps_the_last_good_checkpoint_and_resume_matches(tmp_path, monkeypatch, trained,
                                                                 corpus):
  full, _ = trained
  workdir = str(tmp_path / "halted")
  _poison(monkeypatch, {3})
  with pytest.raises(guard.DivergenceError) as info:
    loop.train(**_configs(corpus), workdir=workdir)
  message = str(info.value)
  assert "training diverged at step 4: the loss is nan and the gradient norm is nan" in message
  assert "the last checkpoint (step 2)" in message and "nan_policy='skip'" in message
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]
  assert workdir_lib.latest_step(workdir) == 2
  before = {n: open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(os.path.join(workdir, "checkpoints", "2")) for n in names}
  lines = _strict_json_lines(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in lines if "loss" in r] == [2]  # Nothing non-finite was logged.

  monkeypatch.undo()  # The bad data is gone: the rerun resumes from step 2.
  after = {n: open(os.path.join(d, n), "rb").read()
           for d, _, names in os.walk(os.path.join(workdir, "checkpoints", "2")) for n in names}
  assert after == before  # Untouched by the halt.
  assert loop.train(**_configs(corpus), workdir=workdir)["step"] == 6
  model = _configs(corpus)["model"]
  _assert_bitwise(_final_params(full, model), _final_params(workdir, model))


def test_skip_counts_skipped_steps_and_halts_after_too_many_in_a_row(tmp_path, monkeypatch,
                                                                     corpus):
  workdir = str(tmp_path / "skipping")
  _poison(monkeypatch, {2, 4, 5})  # Steps 3, 5 and 6 (1-based) are skipped.
  with pytest.raises(guard.DivergenceError, match=r"steps 5-6 \(2 in a row"):
    loop.train(**_configs(corpus, nan_policy="skip", max_consecutive_skips=2), workdir=workdir)
  lines = [r for r in _strict_json_lines(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
  assert [(r["step"], r["skipped_steps"]) for r in lines] == [(2, 0.0), (4, 1.0)]
  assert all(np.isfinite(r["loss"]) for r in lines)  # Skipped steps are left out of the mean.
  assert workdir_lib.latest_step(workdir) == 4
  model = _configs(corpus)["model"]
  assert bool(guard.tree_is_finite(_final_params(workdir, model)))


def test_cli_diverging_learning_rate_exits_3_and_saves_nothing_non_finite(tmp_path, corpus,
                                                                           capsys):
  workdir = str(tmp_path / "diverged")
  code = main(["train", "--gin_file=gin_configs/runs/quickstart.gin", f"--workdir={workdir}",
               f"--gin.TEXT_FILES='{corpus}/*.txt'",
               f"--gin.DataConfig.cache_dir='{corpus}/cache'", "--gin.TOKENIZER='byte'",
               "--gin.VOCAB_SIZE=260", "--gin.TRAIN_STEPS=8", "--gin.WARMUP_STEPS=1",
               "--gin.BATCH_SIZE=8", "--gin.SEQ_LEN=16", "--gin.MAX_SEQ_LEN=32",
               "--gin.ModelConfig.num_layers=1", "--gin.ModelConfig.embed_dim=32",
               "--gin.ModelConfig.mlp_dim=64", "--gin.ModelConfig.num_heads=2",
               "--gin.ModelConfig.num_kv_heads=1", "--gin.TrainConfig.log_every=1",
               "--gin.CHECKPOINT_EVERY=1", "--gin.EVAL_EVERY=100",
               "--gin.TrainConfig.learning_rate=1e30", "--gin.TrainConfig.clip_norm=0.0"])
  err = capsys.readouterr().err
  assert code == 3, err[-2000:]
  assert re.search(r"training diverged at step \d+: the (loss|gradient norm|parameters)", err)
  assert "Traceback" not in err
  _strict_json_lines(os.path.join(workdir, "metrics.jsonl"))
  model = workdir_lib.existing_run(workdir).model
  abstract = jax.eval_shape(LanguageModel(model).init, jax.random.PRNGKey(0))
  for step in os.listdir(os.path.join(workdir, "checkpoints")):
    assert bool(guard.tree_is_finite(workdir_lib.restore_params(workdir, abstract, int(step))))


# Async saves on: the preemption save must still be on disk before the process exits.
_SIGNAL_FLAGS = [*_FLAGS, "--gin.TRAIN_STEPS=300", "--gin.EVAL_EVERY=1000",
                 "--gin.CHECKPOINT_EVERY=100", "--gin.TrainConfig.async_checkpointing=True"]


def _train_cmd(workdir: str, corpus_dir: str) -> list[str]:
  return [sys.executable, "-m", "llmjax.cli", "train", *_SIGNAL_FLAGS, f"--workdir={workdir}",
          f"--gin.TEXT_FILES='{corpus_dir}/*.txt'",
          f"--gin.DataConfig.cache_dir='{corpus_dir}/cache'"]


def _logged_steps(workdir: str) -> list[int]:
  try:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      return [json.loads(line)["step"] for line in f if line.endswith("\n")]
  except FileNotFoundError:
    return []


def _signal_after(procs: list[subprocess.Popen], workdir: str, target: int, signum: int
                  ) -> list[tuple[int, str]]:
  """Sends `signum` to procs[-1] once `workdir` has logged a few steps; returns (rc, stderr)."""
  deadline = time.monotonic() + 240
  while not any(s >= 3 for s in _logged_steps(workdir)):
    assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.02)
  os.kill(procs[target].pid, signum)
  return [(p.wait(timeout=240), p.communicate()[1]) for p in procs]


def _params_from(workdir: str):
  return _final_params(workdir, workdir_lib.existing_run(workdir).model)



def test_stop_signals_request_a_stop_and_a_second_ctrl_c_interrupts():
  with guard.StopSignals() as signals:
    assert not signals.requested()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # Python runs the handler between bytecodes of the main thread.
    assert signals.requested() and signals.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.01)
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # The old handlers are back.


def test_sigterm_saves_a_checkpoint_and_the_rerun_matches_an_uninterrupted_run(tmp_path, corpus):
  reference, preempted = str(tmp_path / "reference"), str(tmp_path / "preempted")
  subprocess.run(_train_cmd(reference, corpus), cwd=REPO, env=_env(4), check=True,
                 capture_output=True, timeout=300)
  proc = subprocess.Popen(_train_cmd(preempted, corpus), cwd=REPO, env=_env(4),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  [(code, err)] = _signal_after([proc], preempted, 0, signal.SIGTERM)
  assert code == 0, err[-3000:]
  found = re.search(r"llmjax: preempted at step (\d+); checkpoint saved; rerun the same command "
                    r"to resume", err)
  assert found, err[-3000:]
  step = int(found.group(1))
  assert 3 <= step < 300 and workdir_lib.latest_step(preempted) == step
  assert max(_logged_steps(preempted)) == step  # The metrics up to the stop were flushed.
  resumed = subprocess.run(_train_cmd(preempted, corpus), cwd=REPO, env=_env(4),
                           capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert workdir_lib.latest_step(preempted) == 300
  _assert_bitwise(_params_from(reference), _params_from(preempted))


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path, corpus):
  reference, preempted = str(tmp_path / "reference"), str(tmp_path / "preempted")

  def start(workdir, address):
    return [subprocess.Popen(
        [*_train_cmd(workdir, corpus), f"--coordinator_address={address}",
         "--num_processes=2", f"--process_id={i}"], cwd=REPO, env=_env(2),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]

  for p in start(reference, f"127.0.0.1:{_free_port()}"):
    assert p.wait(timeout=300) == 0, p.communicate()[1][-3000:]
  procs = start(preempted, f"127.0.0.1:{_free_port()}")
  results = _signal_after(procs, preempted, 1, signal.SIGTERM)  # Only process 1 is told.
  assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
  step = int(re.search(r"preempted at step (\d+)", results[0][1]).group(1))
  assert workdir_lib.latest_step(preempted) == step
  for p in start(preempted, f"127.0.0.1:{_free_port()}"):
    assert p.wait(timeout=300) == 0, p.communicate()[1][-3000:]
  _assert_bitwise(_params_from(reference), _params_from(preempted))
