"""The train() driver: bit-exact resume (also after kill -9), config checks, run files."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from llmjax import workdir as workdir_lib
from llmjax.data.pipeline import DataConfig
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sharding.mesh import MeshConfig
from llmjax.training import loop, validation
from llmjax.training.config import TrainConfig

_TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n"


def _configs(corpus_dir: str, **train_changes) -> dict:
  model = ModelConfig(vocab_size=272, num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64,
                      max_seq_len=32, dropout_rate=0.1)
  data = DataConfig(text_files=os.path.join(corpus_dir, "*.txt"), tokenizer="byte",
                    eval_fraction=0.3, cache_dir=os.path.join(corpus_dir, "cache"))
  # Warmup then constant: the schedule does not depend on train_steps, so a run extended from
  # 2 to 6 steps must equal a 6-step run bit for bit.
  train = TrainConfig(train_steps=6, batch_size=8, seq_len=16, warmup_steps=2,
                      end_learning_rate_ratio=1.0, log_every=2, eval_every=3, eval_batches=1,
                      checkpoint_every=2, microbatches=2, async_checkpointing=True)
  return {"model": model, "data": data, "train": train.replace(**train_changes),
          "mesh": MeshConfig(shape={"data": 2, "fsdp": 2, "tensor": 2}, rules="fsdp_tp")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
  directory = tmp_path_factory.mktemp("corpus")
  for i in range(16):
    (directory / f"doc{i}.txt").write_text(_TEXT * (i + 1) + f"# file {i}\n")
  return str(directory)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> tuple[str, dict]:
  """One uninterrupted 6-step run shared by the tests below (compiling is the slow part)."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  out = loop.train(**_configs(corpus), workdir=workdir, operative_config="# operative\n")
  return workdir, out


def _final_params(workdir: str, model: ModelConfig):
  abstract = jax.eval_shape(LanguageModel(model).init, jax.random.PRNGKey(0))
  return jax.device_get(workdir_lib.restore_params(workdir, abstract))


def _data_iter_state(workdir: str, step: int) -> dict:
  """The data iterator state (JSON) saved in checkpoint `step`."""
  directory = os.path.join(workdir_lib.checkpoint_dir(workdir), str(step), "data_iter")
  states = {}
  for name in sorted(os.listdir(directory)):
    if name != "commit_success.txt":  # Orbax's marker, which names the directory.
      with open(os.path.join(directory, name), encoding="utf-8") as f:
        states[name] = json.load(f)
  assert states
  return states


