"""benchmarks/peer_throughput.py: its PyTorch peer computes llmjax's model; its JSON; refusals."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

from llmjax.cli import gin_config  # noqa: E402
from llmjax.interop import gpt2, hf  # noqa: E402
from llmjax.models.interface import LanguageModel  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peer_throughput.py"
SMALL = ["--gin_file=runs/benchmark.gin", "--gin_file=models/gpt_cpu_small.gin"]


def _load_script():
  spec = importlib.util.spec_from_file_location("peer_throughput", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config(bindings=()):
  gin_config.parse(["runs/benchmark.gin", "models/gpt_cpu_small.gin"], list(bindings))
  return gin_config.build_all()["model"]


@pytest.mark.parametrize("approximate", [True, False])
def test_nanogpt_peer_computes_llmjax_logits(approximate):
  script = _load_script()
  cfg = _config([f"ModelConfig.gelu_approximate = {approximate}"])
  lm = LanguageModel(cfg)
  params = lm.init(jax.random.PRNGKey(3))
  # Larger weights than the init's, so every block moves the logits measurably.
  params = jax.tree.map(lambda p, k: p + 0.2 * jax.random.normal(k, p.shape), params,
                        jax.tree.unflatten(jax.tree.structure(params),
                                           list(jax.random.split(jax.random.PRNGKey(4),
                                                                 len(jax.tree.leaves(params))))))
  peer = script.NanoGPT(cfg)
  peer.load_hf_tensors(dict(hf.hf_tensors(cfg, params, gpt2)))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 24), np.int32)
  positions = jnp.broadcast_to(jnp.arange(24, dtype=jnp.int32), (2, 24))
  expected, _ = lm.logits_fn(params, jnp.asarray(tokens), positions, None)
  with torch.no_grad():
    got = peer.logits(torch.as_tensor(tokens, dtype=torch.long)).numpy()
  assert np.abs(np.asarray(expected)).max() > 1.0
  np.testing.assert_allclose(got, np.asarray(expected), atol=2e-4, rtol=2e-4)


def test_train_peer_reports_the_same_model():
  script = _load_script()
  result = script.main(["--task=train", *SMALL, "--gin.BATCH_SIZE=2", "--gin.SEQ_LEN=16",
                        "--steps=2", "--repeats=2", "--warmup=1"])
  json.loads(json.dumps(result))
  assert result["num_params"] == LanguageModel(_config()).num_params()
  assert result["tokens_per_sec_min"] <= result["tokens_per_sec"] <= result["tokens_per_sec_max"]
  assert (result["batch_size"], result["seq_len"]) == (2, 16)
  assert np.isfinite(result["final_loss"]) and result["final_loss"] < np.log(65) + 1.0


def test_decode_peer_generates_new_tokens():
  script = _load_script()
  result = script.main(["--task=decode", *SMALL, "--batch_size=2", "--prompt_len=8",
                        "--new_tokens=6", "--repeats=1", "--warmup=0"])
  json.loads(json.dumps(result))
  assert result["tokens_per_sec"] > 0 and result["new_tokens"] == 6
  assert result["num_params"] == LanguageModel(_config()).num_params()


@pytest.mark.parametrize("argv, message", [
    (["--gin_file=runs/benchmark.gin", "--gin_file=models/tiny.gin"], "GPT-2-shaped"),
    ([*SMALL, "--prompt_len=60", "--new_tokens=8"], "max_seq_len 64"),
])
def test_refuses_what_has_no_peer(argv, message):
  script = _load_script()
  with pytest.raises(ValueError, match=message):
    script.main(["--task=decode", *argv, "--repeats=1"])
