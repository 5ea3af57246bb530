"""HF checkpoints in and out against transformers itself: logits parity, bit-identical round
trips, greedy generation token for token, sharded loading, and bad-input errors."""

import json
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="HF parity tests need torch (the test extra "
                            "installs torch==2.13.0, a CPU build)")
transformers = pytest.importorskip("transformers", reason="HF parity tests need transformers")

import jax  # noqa: E402

import llmjax  # noqa: E402
from llmjax.interop import hf  # noqa: E402
from llmjax.interop.safetensors_io import SafetensorsFolder, write_tensors  # noqa: E402
from llmjax.interop.workdir import export_hf, import_hf  # noqa: E402
from llmjax.models.interface import LanguageModel  # noqa: E402
from llmjax.sharding.mesh import make_mesh  # noqa: E402
from tests.interop import hf_fixtures as fx  # noqa: E402

VARIANTS = {
    "gpt2": lambda p: fx.make_gpt2(p),
    "llama": lambda p: fx.make_llama(p),
    "llama_tied": lambda p: fx.make_llama(p, tie=True),
    "bert": lambda p: fx.make_bert(p),  # Exact (erf) GELU.
    # BERT's MLM head transform applies hidden_act too: logits differ by up to 0.26 if not.
    "bert_relu": lambda p: fx.make_bert(p, hidden_act="relu"),
    "bert_gelu_new": lambda p: fx.make_bert(p, hidden_act="gelu_new"),
    "t5_v1_1": lambda p: fx.make_t5(p, v1_1=True),
    "t5_v1_0": lambda p: fx.make_t5(p, v1_1=False),
}
MODEL_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                 "bert": "BertForMaskedLM", "t5": "T5ForConditionalGeneration"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """name -> (HF fixture dict, HF folder, converted workdir), built on first use."""
  cache = {}

  def get(name: str):
    if name not in cache:
      root = tmp_path_factory.mktemp(name)
      made = VARIANTS[name](str(root / "hf"))
      import_hf(str(root / "hf"), str(root / "workdir"))
      cache[name] = (made, str(root / "hf"), str(root / "workdir"))
    return cache[name]
  return get


def _ids(seed: int, shape=(2, 11)) -> np.ndarray:
  return np.random.default_rng(seed).integers(3, fx.VOCAB_SIZE, shape)


def _assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
  """Relative to the logits' scale: |got - want| <= rtol * max|want|, element by element."""
  scale = np.abs(want).max()
  err = np.abs(got - want).max()
  assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol} * {scale:.3g}"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers(converted, name):
  made, _, workdir = converted(name)
  loaded = llmjax.load(workdir)
  ids = _ids(0)
  if name.startswith("t5"):
    decoder = np.concatenate([np.zeros((2, 1), np.int64), _ids(1, (2, 6))], axis=1)
    got = loaded.logits(ids, decoder_input_ids=decoder)
    want = fx.torch_logits(made["model"], ids, decoder)
  else:
    got = loaded.logits(ids)
    want = fx.torch_logits(made["model"], ids)
  assert got.shape == want.shape
  _assert_close(got, want)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_round_trip_is_bit_identical_and_loads_in_transformers(converted, name, tmp_path):
  made, hf_dir, workdir = converted(name)
  out = str(tmp_path / "exported")
  export_hf(workdir, out)
  original, exported = SafetensorsFolder(hf_dir), SafetensorsFolder(out)
  assert sorted(exported.keys()) == sorted(original.keys())
  for key in original.keys():
    a, b = original.get(key), exported.get(key)
    assert a.dtype == b.dtype and a.shape == b.shape, key
    assert a.tobytes() == b.tobytes(), f"{key} changed in the round trip"
  # transformers loads the export with no custom code and computes the same function.
  model_type = json.load(open(os.path.join(out, "config.json")))["model_type"]
  cls = getattr(transformers, MODEL_CLASSES[model_type])
  reloaded = cls.from_pretrained(out).eval()
  ids = _ids(2)
  decoder = np.zeros((2, 3), np.int64) if model_type == "t5" else None
  np.testing.assert_array_equal(fx.torch_logits(reloaded, ids, decoder),
                                fx.torch_logits(made["model"], ids, decoder))


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama_tied", "t5_v1_1", "t5_v1_0"])
def test_greedy_generation_matches_transformers(converted, name):
  made, _, workdir = converted(name)
  loaded = llmjax.load(workdir)
  prompts = _ids(3, (2, 5))
  new = 12
  want = fx.hf_greedy(made["model"], prompts, new)  # EOS suppressed until `new` tokens.
  got = loaded.generate_ids(prompts.tolist(), max_new_tokens=new, temperature=0.0)
  eos = made["config"].eos_token_id
  for row, (ours, theirs) in enumerate(zip(got, want, strict=True)):
    assert ours == theirs[:len(ours)].tolist(), (row, ours, theirs)
    if len(ours) < new:  # llmjax stopped at EOS: it must really be the argmax there.
      assert theirs[len(ours)] != eos
      prefix = np.asarray([list(prompts[row]) + ours])
      if name.startswith("t5"):
        logits = fx.torch_logits(made["model"], prompts[row:row + 1],
                                 np.asarray([[0] + ours]))[0, -1]
      else:
        logits = fx.torch_logits(made["model"], prefix)[0, -1]
      assert int(np.argmax(logits)) == eos


