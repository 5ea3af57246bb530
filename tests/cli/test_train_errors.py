"""`llmjax train` when a run fails outside its config: an error after compiling keeps its
traceback (WORKDIR/logs/), a first run that failed or was stopped before its first checkpoint
does not pin the workdir, and SIGINT/SIGTERM before the first step print one line."""

import gc
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from llmjax import workdir as workdir_lib
from llmjax.cli import train as train_cli
from llmjax.data import pipeline
from llmjax.training import loop
from llmjax.training import step as step_lib
from tests.bad_inputs.harness import assert_clear_failure, run_cli, snapshot
from tests.cli.test_cli_end_to_end import _CODE, _SMALL

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
  directory = tmp_path_factory.mktemp("errors_corpus")
  for i in range(12):
    (directory / f"doc{i}.py").write_text(_CODE * (i + 2) + f"# file {i}\n", encoding="utf-8")
  return str(directory)


def _train_flags(workdir, corpus: str, *extra: str) -> list[str]:
  return ["train", "--gin_file=gin_configs/runs/quickstart.gin", f"--workdir={workdir}",
          f"--gin.TEXT_FILES='{corpus}/*.py'", f"--gin.DataConfig.cache_dir='{corpus}/cache'",
          *_SMALL, "--gin.TrainConfig.eval_batches=0", *extra]  # No eval step: quicker.


def _one_liners(err: str) -> list[str]:
  """The lines llmjax train printed itself (after any progress bar's carriage return)."""
  return [line for line in re.split(r"[\r\n]", err) if line.startswith("llmjax train:")]


