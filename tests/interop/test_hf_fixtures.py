"""The HF fixtures themselves: folders as transformers 5 writes them, no tensor left at its
initializer constant, working reference outputs, and tokenizers with HF special ids."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch", reason="HF fixtures need torch (pip install -e '.[test]').")
pytest.importorskip("transformers", reason="HF fixtures need transformers.")
pytest.importorskip("safetensors", reason="HF fixtures need safetensors.")

import sentencepiece as spm  # noqa: E402
from safetensors import safe_open  # noqa: E402

from tests.interop import hf_fixtures  # noqa: E402

VARIANTS = {
    "gpt2": (hf_fixtures.make_gpt2, {}),
    "gpt2_untied": (hf_fixtures.make_gpt2, {"tied": False}),
    "llama": (hf_fixtures.make_llama, {}),
    "llama_tied": (hf_fixtures.make_llama, {"tie": True}),
    "llama_sharded": (hf_fixtures.make_llama, {"max_shard_size": "20KB"}),
    "bert": (hf_fixtures.make_bert, {}),
    "t5_v1_1": (hf_fixtures.make_t5, {}),
    "t5": (hf_fixtures.make_t5, {"v1_1": False}),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
  root = tmp_path_factory.mktemp("hf")
  return {name: fn(str(root / name), **kw) for name, (fn, kw) in VARIANTS.items()}


def _saved(path: str) -> dict[str, np.ndarray]:
  tensors = {}
  for name in sorted(os.listdir(path)):
    if name.endswith(".safetensors"):
      with safe_open(os.path.join(path, name), "np") as f:
        tensors.update({k: f.get_tensor(k) for k in f.keys()})
  return tensors


def _input_ids(batch: int = 2, length: int = 7) -> np.ndarray:
  return np.random.default_rng(1).integers(3, hf_fixtures.VOCAB_SIZE, size=(batch, length))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_folder_is_safetensors_only(built, name):
  files = set(os.listdir(built[name]["path"]))
  assert "config.json" in files
  assert not any(f.endswith(".bin") for f in files), files
  if name == "llama_sharded":
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
  else:
    assert "model.safetensors" in files


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_tensor_moved_off_its_initializer(built, name):
  saved = _saved(built[name]["path"])
  assert saved
  for key, value in saved.items():
    # Init constants are all-ones (norm weights) or all-zeros (biases): a constant tensor
    # means the perturbation missed it.
    assert np.ptp(value) > 0.05, f"{key} is (nearly) constant"
  params = dict(built[name]["model"].named_parameters())
  # Every saved tensor is a live parameter (no buffers), with the model's values.
  assert set(saved) <= set(params), set(saved) - set(params)
  for key, value in saved.items():
    np.testing.assert_array_equal(value, params[key].detach().numpy())


def test_sharded_folder_has_index(built):
  path = built["llama_sharded"]["path"]
  with open(os.path.join(path, "model.safetensors.index.json")) as f:
    weight_map = json.load(f)["weight_map"]
  assert len(set(weight_map.values())) > 1
  assert set(weight_map) == set(_saved(path)) == set(_saved(built["llama"]["path"]))


def test_tied_and_untied_heads_as_saved(built):
  def keys(name):
    return set(_saved(built[name]["path"]))
  assert "lm_head.weight" not in keys("gpt2") and "lm_head.weight" in keys("gpt2_untied")
  assert "lm_head.weight" in keys("llama") and "lm_head.weight" not in keys("llama_tied")
  assert "lm_head.weight" in keys("t5_v1_1") and "lm_head.weight" not in keys("t5")
  for name in ("t5", "t5_v1_1"):
    assert not any("embed_tokens" in k for k in keys(name))
  bert = keys("bert")
  assert "cls.predictions.bias" in bert
  assert not any(k.startswith("cls.predictions.decoder") for k in bert)


def test_configs_record_what_converters_read(built):
  def config(name):
    with open(os.path.join(built[name]["path"], "config.json")) as f:
      return json.load(f)
  assert config("llama")["rope_parameters"]["rope_theta"] == 50000.0
  assert config("llama")["num_key_value_heads"] == 2
  t5_v1_1, t5 = config("t5_v1_1"), config("t5")
  assert (t5_v1_1["tie_word_embeddings"], t5_v1_1["feed_forward_proj"]) == (False, "gated-gelu")
  assert (t5["tie_word_embeddings"], t5["feed_forward_proj"]) == (True, "relu")
  assert t5_v1_1["num_heads"] * t5_v1_1["d_kv"] != t5_v1_1["d_model"]
  assert t5_v1_1["num_decoder_layers"] != t5_v1_1["num_layers"]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_reload_reproduces_logits(built, name):
  out = built[name]
  decoder_ids = None
  if name.startswith("t5"):  # The start token (0), then ordinary tokens.
    decoder_ids = np.concatenate([np.zeros((2, 1), np.int64), _input_ids(length=4)], axis=1)
  logits = hf_fixtures.torch_logits(out["model"], _input_ids(), decoder_ids)
  assert logits.dtype == np.float32 and np.isfinite(logits).all()
  # Not degenerate: O(1) spread over the vocabulary and more than one argmax.
  assert 0.3 < logits.std(-1).mean() < 3.0
  assert len(np.unique(logits.argmax(-1))) > 1
  reloaded = type(out["model"]).from_pretrained(out["path"]).eval()
  np.testing.assert_allclose(hf_fixtures.torch_logits(reloaded, _input_ids(), decoder_ids),
                             logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5_v1_1"])
def test_hf_greedy_matches_argmax_loop(built, name):
  model, prompt, steps = built[name]["model"], _input_ids(length=5), 6
  got = hf_fixtures.hf_greedy(model, prompt, steps)
  assert got.shape == (2, steps)
  encoder_decoder = name.startswith("t5")
  seq = np.zeros((2, 1), np.int64) if encoder_decoder else prompt
  for _ in range(steps):
    logits = (hf_fixtures.torch_logits(model, prompt, seq) if encoder_decoder
              else hf_fixtures.torch_logits(model, seq))
    seq = np.concatenate([seq, logits[:, -1].argmax(-1)[:, None]], axis=1)
  np.testing.assert_array_equal(got, seq[:, -steps:])


@pytest.mark.parametrize("style, ids", [
    ("llama", dict(unk=0, bos=1, eos=2, pad=-1)),
    ("t5", dict(pad=0, eos=1, unk=2, bos=-1)),
])
def test_sentencepiece_special_ids(style, ids, tmp_path):
  path = hf_fixtures.write_sentencepiece(str(tmp_path), style)
  assert path == os.path.join(tmp_path, "tokenizer.model")
  sp = spm.SentencePieceProcessor(model_file=path)
  assert sp.get_piece_size() <= hf_fixtures.VOCAB_SIZE
  assert dict(unk=sp.unk_id(), bos=sp.bos_id(), eos=sp.eos_id(), pad=sp.pad_id()) == ids
  text = "def return the value"
  assert sp.decode(sp.encode(text)) == text
