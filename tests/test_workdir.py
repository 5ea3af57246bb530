"""llmjax/workdir.py, the run-directory format: a round trip, every bad-directory error (the same
message from every reader), a converted workdir, and foreign directories refused untouched."""

import json
import os

import jax
import numpy as np
import pytest

import llmjax
from llmjax import workdir as workdir_lib
from llmjax.data.pipeline import DataConfig
from llmjax.data.tokenizer import ByteTokenizer
from llmjax.interop.workdir import export_hf, import_hf
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sharding.mesh import MeshConfig
from llmjax.training import loop, validation, warm_start
from llmjax.training.config import TrainConfig

# A GPT-2 shape (learned positions, LayerNorm, biases, tied head), so it also exports to HF.
CONFIG = ModelConfig(vocab_size=272, num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64,
                     max_seq_len=32, position="learned", norm="layernorm", mlp="gelu",
                     use_bias=True, tie_embeddings=True)


def _configs(tmp_path) -> dict:
  data = DataConfig(text_files=str(tmp_path / "corpus" / "*.txt"), tokenizer="byte")
  return {"model": CONFIG, "data": data, "train": TrainConfig(train_steps=2, warmup_steps=1),
          "mesh": MeshConfig()}


def _params():
  return LanguageModel(CONFIG).init(jax.random.PRNGKey(0))


def _write(path, *, params=None, step=3) -> dict:
  """A trained-looking workdir: run files, the byte tokenizer and one params checkpoint."""
  record = workdir_lib.run_record(**_configs(path.parent))
  workdir_lib.write_run_files(str(path), record, tokenizer=ByteTokenizer(),
                              config_gin="# operative\n")
  if params is not None:
    workdir_lib.save_params(str(path), params, step=step)
  return record


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)),
                  strict=True):
    np.testing.assert_array_equal(x, y)


def _snapshot(path) -> dict:
  return {os.path.join(d, f): open(os.path.join(d, f), "rb").read()
          for d, _, fs in os.walk(path) for f in fs}


def test_round_trip(tmp_path):
  path = tmp_path / "run"
  params = _params()
  record = _write(path, params=params)
  assert sorted(os.listdir(path)) == ["checkpoints", "config.gin", "run_config.json",
                                      "tokenizer"]  # No .tmp left behind.
  saved = workdir_lib.read_run_config(str(path))
  assert saved.workdir == str(path) and saved.model == CONFIG and saved.converted_from is None
  assert dict(saved.sections) == record
  assert workdir_lib.existing_run(str(path)) == saved
  assert open(workdir_lib.config_gin_path(str(path))).read() == "# operative\n"
  assert workdir_lib.load_tokenizer(str(path), CONFIG).kind == "byte"
  assert workdir_lib.checkpoint_steps(str(path)) == [3]
  assert workdir_lib.latest_step(str(path)) == workdir_lib.resolve_step(str(path)) == 3
  abstract = jax.eval_shape(LanguageModel(CONFIG).init, jax.random.PRNGKey(0))
  _assert_same(workdir_lib.restore_params(str(path), abstract), params)
  loaded = llmjax.load(str(path))
  assert loaded.config == CONFIG and loaded.step == 3
  _assert_same(loaded.params, params)
  # A second write keeps the saved tokenizer (a resumed run never changes it).
  marker = os.path.join(workdir_lib.tokenizer_dir(str(path)), "marker")
  open(marker, "w").close()
  _write(path)
  assert os.path.exists(marker)


def test_run_record_matches_what_train_writes(tmp_path):
  record = workdir_lib.run_record(**_configs(tmp_path))
  assert set(record) == {"model", "data", "train", "mesh"}
  assert record == json.loads(json.dumps(record))  # JSON values only (tuples as lists).
  assert record["model"]["num_layers"] == 1 and record["train"]["train_steps"] == 2


def _bad(path, kind: str) -> None:
  """Makes `path` a directory of the given bad kind."""
  if kind == "missing":
    return
  path.mkdir()
  text = {"no run_config": None, "not json": "{oops",
          "no model": json.dumps({"train": {}}),
          "another version": json.dumps({"model": {**json.loads(CONFIG.to_json()),
                                                   "future_field": 1}})}[kind]
  if text is not None:
    (path / "run_config.json").write_text(text)


BAD = [("missing", FileNotFoundError, "no such directory"),
       ("no run_config", FileNotFoundError, "run_config.json not found"),
       ("not json", ValueError, r"run_config.json is not valid JSON \(.* at line 1 column 2\); "
        "nothing was changed: repair the file"),
       ("no model", ValueError, r"has no 'model' entry; keys: \['train'\]"),
       ("another version", ValueError, r"model fields \['future_field'\].*another llmjax "
        "version")]


@pytest.mark.parametrize("kind, error, reason", BAD)
def test_each_bad_directory_error(tmp_path, kind, error, reason):
  path = tmp_path / "w"
  _bad(path, kind)
  with pytest.raises(error, match=reason) as info:
    workdir_lib.read_run_config(str(path), flag="--workdir")
  message = str(info.value)
  if kind == "not json":  # A damaged workdir file, not a foreign directory: how to repair it.
    assert message.startswith(f"--workdir={path}: {path}/run_config.json is not valid JSON")
    return
  assert message.startswith(f"--workdir={path} is not an llmjax workdir (")
  if kind != "another version":  # That one says which version to use instead.
    assert "`llmjax train" in message and "llmjax convert --from_hf" in message


