"""LoadedModel's request API (scoring.py) against transformers, the Sampler and itself.

References are independent of llmjax's scorer: log-probs come from the converted models' own
`transformers` (torch) forward passes on the same ids, rolling windows from a chunk-wise
derivation of the harness's scheme written here (and lm_eval's own function when installed),
greedy tokens from the Sampler, and padded batches from one-by-one calls.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="scoring parity tests need torch")
pytest.importorskip("transformers", reason="scoring parity tests need transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import sentencepiece as spm  # noqa: E402

import llmjax  # noqa: E402
from llmjax.data.tokenizer import ByteTokenizer  # noqa: E402
from llmjax.interop.workdir import import_hf  # noqa: E402
from llmjax.models.config import ModelConfig  # noqa: E402
from llmjax.models.interface import LanguageModel  # noqa: E402
from llmjax.sampling.loading import LoadedModel  # noqa: E402
from llmjax.sampling.scoring import length_bucket, rolling_windows  # noqa: E402
from tests.interop import hf_fixtures as fx  # noqa: E402

TEXTS = ["def f(x):\n    return x", "import os", "the value of the function is returned",
         "class a", "for i in range(10): print(i) and then some more words follow here"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """name -> (torch model, LoadedModel), converted on first use."""
  cache = {}

  def get(name):
    if name not in cache:
      root = tmp_path_factory.mktemp(name)
      hf_dir = str(root / "hf")
      made = {"gpt2": fx.make_gpt2, "llama": fx.make_llama, "bert": fx.make_bert,
              "t5": lambda p: fx.make_t5(p, v1_1=True)}[name](hf_dir)
      if name == "llama":  # A text tokenizer (bos 1, eos 2) for the text-level tests.
        fx.write_sentencepiece(hf_dir, "llama")
      import_hf(hf_dir, str(root / "w"))
      cache[name] = (made["model"], llmjax.load(str(root / "w")))
    return cache[name]
  return get


def _ids(seed, n):
  return np.random.default_rng(seed).integers(3, 90, n).tolist()


def _torch_logprobs(model, row):
  """[len(row) - 1] log p(row[i + 1] | row[:i + 1]) and greedy ids, from transformers."""
  logits = fx.torch_logits(model, np.asarray([row[:-1]]))[0]
  logp = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), -1).numpy()
  return logp[np.arange(len(row) - 1), row[1:]], logits.argmax(-1)


def _reference_loglikelihood(model, context, continuation, max_len):
  """The harness's row: the last max_len + 1 tokens of context + continuation."""
  row = (context + continuation)[-(max_len + 1):]
  logp, greedy = _torch_logprobs(model, row)
  n = len(continuation)
  return float(logp[-n:].sum()), bool((greedy[-n:] == np.asarray(continuation)).all())


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_loglikelihood_matches_transformers_with_truncation(models, name):
  model, loaded = models(name)
  bos, max_len = loaded.tokenizer.bos_id, loaded.config.max_seq_len
  requests = [([bos] + _ids(1, 6), _ids(2, 3)), ([bos] + _ids(3, 12), _ids(4, 1)),
              ([bos], _ids(5, 4)),
              ([bos] + _ids(6, max_len + 9), _ids(7, 5)),  # The context loses its left end.
              ([bos] + _ids(8, 4), _ids(9, max_len))]  # The longest continuation allowed.
  got = loaded.scorer.loglikelihood_tokens(requests)
  for (context, continuation), (logprob, _) in zip(requests, got, strict=True):
    want, _ = _reference_loglikelihood(model, context, continuation, max_len)
    np.testing.assert_allclose(logprob, want, rtol=1e-5, atol=1e-4)


