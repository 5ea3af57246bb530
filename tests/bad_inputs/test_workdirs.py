"""Bad workdirs, warm-start sources, distributed setups and JSON files through the CLI.

Each case is what a new user plausibly types: a --workdir that is a file, a foreign or
unwritable directory, a damaged run_config.json (train, sample, llmjax.load), a warm start from
nowhere, a coordinator that cannot be hosted or reached, a damaged Hugging Face config.json, a
missing prompt file. Each must exit 2 with one line naming the problem and the fix, no
traceback, and every file already there unchanged.
"""

import os
import socket

import jax.numpy as jnp
import pytest

import llmjax
from llmjax import workdir as workdir_lib
from llmjax.data.pipeline import DataConfig
from llmjax.data.tokenizer import ByteTokenizer
from llmjax.models.config import ModelConfig
from llmjax.sharding.mesh import MeshConfig
from llmjax.training.config import TrainConfig
from tests.bad_inputs.harness import assert_clear_failure, run_cli, snapshot

_MODEL = ModelConfig(vocab_size=260, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32,
                     mlp_dim=64, max_seq_len=64)
# The quickstart run file with this model: every train case here is refused before any data is
# read, so no corpus is needed.
_TRAIN = ["train", "--gin_file=gin_configs/runs/quickstart.gin", "--gin.TOKENIZER='byte'",
          "--gin.VOCAB_SIZE=260", "--gin.MAX_SEQ_LEN=64", "--gin.SEQ_LEN=32",
          "--gin.ModelConfig.num_layers=1", "--gin.ModelConfig.embed_dim=32",
          "--gin.ModelConfig.mlp_dim=64", "--gin.ModelConfig.num_heads=2",
          "--gin.ModelConfig.num_kv_heads=1", "--gin.TEXT_FILES='/nonexistent/*.txt'"]
_BAD_JSON = '{"model": {"num_layers": 1,\n  "vocab_size": 260\n'  # Cut short: no closing braces.


def _fake_run(path, *, checkpoint: bool = True) -> str:
  """A trained-looking workdir: run files, the byte tokenizer and a params checkpoint (step 3)."""
  data = DataConfig(text_files="/nonexistent/*.txt", tokenizer="byte")
  record = workdir_lib.run_record(model=_MODEL, data=data, train=TrainConfig(
      train_steps=3, warmup_steps=1), mesh=MeshConfig())
  workdir_lib.write_run_files(str(path), record, tokenizer=ByteTokenizer(),
                              config_gin="# operative\n")
  if checkpoint:  # Every case fails before reading it: any params will do.
    workdir_lib.save_params(str(path), {"w": jnp.zeros(2)}, 3)
  return str(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
  return _fake_run(tmp_path_factory.mktemp("bad_workdirs") / "run")


@pytest.fixture
def damaged_run(tmp_path, run_dir) -> str:
  """A copy of run_dir whose run_config.json was cut short (a full disk, a bad edit)."""
  import shutil

  path = str(tmp_path / "damaged")
  shutil.copytree(run_dir, path)
  with open(os.path.join(path, workdir_lib.RUN_CONFIG), "w", encoding="utf-8") as f:
    f.write(_BAD_JSON)
  return path


def _root() -> bool:
  return hasattr(os, "geteuid") and os.geteuid() == 0


# --workdir of `llmjax train`.
def test_train_workdir_is_a_file(tmp_path, capfd):
  path = tmp_path / "notes.txt"
  path.write_text("my notes\n")
  before = snapshot(tmp_path)
  outcome = run_cli([*_TRAIN, f"--workdir={path}"], capfd)
  assert_clear_failure(outcome, 2, r"notes\.txt is not an llmjax workdir \(it is a file\)",
                       r"give the path of a directory", before=before, dirs=(tmp_path,))


def test_train_workdir_is_a_foreign_directory(tmp_path, capfd):
  (tmp_path / "home").mkdir()
  (tmp_path / "home" / "thesis.tex").write_text("\\begin{document}\n")
  before = snapshot(tmp_path)
  outcome = run_cli([*_TRAIN, f"--workdir={tmp_path / 'home'}"], capfd)
  assert_clear_failure(outcome, 2, r"it holds thesis\.tex and no run_config\.json",
                       r"choose a new or empty directory", before=before, dirs=(tmp_path,))


@pytest.mark.skipif(_root(), reason="root writes through any permission bits")
def test_train_workdir_is_read_only(tmp_path, capfd):
  workdir = tmp_path / "ro"
  workdir.mkdir()
  workdir.chmod(0o555)
  try:
    outcome = run_cli([*_TRAIN, f"--workdir={workdir}"], capfd)
  finally:
    workdir.chmod(0o755)
  assert_clear_failure(outcome, 2, r"ro is not writable", r"chmod u\+w",
                       before={}, dirs=(workdir,))


@pytest.mark.skipif(_root(), reason="root writes through any permission bits")
def test_train_workdir_parent_is_read_only(tmp_path, capfd):
  parent = tmp_path / "shared"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    outcome = run_cli([*_TRAIN, f"--workdir={parent / 'run'}"], capfd)
  finally:
    parent.chmod(0o755)
  assert_clear_failure(outcome, 2, r"cannot be created: .*shared is not writable",
                       r"choose a directory you can write to", before={}, dirs=(parent,))


def test_train_workdir_unwritable_as_os_access_reports_it(tmp_path, capfd, monkeypatch):
  """The refusal above where permission bits do not bite (as root): the check is os.access's
  answer, made before anything is read or written."""
  workdir = tmp_path / "locked"
  workdir.mkdir()
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
      False if os.fspath(path) == str(workdir) else real_access(path, mode, **kw)))
  outcome = run_cli([*_TRAIN, f"--workdir={workdir}"], capfd)
  assert_clear_failure(outcome, 2, r"locked is not writable", r"chmod u\+w",
                       before={}, dirs=(workdir,))


