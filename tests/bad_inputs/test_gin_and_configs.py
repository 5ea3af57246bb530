"""Wrongly typed or malformed gin values and broken gin files, through `train`, `plan` and
`shardings`.

Each case is what a new user plausibly types (issue 18, case 5): a word or a decimal where a
count goes, True for a batch size, an unclosed `{` in a flag, an undefined `%MACRO`, a syntax
error inside an included file, a missing or non-gin file. Each must exit 2 with one line that
names the field (or the file and line, or the flag) and what to write instead, print no
traceback, and leave the workdir exactly as it was: an existing run untouched, a new one never
created.
"""

import os

import jax
import pytest

from llmjax import workdir as workdir_lib
from llmjax.data.pipeline import DataConfig
from llmjax.data.tokenizer import ByteTokenizer
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sharding.mesh import MeshConfig
from llmjax.training.config import TrainConfig
from tests.bad_inputs.harness import assert_clear_failure, run_cli, snapshot

_QUICKSTART = "--gin_file=gin_configs/runs/quickstart.gin"
# The quickstart shrunk to a model that builds in no time; every case fails before any data.
_SMALL = ["--gin.TOKENIZER=byte", "--gin.VOCAB_SIZE=260", "--gin.MAX_SEQ_LEN=64",
          "--gin.SEQ_LEN=32", "--gin.ModelConfig.num_layers=1", "--gin.ModelConfig.embed_dim=32",
          "--gin.ModelConfig.mlp_dim=64", "--gin.ModelConfig.num_heads=2",
          "--gin.ModelConfig.num_kv_heads=1", "--gin.TEXT_FILES=/nonexistent/*.txt"]
_MODEL = ModelConfig(vocab_size=260, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32,
                     mlp_dim=64, max_seq_len=64)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
  """An existing run: run files, the byte tokenizer and a params checkpoint at step 3."""
  path = str(tmp_path_factory.mktemp("bad_gin") / "run")
  record = workdir_lib.run_record(
      model=_MODEL, data=DataConfig(text_files="/nonexistent/*.txt", tokenizer="byte"),
      train=TrainConfig(train_steps=3, warmup_steps=1), mesh=MeshConfig())
  workdir_lib.write_run_files(path, record, tokenizer=ByteTokenizer(), config_gin="# run\n")
  workdir_lib.save_params(path, LanguageModel(_MODEL).init(jax.random.PRNGKey(0)), 3)
  return path


def _train_fails_on_existing_run(run_dir, capfd, flags, *patterns, gin_file=_QUICKSTART):
  before = snapshot(run_dir)
  assert before, "the run fixture wrote nothing"
  outcome = run_cli(["train", gin_file, f"--workdir={run_dir}", *_SMALL, *flags], capfd)
  assert_clear_failure(outcome, 2, *patterns, before=before, dirs=(run_dir,))
  assert len(outcome.err.strip().splitlines()) == 1, outcome.err


def _train_fails_on_new_workdir(tmp_path, capfd, flags, *patterns, gin_file=_QUICKSTART):
  workdir = tmp_path / "new_run"
  outcome = run_cli(["train", gin_file, f"--workdir={workdir}", *_SMALL, *flags], capfd)
  assert_clear_failure(outcome, 2, *patterns)
  assert len(outcome.err.strip().splitlines()) == 1, outcome.err
  assert not workdir.exists() or not os.listdir(workdir), "a failed command wrote a workdir"


# Wrongly typed values: every field's type comes from its dataclass annotation.
def test_word_for_an_int_macro(run_dir, capfd):
  _train_fails_on_existing_run(
      run_dir, capfd, ["--gin.TRAIN_STEPS=abc"],
      r"^llmjax train: TrainConfig\.train_steps \(set by the macro TRAIN_STEPS\) must be an int, "
      r"got 'abc' \(str\)", r"pass a whole number, e\.g\. --gin\.TRAIN_STEPS=\d+\.$")


def test_word_for_an_int_field(run_dir, capfd):
  _train_fails_on_existing_run(
      run_dir, capfd, ["--gin.ModelConfig.num_layers=four"],
      r"ModelConfig\.num_layers must be an int, got 'four'",
      r"e\.g\. --gin\.ModelConfig\.num_layers=1\.")


def test_decimal_train_steps_on_a_new_workdir_writes_nothing(tmp_path, capfd):
  _train_fails_on_new_workdir(
      tmp_path, capfd, ["--gin.TRAIN_STEPS=2.5"],
      r"TrainConfig\.train_steps \(set by the macro TRAIN_STEPS\) must be an int, got 2\.5 "
      r"\(float\)", r"e\.g\. --gin\.TRAIN_STEPS=2\.")


