"""Sampler: text in, text out, with toy models and tokenizer (only the Decoder type of
llmjax.models is needed: a model is anything that builds one)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.models.config import ModelConfig
from llmjax.models.decoder import Decoder
from llmjax.sampling.sampler import Sampler

LETTERS = "abcdefghijklm"  # ids 3..15


class CharTokenizer:
  """pad 0, bos 1, eos 2, 'a'..'m' -> 3..15."""

  vocab_size = 16
  pad_id, bos_id, eos_id = 0, 1, 2

  def encode(self, text):
    return [LETTERS.index(c) + 3 for c in text]

  def decode(self, ids):
    return "".join(LETTERS[i - 3] if i >= 3 else "" for i in ids)


class ToyModel:
  """Next id = 5 * (sum of (id + 1) * (slot + 2) over slots <= p, + p) % 13 + offset.

  The cache is position-indexed like the real model's. Ids >= 16 (past the tokenizer's
  vocabulary) get the highest logit, so the sampler must mask them.
  """

  def __init__(self, offset=3, vocab_size=16, max_seq_len=32):
    self.offset, self.vocab_size, self.max_seq_len = offset, vocab_size, max_seq_len

  def decoder(self, params):
    return Decoder(params=params, logits_fn=self.logits_fn, init_cache=self.init_cache,
                   cache_length=self.cache_length, vocab_size=self.vocab_size,
                   max_seq_len=self.max_seq_len)

  @staticmethod
  def init_cache(batch_size, max_len):
    return {"seen": jnp.zeros((batch_size, max_len), jnp.int32)}

  @staticmethod
  def cache_length(cache):
    return cache["seen"].shape[1]

  def logits_fn(self, params, tokens, positions, cache):
    rows = jnp.arange(tokens.shape[0])[:, None]
    seen = cache["seen"].at[rows, positions].set(tokens + 1)
    slots = jnp.arange(seen.shape[1])
    visible = slots[None, None, :] <= positions[:, :, None]
    total = jnp.sum(jnp.where(visible, (seen * (slots + 2))[:, None, :], 0), axis=-1)
    nxt = (total + positions) * 5 % 13 + self.offset
    logits = 10.0 * jax.nn.one_hot(nxt, self.vocab_size)
    logits = logits.at[..., 16:].set(100.0)
    return logits * params["scale"], {"seen": seen}


PARAMS = {"scale": jnp.float32(1.0)}


def reference(ids, n, offset, eos_id=2):
  seq, out = list(ids), []
  for _ in range(n):
    p = len(seq) - 1
    nxt = (sum((x + 1) * (j + 2) for j, x in enumerate(seq)) + p) * 5 % 13 + offset
    if nxt == eos_id:
      break
    out.append(nxt)
    seq.append(nxt)
  return out


def expected_text(prompt, n, offset=3):
  tok = CharTokenizer()
  return tok.decode(reference([tok.bos_id] + tok.encode(prompt), n, offset))


def test_greedy_completions_match_reference():
  sampler = Sampler(ToyModel(), PARAMS, CharTokenizer())
  prompts = ["abc", "", "mlkjihg", "d"]
  out = sampler.generate(prompts, max_new_tokens=10, temperature=0.0)
  assert out == [expected_text(p, 10) for p in prompts]
  assert all(isinstance(s, str) for s in out)


def test_completion_stops_at_eos_and_drops_it():
  sampler = Sampler(ToyModel(offset=2), PARAMS, CharTokenizer())
  prompts = ["abc", "", "mlkjihg", "d", "ee"]
  out = sampler.generate(prompts, max_new_tokens=12, temperature=0.0)
  expected = [expected_text(p, 12, offset=2) for p in prompts]
  assert out == expected
  assert min(map(len, expected)) < 12, "some row should stop early at EOS"


def test_single_string_prompt_and_num_samples_order():
  sampler = Sampler(ToyModel(), PARAMS, CharTokenizer())
  assert sampler.generate("ab", max_new_tokens=3, temperature=0) == [expected_text("ab", 3)]
  out = sampler.generate(["ab", "c"], max_new_tokens=3, temperature=0, num_samples=3)
  assert out == [expected_text("ab", 3)] * 3 + [expected_text("c", 3)] * 3


def test_bucketed_shapes_compile_once():
  sampler = Sampler(ToyModel(), PARAMS, CharTokenizer())
  sampler.generate(["a"], max_new_tokens=4, temperature=0)
  sampler.generate(["abcdef", "b", "c"], max_new_tokens=4, temperature=0)  # batch 4, len 8
  sampler.generate(["abc", "b", "c", "dd"], max_new_tokens=4, temperature=0)
  assert sampler.num_compilations <= 2  # batch buckets 1 and 4, one prompt bucket
  before = sampler.num_compilations
  sampler.generate(["abcd", "b", "c"], max_new_tokens=4, temperature=0, seed=5)
  assert sampler.num_compilations == before


def test_sampling_with_seed_is_reproducible():
  sampler = Sampler(ToyModel(), {"scale": jnp.float32(0.01)}, CharTokenizer())
  kwargs = dict(max_new_tokens=8, temperature=1.0, top_k=5, top_p=0.9, num_samples=4)
  a = sampler.generate(["ab"], seed=1, **kwargs)
  assert a == sampler.generate(["ab"], seed=1, **kwargs)
  assert a != sampler.generate(["ab"], seed=2, **kwargs)
  assert len(set(a)) > 1  # Rows of one prompt draw independently.


def test_ids_outside_the_tokenizer_vocab_are_never_sampled():
  sampler = Sampler(ToyModel(vocab_size=24), PARAMS, CharTokenizer())
  out = sampler.generate_ids([[1, 3]], max_new_tokens=6, temperature=0.0)
  assert out == [reference([1, 3], 6, offset=3)]


def test_rejects_too_long_requests_with_the_fix():
  sampler = Sampler(ToyModel(max_seq_len=16), PARAMS, CharTokenizer())
  with pytest.raises(ValueError, match="lower max_new_tokens to 12"):
    sampler.generate("abc", max_new_tokens=13)  # BOS + 3 + 13 = 17 > 16.
  assert len(sampler.generate("abc", max_new_tokens=12, temperature=0)[0]) <= 12


def test_rejects_tokenizer_larger_than_model():
  with pytest.raises(ValueError, match="vocab_size=16 is larger"):
    Sampler(ToyModel(vocab_size=12), PARAMS, CharTokenizer())


@pytest.mark.parametrize("kwargs, match", [
    (dict(top_p=0.0), "top_p"), (dict(num_samples=0), "num_samples"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1.0), "temperature"),
])
def test_rejects_bad_sampling_settings(kwargs, match):
  sampler = Sampler(ToyModel(), PARAMS, CharTokenizer())
  with pytest.raises(ValueError, match=match):
    sampler.generate("a", **kwargs)


def test_filler_rows_do_not_change_results():
  sampler = Sampler(ToyModel(), PARAMS, CharTokenizer())
  three = sampler.generate(["ab", "c", "dd"], max_new_tokens=5, temperature=0)
  one = [sampler.generate([p], max_new_tokens=5, temperature=0)[0] for p in ["ab", "c", "dd"]]
  assert three == one
  assert np.all([isinstance(s, str) for s in three])


# --- Beam search through the Sampler. ---

V = 16  # Bigram vocabulary


class BigramModel:
  """Logits = table[token]; cache {"seen": [1, b, s]} obeys the batch-at-axis-1 rule."""

  def decoder(self, params):
    return Decoder(params=params, logits_fn=self.logits_fn, init_cache=self.init_cache,
                   cache_length=lambda cache: cache["seen"].shape[2], vocab_size=V,
                   max_seq_len=32)

  @staticmethod
  def init_cache(batch_size, max_len):
    return {"seen": jnp.zeros((1, batch_size, max_len), jnp.int32)}

  def logits_fn(self, params, tokens, positions, cache):
    logits = params["table"][tokens]
    if cache is None:
      return logits, None
    rows = jnp.arange(tokens.shape[0])[:, None]
    return logits, {"seen": cache["seen"].at[0, rows, positions].set(tokens)}


def test_sampler_beam():
  table = np.random.default_rng(0).normal(0, 2.0, (V, V)).astype(np.float32)
  s = Sampler(BigramModel(), {"table": jnp.asarray(table)}, CharTokenizer())
  nbest = s.beam_search(["ab", "", "mmm"], num_beams=4, max_new_tokens=5, num_return=3)
  assert len(nbest) == 3 and all(len(h) == 3 for h in nbest)
  for hyps in nbest:
    scores = [sc for _, sc in hyps]
    assert scores == sorted(scores, reverse=True)
  best = s.generate(["ab", "", "mmm"], num_beams=4, max_new_tokens=5)
  assert best == [h[0][0] for h in nbest]
  two = s.generate(["ab", "", "mmm"], num_beams=4, max_new_tokens=5, num_samples=2)
  assert two[::2] == best and two[1::2] == [h[1][0] for h in nbest]
  with pytest.raises(ValueError, match="raise num_beams"):
    s.generate(["ab"], num_beams=2, num_samples=3)


def test_beam_search_on_non_finite_logits_says_so():
  # A diverged checkpoint: every score is NaN, so no hypothesis survives (was an IndexError).
  table = np.full((V, V), np.nan, np.float32)
  s = Sampler(BigramModel(), {"table": jnp.asarray(table)}, CharTokenizer())
  with pytest.raises(ValueError, match="no finite-scoring hypothesis for prompt 0.*NaN/Inf"):
    s.generate(["ab"], num_beams=2, max_new_tokens=3)


# --- The real model, tokenizer and checkpoint format. ---


@pytest.fixture(scope="module")
def tiny():
  """(model, random params, ByteTokenizer); params skip the model's slow-to-compile init."""
  from llmjax.data.tokenizer import ByteTokenizer
  from llmjax.models.interface import LanguageModel

  config = ModelConfig(vocab_size=272, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
                       mlp_dim=64, max_seq_len=32)
  model = LanguageModel(config)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype),
                        jax.eval_shape(model.init, jax.random.PRNGKey(0)))
  return model, params, ByteTokenizer()