def test_sharded_placement_equals_single_device(tmp_path):
  made = fx.make_llama(str(tmp_path / "hf"))
  single = hf.load_hf(str(tmp_path / "hf"))
  mesh = make_mesh({"fsdp": 8})
  sharded = hf.load_hf(str(tmp_path / "hf"), mesh=mesh, rules="fsdp")
  embed = sharded.params["token_embed"]["embedding"]
  assert len(embed.sharding.device_set) == 8
  # Each device holds a slice, not the whole table: the model is spread over the mesh.
  assert embed.addressable_shards[0].data.size < embed.size
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  lm = LanguageModel(sharded.config)
  ids = _ids(4)
  logits = jax.jit(lambda p, t: lm.apply(p, t)[0])(sharded.params, ids)
  _assert_close(np.asarray(logits), fx.torch_logits(made["model"], ids))


def test_sharded_safetensors_index_folder(tmp_path):
  made = fx.make_bert(str(tmp_path / "hf"), max_shard_size="20KB")
  assert os.path.exists(tmp_path / "hf" / "model.safetensors.index.json")
  loaded = hf.load_hf(str(tmp_path / "hf"))
  ids = _ids(5)
  logits = LanguageModel(loaded.config).apply(loaded.params, ids)[0]
  _assert_close(np.asarray(logits), fx.torch_logits(made["model"], ids))


def test_sentencepiece_tokenizer_is_converted(tmp_path):
  hf_dir = tmp_path / "hf"
  fx.make_t5(str(hf_dir), v1_1=True)
  fx.write_sentencepiece(str(hf_dir), "t5")
  import_hf(str(hf_dir), str(tmp_path / "w"))
  loaded = llmjax.load(str(tmp_path / "w"))
  tok = loaded.tokenizer
  # T5: pad 0, eos 1, no BOS; the decoder starts from decoder_start_token_id (0).
  assert (tok.kind, tok.pad_id, tok.eos_id, tok.bos_id) == ("sentencepiece", 0, 1, 0)
  text = loaded.generate("def f(x):", max_new_tokens=4, temperature=0.0)
  assert isinstance(text[0], str)


def _t5_stops_at_eos(model, encoder_ids, ours, suppress) -> bool:
  """Whether transformers' next token after `ours` (with `suppress` never chosen) is EOS."""
  logits = fx.torch_logits(model, np.asarray([encoder_ids]), np.asarray([[0] + ours]))[0, -1]
  logits[suppress] = -np.inf
  return int(np.argmax(logits)) == model.config.eos_token_id