def test_bool_for_batch_size(run_dir, capfd):
  _train_fails_on_existing_run(
      run_dir, capfd, ["--gin.BATCH_SIZE=True"],
      r"TrainConfig\.batch_size \(set by the macro BATCH_SIZE\) must be an int, got True \(bool\)",
      r"not True/False, e\.g\. --gin\.BATCH_SIZE=\d+")


def test_decimal_seq_len_blames_seq_len_not_the_mesh(run_dir, capfd):
  _train_fails_on_existing_run(
      run_dir, capfd, ["--gin.SEQ_LEN=32.5"],
      r"TrainConfig\.seq_len \(set by the macro SEQ_LEN\) must be an int, got 32\.5",
      r"--gin\.SEQ_LEN=32\.")
  assert "sequence axis" not in capfd.readouterr().err


def test_infinite_float(tmp_path, capfd):
  _train_fails_on_new_workdir(
      tmp_path, capfd, ["--gin.TrainConfig.clip_norm=1e999"],
      r"TrainConfig\.clip_norm must be a finite number, got inf",
      r"not NaN or infinity\), e\.g\. --gin\.TrainConfig\.clip_norm=1\.0\.")


def test_word_for_a_bool(run_dir, capfd):
  _train_fails_on_existing_run(
      run_dir, capfd, ["--gin.TrainConfig.async_checkpointing=false"],
      r"TrainConfig\.async_checkpointing must be True or False, got 'false'",
      r"e\.g\. --gin\.TrainConfig\.async_checkpointing=False\.")


def test_decimal_mesh_axis_size(run_dir, capfd):
  _train_fails_on_existing_run(
      run_dir, capfd, ["--gin.MeshConfig.shape={'data': 2.5, 'fsdp': 1, 'tensor': 1}"],
      r"MeshConfig\.shape must be a mapping of strings to ints, got \{'data': 2\.5",
      r"e\.g\. --gin\.MeshConfig\.shape=\{'data': -1")


def test_numbers_for_text_files(tmp_path, capfd):
  _train_fails_on_new_workdir(
      tmp_path, capfd, ["--gin.TEXT_FILES=[1, 2]"],
      r"DataConfig\.text_files \(set by the macro TEXT_FILES\) must be a string, a tuple of "
      r"strings or None, got \[1, 2\]")


# Malformed flags.
def test_unclosed_brace_in_a_mesh_flag(run_dir, capfd):
  _train_fails_on_existing_run(
      run_dir, capfd, ["--gin.MeshConfig.shape={'data': -1, 'fsdp': 1"],
      r"--gin\.MeshConfig\.shape=\{'data': -1, 'fsdp': 1: the '\{' opened is never closed",
      r"close it", r"quote the whole flag for the shell")


def test_undefined_macro_in_a_flag(run_dir, capfd):
  _train_fails_on_existing_run(
      run_dir, capfd, ["--gin.TRAIN_STEPS=%FOO"],
      r"TrainConfig\.train_steps = %TRAIN_STEPS = %FOO: the macro %FOO is not defined",
      r"pass --gin\.FOO=VALUE", r"Macros defined: \[.*'TRAIN_STEPS'")
  assert "TrainConfig.value" not in capfd.readouterr().err


def test_reference_to_an_unknown_configurable(tmp_path, capfd):
  _train_fails_on_new_workdir(
      tmp_path, capfd, ["--gin.TrainConfig.init_from=@pretrained"],
      r"--gin\.TrainConfig\.init_from=@pretrained: No configurable matching reference "
      r"'@pretrained'", r"bindable classes: \['DataConfig'")


# Broken gin files.
def test_syntax_error_in_an_included_file_names_that_file_and_line(tmp_path, run_dir, capfd):
  (tmp_path / "base.gin").write_text("include 'runs/quickstart.gin'\n\nTRAIN_STEPS = 3 4\n")
  (tmp_path / "mine.gin").write_text("# My run.\ninclude 'base.gin'\nSEED = 1\n")
  _train_fails_on_existing_run(
      run_dir, capfd, [],
      rf"gin file {tmp_path}/base\.gin, line 3: Expected newline in 'TRAIN_STEPS = 3 4'",
      r"`MACRO = VALUE`", gin_file=f"--gin_file={tmp_path / 'mine.gin'}")


def test_unclosed_bracket_in_a_file_points_at_the_bracket(tmp_path, capfd):
  (tmp_path / "mesh.gin").write_text(
      "include 'runs/quickstart.gin'\n\nMeshConfig.shape = {\n    'data': -1,\n\nSEED = 1\n")
  _train_fails_on_new_workdir(
      tmp_path, capfd, [],
      rf"gin file {tmp_path}/mesh\.gin, line 6: .*the '\{{' opened at line 3 is still open",
      gin_file=f"--gin_file={tmp_path / 'mesh.gin'}")


