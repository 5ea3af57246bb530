"""A workdir's life before its first checkpoint (llmjax/workdir.py): nothing in it is a run to
protect, so a new run rewrites its run files and tokenizer; once a checkpoint exists they are
kept and checked. And the error logs of failed runs, which never overwrite each other."""

import os
import re

import jax.numpy as jnp
import pytest

from llmjax import workdir as workdir_lib
from llmjax.data.pipeline import DataConfig
from llmjax.data.tokenizer import ByteTokenizer, IdTokenizer, load_tokenizer
from llmjax.models.config import ModelConfig
from llmjax.sharding.mesh import MeshConfig
from llmjax.training import validation
from llmjax.training.config import TrainConfig

MODEL = ModelConfig(vocab_size=300, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                    max_seq_len=16)


def _record(batch_size: int) -> dict:
  return workdir_lib.run_record(
      model=MODEL, data=DataConfig(text_files="/corpus/*.txt", tokenizer="byte"),
      train=TrainConfig(batch_size=batch_size, seq_len=16, train_steps=2, warmup_steps=1),
      mesh=MeshConfig())


def _checkpoint(workdir: str) -> None:
  """A checkpoint step (its contents do not matter here: only that one exists)."""
  workdir_lib.save_params(workdir, {"w": jnp.zeros(2)}, step=1)


def test_workdir_without_checkpoint_is_new_whatever_its_run_files(tmp_path):
  workdir = str(tmp_path / "run")
  workdir_lib.write_run_files(workdir, _record(8), tokenizer=ByteTokenizer())
  assert workdir_lib.existing_run(workdir) is None  # Any config may start here.
  validation.check_resume_compatible(workdir_lib.existing_run(workdir), _record(16))
  with open(workdir_lib.run_config_path(workdir), "w") as f:
    f.write("{")  # Even a damaged run_config.json: nothing depends on it yet.
  assert workdir_lib.existing_run(workdir) is None


def test_workdir_with_checkpoint_is_protected(tmp_path):
  workdir = str(tmp_path / "run")
  workdir_lib.write_run_files(workdir, _record(8), tokenizer=ByteTokenizer())
  _checkpoint(workdir)
  saved = workdir_lib.existing_run(workdir)
  assert saved is not None and saved.sections["train"]["batch_size"] == 8
  with pytest.raises(ValueError, match=r"refusing to resume it:\n  train\.batch_size: 8 -> 16"):
    validation.check_resume_compatible(saved, _record(16))
  with open(workdir_lib.run_config_path(workdir), "w") as f:
    f.write('{"model": ')
  with pytest.raises(ValueError, match=r"run_config\.json is not valid JSON \(Expecting value "
                     r"at line 1 column 11\); nothing was changed: repair the file"):
    workdir_lib.existing_run(workdir)


def test_tokenizer_is_replaced_until_a_checkpoint_depends_on_it(tmp_path):
  workdir = str(tmp_path / "run")
  directory = workdir_lib.tokenizer_dir(workdir)
  workdir_lib.write_run_files(workdir, _record(8), tokenizer=ByteTokenizer())
  open(os.path.join(directory, "tokenizer.model"), "wb").close()  # A stale file of another kind.
  assert not workdir_lib.keeps_tokenizer(workdir)
  workdir_lib.write_run_files(workdir, _record(8), tokenizer=IdTokenizer(300, eos_id=2))
  assert load_tokenizer(directory).kind == "ids"
  assert sorted(os.listdir(directory)) == ["tokenizer.json"]
  _checkpoint(workdir)
  assert workdir_lib.keeps_tokenizer(workdir)
  workdir_lib.write_run_files(workdir, _record(8), tokenizer=ByteTokenizer())
  assert load_tokenizer(directory).kind == "ids"  # The checkpoint's tokenizer is kept.


def test_error_logs_never_overwrite_each_other(tmp_path):
  workdir = str(tmp_path / "new" / "run")  # Created for the log.
  paths = [workdir_lib.write_error_log(workdir, f"log {i}\n") for i in range(3)]
  paths.append(workdir_lib.write_error_log(workdir, "log p1\n", process_index=1))
  assert len(set(paths)) == 4
  for i, path in enumerate(paths):
    assert os.path.dirname(path) == os.path.join(workdir, workdir_lib.LOGS)
    assert open(path).read() == (f"log {i}\n" if i < 3 else "log p1\n")
  assert re.fullmatch(r"error-\d{8}T\d{6}Z(\.\d+)?\.log", os.path.basename(paths[0]))
  assert re.fullmatch(r"error-\d{8}T\d{6}Z-p1(\.\d+)?\.log", os.path.basename(paths[3]))
  assert workdir_lib.existing_run(workdir) is None  # logs/ belongs to a workdir.


def test_check_writable_allows_a_new_nested_workdir(tmp_path):
  workdir_lib.check_writable(str(tmp_path / "a" / "b" / "run"))  # Its parent can create it.
  assert not (tmp_path / "a").exists()  # Nothing created by the check.