def test_error_after_compiling_keeps_its_traceback_in_the_workdir(tmp_path, corpus, capfd,
                                                                   monkeypatch):
  # A ValueError in the loop, after step 2's checkpoint: once flattened into a config error's
  # one line (exit 2), now an unexpected failure whose traceback is kept.
  real, calls = loop.log_record, []

  def log_record_failing_at_step_4(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise ValueError("injected: a metric went missing")
    return real(*args, **kwargs)

  monkeypatch.setattr(loop, "log_record", log_record_failing_at_step_4)
  workdir = str(tmp_path / "run")
  outcome = run_cli(_train_flags(workdir, corpus), capfd)
  assert outcome.code == train_cli.EXIT_FAILED, outcome.err
  assert "Traceback" not in outcome.out + outcome.err
  [line] = _one_liners(outcome.err)
  found = re.fullmatch(r"llmjax train: the run failed with ValueError: injected: a metric went "
                       r"missing; the full traceback is in (\S+); the newest checkpoint \(step "
                       r"2\) is intact: rerun the same command to resume once the cause is "
                       r"fixed\.", line)
  assert found, line
  log = found.group(1)
  assert os.path.dirname(log) == os.path.join(workdir, workdir_lib.LOGS)
  assert re.fullmatch(r"error-\d{8}T\d{6}Z\.log", os.path.basename(log))
  text = open(log, encoding="utf-8").read()
  assert text.startswith("Traceback (most recent call last):")
  for frame in ("in _guarded_loop", "in log_record_failing_at_step_4",
                "ValueError: injected: a metric went missing", "loop.RunError"):
    assert frame in text, frame
  assert workdir_lib.checkpoint_steps(workdir) == [2]

  # A workdir with a checkpoint is still a run to protect: a changed config is refused.
  before = snapshot(workdir)
  outcome = run_cli(_train_flags(workdir, corpus, "--gin.BATCH_SIZE=16"), capfd)
  assert_clear_failure(outcome, 2, r"refusing to resume it:\n  train\.batch_size: 8 -> 16",
                       r"Use a new --workdir", before=before, dirs=(workdir,))


def test_first_run_that_failed_before_its_first_checkpoint_does_not_pin_the_workdir(
    tmp_path, corpus, capfd, monkeypatch):
  def compile_fails(*args, **kwargs):
    raise RuntimeError("injected: the compiler crashed")

  monkeypatch.setattr(step_lib, "compile_train_step", compile_fails)
  workdir = str(tmp_path / "run")
  outcome = run_cli(_train_flags(workdir, corpus), capfd)
  assert outcome.code == train_cli.EXIT_FAILED, outcome.err
  [line] = _one_liners(outcome.err)
  assert "RuntimeError: injected: the compiler crashed" in line
  assert line.endswith("; no checkpoint was written.")
  saved = workdir_lib.read_run_config(workdir).sections
  assert saved["train"]["batch_size"] == 8 and workdir_lib.latest_step(workdir) is None
  monkeypatch.undo()

  # The corrected rerun changes fields a resume may not: no checkpoint, so nothing to protect.
  outcome = run_cli(_train_flags(workdir, corpus, "--gin.BATCH_SIZE=16", "--gin.SEQ_LEN=16"),
                    capfd)
  assert outcome.code == 0, outcome.err
  saved = workdir_lib.read_run_config(workdir).sections
  assert (saved["train"]["batch_size"], saved["train"]["seq_len"]) == (16, 16)
  assert "BATCH_SIZE = 16" in open(workdir_lib.config_gin_path(workdir)).read()
  assert workdir_lib.checkpoint_steps(workdir) == [2, 4]
  with open(workdir_lib.metrics_path(workdir), encoding="utf-8") as f:
    assert sorted({json.loads(line)["step"] for line in f}) == [2, 4]
  assert len(os.listdir(os.path.join(workdir, workdir_lib.LOGS))) == 1  # The first run's log.


def test_sigterm_during_setup_is_one_line_and_restores_the_handlers(tmp_path, corpus, capfd,
                                                                    monkeypatch):
  def terminated_while_preparing(data):
    os.kill(os.getpid(), signal.SIGTERM)  # What a scheduler sends; handled between bytecodes.
    time.sleep(5)
    raise AssertionError("SIGTERM did not interrupt data preparation")

  monkeypatch.setattr(pipeline, "prepare_dataset", terminated_while_preparing)
  workdir = tmp_path / "run"
  previous = signal.getsignal(signal.SIGTERM)
  outcome = run_cli(_train_flags(workdir, corpus), capfd)
  assert outcome.code == 128 + signal.SIGTERM
  assert "Traceback" not in outcome.out + outcome.err
  assert _one_liners(outcome.err) == [
      "llmjax train: interrupted (SIGTERM) before the first checkpoint; nothing to resume (no "
      "checkpoint was written): rerun the same command to start again."]
  assert not workdir.exists()  # Run files come after the data: nothing was written.
  assert signal.getsignal(signal.SIGTERM) is previous


def test_failure_in_an_unwritable_workdir_prints_the_traceback(tmp_path, capfd):
  def fail():
    raise KeyError("injected")

  try:
    try:
      fail()
    except KeyError as e:
      raise loop.RunError(f"KeyError: {e}") from e
  except loop.RunError as e:
    error = e
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("")
  capfd.readouterr()
  assert train_cli._failed(error, str(not_a_dir)) == train_cli.EXIT_FAILED
  err = capfd.readouterr().err
  assert "Traceback (most recent call last)" in err and "in fail" in err
  assert re.search(r"llmjax train: the run failed with KeyError: 'injected'; the traceback is "
                   r"above \(no log written: .*\); no checkpoint was written\.\n$", err), err


def test_ctrl_c_before_the_first_step_is_one_line(tmp_path, corpus):
  """A real Ctrl-C (SIGINT) to a real `llmjax train` once it has written its run files, so
  while it builds the state, the data iterator or compiles: not during the steps."""
  workdir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", LLMJAX_COMPILATION_CACHE_DIR="off",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen(
      [sys.executable, "-m", "llmjax.cli", *_train_flags(workdir, corpus,
                                                         "--gin.TRAIN_STEPS=1000")],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 120
    while not (workdir / workdir_lib.RUN_CONFIG).exists():
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.monotonic() < deadline
      time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
  assert _one_liners(err) == [
      "llmjax train: interrupted (SIGINT) before the first checkpoint; nothing to resume (no "
      "checkpoint was written): rerun the same command to start again."], err[-3000:]
  assert workdir_lib.latest_step(str(workdir)) is None
  assert not os.path.exists(workdir_lib.metrics_path(str(workdir)))  # No step ran.


def test_a_signal_landing_in_a_gc_callback_is_delivered_again(monkeypatch):
  # Python ignores an exception raised in a gc callback (JAX runs one on every collection),
  # reporting it as "Exception ignored in ... Traceback": the interrupt must be neither
  # reported there nor lost.
  monkeypatch.setattr(train_cli._InterruptSignals, "REDELIVER_S", 0.05)
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  fired = []

  def callback(phase, info):
    if phase == "start" and not fired:
      fired.append(True)
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.01)  # The handler runs here, inside the callback, and raises.

  gc.callbacks.append(callback)
  try:
    with pytest.raises(KeyboardInterrupt), train_cli._InterruptSignals() as interrupts:
      gc.collect()
      assert fired and interrupts.signum == signal.SIGTERM  # Raised, but swallowed by gc.
      time.sleep(5)  # Delivered again within REDELIVER_S: raised here.
  finally:
    gc.callbacks.remove(callback)
  assert interrupts.handled and not reported
  assert sys.unraisablehook == reported.append  # Restored.