def _reference_rolling(model, doc, bos, max_len):
  """Chunk-wise: the first max_len tokens from [bos] + doc, then chunks of max_len tokens, each
  token of chunk [a, e) predicted from the row doc[e - max_len - 1:e - 1]."""
  total = _torch_logprobs(model, [bos] + doc[:max_len])[0].sum()
  for a in range(max_len, len(doc), max_len):
    e = min(a + max_len, len(doc))
    row = doc[e - max_len - 1:e]
    total += _torch_logprobs(model, row)[0][-(e - a):].sum()
  return float(total)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_loglikelihood_rolling_matches_transformers(models, name):
  model, loaded = models(name)
  max_len = loaded.config.max_seq_len
  docs = [_ids(10, 5), _ids(11, max_len), _ids(12, 2 * max_len + 7), _ids(13, max_len + 1)]
  got = loaded.scorer.loglikelihood_rolling_tokens(docs)
  for doc, logprob in zip(docs, got, strict=True):
    want = _reference_rolling(model, doc, loaded.tokenizer.bos_id, max_len)
    np.testing.assert_allclose(logprob, want, rtol=1e-5, atol=1e-4)
  assert loaded.scorer.loglikelihood_rolling_tokens([[]]) == [0.0]


def test_rolling_windows_equal_lm_eval():
  utils = pytest.importorskip("lm_eval.utils", reason="lm_eval not installed")
  for n, max_len, context_len in [(1, 4, 1), (4, 4, 1), (5, 4, 1), (23, 8, 1), (23, 8, 3),
                                  (64, 16, 16)]:
    tokens = list(range(10, 10 + n))
    want = [utils.make_disjoint_window(w)
            for w in utils.get_rolling_token_windows(tokens, 1, max_len, context_len)]
    assert rolling_windows(tokens, 1, max_len, context_len) == [tuple(w) for w in want]


def test_text_requests_tokenize_like_lm_eval(models):
  model, loaded = models("llama")
  sp = spm.SentencePieceProcessor(model_proto=loaded.tokenizer.model_proto)
  pairs = [("def f(x):", " return x"), ("import ", "os"), ("", "class a"),
           ("the value of " * 8, "the function")]  # 8x: past max_seq_len, truncated.
  got = loaded.loglikelihood(pairs)
  for (context, continuation), (logprob, greedy) in zip(pairs, got, strict=True):
    spaces = len(context) - len(context.rstrip())  # lm-eval moves them to the continuation.
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = sp.encode(context)
    continuation_ids = sp.encode(context + continuation)[len(context_ids):]
    want, want_greedy = _reference_loglikelihood(model, [1] + context_ids, continuation_ids,
                                                 loaded.config.max_seq_len)
    np.testing.assert_allclose(logprob, want, rtol=1e-5, atol=1e-4)
    assert greedy == want_greedy
  rolling = loaded.loglikelihood_rolling([TEXTS[0], ""])
  want = _reference_rolling(model, sp.encode(TEXTS[0]), 1, loaded.config.max_seq_len)
  np.testing.assert_allclose(rolling, [want, 0.0], rtol=1e-5, atol=1e-4)


def test_is_greedy_agrees_with_greedy_decoding(models):
  _, loaded = models("llama")
  # The shapes of the generate_until test's reference: one decode compilation for both.
  prompts = [[1] + _ids(20 + i, 3 + 2 * i) for i in range(3)]
  generated = loaded.generate_ids(prompts, max_new_tokens=8, temperature=0.0)
  requests = [(p, g) for p, g in zip(prompts, generated, strict=True) if g]
  assert requests
  wrong = [(p, g[:-1] + [(g[-1] + 1) % 90]) for p, g in requests]
  got = loaded.scorer.loglikelihood_tokens(requests + wrong)
  assert [greedy for _, greedy in got] == [True] * len(requests) + [False] * len(wrong)
  for (right, _), (other, _) in zip(got[:len(requests)], got[len(requests):], strict=True):
    assert right > other


def test_batch_of_one_equals_batch_of_n(models):
  _, loaded = models("gpt2")
  bos, max_len = loaded.tokenizer.bos_id, loaded.config.max_seq_len
  context = [bos] + _ids(30, 9)
  requests = [(context, [c]) for c in (5, 17, 40, 63)]  # One-token choices: one shared row.
  requests += [(context, [5]), (context, [5, 17]), (context + [5], [17])]  # Dupes, prefixes.
  requests += [([bos] + _ids(31 + i, 2 * i), _ids(40 + i, 1 + i)) for i in range(5)]
  requests += [([bos] + _ids(60, max_len + 3), _ids(61, 4))]  # Truncated.
  scorer = loaded.scorer
  batched = scorer.loglikelihood_tokens(requests)
  # Rows run: one for the choices, duplicates and prefixes of `context` (and the lone-BOS row
  # of the empty context, a prefix of every row), 4 others and the truncated one.
  assert (scorer.stats["spans"], scorer.stats["rows"]) == (len(requests), 6)
  threes = scorer.loglikelihood_tokens(requests, batch_size=3)
  np.testing.assert_allclose([s for s, _ in threes], [s for s, _ in batched], rtol=0, atol=1e-5)
  assert [g for _, g in threes] == [g for _, g in batched]
  for i in (1, 9, 11):  # A shared row, a short one and the truncated one, alone.
    alone = scorer.loglikelihood_tokens([requests[i]], batch_size=1)[0]
    assert alone[0] == pytest.approx(batched[i][0], abs=1e-5) and alone[1] == batched[i][1]
  # Read from shared rows: the duplicate request exactly, the two-token one as the sum.
  assert batched[4] == batched[0]
  assert batched[5][0] == pytest.approx(batched[0][0] + batched[6][0], abs=1e-5)


