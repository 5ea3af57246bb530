"""DecoderOnly through LanguageModel: packing isolation, KV-cache decoding, remat, counts."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel

BASE = dict(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_seq_len=24)


def _config(**changes):
  return ModelConfig(**{**BASE, **changes})


@pytest.fixture(scope="module")
def base_params():
  """Params of the default (scanned) config; dropout and remat do not change their layout."""
  return LanguageModel(_config()).init(jax.random.PRNGKey(0))


def test_packing_does_not_leak_between_segments(base_params):
  lm = LanguageModel(_config())
  segment_ids = np.array([[1] * 6 + [2] * 7 + [3] * 3, [1] * 7 + [0] * 9], np.int32)
  positions = np.array([list(range(6)) + list(range(7)) + list(range(3)),
                        list(range(7)) + [0] * 9], np.int32)
  tokens = np.random.default_rng(1).integers(1, 64, (2, 16)).astype(np.int32)
  tokens[1, :7] = tokens[0, 6:13]  # Row 1: segment 2 of row 0 alone, then padding.
  changed = tokens.copy()
  changed[0, 6:13] = (changed[0, 6:13] + 7) % 64  # Rewrite segment 2 only.
  fwd = jax.jit(lambda p, t: lm.apply(p, t, positions, segment_ids)[0])
  a, b = np.asarray(fwd(base_params, tokens)), np.asarray(fwd(base_params, changed))
  np.testing.assert_array_equal(a[0, :6], b[0, :6])  # Segment 1: identical.
  np.testing.assert_array_equal(a[0, 13:], b[0, 13:])  # Segment 3 too.
  assert not np.allclose(a[0, 6:13], b[0, 6:13])
  # A packed document is computed as it would be alone (padding included, no NaN).
  np.testing.assert_allclose(a[0, 6:13], a[1, :7], atol=1e-5)
  assert np.all(np.isfinite(a))


@pytest.mark.parametrize("changes", [
    dict(position="rope", num_kv_heads=2, scan_layers=True),
    dict(position="learned", num_kv_heads=1, norm="layernorm", mlp="gelu", use_bias=True,
         tie_embeddings=False, scan_layers=False),
], ids=["rope_gqa_scan", "learned_mqa_loop"])
def test_decode_matches_full_forward(changes):
  lm = LanguageModel(_config(**changes))
  params = lm.init(jax.random.PRNGKey(0))
  max_len, steps = 16, 4
  lengths = np.array([5, 2, 7])  # Right-padded prompts of different lengths.
  full = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (3, max_len), 1, 64), np.int32)
  prompt = np.where(np.arange(7)[None] < lengths[:, None], full[:, :7], 0)

  decoder = lm.decoder(params)
  step_fn = jax.jit(decoder.logits_fn)
  pos = np.broadcast_to(np.arange(7, dtype=np.int32), (3, 7))
  logits, cache = step_fn(decoder.params, prompt, pos, decoder.init_cache(3, max_len))
  prefill = np.asarray(logits)
  decoded = [prefill[np.arange(3), lengths - 1]]  # [b, v] next-token logits
  for i in range(steps):
    cur = (lengths + i).astype(np.int32)[:, None]  # Each row's current length.
    tok = full[np.arange(3), lengths + i][:, None]
    logits, cache = step_fn(decoder.params, tok, cur, cache)
    decoded.append(np.asarray(logits)[:, 0])

  reference = np.asarray(jax.jit(lambda p, t: lm.logits_fn(
      p, t, np.broadcast_to(np.arange(max_len), (3, max_len)), None)[0])(params, full))
  for b in range(3):
    np.testing.assert_allclose(prefill[b, :lengths[b]], reference[b, :lengths[b]], atol=1e-5)
  for i, got in enumerate(decoded):
    np.testing.assert_allclose(got, reference[np.arange(3), lengths - 1 + i], atol=1e-5)


def test_remat_policies_give_identical_grads(base_params):
  batch = _batch(2, 12)
  grads = {}
  for policy in ("none", "full", "dots", "dots_no_batch"):
    lm = LanguageModel(_config(remat_policy=policy, dropout_rate=0.1))
    loss = lambda p, lm=lm: lm.loss_fn(p, batch, jax.random.PRNGKey(3))[0]
    grads[policy] = jax.jit(jax.grad(loss))(base_params)
  for policy in ("full", "dots", "dots_no_batch"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                 grads["none"], grads[policy])


def _batch(b, t, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 64, (b, t + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "segment_ids": np.ones((b, t), np.int32),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)),
          "weights": (rng.random((b, t)) > 0.2).astype(np.float32)}


def test_dropout_uses_rng_and_is_off_when_deterministic(base_params):
  lm = LanguageModel(_config(dropout_rate=0.5))
  params = base_params
  batch = _batch(2, 8)
  loss = jax.jit(lm.loss_fn, static_argnames="deterministic")
  a = loss(params, batch, jax.random.PRNGKey(1))[0]
  b = loss(params, batch, jax.random.PRNGKey(2))[0]
  c = loss(params, batch, jax.random.PRNGKey(1), deterministic=True)[0]
  d = loss(params, batch, jax.random.PRNGKey(2), deterministic=True)[0]
  assert a != b and c == d


def test_score_is_weighted_sum_of_log_likelihoods(base_params):
  lm = LanguageModel(_config())
  batch = _batch(2, 8)
  scores, (loss, aux) = jax.jit(lambda p: (
      lm.score(p, batch), lm.loss_fn(p, batch, None, deterministic=True)))(base_params)
  np.testing.assert_allclose(-scores.sum() / aux["weight_sum"], loss, rtol=1e-5)


@pytest.mark.parametrize("changes", [
    dict(),
    dict(num_kv_heads=1, scan_layers=False),
    dict(position="learned", norm="layernorm", mlp="gelu", use_bias=True, tie_embeddings=False),
    dict(head_dim=16, num_kv_heads=2, tie_embeddings=False),
])
def test_num_params_matches_param_tree(changes):
  lm = LanguageModel(_config(**changes))
  abstract = jax.eval_shape(lm.init, jax.random.PRNGKey(0))
  assert lm.num_params() == sum(x.size for x in jax.tree.leaves(abstract))
  table = 64 * 32 + (24 * 32 if lm.config.position == "learned" else 0)
  assert lm.num_params(embeddings=False) == lm.num_params() - table


def test_flops_per_token_formula():
  cfg = _config(mlp="gelu", num_kv_heads=2)
  d, f, layers, v, t = 32, 64, 2, 64, 16
  per_layer = 2 * d * d + 2 * d * (d // 2) + 2 * d * f
  expected = 6 * (layers * per_layer + d * v) + 12 * layers * d * t
  assert LanguageModel(cfg).flops_per_token(t) == expected


def test_config_validation_errors():
  with pytest.raises(ValueError, match="num_kv_heads"):
    _config(num_kv_heads=3)
  with pytest.raises(ValueError, match="head_dim"):
    _config(position="rope", head_dim=5)
  with pytest.raises(ValueError, match="embed_dim"):
    _config(embed_dim=30)
  with pytest.raises(ValueError, match="remat_policy"):
    _config(remat_policy="some")


def test_sequence_longer_than_learned_table_fails_early():
  lm = LanguageModel(_config(position="learned"))
  params = jax.eval_shape(lm.init, jax.random.PRNGKey(0))
  batch = _batch(1, 30)
  with pytest.raises(ValueError, match="max_seq_len=24"):
    lm.loss_fn(params, batch, None)
  with pytest.raises(ValueError, match="max_seq_len=24"):
    jax.eval_shape(lm.decoder, params).init_cache(1, 32)
  # Rotary positions have no table: the same length is allowed.
  rope = LanguageModel(_config(position="rope"))
  jax.eval_shape(rope.loss_fn, nn.unbox(rope.abstract_init()), batch, None)


def test_dataclass_is_frozen():
  with pytest.raises(dataclasses.FrozenInstanceError):
    _config().num_layers = 3  # type: ignore[misc]


def test_unpacked_rows_reach_attention_as_causal_structure(base_params, monkeypatch):
  """A forward pass without segment ids (sampling, scoring) hands the stack a mask that is
  just causal, which a CUDA GPU runs as cuDNN flash attention (is_causal, no dense mask);
  packed training rows keep their segments and stay on XLA."""
  from llmjax.models.attention_plan import CudnnDevice, plan_attention
  from llmjax.models.masks import MaskSpec

  seen = []
  original = MaskSpec.self_attention.__func__
  monkeypatch.setattr(MaskSpec, "self_attention", classmethod(
      lambda cls, *a, **k: seen.append(original(cls, *a, **k)) or seen[-1]))
  lm = LanguageModel(_config())
  tokens = np.ones((2, 8), np.int32)
  segment_ids = np.ones((2, 8), np.int32)
  unpacked = np.asarray(lm.apply(base_params, tokens)[0])
  packed = np.asarray(lm.apply(base_params, tokens, None, segment_ids)[0])
  np.testing.assert_allclose(unpacked, packed, rtol=1e-6, atol=1e-6)  # Same math.
  plans = [plan_attention(spec, requested=None, platform="gpu", dtype=np.dtype("bfloat16"),
                          head_dim=64, cudnn=CudnnDevice((9, 0))) for spec in seen]
  assert [(p.implementation, p.is_causal, p.dense_mask) for p in plans] == [
      ("cudnn", True, False), ("xla", False, True)]