def test_sampler_end_to_end_with_byte_tokenizer(tiny):
  model, params, tokenizer = tiny
  sampler = Sampler(model, params, tokenizer)
  out = sampler.generate(["def f(x):", ""], max_new_tokens=8, temperature=0.8, top_k=20,
                         top_p=0.95, num_samples=2)
  assert len(out) == 4 and all(isinstance(s, str) for s in out)
  assert any(out)  # A random model emits EOS early only rarely.


def _write_workdir(path, model, params, tokenizer, *, with_checkpoint=True):
  from llmjax.training import checkpoint

  (path / "run_config.json").write_text(
      '{"model": ' + model.config.to_json() + ', "train": {}}', encoding="utf-8")
  tokenizer.save(str(path / "tokenizer"))
  if with_checkpoint:
    # restore_params reads only the `params` subtree of the saved state.
    with checkpoint.Checkpointer(str(path), async_save=False) as ckpt:
      ckpt.save(3, {"params": params, "step": jnp.int32(3)})


def test_load_roundtrip(tiny, tmp_path):
  from llmjax.sampling.loading import load

  model, params, tokenizer = tiny
  _write_workdir(tmp_path, model, params, tokenizer)
  loaded = load(str(tmp_path))
  assert loaded.config == model.config and loaded.step == 3
  jax.tree.map(np.testing.assert_array_equal, loaded.params, params)
  ids = [tokenizer.bos_id] + tokenizer.encode("hello")
  logits = loaded.logits(ids)
  assert logits.shape == (len(ids), model.config.vocab_size)
  np.testing.assert_allclose(loaded.logits([ids, ids])[1], logits, atol=1e-6)
  completion = loaded.generate("hi", max_new_tokens=5, temperature=0)
  assert len(completion) == 1 and isinstance(completion[0], str)


def test_load_without_checkpoint_says_train_first(tiny, tmp_path):
  from llmjax.sampling.loading import load

  with pytest.raises(FileNotFoundError, match="llmjax train"):
    load(str(tmp_path))
  model, params, tokenizer = tiny
  _write_workdir(tmp_path, model, params, tokenizer, with_checkpoint=False)
  with pytest.raises(FileNotFoundError, match="llmjax train"):
    load(str(tmp_path))


def test_load_rejects_tokenizer_larger_than_model(tiny, tmp_path):
  from llmjax.sampling.loading import load

  model, params, tokenizer = tiny
  _write_workdir(tmp_path, model, params, tokenizer)
  small = model.config.replace(vocab_size=128)
  (tmp_path / "run_config.json").write_text('{"model": ' + small.to_json() + '}')
  with pytest.raises(ValueError, match="larger than the model's vocab_size=128"):
    load(str(tmp_path))