@pytest.mark.parametrize("reader", ["load", "warm_start", "export_hf"])
def test_every_reader_gives_the_same_error(tmp_path, reader):
  path = tmp_path / "w"
  _bad(path, "no run_config")
  read = {"load": lambda: llmjax.load(str(path)),
          "warm_start": lambda: warm_start.plan(str(path), _params()),
          "export_hf": lambda: export_hf(str(path), str(tmp_path / "out"))}[reader]
  with pytest.raises(FileNotFoundError, match="is not an llmjax workdir .*run_config.json not "
                     "found.*`llmjax train"):
    read()
  assert not (tmp_path / "out").exists()


def test_missing_tokenizer_and_checkpoints(tmp_path):
  path = tmp_path / "w"
  _write(path)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*checkpoints.*llmjax train"):
    workdir_lib.resolve_step(str(path))
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    llmjax.load(str(path))
  workdir_lib.save_params(str(path), _params(), step=3)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 9 .*available: \[3\]"):
    workdir_lib.resolve_step(str(path), 9)
  for name in os.listdir(workdir_lib.tokenizer_dir(str(path))):
    os.remove(os.path.join(workdir_lib.tokenizer_dir(str(path)), name))
  with pytest.raises(FileNotFoundError, match="no tokenizer in"):
    llmjax.load(str(path))


def test_check_vocab_messages(tmp_path):
  workdir_lib.check_vocab(272, 260, extra_ids=12)  # Exactly enough.
  with pytest.raises(ValueError, match=r"tokenizer vocab_size=300 is larger than the model's "
                     r"vocab_size=272: set ModelConfig.vocab_size >= 300"):
    workdir_lib.check_vocab(272, 300)
  with pytest.raises(ValueError, match=r"vocab_size=260 \+ 13 objective extra ids .* = 273 ids "
                     r"is larger than the model's vocab_size=272: set ModelConfig.vocab_size "
                     r">= 273"):
    workdir_lib.check_vocab(272, 260, extra_ids=13)
  path = tmp_path / "w"
  _write(path)
  with pytest.raises(ValueError, match="larger than the model's vocab_size=100"):
    workdir_lib.load_tokenizer(str(path), CONFIG.replace(vocab_size=100))


def test_a_converted_workdir(tmp_path):
  """HF export of a workdir, imported back: a converted workdir, read like any other."""
  source, hf_dir, converted = tmp_path / "src", tmp_path / "hf", tmp_path / "converted"
  params = _params()
  _write(source, params=params)
  export_hf(str(source), str(hf_dir))
  import_hf(str(hf_dir), str(converted))
  assert sorted(os.listdir(converted)) == ["checkpoints", "model.gin", "run_config.json",
                                           "tokenizer"]
  record = workdir_lib.read_run_config(str(converted))
  assert record.converted_from["model_type"] == "gpt2"
  assert record.converted_from["hf_dir"] == str(hf_dir)
  assert workdir_lib.checkpoint_steps(str(converted)) == [0]
  abstract = jax.eval_shape(LanguageModel(record.model).init, jax.random.PRNGKey(0))
  _assert_same(workdir_lib.restore_params(str(converted), abstract), params)
  assert workdir_lib.load_tokenizer(str(converted), record.model).kind == "ids"
  # It is fine-tuned from (warm start), never resumed.
  assert warm_start.plan(str(converted), abstract).step == 0
  with pytest.raises(ValueError, match="converted checkpoint.*init_from"):
    validation.check_resume_compatible(workdir_lib.existing_run(str(converted)),
                                       workdir_lib.run_record(**_configs(tmp_path)))


def test_new_directories_and_leftovers_are_not_foreign(tmp_path):
  assert workdir_lib.existing_run(str(tmp_path / "missing")) is None
  (tmp_path / "empty").mkdir()
  assert workdir_lib.existing_run(str(tmp_path / "empty")) is None
  torn = tmp_path / "torn"  # A first write cut short, and a filesystem's dotfile.
  torn.mkdir()
  (torn / "run_config.json.tmp").write_text("{")
  (torn / ".nfs0001").write_text("")
  assert workdir_lib.existing_run(str(torn)) is None


def test_a_foreign_directory_is_refused_before_anything_is_written(tmp_path):
  foreign = tmp_path / "home"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  (foreign / "photos").mkdir()
  before = _snapshot(foreign)
  with pytest.raises(FileExistsError, match=r"--workdir=.*home is not an llmjax workdir \(it "
                     r"holds notes.txt, photos and no run_config.json\): nothing was written"):
    workdir_lib.existing_run(str(foreign))
  with pytest.raises(FileExistsError, match="is not an llmjax workdir"):
    loop.train(**_configs(tmp_path), workdir=str(foreign))
  assert _snapshot(foreign) == before and sorted(os.listdir(foreign)) == ["notes.txt", "photos"]
  with pytest.raises(FileExistsError):
    workdir_lib.existing_run(str(foreign / "notes.txt"))  # A file is not a directory.


def test_write_text_is_atomic_and_knows_the_names(tmp_path):
  workdir_lib.write_text(str(tmp_path), workdir_lib.PROVENANCE, "{}")
  assert os.listdir(tmp_path) == ["provenance.json"]
  with pytest.raises(ValueError, match="not a workdir file"):
    workdir_lib.write_text(str(tmp_path), "notes.txt", "x")