def test_t5_span_filling_matches_transformers(tmp_path):
  # A hub-style T5 folder: spiece.model (80 pieces) + 10 extra ids after them, model vocab 96
  # (as 32000 + 100 in a real T5's 32128): <extra_id_i> is 89 - i, not the top row 95 - i.
  hf_dir = tmp_path / "hf"
  made = fx.make_t5(str(hf_dir), v1_1=True)
  hf_tok = fx.write_t5_tokenizer(str(hf_dir), pieces=80, extra_ids=10)
  import_hf(str(hf_dir), str(tmp_path / "w"))
  loaded = llmjax.load(str(tmp_path / "w"))
  names = [f"<extra_id_{i}>" for i in range(10)]
  assert loaded.tokenizer.sentinel_ids == tuple(hf_tok.convert_tokens_to_ids(names))
  assert loaded.tokenizer.sentinel_ids == tuple(range(89, 79, -1))
  # Rows 90-95 have no token: llmjax never emits them, so transformers must not either.
  untrained = list(range(90, fx.VOCAB_SIZE))
  new = 12
  for prompt in ["the function <extra_id_0> a value <extra_id_1> class",
                 "<extra_id_0> import <extra_id_2> return self"]:
    encoder_ids = hf_tok(prompt).input_ids  # Pieces, sentinels and </s>.
    assert loaded.sampler.encode_prompts([prompt]) == [encoder_ids]
    want = fx.hf_greedy(made["model"], np.asarray([encoder_ids]), new,
                        suppress_tokens=untrained)[0].tolist()
    got = loaded.generate_ids([encoder_ids], max_new_tokens=new, temperature=0.0)[0]
    assert got and got == want[:len(got)], (prompt, got, want)
    assert len(got) == new or _t5_stops_at_eos(made["model"], encoder_ids, got, untrained)
    # The text names each sentinel as transformers does (llmjax's SentencePiece decode leaves
    # out the space transformers puts after a sentinel).
    text = loaded.generate(prompt, max_new_tokens=new, temperature=0.0)[0]
    hf_text = hf_tok.decode(got, skip_special_tokens=False)
    assert re.findall(r"<extra_id_\d+>", text) == re.findall(r"<extra_id_\d+>", hf_text)
    assert text.replace(" ", "") == hf_text.replace(" ", "")


def test_bert_special_ids_come_from_its_tokenizer_files(tmp_path):
  # config.json names only [PAD]; [CLS], [SEP], [UNK] and [MASK] are in vocab.txt and named by
  # tokenizer_config.json (here at 92, 93, 91, 94: neither BERT's 101-103 nor 0-3).
  hf_dir = tmp_path / "hf"
  fx.make_bert(str(hf_dir))
  hf_tok = fx.write_bert_tokenizer(str(hf_dir))
  want = (hf_tok.pad_token_id, hf_tok.cls_token_id, hf_tok.sep_token_id, hf_tok.unk_token_id,
          hf_tok.mask_token_id)
  assert want == (0, 92, 93, 91, 94)
  import_hf(str(hf_dir), str(tmp_path / "w"))
  tok = llmjax.load(str(tmp_path / "w")).tokenizer
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id) == want
  assert tok.special_ids == set(want)
  # A folder with vocab.txt alone: BertTokenizer's default names find the same ids.
  os.remove(hf_dir / "tokenizer.json")
  os.remove(hf_dir / "tokenizer_config.json")
  import_hf(str(hf_dir), str(tmp_path / "w2"))
  tok = llmjax.load(str(tmp_path / "w2")).tokenizer
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id) == want


def test_bert_sentence_pair_logits_match_transformers(tmp_path):
  hf_dir = tmp_path / "hf"
  made = fx.make_bert(str(hf_dir))
  hf_tok = fx.write_bert_tokenizer(str(hf_dir))
  import_hf(str(hf_dir), str(tmp_path / "w"))
  loaded = llmjax.load(str(tmp_path / "w"))
  for first, second in [("the value of", "a class"), ("import os", "return self value")]:
    encoded = hf_tok(first, second)  # [CLS] a [SEP] b [SEP], token types 0 then 1.
    ids = np.asarray([encoded.input_ids])
    types = np.asarray([encoded.token_type_ids])
    assert types.min() == 0 and types.max() == 1
    want = fx.torch_logits(made["model"], ids, token_type_ids=types)
    _assert_close(loaded.logits(ids, token_type_ids=types), want)
    _assert_close(loaded.logits(ids[0], token_type_ids=types[0]), want[0])
    # Segment B's rows really differ from segment A's (the old, dropped-types logits).
    assert np.abs(loaded.logits(ids) - want).max() > 1e-2 * np.abs(want).max()


