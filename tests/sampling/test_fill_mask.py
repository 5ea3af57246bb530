"""fill_mask on a tiny random MLM encoder, checked against softmax of `LanguageModel.apply`."""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm

from llmjax.data.tokenizer import ByteTokenizer, IdTokenizer, SentencePieceTokenizer
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sampling.fill_mask import candidate_ids, encode_masked, fill_mask
from llmjax.sampling.loading import LoadedModel, load

TOK = ByteTokenizer()  # 260 ids; the mask id is 260
MASK_ID = TOK.vocab_size


def make(**overrides):
  fields = dict(vocab_size=TOK.vocab_size + 1, num_layers=1, num_heads=2, embed_dim=32,
                mlp_dim=64, max_seq_len=32, architecture="encoder")
  fields.update(overrides)
  model = LanguageModel(ModelConfig(**fields))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype),
                        jax.eval_shape(model.init, jax.random.PRNGKey(0)))
  return model, params


@pytest.fixture(scope="module")
def mlm():
  return make()


def reference(model, params, text, top_k):
  """Per mask: top_k (token text, prob), softmax over ids [4, 260) of unpadded full logits."""
  pieces = text.split("[MASK]")
  ids = [TOK.bos_id]
  for j, piece in enumerate(pieces):
    ids += ([MASK_ID] if j else []) + [b + 4 for b in piece.encode("utf-8")]
  ids.append(TOK.eos_id)
  logits, _ = jax.jit(model.apply)(params, jnp.asarray([ids], jnp.int32))
  logits = np.asarray(logits[0], np.float64)
  result = []
  for pos in [i for i, t in enumerate(ids) if t == MASK_ID]:
    z = logits[pos, 4:TOK.vocab_size]
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:top_k]
    result.append([(TOK.decode([int(k) + 4]), float(p[k])) for k in order])
  return result


def test_probabilities_equal_restricted_softmax(mlm):
  model, params = mlm
  texts = ["import [MASK]", "x = [MASK] + [MASK]\n", "[MASK]"]  # several lengths and masks
  got = fill_mask(model, params, TOK, texts, top_k=4)
  assert [len(g) for g in got] == [1, 2, 1]
  for text, per_text in zip(texts, got, strict=True):
    want = reference(model, params, text, 4)
    for g, w in zip(per_text, want, strict=True):
      assert [t for t, _ in g] == [t for t, _ in w]
      np.testing.assert_allclose([p for _, p in g], [p for _, p in w], rtol=1e-4, atol=1e-6)
      probs = [p for _, p in g]
      assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
  # The single-string form and padding: the same text alone gives the same answer.
  alone = fill_mask(model, params, TOK, "x = [MASK] + [MASK]\n", top_k=4)
  np.testing.assert_allclose([p for _, p in alone[0][1]], [p for _, p in got[1][1]], atol=1e-6)


def test_encode_masked_frames_like_the_mlm_pipeline():
  assert encode_masked(TOK, "a[MASK]b") == [1, ord("a") + 4, MASK_ID, ord("b") + 4, 2]
  assert encode_masked(TOK, "<m>", mask_token="<m>") == [1, MASK_ID, 2]


def test_candidates_exclude_specials_and_mask():
  model, params = make(use_bias=True)
  # Hand-set: the specials and the mask id get the model's highest logits by far; they must
  # still never be candidates, and the rest keep their softmax ratios.
  favourites = np.asarray([0, 1, 2, 3, MASK_ID])
  params = {**params, "output_bias": params["output_bias"].at[favourites].set(100.0)}
  top = fill_mask(model, params, TOK, "ab[MASK]", top_k=300)[0][0]
  assert len(top) == TOK.vocab_size - 4  # top_k capped at the candidate count
  assert all(t for t, _ in top)  # the specials and the mask id would decode to ""
  np.testing.assert_allclose(sum(p for _, p in top), 1.0, rtol=1e-5)
  want = reference(model, params, "ab[MASK]", 10)[0]
  np.testing.assert_allclose([p for _, p in top[:10]], [p for _, p in want], rtol=1e-4)


