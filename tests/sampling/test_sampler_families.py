"""Sampler on every family: encoder_decoder greedy/sampling/beam, decoder beam, load + CLI.

References are independent of the sampler: greedy decoding re-runs the full teacher-forced
forward (`LanguageModel.apply`) each step, and beam hypotheses are rescored with it.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.data.tokenizer import ByteTokenizer
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sampling import beam
from llmjax.sampling.loading import LoadedModel, load
from llmjax.sampling.sampler import Sampler

TOK = ByteTokenizer()  # 260 ids
NUM_SENTINELS = 12


def random_params(model, seed=0, scale=0.3):
  """Random params without running the (slow to compile) init; logits far from ties."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, scale, x.shape), x.dtype),
                      jax.eval_shape(model.init, jax.random.PRNGKey(0)))


def make(architecture, **overrides):
  fields = dict(vocab_size=TOK.vocab_size, num_layers=1, num_heads=4, num_kv_heads=2,
                embed_dim=32, mlp_dim=64, max_seq_len=32, architecture=architecture)
  if architecture == "encoder_decoder":
    fields.update(vocab_size=TOK.vocab_size + NUM_SENTINELS, num_decoder_layers=1,
                  position="t5_relative", norm="rmsnorm")
  fields.update(overrides)
  model = LanguageModel(ModelConfig(**fields))
  return model, random_params(model)


@pytest.fixture(scope="module")
def encdec():
  """(model, params, sampler, full forward): shared so their compilations are reused."""
  model, params = make("encoder_decoder")
  return model, params, Sampler(model, params, TOK), full_forward_logits(model, params)


@pytest.fixture(scope="module")
def decoder():
  model, params = make("decoder")
  return model, params, Sampler(model, params, TOK)


def full_forward_logits(model, params):
  """Jitted teacher-forced forward: (encoder ids [s], decoder ids [t]) -> [t, v] logits."""

  @jax.jit
  def f(enc, dec):
    logits, _ = model.apply(params, {"encoder_inputs": enc[None],
                                     "encoder_segment_ids": jnp.ones_like(enc)[None],
                                     "inputs": dec[None]})
    return logits[0]

  return lambda enc, dec: np.asarray(f(jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32)))


def greedy_reference(forward, enc, steps, eos=TOK.eos_id, width=16):
  """Greedy by full forwards; the decoder input is right-padded to `width` (causal, so the
  logits at position t see only tokens <= t) to compile once per encoder length."""
  dec, out = [TOK.bos_id], []
  for _ in range(steps):
    logits = forward(enc, dec + [0] * (width - len(dec)))[len(dec) - 1]
    nxt = int(np.argmax(logits))
    if nxt == eos:
      break
    out.append(nxt)
    dec.append(nxt)
  return out


def test_encdec_greedy_equals_full_forward_loop(encdec):
  _, _, sampler, forward = encdec
  prompts = ["def f(x):", "a"]  # different encoder lengths in one batch
  enc = sampler.encode_prompts(prompts)
  assert all(e[-1] == TOK.eos_id and TOK.bos_id not in e for e in enc)
  out = sampler.generate_ids([[TOK.bos_id]] * 2, encoder_ids=enc, max_new_tokens=8,
                             temperature=0.0)
  assert out == [greedy_reference(forward, e, 8) for e in enc]
  compiled = sampler.num_compilations
  # The text API: encoder input = prompt, completion = the decoded ids (sentinels by name).
  texts = sampler.generate(prompts, max_new_tokens=8, temperature=0.0)
  assert texts == [sampler.decode_ids(ids) for ids in out]
  assert sampler.num_compilations == compiled  # same buckets: no new compilation


def test_encdec_sampling_is_reproducible_and_runs_encoder_once_per_call(encdec):
  sampler = encdec[2]
  kwargs = dict(max_new_tokens=6, temperature=1.0, top_k=50, top_p=0.95, num_samples=3)
  a = sampler.generate(["x = 1", "print("], seed=3, **kwargs)
  assert len(a) == 6 and all(isinstance(s, str) for s in a)
  assert a == sampler.generate(["x = 1", "print("], seed=3, **kwargs)


def _rescore(forward, enc, ids, ended, alpha, width=16):
  dec = [TOK.bos_id] + ids + ([TOK.eos_id] if ended else [])
  logp = jax.nn.log_softmax(forward(enc, dec + [0] * (width - len(dec))), axis=-1)
  total = float(sum(logp[t, dec[t + 1]] for t in range(len(dec) - 1)))
  return total / ((5.0 + len(dec) - 1) / 6.0) ** alpha