# Bad input: each error names the problem; nothing is written.
def _edit_tensors(hf_dir, edit) -> None:
  folder = SafetensorsFolder(str(hf_dir))
  tensors = {k: np.array(folder.get(k)) for k in folder.keys()}
  del folder
  tensors = edit(tensors)
  write_tensors(str(hf_dir / "model.safetensors"), tensors.items(), {"format": "pt"})


def _convert_fails(hf_dir, tmp_path, match: str) -> None:
  workdir = tmp_path / "never"
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    import_hf(str(hf_dir), str(workdir))
  assert not workdir.exists()
  assert not [p for p in os.listdir(tmp_path) if "converting" in p]


def test_unknown_model_type_names_the_supported_ones(tmp_path):
  hf_dir = tmp_path / "hf"
  fx.make_gpt2(str(hf_dir))
  config = json.load(open(hf_dir / "config.json"))
  json.dump(config | {"model_type": "mamba"}, open(hf_dir / "config.json", "w"))
  _convert_fails(hf_dir, tmp_path, r"'mamba' is not supported.*bert, gpt2, llama, t5")


def test_missing_tensor_is_named(tmp_path):
  hf_dir = tmp_path / "hf"
  fx.make_llama(str(hf_dir))
  _edit_tensors(hf_dir, lambda t: {k: v for k, v in t.items()
                                   if k != "model.layers.1.mlp.up_proj.weight"})
  _convert_fails(hf_dir, tmp_path, r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing")


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
  hf_dir = tmp_path / "hf"
  fx.make_gpt2(str(hf_dir))
  _edit_tensors(hf_dir, lambda t: t | {"transformer.h.0.mlp.c_fc.weight":
                                       np.zeros((48, 100), np.float32)})
  _convert_fails(hf_dir, tmp_path,
                 r"transformer\.h\.0\.mlp\.c_fc\.weight' has shape \(48, 100\), but config\.json "
                 r"implies \(48, 192\)")


def test_tokenizer_larger_than_the_vocab_is_refused(tmp_path):
  hf_dir = tmp_path / "hf"
  fx.make_llama(str(hf_dir))
  fx.write_sentencepiece(str(hf_dir), "llama", vocab_size=120)
  _convert_fails(hf_dir, tmp_path, r"120 pieces, more than the model's vocab_size 96")


def test_pickle_only_folder_is_refused_with_the_fix(tmp_path):
  hf_dir = tmp_path / "hf"
  fx.make_gpt2(str(hf_dir))
  os.rename(hf_dir / "model.safetensors", hf_dir / "pytorch_model.bin")
  _convert_fails(hf_dir, tmp_path, r"pytorch_model\.bin.*never loads.*save_pretrained")


def test_unmapped_tensors_mean_a_wrong_model_type(tmp_path):
  hf_dir = tmp_path / "hf"
  fx.make_llama(str(hf_dir))
  _edit_tensors(hf_dir, lambda t: t | {"model.layers.0.self_attn.q_proj.bias":
                                       np.zeros((48,), np.float32)})
  _convert_fails(hf_dir, tmp_path, r"no place in a llama.*q_proj\.bias")


def test_existing_destinations_are_never_overwritten(converted, tmp_path):
  _, hf_dir, workdir = converted("gpt2")
  with pytest.raises(FileExistsError, match="never overwrites"):
    import_hf(hf_dir, workdir)
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "config.json").write_text("{}")
  with pytest.raises(FileExistsError, match="never overwrites"):
    export_hf(workdir, str(tmp_path / "out"))
  assert (tmp_path / "out" / "config.json").read_text() == "{}"


def test_export_names_why_a_model_has_no_hf_twin(tmp_path):
  from llmjax.models.config import ModelConfig

  classifier = ModelConfig(architecture="encoder", vocab_size=64, num_layers=1, num_heads=2,
                           embed_dim=16, mlp_dim=32, max_seq_len=16, num_classes=3)
  with pytest.raises(ValueError, match=r"bert: num_classes=3"):
    hf.export_architecture(classifier)
  tiny = ModelConfig(vocab_size=64, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                     max_seq_len=16)  # llmjax's default decoder is a LLaMA.
  assert hf.export_architecture(tiny).MODEL_TYPES == ("llama",)