def _assert_bitwise(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_train_writes_run_files_and_metrics(trained, corpus):
  workdir, out = trained
  assert out["step"] == 6 and np.isfinite(out["loss"]) and "eval_loss" in out
  assert open(os.path.join(workdir, "config.gin")).read() == "# operative\n"
  saved = json.load(open(os.path.join(workdir, "run_config.json")))
  assert saved == workdir_lib.run_record(**_configs(corpus))
  assert os.path.exists(os.path.join(workdir, "tokenizer", "tokenizer.json"))
  lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
  train_lines = [x for x in lines if "loss" in x]
  assert [x["step"] for x in train_lines] == [2, 4, 6]
  for key in ("loss", "learning_rate", "tokens_per_sec", "mfu", "grad_norm", "accuracy"):
    assert np.isfinite(train_lines[0][key]), key
  assert [x["step"] for x in lines if "eval_loss" in x] == [3, 6]
  assert workdir_lib.latest_step(workdir) == 6
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_extending_train_steps_resumes_bitwise(tmp_path, trained, corpus):
  full, _ = trained
  split = str(tmp_path / "split")
  loop.train(**_configs(corpus, train_steps=2), workdir=split)
  assert workdir_lib.latest_step(split) == 2
  out = loop.train(**_configs(corpus), workdir=split)
  assert out["step"] == 6
  model = _configs(corpus)["model"]
  _assert_bitwise(_final_params(full, model), _final_params(split, model))
  assert _data_iter_state(full, 6) == _data_iter_state(split, 6)
  # A finished run given the same train_steps again does nothing.
  assert loop.train(**_configs(corpus), workdir=split)["step"] == 6


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    sys.path.insert(0, {test_dir!r})
    from test_loop import _configs
    from llmjax.training import checkpoint as ckpt_lib, loop
    kill_at, steps = int(sys.argv[2]), int(sys.argv[3])
    save = ckpt_lib.Checkpointer.save
    def save_then_die(self, step, *args, **kwargs):
      result = save(self, step, *args, **kwargs)
      if step == kill_at:  # Mid-way through an async save: leaves a torn temporary dir.
        os.kill(os.getpid(), signal.SIGKILL)
      return result
    ckpt_lib.Checkpointer.save = save_then_die
    loop.train(**_configs({corpus!r}, train_steps=steps), workdir=sys.argv[1])
""")


def _run_script(script: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.slow
def test_resume_after_kill_9_matches_uninterrupted_run(tmp_path, trained, corpus):
  full, _ = trained  # XLA on CPU gives the same bits in a new process with the same flags.
  killed = str(tmp_path / "killed")
  script = _KILL_SCRIPT.format(test_dir=os.path.dirname(__file__), corpus=corpus)
  # Killed right after starting the async save of step 4: its temporary dir is torn (unless
  # the tiny save won the race), so the resume starts from step 2 (or 4).
  died = _run_script(script, killed, "4", "6")
  assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
  assert workdir_lib.latest_step(killed) in (2, 4)
  resumed = _run_script(script, killed, "-1", "6")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert workdir_lib.latest_step(killed) == 6
  model = _configs(corpus)["model"]
  _assert_bitwise(_final_params(full, model), _final_params(killed, model))
  assert _data_iter_state(full, 6) == _data_iter_state(killed, 6)
  steps = [json.loads(x)["step"] for x in open(os.path.join(killed, "metrics.jsonl"))]
  assert steps == sorted(steps)  # Lines the killed run logged past its checkpoint were dropped.


def test_incompatible_config_is_refused_with_diff_and_nothing_touched(trained, corpus):
  workdir, _ = trained
  files = [os.path.join(d, f) for d, _, fs in os.walk(workdir) for f in fs]
  before = {p: (os.path.getmtime(p), open(p, "rb").read()) for p in files}
  changed = _configs(corpus, train_steps=9, batch_size=16, seed=3, log_every=1)
  changed["model"] = changed["model"].replace(num_layers=3)
  with pytest.raises(ValueError) as info:
    loop.train(**changed, workdir=workdir)
  message = str(info.value)
  refused = message.split("Fields that may change")[0]
  assert "train.batch_size: 8 -> 16" in refused
  assert "train.seed: 0 -> 3" in refused
  assert "model.num_layers: 1 -> 3" in refused
  assert "train_steps" not in refused and "log_every" not in refused
  files = [os.path.join(d, f) for d, _, fs in os.walk(workdir) for f in fs]
  assert {p: (os.path.getmtime(p), open(p, "rb").read()) for p in files} == before


def test_small_vocab_fails_before_anything_is_written(tmp_path, corpus):
  cfg = _configs(corpus)
  cfg["model"] = cfg["model"].replace(vocab_size=100)
  with pytest.raises(ValueError, match=r"set ModelConfig.vocab_size >= \d+"):
    loop.train(**cfg, workdir=str(tmp_path / "run"))
  assert not (tmp_path / "run" / "run_config.json").exists()


def test_seq_len_and_batch_checks(tmp_path, corpus):
  with pytest.raises(ValueError, match="max_seq_len"):
    loop.train(**_configs(corpus, seq_len=64), workdir=str(tmp_path / "a"))
  with pytest.raises(ValueError, match="multiple of 4"):
    loop.train(**_configs(corpus, batch_size=8, microbatches=4), workdir=str(tmp_path / "b"))


def test_log_record_throughput_counts_non_padding_tokens():
  steps = [{"loss": 2.0, "learning_rate": 0.1, "num_tokens": np.float32(300.0)},
           {"loss": 4.0, "learning_rate": 0.2, "num_tokens": np.float32(500.0)}]
  record = loop.log_record(steps, 4.0, flops_per_token=6e3, peak_flops=1e6)
  assert record["tokens_per_sec"] == 200.0  # (300 + 500) tokens / 4 s, padding excluded.
  assert record["mfu"] == pytest.approx(200.0 * 6e3 / (1e6 * jax.device_count()))
  assert record["loss"] == 3.0 and record["learning_rate"] == 0.2
  assert "num_tokens" not in record


def test_config_diff_lists_changed_fields():
  old = {"train": {"seed": 0, "train_steps": 5}, "model": {"num_layers": 2}}
  new = {"train": {"seed": 1, "train_steps": 9}, "model": {"num_layers": 2}}
  assert validation.config_diff(old, new) == [("train.seed", 0, 1), ("train.train_steps", 5, 9)]