def test_encdec_beam_nbest_is_valid_and_rescores(encdec):
  _, _, sampler, forward = encdec
  alpha = 0.6
  prompts = ["def f(x):", "a"]  # encoder lengths the greedy test compiled the forward for
  enc = sampler.encode_prompts(prompts)
  steps = 5
  nbest = sampler.beam_search_ids([[TOK.bos_id]] * 2, encoder_ids=enc, num_beams=4,
                                  max_new_tokens=steps, length_penalty=alpha)
  for e, hyps in zip(enc, nbest, strict=True):
    assert len(hyps) == 4
    scores = [s for _, s in hyps]
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(ids) for ids, _ in hyps}) == len(hyps)
    for ids, score in hyps:
      assert len(ids) <= steps and TOK.eos_id not in ids
      # Shorter than max_new_tokens means the hypothesis ended with the (stripped) EOS.
      np.testing.assert_allclose(score, _rescore(forward, e, ids, len(ids) < steps, alpha),
                                 rtol=1e-4, atol=1e-4)
  texts = sampler.beam_search(prompts, num_beams=4, max_new_tokens=steps, length_penalty=alpha)
  assert [[t for t, _ in h] for h in texts] == [[sampler.decode_ids(i) for i, _ in h]
                                                for h in nbest]
  best = sampler.generate(prompts, num_beams=4, max_new_tokens=steps, length_penalty=alpha)
  assert best == [h[0][0] for h in texts]


def test_decoder_beam_equals_generate_beam(decoder):
  model, params, sampler = decoder  # model vocab == tokenizer vocab: nothing is masked
  prompts = ["def ", "", "import os"]
  ids = sampler.encode_prompts(prompts)
  nbest = sampler.beam_search_ids(ids, num_beams=3, max_new_tokens=6, num_return=2)
  tokens = np.zeros((3, 10), np.int32)
  for i, p in enumerate(ids):
    tokens[i, :len(p)] = p
  dec = model.decoder(params)
  cache = dec.init_cache(3, 16)
  out = beam.generate_beam(dec.logits_fn, dec.params, tokens, [len(p) for p in ids], cache,
                           num_beams=3, max_new_tokens=6, eos_id=TOK.eos_id, num_return=2,
                           cache_len=dec.cache_length(cache), max_seq_len=dec.max_seq_len)
  for i, hyps in enumerate(nbest):
    for j, (got, score) in enumerate(hyps):
      want = np.asarray(out.tokens[i, j, :out.lengths[i, j]]).tolist()
      assert got == [t for t in want if t != TOK.eos_id]
      np.testing.assert_allclose(score, float(out.scores[i, j]), rtol=1e-5, atol=1e-5)
  two = sampler.generate(prompts, num_beams=3, max_new_tokens=6, num_samples=2)
  assert two == [TOK.decode(h[j][0]) for h in nbest for j in range(2)]


def test_sentinels_in_prompts_and_outputs(encdec):
  model, params, sampler, _ = encdec
  top = model.config.vocab_size - 1
  assert sampler.encode_prompts(["a<extra_id_0>b<extra_id_3>"]) == [
      [ord("a") + 4, top, ord("b") + 4, top - 3, TOK.eos_id]]
  assert sampler.decode_ids([top, ord("x") + 4, top - 1, TOK.eos_id]) == (
      "<extra_id_0>x<extra_id_1>")
  with pytest.raises(ValueError, match="12 sentinel ids"):
    sampler.encode_prompts(["<extra_id_12>"])
  # Ids past the tokenizer that are not sentinels are never emitted.
  two = Sampler(model, params, TOK, num_sentinels=2)
  out = two.generate_ids([[TOK.bos_id]] * 2, encoder_ids=two.encode_prompts(["abc", "q"]),
                         max_new_tokens=10, temperature=1.0, seed=1)
  assert all(t < TOK.vocab_size or t >= top - 1 for row in out for t in row)
  with pytest.raises(ValueError, match="num_sentinels=13"):
    Sampler(model, params, TOK, num_sentinels=13)


class HFSentinelTokenizer(ByteTokenizer):
  """Bytes plus T5 sentinels of their own, laid out as HF's T5 tokenizer does: right after the
  ids (<extra_id_i> = 260 + 8 - 1 - i), below a padded model vocabulary (272)."""

  sentinel_ids = tuple(range(267, 259, -1))


def test_a_tokenizers_own_sentinels_are_used(encdec):
  model, params, _, _ = encdec
  tok = HFSentinelTokenizer()
  sampler = Sampler(model, params, tok)
  assert sampler.num_sentinels == 8 and sampler.sentinel_id(0) == 267
  assert sampler.encode_prompts(["a<extra_id_0>b<extra_id_7>"]) == [
      [ord("a") + 4, 267, ord("b") + 4, 260, TOK.eos_id]]
  assert sampler.decode_ids([267, ord("x") + 4, 266, TOK.eos_id]) == "<extra_id_0>x<extra_id_1>"
  # The rows past them (268-271: a padded vocabulary's, untrained) are never emitted.
  out = sampler.generate_ids([[TOK.bos_id]] * 4, encoder_ids=sampler.encode_prompts(["abc"] * 4),
                             max_new_tokens=12, temperature=1.0, seed=2)
  assert all(t < 268 for row in out for t in row)
  assert Sampler(model, params, tok, num_sentinels=3).sentinel_ids.tolist() == [267, 266, 265]
  with pytest.raises(ValueError, match="tokenizer has 8 sentinels"):
    Sampler(model, params, tok, num_sentinels=9)