@pytest.mark.parametrize("arch, match", [
    (dict(architecture="decoder"), "--mode=generate"),
    (dict(architecture="encoder_decoder"), "<extra_id_0>"),
    (dict(num_classes=3), "classification head"),
    (dict(vocab_size=TOK.vocab_size), "no room"),
])
def test_wrong_model_kinds_say_what_to_use(arch, match):
  model = LanguageModel(ModelConfig(**{**dict(vocab_size=TOK.vocab_size + 1, num_layers=1,
                                              num_heads=2, embed_dim=32, mlp_dim=64,
                                              max_seq_len=32, architecture="encoder"), **arch}))
  with pytest.raises(ValueError, match=match):
    fill_mask(model, None, TOK, "a [MASK]")


def test_bad_inputs(mlm):
  model, params = mlm
  with pytest.raises(ValueError, match="no '\\[MASK\\]' in 'plain text'"):
    fill_mask(model, params, TOK, ["a [MASK]", "plain text"])
  with pytest.raises(ValueError, match="max_seq_len=32: shorten it by 3"):
    fill_mask(model, params, TOK, "x" * 32 + "[MASK]")  # BOS + 32 + MASK + EOS = 35
  with pytest.raises(ValueError, match="top_k"):
    fill_mask(model, params, TOK, "a [MASK]", top_k=0)


def test_loaded_model_per_family(mlm):
  model, params = mlm
  loaded = LoadedModel(config=model.config, params=params, tokenizer=TOK, model=model)
  with pytest.raises(ValueError, match="fill_mask"):
    loaded.generate("x")
  ids = encode_masked(TOK, "a [MASK]")
  np.testing.assert_allclose(loaded.logits(ids), model.apply(params, jnp.asarray([ids]))[0][0],
                             atol=1e-5)
  assert loaded.fill_mask("a [MASK]", top_k=2) == fill_mask(model, params, TOK, "a [MASK]",
                                                            top_k=2)
  clf, clf_params = make(num_classes=3)
  classifier = LoadedModel(config=clf.config, params=clf_params, tokenizer=TOK, model=clf)
  assert classifier.logits(ids).shape == (3,) and classifier.logits([ids, ids]).shape == (2, 3)
  with pytest.raises(ValueError, match="class logits"):
    classifier.generate("x")
  with pytest.raises(ValueError, match="classification head"):
    classifier.fill_mask("a [MASK]")


def test_load_and_cli_fill_mask(mlm, tmp_path, capsys):
  from llmjax.cli import sample
  from llmjax.training import checkpoint

  model, params = mlm
  (tmp_path / "run_config.json").write_text(
      json.dumps({"model": json.loads(model.config.to_json()), "data": {"objective": "mlm"}}),
      encoding="utf-8")
  TOK.save(str(tmp_path / "tokenizer"))
  with checkpoint.Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(2, {"params": params, "step": jnp.int32(2)})
  loaded = load(str(tmp_path))
  assert loaded.sampler is None and loaded.config == model.config
  want = fill_mask(model, params, TOK, "import [MASK]s [MASK]", top_k=5)
  capsys.readouterr()
  assert sample.main([f"--workdir={tmp_path}", "--mode=fill_mask",
                      "--prompt=import [MASK]s [MASK]"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[:3] == ["=== prompt 1 ===", "import [MASK]s [MASK]", "[MASK] 1:"]
  assert lines[3:8] == [f"  {p:.4f}  {t!r}" for t, p in want[0][0]]  # top_k 0 -> 5
  assert lines[8] == "[MASK] 2:" and len(lines) == 14
  assert sample.main([f"--workdir={tmp_path}", "--prompt=import [MASK]"]) == 2
  assert "--mode=fill_mask" in capsys.readouterr().err


def _sentencepiece(style: str) -> SentencePieceTokenizer:
  """A small BPE model with a converted model's special ids: LLaMA (unk 0, bos 1, eos 2, no
  pad) or T5 (pad 0, eos 1, unk 2, no bos; T5's decoder start 0 stands in for bos)."""
  ids = {"llama": dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1),
         "t5": dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)}[style]
  words = " ".join(sorted(dir(__builtins__))).lower()
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([words] * 20), model_writer=proto, vocab_size=120,
      model_type="bpe", character_coverage=1.0, num_threads=1, minloglevel=2, **ids)
  return SentencePieceTokenizer(proto.getvalue(), bos_id=0 if style == "t5" else None)