def test_train_resume_with_damaged_run_config(damaged_run, capfd):
  before = snapshot(damaged_run)
  outcome = run_cli([*_TRAIN, f"--workdir={damaged_run}"], capfd)
  assert_clear_failure(outcome, 2, r"damaged/run_config\.json is not valid JSON",
                       r"line 3 column 1", r"repair the file", before=before,
                       dirs=(damaged_run,))


# TrainConfig.init_from (warm starts).
def test_init_from_missing_directory(tmp_path, capfd):
  outcome = run_cli([*_TRAIN, f"--workdir={tmp_path / 'new'}",
                     f"--gin.TrainConfig.init_from='{tmp_path / 'pretrained'}'"], capfd)
  assert_clear_failure(outcome, 2, r"TrainConfig\.init_from=.*pretrained is not an llmjax "
                       r"workdir \(no such directory\)", r"point it at a directory written by",
                       before={}, dirs=(tmp_path,))


def test_init_from_directory_that_is_not_a_workdir(tmp_path, capfd):
  (tmp_path / "downloads").mkdir()
  (tmp_path / "downloads" / "model.bin").write_bytes(b"\0" * 16)
  before = snapshot(tmp_path)
  outcome = run_cli([*_TRAIN, f"--workdir={tmp_path / 'new'}",
                     f"--gin.TrainConfig.init_from='{tmp_path / 'downloads'}'"], capfd)
  assert_clear_failure(outcome, 2, r"init_from=.*downloads is not an llmjax workdir "
                       r"\(.*run_config\.json not found\)", r"llmjax convert --from_hf",
                       before=before, dirs=(tmp_path,))


def test_init_from_step_that_does_not_exist(tmp_path, run_dir, capfd):
  before = snapshot(run_dir)
  outcome = run_cli([*_TRAIN, f"--workdir={tmp_path / 'new'}",
                     f"--gin.TrainConfig.init_from='{run_dir}'",
                     "--gin.TrainConfig.init_from_step=9"], capfd)
  assert_clear_failure(outcome, 2, r"init_from_step=9: .* has no checkpoint for that step; "
                       r"it has steps \[3\]", r"choose one of them, or None for the latest",
                       before=before, dirs=(run_dir,))
  assert not (tmp_path / "new").exists()


def test_init_from_run_without_a_checkpoint(tmp_path, capfd):
  source = _fake_run(tmp_path / "stopped_early", checkpoint=False)
  before = snapshot(source)
  outcome = run_cli([*_TRAIN, f"--workdir={tmp_path / 'new'}",
                     f"--gin.TrainConfig.init_from='{source}'"], capfd)
  assert_clear_failure(outcome, 2, r"no checkpoint in .*stopped_early/checkpoints",
                       r"wait until it saves its first checkpoint", before=before,
                       dirs=(source,))


def test_init_from_with_damaged_run_config(tmp_path, damaged_run, capfd):
  before = snapshot(damaged_run)
  outcome = run_cli([*_TRAIN, f"--workdir={tmp_path / 'new'}",
                     f"--gin.TrainConfig.init_from='{damaged_run}'"], capfd)
  assert_clear_failure(outcome, 2, r"TrainConfig\.init_from=.*run_config\.json is not valid "
                       r"JSON \(.*line 3 column 1\)", r"repair the file", before=before,
                       dirs=(damaged_run,))


# Multi-process setup: refused before jax.distributed (which would abort the process).
def test_coordinator_port_already_in_use(tmp_path, capfd):
  with socket.socket() as held:
    held.bind(("", 0))
    held.listen()
    port = held.getsockname()[1]
    outcome = run_cli([*_TRAIN, f"--workdir={tmp_path / 'run'}",
                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                       "--process_id=0"], capfd)
  assert_clear_failure(outcome, 2, rf"cannot host the coordinator on port {port}",
                       r"pick a free port", before={}, dirs=(tmp_path,))