def test_encdec_validation_before_compiling():
  model, params = make("encoder_decoder", position="learned", max_seq_len=16)
  sampler = Sampler(model, params, TOK)
  with pytest.raises(ValueError, match="exceeds max_seq_len=16.*shorten the prompt by 5"):
    sampler.generate("x" * 20, max_new_tokens=4)  # 20 + EOS = 21 encoder tokens
  with pytest.raises(ValueError, match="lower max_new_tokens to 15"):
    sampler.generate("x", max_new_tokens=16)  # BOS + 16 decoder positions > 16
  with pytest.raises(ValueError, match="needs encoder_ids"):
    sampler.generate_ids([[TOK.bos_id]], max_new_tokens=2)
  assert sampler.num_compilations == 0


def _write_workdir(path, model, params, data=None):
  from llmjax.training import checkpoint

  record = {"model": json.loads(model.config.to_json()), "train": {}}
  if data is not None:
    record["data"] = data
  (path / "run_config.json").write_text(json.dumps(record), encoding="utf-8")
  TOK.save(str(path / "tokenizer"))
  with checkpoint.Checkpointer(str(path), async_save=False) as ckpt:
    ckpt.save(1, {"params": params, "step": jnp.int32(1)})


def test_load_encdec_and_cli_beam(encdec, tmp_path, capsys):
  from llmjax.cli import sample

  model, params, sampler, forward = encdec
  _write_workdir(tmp_path, model, params,
                 data={"objective": "span_corruption", "extra_ids": NUM_SENTINELS})
  loaded = load(str(tmp_path))
  assert loaded.config == model.config and loaded.sampler.num_sentinels == NUM_SENTINELS
  enc = loaded.sampler.encode_prompts(["a"])[0]
  logits = loaded.logits(enc, decoder_input_ids=[TOK.bos_id, 10])
  np.testing.assert_allclose(logits, forward(enc, [TOK.bos_id, 10] + [0] * 14)[:2], atol=1e-5)
  with pytest.raises(ValueError, match="need decoder_input_ids"):
    loaded.logits(enc)
  expected = sampler.generate(["a"], num_beams=3, max_new_tokens=4, num_samples=2)
  capsys.readouterr()
  code = sample.main([f"--workdir={tmp_path}", "--prompt=a", "--num_beams=3",
                      "--num_samples=2", "--max_new_tokens=4", "--length_penalty=1.0"])
  out = capsys.readouterr().out
  assert code == 0
  assert f"=== prompt 1, sample 2 ===\na\n--> {expected[1]}\n" in out


def test_decoder_loaded_model_and_cli_beam(decoder, tmp_path, capsys):
  from llmjax.cli import sample

  model, params, sampler = decoder
  _write_workdir(tmp_path, model, params)
  loaded = load(str(tmp_path))
  assert isinstance(loaded, LoadedModel) and loaded.step == 1
  best = sampler.generate("def ", num_beams=2, max_new_tokens=5)
  capsys.readouterr()
  assert sample.main([f"--workdir={tmp_path}", "--prompt=def ", "--num_beams=2",
                      "--max_new_tokens=5"]) == 0
  assert capsys.readouterr().out == f"=== prompt 1 ===\ndef {best[0]}\n"
  assert sample.main([f"--workdir={tmp_path}", "--prompt=def ", "--num_beams=2",
                      "--num_samples=3"]) == 2
  assert "raise num_beams" in capsys.readouterr().err
  with pytest.raises(ValueError, match="decoder_input_ids is for encoder_decoder"):
    loaded.logits([1, 5], decoder_input_ids=[1])


def test_logits_take_token_type_ids_for_encoders():
  model, params = make("encoder", type_vocab_size=2, embedding_norm=True, norm_position="post")
  loaded = LoadedModel(config=model.config, params=params, tokenizer=TOK, model=model)
  ids = np.arange(10, 22).reshape(2, 6)
  types = np.asarray([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
  want, _ = model.apply(params, jnp.asarray(ids), token_types=jnp.asarray(types))
  np.testing.assert_allclose(loaded.logits(ids, token_type_ids=types), want, atol=1e-6)
  np.testing.assert_allclose(loaded.logits(ids[1], token_type_ids=types[1]), want[1], atol=1e-6)
  assert not np.allclose(loaded.logits(ids), want, atol=1e-3)  # Types change the logits.
  with pytest.raises(ValueError, match="shaped like token_ids"):
    loaded.logits(ids, token_type_ids=types[:, :3])
  with pytest.raises(ValueError, match=r"in \[0, 2\)"):
    loaded.logits(ids, token_type_ids=types * 2)
  decoder, decoder_params = make("decoder")
  plain = LoadedModel(config=decoder.config, params=decoder_params, tokenizer=TOK, model=decoder)
  with pytest.raises(ValueError, match="for encoder models"):
    plain.logits(ids, token_type_ids=types)