def test_t5_continuations_are_scored_as_decoder_targets(models):
  model, loaded = models("t5")
  eos, start = 1, 0  # T5: EOS 1; the decoder starts from decoder_start_token_id 0 (its BOS).
  requests = [(_ids(70, 7), _ids(71, 4)), (_ids(72, 3), _ids(73, 1)), (_ids(74, 11), _ids(75, 6))]
  got = loaded.scorer.loglikelihood_tokens(requests)
  for (context, continuation), (logprob, _) in zip(requests, got, strict=True):
    logits = fx.torch_logits(model, np.asarray([context + [eos]]),
                             np.asarray([[start] + continuation[:-1]]))[0]
    logp = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), -1).numpy()
    want = logp[np.arange(len(continuation)), continuation].sum()
    np.testing.assert_allclose(logprob, want, rtol=1e-5, atol=1e-4)
  # Rolling: the decoder alone, the encoder input empty (just EOS), first token from start.
  doc = _ids(76, 9)
  logits = fx.torch_logits(model, np.asarray([[eos]]), np.asarray([[start] + doc[:-1]]))[0]
  logp = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), -1).numpy()
  np.testing.assert_allclose(loaded.scorer.loglikelihood_rolling_tokens([doc]),
                             [logp[np.arange(len(doc)), doc].sum()], rtol=1e-5, atol=1e-4)


def test_generate_until_cuts_at_stop_strings_in_input_order(models):
  _, loaded = models("llama")
  prompts = ["def f(x):", "import os", "the value"]  # One prompt bucket: one compilation.
  greedy = loaded.generate(prompts, max_new_tokens=8, temperature=0.0)
  stop = greedy[0][3:5]  # A stop string inside the first completion.
  requests = [(prompts[0], {"until": [stop, "zzz"], "max_gen_toks": 8}),
              (prompts[1], {"max_gen_toks": 3}),  # Another group, between the first's rows.
              (prompts[2], {"until": "\n\n", "max_gen_toks": 8, "do_sample": False}),
              (prompts[1], {"until": [], "max_gen_toks": 8, "temperature": 0.0})]
  got = loaded.generate_until(requests)
  assert got[0] == greedy[0].split(stop)[0] and len(got[0]) <= 3
  assert greedy[1].startswith(got[1]) and len(got[1]) < len(greedy[1])
  assert got[2:] == [greedy[2].split("\n\n")[0], greedy[1]]


def _byte_model(architecture, **overrides):
  tok = ByteTokenizer()
  fields = dict(vocab_size=tok.vocab_size + 4, num_layers=1, num_heads=4, num_kv_heads=2,
                embed_dim=32, mlp_dim=64, max_seq_len=32, architecture=architecture)
  if architecture == "encoder_decoder":
    fields.update(num_decoder_layers=1, position="t5_relative", norm="rmsnorm")
  fields.update(overrides)
  model = LanguageModel(ModelConfig(**fields))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype),
                        jax.eval_shape(model.init, jax.random.PRNGKey(0)))
  return LoadedModel(config=model.config, params=params, tokenizer=tok, model=model)


