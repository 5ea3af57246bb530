"""Every gin file in the repo parses and builds; bad bindings fail early with the fix."""

from pathlib import Path

import jax
import numpy as np
import pytest

from llmjax.cli import gin_config
from llmjax.models.interface import LanguageModel

GIN_DIR = Path(__file__).resolve().parents[2] / "gin_configs"
MODEL_FILES = sorted(p.relative_to(GIN_DIR).as_posix() for p in GIN_DIR.glob("models/*.gin"))
RUN_FILES = sorted(p.relative_to(GIN_DIR).as_posix() for p in GIN_DIR.glob("runs/*.gin"))
# Macros every run file exposes: overridable with --gin.NAME=VALUE. Corpus runs also expose
# TEXT_FILES, example-file runs TRAIN_FILE and EVAL_FILE.
RUN_MACROS = ("TRAIN_STEPS", "WARMUP_STEPS", "BATCH_SIZE", "SEQ_LEN", "SEED", "CHECKPOINT_EVERY",
              "EVAL_EVERY", "TOKENIZER", "VOCAB_SIZE")
# Every model file binds all of these, so a model file given after another replaces the whole
# shape instead of inheriting, say, the previous file's head_dim.
SHAPE_FIELDS = ("architecture", "vocab_size", "max_seq_len", "num_layers", "num_decoder_layers",
                "num_heads", "num_kv_heads", "head_dim", "embed_dim", "mlp_dim", "position",
                "rope_theta", "relative_num_buckets", "relative_max_distance", "norm", "norm_eps",
                "mlp", "use_bias", "tie_embeddings", "dropout_rate", "sliding_window")
TOY_DATA = Path(__file__).resolve().parents[2] / "experiments" / "toy_data" / "make_toy_data.py"


@pytest.fixture
def in_toy_data_dir(tmp_path, monkeypatch):
  """A working directory holding the generated data the example-file run configs name."""
  import runpy
  toy = runpy.run_path(str(TOY_DATA))
  toy["write"]("sentiment", str(tmp_path / "data" / "sentiment"), 40, 10, 0)
  toy["write"]("reverse", str(tmp_path / "data" / "reverse"), 40, 10, 0)
  monkeypatch.chdir(tmp_path)
  return tmp_path


def test_repo_has_the_documented_gin_files():
  assert "runs/quickstart.gin" in RUN_FILES
  assert {"models/tiny.gin", "models/gpt2_small.gin"} <= set(MODEL_FILES)


@pytest.mark.parametrize("model_file", MODEL_FILES)
def test_model_file_binds_every_shape_field(model_file):
  text = (GIN_DIR / model_file).read_text()
  missing = [f for f in SHAPE_FIELDS if f"ModelConfig.{f} =" not in text]
  assert not missing, f"{model_file} leaves {missing} to whatever was bound before it"


@pytest.mark.parametrize("model_file", MODEL_FILES)
def test_model_file_builds_and_param_count_matches(model_file):
  gin_config.parse([model_file], [])
  config = gin_config.build("ModelConfig")
  lm = LanguageModel(config)
  shapes = jax.eval_shape(lm.init, jax.random.PRNGKey(0))  # Shapes only: gpt2_small is 124M.
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == lm.num_params()


def test_gpt2_small_has_the_gpt2_parameter_count():
  gin_config.parse(["models/gpt2_small.gin"], [])
  assert LanguageModel(gin_config.build("ModelConfig")).num_params() == 124_439_808


@pytest.mark.parametrize("run_file", RUN_FILES)
def test_run_file_builds_every_config_and_exposes_macros(run_file, in_toy_data_dir):
  gin_config.parse([run_file], [])
  configs = gin_config.build_all()
  assert set(configs) == {"model", "data", "train", "mesh"}
  assert configs["train"].seq_len <= configs["model"].max_seq_len
  macros = gin_config._defined_macros()
  assert set(RUN_MACROS) <= set(macros), set(RUN_MACROS) - set(macros)
  assert "TEXT_FILES" in macros or {"TRAIN_FILE", "EVAL_FILE"} <= set(macros)


def test_a_run_file_combines_with_another_model_file():
  gin_config.parse(["runs/quickstart.gin", "models/gpt2_small.gin"], ["BATCH_SIZE = 2"])
  configs = gin_config.build_all()
  assert configs["model"].num_layers == 12 and configs["model"].vocab_size == 50257
  assert configs["data"].vocab_size == 50257  # The data config follows the model's macro.
  assert configs["train"].batch_size == 2


def test_macro_and_field_overrides_from_flags():
  rest, bindings = gin_config.split_gin_flags([
      "--workdir=w", "--gin.TRAIN_STEPS=7", "--gin.WARMUP_STEPS=2", "--gin.TOKENIZER=byte",
      "--gin.TEXT_FILES=corpus/*.txt", "--gin.ModelConfig.num_layers=1",
      "--gin.MeshConfig.shape={'data': 2, 'fsdp': 4, 'tensor': 1}"])
  assert rest == ["--workdir=w"]
  gin_config.parse(["runs/quickstart.gin"], bindings)
  configs = gin_config.build_all()
  assert configs["train"].train_steps == 7
  assert configs["data"].tokenizer == "byte"  # A bare word is taken as a string.
  assert configs["data"].text_files == "corpus/*.txt"
  assert configs["model"].num_layers == 1
  assert configs["mesh"].shape == {"data": 2, "fsdp": 4, "tensor": 1}


def test_unknown_field_lists_close_matches():
  with pytest.raises(gin_config.GinConfigError, match=r"ModelConfig\.num_layers"):
    gin_config.parse(["runs/quickstart.gin"], ["ModelConfig.num_layer = 2"])


def test_unknown_macro_lists_close_matches():
  with pytest.raises(gin_config.GinConfigError, match="TRAIN_STEPS"):
    gin_config.parse(["runs/quickstart.gin"], ["TRAIN_STEP = 2"])


def test_unknown_class_names_the_bindable_ones():
  with pytest.raises(gin_config.GinConfigError, match="Bindable classes"):
    gin_config.parse(["runs/quickstart.gin"], ["Optimizer.learning_rate = 2"])


def test_missing_required_model_field_names_it(tmp_path):
  partial = tmp_path / "partial.gin"
  partial.write_text("ModelConfig.vocab_size = 64\nModelConfig.num_layers = 1\n"
                     "ModelConfig.num_heads = 2\nModelConfig.embed_dim = 16\n"
                     "ModelConfig.max_seq_len = 32\n")
  gin_config.parse([str(partial)], [])
  with pytest.raises(gin_config.GinConfigError, match=r"ModelConfig\.mlp_dim must be set"):
    gin_config.build("ModelConfig")


def test_missing_gin_file_lists_the_run_configs():
  with pytest.raises(gin_config.GinConfigError, match="quickstart.gin"):
    gin_config.parse(["runs/nope.gin"], [])


def test_invalid_value_is_reported_by_the_config_class():
  gin_config.parse(["runs/quickstart.gin"], ["ModelConfig.num_kv_heads = 3"])
  with pytest.raises(ValueError, match="num_kv_heads"):
    gin_config.build("ModelConfig")