def test_unknown_field_in_a_file(tmp_path, run_dir, capfd):
  (tmp_path / "typo.gin").write_text("include 'runs/quickstart.gin'\nTrainConfig.trian_steps = 9\n")
  _train_fails_on_existing_run(
      run_dir, capfd, [],
      r"typo\.gin, line 2: Configurable 'TrainConfig' doesn't have a parameter named "
      r"'trian_steps'", r"did you mean: TrainConfig\.train_steps",
      gin_file=f"--gin_file={tmp_path / 'typo.gin'}")


def test_unknown_class_in_a_file(tmp_path, capfd):
  (tmp_path / "cls.gin").write_text("include 'runs/quickstart.gin'\nOptimizer.lr = 1e-3\n")
  _train_fails_on_new_workdir(
      tmp_path, capfd, [], r"cls\.gin, line 2: No configurable matching 'Optimizer'",
      r"bindable classes: \['DataConfig', 'MeshConfig', 'ModelConfig', 'TrainConfig'\]",
      gin_file=f"--gin_file={tmp_path / 'cls.gin'}")


def test_include_of_a_missing_file(tmp_path, run_dir, capfd):
  (tmp_path / "inc.gin").write_text("include 'runs/quickstart.gin'\ninclude 'models/tiny2.gin'\n")
  _train_fails_on_existing_run(
      run_dir, capfd, [],
      rf"gin file 'models/tiny2\.gin' \(included by {tmp_path}/inc\.gin, line 2\) does not exist",
      r"Available run configs: \[.*'quickstart\.gin'",
      gin_file=f"--gin_file={tmp_path / 'inc.gin'}")


def test_include_without_quotes(tmp_path, capfd):
  (tmp_path / "noq.gin").write_text("include runs/quickstart.gin\n")
  _train_fails_on_new_workdir(
      tmp_path, capfd, [], r"noq\.gin, line 1: 'include runs/quickstart\.gin' is not an include",
      r"quote the path, e\.g\. include 'models/tiny\.gin'",
      gin_file=f"--gin_file={tmp_path / 'noq.gin'}")


def test_gin_file_that_is_a_directory(tmp_path, run_dir, capfd):
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "mine.gin").write_text("SEED = 1\n")
  _train_fails_on_existing_run(
      run_dir, capfd, [], r"configs' is a directory .*not a gin file",
      r"name a \.gin file in it, e\.g\. one of \['mine\.gin'\]",
      gin_file=f"--gin_file={tmp_path / 'configs'}")


def test_gin_file_that_is_not_utf8(tmp_path, capfd):
  (tmp_path / "latin1.gin").write_bytes(
      b"include 'runs/quickstart.gin'\n# Ren\xe9's run\nSEED = 1\n")
  _train_fails_on_new_workdir(
      tmp_path, capfd, [], r"latin1\.gin, line 2: byte 0xe9 is not UTF-8 text",
      r"save the file as UTF-8", gin_file=f"--gin_file={tmp_path / 'latin1.gin'}")


# The other commands that read gin: the same checks, the same one line.
@pytest.fixture
def started_jax():
  jax.devices()  # `plan` would otherwise set XLA flags for this whole test process.


def test_plan_refuses_a_word_for_an_int(started_jax, capfd):
  outcome = run_cli(["plan", _QUICKSTART, "--mesh=data:8", *_SMALL, "--gin.TRAIN_STEPS=abc"],
                    capfd)
  assert_clear_failure(outcome, 2, r"^llmjax plan: TrainConfig\.train_steps .* must be an int",
                       r"e\.g\. --gin\.TRAIN_STEPS=")
  assert len(outcome.err.strip().splitlines()) == 1, outcome.err


def test_shardings_refuses_an_unclosed_brace(started_jax, capfd):
  outcome = run_cli(["shardings", "--gin_file=gin_configs/models/tiny.gin", "--mesh=fsdp:8",
                     "--gin.ModelConfig.num_layers=[1, 2"], capfd)
  assert_clear_failure(outcome, 2, r"^llmjax shardings: --gin\.ModelConfig\.num_layers=\[1, 2: "
                       r"the '\[' opened is never closed", r"close it")
  assert len(outcome.err.strip().splitlines()) == 1, outcome.err


def test_shardings_refuses_a_decimal_layer_count(started_jax, capfd):
  outcome = run_cli(["shardings", "--gin_file=gin_configs/models/tiny.gin", "--mesh=fsdp:8",
                     "--gin.ModelConfig.num_layers=2.5"], capfd)
  assert_clear_failure(outcome, 2, r"ModelConfig\.num_layers must be an int, got 2\.5",
                       r"e\.g\. --gin\.ModelConfig\.num_layers=2\.")