@pytest.mark.parametrize("architecture", ["decoder", "encoder", "encoder_decoder"])
def test_embed_padded_batch_equals_one_by_one(architecture):
  loaded = _byte_model(architecture)
  # Rows of 27-32 tokens (one length bucket: two compilations); the last one is truncated.
  texts = ["def f(x): return x + 1", "import os, sys  # the os", "y = [i for i in x]  # list",
           "x" * 40]
  for pooling in ("mean", "first", "last"):
    batch = loaded.embed(texts, pooling)
    single = np.concatenate([loaded.embed([t], pooling) for t in texts])
    assert batch.shape == (len(texts), 32)
    np.testing.assert_allclose(batch, single, rtol=1e-5, atol=1e-5)
  assert not np.allclose(batch[0], batch[1])


@pytest.mark.parametrize("name", ["llama", "t5", "bert"])  # Pre-norm, encoder's, post-norm.
def test_hidden_states_equal_transformers_last_hidden_state(models, name):
  model, loaded = models(name)
  ids = np.asarray([_ids(80, 9)])
  got = jax.jit(loaded.model.hidden_states)(loaded.params, ids)
  stack = {"llama": lambda: model.model, "t5": lambda: model.encoder,
           "bert": lambda: model.bert}[name]()
  with torch.no_grad():
    want = stack(input_ids=torch.as_tensor(ids)).last_hidden_state.numpy()
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_bad_requests_are_refused_before_compiling(models):
  _, loaded = models("llama")
  scorer = loaded.scorer
  before = scorer.num_compilations
  max_len = loaded.config.max_seq_len
  with pytest.raises(ValueError, match=r"requests\[1\] has an empty continuation"):
    loaded.loglikelihood([("a", "b"), ("a", "")])
  with pytest.raises(ValueError, match=rf"requests\[0\].*continuation has {max_len + 6} tokens.*"
                     rf"max_seq_len={max_len}"):
    scorer.loglikelihood_tokens([([1], _ids(0, max_len + 6))])
  with pytest.raises(ValueError, match=r"requests\[0\]\[1\]\[1\] must be a token id in \[0, 96\)"):
    scorer.loglikelihood_tokens([([1], [5, 96])])
  with pytest.raises(TypeError, match=r"documents must be a list of token-id lists"):
    scorer.loglikelihood_rolling_tokens("abc")
  with pytest.raises(TypeError, match=r"requests must be a list of \(context, continuation\)"):
    loaded.loglikelihood("a b")
  with pytest.raises(TypeError, match=r"requests\[0\] must be \(context, continuation\)"):
    loaded.loglikelihood([("a", 3)])
  with pytest.raises(TypeError, match=r"requests\[0\] must be \(context, continuation\)"):
    loaded.loglikelihood([("a", "b", "c")])
  with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
    loaded.loglikelihood([("a", "b")], batch_size=0)
  with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
    loaded.loglikelihood_rolling(["a", 5])
  with pytest.raises(TypeError, match=r"generate_until requests\[0\]\[1\] got an unknown "
                     r"setting 'max_tokens'"):
    loaded.generate_until([("a", {"max_tokens": 3})])
  with pytest.raises(TypeError, match=r"requests\[0\]\[1\]\['until'\] must be a str or a list"):
    loaded.generate_until([("a", {"until": 3})])
  with pytest.raises(ValueError, match=rf"max_gen_toks'\] must be an int in \[1, .*{max_len - 1}"):
    loaded.generate_until([("a", {"max_gen_toks": max_len})])
  with pytest.raises(ValueError, match="pooling must be one of mean, first, last"):
    loaded.embed(["a"], pooling="max")
  assert scorer.num_compilations == before
  assert loaded.loglikelihood([]) == [] and loaded.embed([]).shape == (0, 48)


@pytest.mark.parametrize("num_classes", [None, 3])
def test_encoders_refuse_likelihood_and_generation(num_classes):
  loaded = _byte_model("encoder", num_classes=num_classes)
  names = ("logits.*embed" if num_classes else "embed.*fill_mask")
  for call in (lambda: loaded.loglikelihood([("a", "b")]),
               lambda: loaded.loglikelihood_rolling(["a"]),
               lambda: loaded.generate_until([("a", {})])):
    with pytest.raises(ValueError, match=names):
      call()


def test_length_buckets_are_few_and_capped():
  assert [length_bucket(n, 1024) for n in (1, 8, 9, 13, 17, 25, 33, 100)] == [
      8, 8, 12, 16, 24, 32, 48, 128]
  assert length_bucket(30, 20) == 20