@pytest.mark.parametrize("style, specials", [("llama", {0, 1, 2}), ("t5", {0, 1, 2})])
def test_candidates_are_the_tokenizers_own_non_special_ids(style, specials):
  tok = _sentencepiece(style)
  assert tok.special_ids == specials  # Id 3 is an ordinary piece of these vocabularies.
  model, params = make(vocab_size=tok.vocab_size + 1, use_bias=True)
  # The specials, id 3 and the mask id get the highest logits (by less than float32's softmax
  # range, so the runners-up keep comparable probabilities): id 3 must win.
  favourites = np.asarray([0, 1, 2, 3, tok.vocab_size])
  params = {**params, "output_bias": params["output_bias"].at[favourites].set(12.0)}
  top = fill_mask(model, params, tok, "import os[MASK]", top_k=3)[0][0]
  ids = encode_masked(tok, "import os[MASK]")
  logits, _ = jax.jit(model.apply)(params, jnp.asarray([ids], jnp.int32))
  z = np.asarray(logits[0, ids.index(tok.vocab_size)], np.float64)[:tok.vocab_size]
  keep = np.asarray([i not in specials for i in range(tok.vocab_size)])
  p = np.where(keep, np.exp(z - z[keep].max()), 0.0)
  p /= p.sum()
  order = np.argsort(-p, kind="stable")[:3]
  assert order[0] == 3 and tok.decode([3])
  assert [t for t, _ in top] == [tok.decode([int(i)]) for i in order]
  np.testing.assert_allclose([q for _, q in top], p[order], rtol=1e-4)


def test_candidates_of_a_bert_tokenizer_skip_its_specials_not_ids_1_to_3():
  bert = IdTokenizer(30522, pad_id=0, bos_id=101, eos_id=102, unk_id=100, mask_id=103)
  candidates = set(candidate_ids(bert).tolist())
  assert len(candidates) == 30522 - 5
  assert {1, 2, 3, 99, 104} <= candidates and not {0, 100, 101, 102, 103} & candidates


class MaskingByteTokenizer(ByteTokenizer):
  """Bytes with a [MASK] of their own (as a converted BERT has): mask 4, byte b -> b + 5."""

  offset = 5
  vocab_size = 256 + offset
  mask_id = 4
  special_ids = frozenset(range(offset))


def test_fill_mask_uses_the_tokenizers_own_mask_id():
  tok = MaskingByteTokenizer()
  model, params = make(vocab_size=tok.vocab_size)  # No row past the tokenizer's ids.
  assert encode_masked(tok, "a[MASK]") == [tok.bos_id, ord("a") + 5, 4, tok.eos_id]
  top = fill_mask(model, params, tok, "import [MASK]", top_k=3)[0][0]
  ids = encode_masked(tok, "import [MASK]")
  logits, _ = jax.jit(model.apply)(params, jnp.asarray([ids], jnp.int32))
  z = np.asarray(logits[0, ids.index(4)], np.float64)[tok.offset:]  # Candidates: the bytes.
  p = np.exp(z - z.max())
  p /= p.sum()
  order = np.argsort(-p, kind="stable")[:3]
  assert [t for t, _ in top] == [tok.decode([int(k) + tok.offset]) for k in order]
  np.testing.assert_allclose([q for _, q in top], p[order], rtol=1e-4)
