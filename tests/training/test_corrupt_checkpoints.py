"""A damaged checkpoint (a file truncated or deleted after it was written): every command that
reads it names the step and the file, changes nothing, and `llmjax train` resumes from the
previous intact step only with --allow_fallback_checkpoint, ending bit-identical to a run that
was never damaged, with the damaged step kept (moved aside, never deleted)."""

import json
import os
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import llmjax
from llmjax import workdir as workdir_lib
from llmjax.cli import main
from llmjax.models.interface import LanguageModel
from llmjax.training import checkpoint as ckpt_lib
from tests.bad_inputs.harness import assert_clear_failure, run_cli, snapshot

_CODE = "def add(a, b):\n\treturn a + b\n\n\nclass Point:\n    x: int = 0\n"
# A checkpoint every step, keeping 3: the run ends with steps 2, 3, 4 (step 1 collected).
_FLAGS = ["--gin_file=gin_configs/runs/quickstart.gin", "--gin.TOKENIZER='byte'",
          "--gin.VOCAB_SIZE=260", "--gin.TRAIN_STEPS=4", "--gin.WARMUP_STEPS=1",
          "--gin.BATCH_SIZE=8", "--gin.SEQ_LEN=32", "--gin.MAX_SEQ_LEN=64",
          "--gin.CHECKPOINT_EVERY=1", "--gin.EVAL_EVERY=100", "--gin.TrainConfig.eval_batches=0",
          "--gin.TrainConfig.log_every=1", "--gin.TrainConfig.keep_checkpoints=3",
          "--gin.ModelConfig.num_layers=1", "--gin.ModelConfig.embed_dim=32",
          "--gin.ModelConfig.mlp_dim=64", "--gin.ModelConfig.num_heads=2",
          "--gin.ModelConfig.num_kv_heads=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
  directory = tmp_path_factory.mktemp("corrupt_corpus")
  for i in range(12):
    (directory / f"doc{i}.py").write_text(_CODE * (i + 2) + f"# file {i}\n", encoding="utf-8")
  return str(directory)


def _train_argv(workdir: str, corpus: str, *extra: str) -> list[str]:
  return ["train", *_FLAGS, f"--workdir={workdir}", f"--gin.TEXT_FILES='{corpus}/*.py'",
          f"--gin.DataConfig.cache_dir='{corpus}/cache'", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus) -> str:
  """One uninterrupted 4-step run, never modified: tests damage copies of it."""
  workdir = str(tmp_path_factory.mktemp("corrupt_run") / "run")
  assert main(_train_argv(workdir, corpus)) == 0
  assert workdir_lib.checkpoint_steps(workdir) == [2, 3, 4]
  return workdir


@pytest.fixture
def copy(run, tmp_path) -> str:
  target = str(tmp_path / "run")
  shutil.copytree(run, target)
  return target


def _array_file(workdir: str, step: int) -> str:
  """The largest file of the step's state item (an array file), relative to the step."""
  step_dir = workdir_lib.step_dir(workdir, step)
  files = [os.path.join(root, n) for root, _, names in os.walk(os.path.join(step_dir, "state"))
           for n in names]
  return os.path.relpath(max(files, key=os.path.getsize), step_dir)


def _damage(workdir: str, step: int, how: str) -> str:
  """Truncates (to half) or deletes the step's largest array file; returns its relative path."""
  rel = _array_file(workdir, step)
  path = os.path.join(workdir_lib.step_dir(workdir, step), rel)
  if how == "truncate":
    os.truncate(path, os.path.getsize(path) // 2)
  else:
    os.remove(path)
  return rel


def saved_state(workdir: str, step: int) -> dict:
  """Checkpoint `step`'s whole train state (params, optimizer state, rng, step) as numpy."""
  path = os.path.join(workdir_lib.step_dir(workdir, step), workdir_lib.STATE_ITEM)
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def saved_data_iter(workdir: str, step: int) -> dict:
  """Checkpoint `step`'s data iterator state (JSON; Orbax's commit marker, which holds a
  time, left out)."""
  directory = os.path.join(workdir_lib.step_dir(workdir, step), workdir_lib.DATA_ITER_ITEM)
  states = {}
  for name in sorted(os.listdir(directory)):
    if name != "commit_success.txt":
      with open(os.path.join(directory, name), encoding="utf-8") as f:
        states[name] = json.load(f)
  assert states
  return states


def _params(workdir: str, step: int | None = None):
  model = workdir_lib.read_run_config(workdir).model
  abstract = jax.eval_shape(LanguageModel(model).init, jax.random.PRNGKey(0))
  return jax.device_get(workdir_lib.restore_params(workdir, abstract, step))


def _assert_bitwise(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_every_saved_step_has_a_manifest_of_its_item_files(run):
  for step in workdir_lib.checkpoint_steps(run):
    step_dir = workdir_lib.step_dir(run, step)
    with open(os.path.join(step_dir, workdir_lib.CHECKPOINT_MANIFEST), encoding="utf-8") as f:
      files = json.load(f)["files"]
    on_disk = {os.path.relpath(os.path.join(root, n), step_dir): os.path.getsize(
        os.path.join(root, n)) for root, _, names in os.walk(step_dir) for n in names
        if root != step_dir}
    assert files == on_disk and any(name.startswith("state/") for name in files)
    assert workdir_lib.checkpoint_damage(run, step) is None


@pytest.mark.parametrize("async_save", [True, False])
def test_checkpointer_writes_the_manifest_before_the_commit(tmp_path, async_save):
  state = {"w": np.arange(512, dtype=np.float32), "b": {"c": np.ones((8, 8), np.int32)}}
  with ckpt_lib.Checkpointer(str(tmp_path), keep=2, async_save=async_save) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, jax.device_put(state), {"next_index": step})
  assert workdir_lib.checkpoint_steps(str(tmp_path)) == [2, 3]  # keep=2 collected step 1.
  for step in (2, 3):
    manifest = os.path.join(workdir_lib.step_dir(str(tmp_path), step),
                            workdir_lib.CHECKPOINT_MANIFEST)
    with open(manifest, encoding="utf-8") as f:
      files = json.load(f)["files"]
    assert any(n.startswith("state/") for n in files) and "data_iter/metadata" in files
  _damage(str(tmp_path), 3, "truncate")
  with pytest.raises(workdir_lib.DamagedCheckpointError, match=r"step 3 .* is damaged: state/"):
    ckpt_lib.find_resume_point(str(tmp_path))
  point = ckpt_lib.find_resume_point(str(tmp_path), allow_fallback=True)
  assert point.step == 2 and [s for s, _ in point.damaged] == [3]


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_train_names_step_file_and_flag_and_writes_nothing(copy, corpus, capfd, how):
  rel = _damage(copy, 4, how)
  before = snapshot(copy)
  outcome = run_cli(_train_argv(copy, corpus), capfd)
  state = r"truncated \(\d+ of \d+ bytes\)" if how == "truncate" else "missing"
  assert_clear_failure(outcome, 2, r"checkpoint step 4 in .* is damaged",
                       re.escape(rel) + " is " + state,
                       r"to resume from step 3.*rerun with --allow_fallback_checkpoint",
                       r"not deleted", before=before, dirs=(copy,))


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_sample_names_step_and_file_and_an_intact_step(copy, capfd, how):
  rel = _damage(copy, 4, how)
  before = snapshot(copy)
  outcome = run_cli(["sample", f"--workdir={copy}", "--prompt=def", "--max_new_tokens=2"], capfd)
  assert_clear_failure(outcome, 2, r"checkpoint step 4 in .* is damaged", re.escape(rel),
                       r"step 3 is the newest complete checkpoint", r"move .*/4 to .*damaged/4",
                       before=before, dirs=(copy,))


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_convert_to_hf_names_step_and_file_and_writes_no_folder(copy, tmp_path, capfd, how):
  rel = _damage(copy, 4, how)
  before = snapshot(copy)
  out = tmp_path / "hf"
  outcome = run_cli(["convert", "--to_hf", f"--workdir={copy}", f"--out={out}"], capfd)
  assert_clear_failure(outcome, 2, r"checkpoint step 4 in .* is damaged", re.escape(rel),
                       r"--step=3", before=before, dirs=(copy,))
  assert sorted(os.listdir(tmp_path)) == ["run"]  # No --out folder, no staging folder.
  # The intact step the message names converts.
  assert run_cli(["convert", "--to_hf", f"--workdir={copy}", f"--out={out}", "--step=3"],
                 capfd).code == 0


def test_warm_start_from_a_damaged_run_names_it_before_writing(copy, corpus, tmp_path, capfd):
  rel = _damage(copy, 4, "delete")
  before = snapshot(copy)
  new = tmp_path / "new"
  outcome = run_cli(_train_argv(str(new), corpus, f"--gin.TrainConfig.init_from='{copy}'"), capfd)
  assert_clear_failure(outcome, 2, r"checkpoint step 4 in .* is damaged: " + re.escape(rel),
                       r"TrainConfig.init_from_step=3", before=before, dirs=(copy,))
  assert not new.exists()


def test_load_names_step_and_file_and_the_named_step_loads(copy, run):
  rel = _damage(copy, 4, "truncate")
  with pytest.raises(workdir_lib.DamagedCheckpointError,
                     match=r"step 4 .* is damaged: " + re.escape(rel) + r".*step=3") as info:
    llmjax.load(copy)
  assert info.value.step == 4
  _assert_bitwise(llmjax.load(copy, step=3).params, _params(run, 3))
  with pytest.raises(workdir_lib.DamagedCheckpointError, match="step 4"):
    llmjax.load(copy, step=4)


def test_fallback_resumes_from_the_previous_step_bitwise_and_deletes_nothing(copy, run, corpus,
                                                                             capfd):
  _damage(copy, 4, "truncate")
  damaged = workdir_lib.step_dir(copy, 4)
  kept = {os.path.relpath(p, damaged): h for p, h in snapshot(damaged).items()}
  outcome = run_cli(_train_argv(copy, corpus, "--allow_fallback_checkpoint"), capfd)
  assert outcome.code == 0, outcome.err
  assert re.search(r"checkpoint step 4 is damaged \(state/.* truncated .*\); moved it to "
                   r".*checkpoints/damaged/4 \(nothing deleted\); resuming from step 3",
                   outcome.err), outcome.err
  aside = os.path.join(workdir_lib.checkpoint_dir(copy), workdir_lib.DAMAGED_CHECKPOINTS, "4")
  assert {os.path.relpath(p, aside): h for p, h in snapshot(aside).items()} == kept
  # The same steps as the uninterrupted run (Orbax's keep=3 counted only intact steps), and
  # step 4 re-made from step 3 equals the original step 4 bit for bit, data iterator included.
  assert workdir_lib.checkpoint_steps(copy) == workdir_lib.checkpoint_steps(run) == [2, 3, 4]
  _assert_bitwise(saved_state(copy, 4), saved_state(run, 4))
  assert saved_data_iter(copy, 4) == saved_data_iter(run, 4)


def test_fallback_with_every_step_damaged_refuses(copy, corpus, capfd):
  for step in (2, 3, 4):
    _damage(copy, step, "delete")
  before = snapshot(copy)
  outcome = run_cli(_train_argv(copy, corpus, "--allow_fallback_checkpoint"), capfd)
  assert_clear_failure(outcome, 2, r"checkpoint step 4 .* is damaged",
                       r"no earlier complete checkpoint exists", before=before, dirs=(copy,))


def test_unreadable_manifest_is_damage(copy, capfd):
  path = os.path.join(workdir_lib.step_dir(copy, 4), workdir_lib.CHECKPOINT_MANIFEST)
  with open(path, "w", encoding="utf-8") as f:
    f.write('{"files": ')
  before = snapshot(copy)
  outcome = run_cli(["sample", f"--workdir={copy}", "--prompt=def", "--max_new_tokens=2"], capfd)
  assert_clear_failure(outcome, 2, r"step 4 .* is damaged: its file list "
                       r"llmjax_manifest.json is unreadable", before=before, dirs=(copy,))


def test_checkpoint_without_manifest_restores_and_orbax_errors_name_step_and_file(copy, run,
                                                                                    corpus, capfd):
  for step in (2, 3, 4):  # As an llmjax that wrote no manifests left them.
    os.remove(os.path.join(workdir_lib.step_dir(copy, step), workdir_lib.CHECKPOINT_MANIFEST))
  _assert_bitwise(_params(copy), _params(run))
  # Orbax reads the state through state/manifest.ocdbt; its damage fails the restore.
  path = os.path.join(workdir_lib.step_dir(copy, 4), "state", "manifest.ocdbt")
  os.truncate(path, os.path.getsize(path) // 2)
  before = snapshot(copy)
  outcome = run_cli(["sample", f"--workdir={copy}", "--prompt=def", "--max_new_tokens=2"], capfd)
  assert_clear_failure(outcome, 2, r"checkpoint step 4 in .* could not be read: "
                       r"state/manifest\.ocdbt", r"step 3 is the newest complete checkpoint",
                       before=before, dirs=(copy,))
  # The fallback also covers a step only Orbax finds unreadable.
  outcome = run_cli(_train_argv(copy, corpus, "--allow_fallback_checkpoint"), capfd)
  assert outcome.code == 0, outcome.err
  assert re.search(r"step 4 is damaged \(.*manifest\.ocdbt.*\); moved it to .*damaged/4 "
                   r"\(nothing deleted\); resuming from step 3", outcome.err), outcome.err
  _assert_bitwise(saved_state(copy, 4), saved_state(run, 4))