def test_coordinator_unreachable(tmp_path, capfd):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # Bound, never listening: every connection is refused.
    outcome = run_cli([*_TRAIN, f"--workdir={tmp_path / 'run'}",
                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                       "--process_id=1", "--distributed_timeout=1"], capfd)
  assert_clear_failure(outcome, 2, r"could not reach the coordinator .* within 1 s",
                       r"start process 0", before={}, dirs=(tmp_path,))


def test_coordinator_host_does_not_resolve(tmp_path, capfd):
  outcome = run_cli([*_TRAIN, f"--workdir={tmp_path / 'run'}",
                     "--coordinator_address=no-such-host.invalid:4321", "--num_processes=2",
                     "--process_id=0", "--distributed_timeout=1"], capfd)
  assert_clear_failure(outcome, 2, r"the host 'no-such-host\.invalid' does not resolve",
                       r"give process 0's host name or IP address", before={}, dirs=(tmp_path,))


# `llmjax sample` and `llmjax.load`.
def test_sample_workdir_that_is_not_a_workdir(tmp_path, capfd):
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "todo.md").write_text("- train\n")
  before = snapshot(tmp_path)
  outcome = run_cli(["sample", f"--workdir={tmp_path / 'notes'}", "--prompt=hi"], capfd)
  assert_clear_failure(outcome, 2, r"notes is not an llmjax workdir \(.*run_config\.json not "
                       r"found\)", r"written by `llmjax train`", before=before, dirs=(tmp_path,))


def test_sample_workdir_that_is_a_file(tmp_path, capfd):
  (tmp_path / "model.bin").write_bytes(b"\0" * 8)
  before = snapshot(tmp_path)
  outcome = run_cli(["sample", f"--workdir={tmp_path / 'model.bin'}", "--prompt=hi"], capfd)
  assert_clear_failure(outcome, 2, r"model\.bin is not an llmjax workdir \(it is a file\)",
                       r"point it at a directory", before=before, dirs=(tmp_path,))


def test_sample_with_damaged_run_config(damaged_run, capfd):
  before = snapshot(damaged_run)
  outcome = run_cli(["sample", f"--workdir={damaged_run}", "--prompt=hi"], capfd)
  assert_clear_failure(outcome, 2, r"run_config\.json is not valid JSON \(.*line 3 column 1\)",
                       r"repair the file", before=before, dirs=(damaged_run,))


def test_sample_before_the_first_checkpoint(tmp_path, capfd):
  workdir = _fake_run(tmp_path / "starting", checkpoint=False)
  before = snapshot(workdir)
  outcome = run_cli(["sample", f"--workdir={workdir}", "--prompt=hi"], capfd)
  assert_clear_failure(outcome, 2, r"no checkpoint in .*starting/checkpoints",
                       r"wait until it saves its first checkpoint", before=before,
                       dirs=(workdir,))


def test_sample_missing_prompt_file(tmp_path, run_dir, capfd):
  before = snapshot(run_dir)
  outcome = run_cli(["sample", f"--workdir={run_dir}",
                     f"--prompt_file={tmp_path / 'prompts.txt'}"], capfd)
  assert_clear_failure(outcome, 2, r"prompts\.txt does not exist",
                       r"one prompt per line, or pass --prompt=TEXT", before=before,
                       dirs=(run_dir,))


def test_sample_prompt_file_that_is_not_text(tmp_path, run_dir, capfd):
  (tmp_path / "prompts.txt").write_bytes(b"\xff\xfe\x00h\x00i")  # UTF-16, saved by an editor.
  outcome = run_cli(["sample", f"--workdir={run_dir}",
                     f"--prompt_file={tmp_path / 'prompts.txt'}"], capfd)
  assert_clear_failure(outcome, 2, r"prompts\.txt is not UTF-8 text \(byte 0\)",
                       r"give a UTF-8 text file")


def test_load_with_damaged_run_config_names_file_and_position(damaged_run):
  with pytest.raises(ValueError, match=r"damaged/run_config\.json is not valid JSON \(.*at "
                     r"line 3 column 1\); nothing was changed: repair the file"):
    llmjax.load(damaged_run)


# `llmjax convert --from_hf`.
@pytest.mark.parametrize("text,problem", [
    ('{"model_type": "gpt2", "n_layer": 2,}', r"is not valid JSON \(.*line 1 column 37\)"),
    ('["gpt2"]', r"holds a JSON list, not the object of a Hugging Face config"),
])
def test_convert_damaged_hf_config(tmp_path, capfd, text, problem):
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text(text)
  before = snapshot(tmp_path)
  outcome = run_cli(["convert", f"--from_hf={hf}", f"--workdir={tmp_path / 'out'}"], capfd)
  assert_clear_failure(outcome, 2, r"hf/config\.json " + problem, r"nothing was converted",
                       before=before, dirs=(tmp_path,))
