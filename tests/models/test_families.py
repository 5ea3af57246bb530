"""Every family x every positional scheme: shapes, parameter count, finiteness, sharded ==
unsharded on a 2x4 fake mesh; cached decoding == the full forward pass; bad-input errors."""

import jax
import numpy as np
import pytest
from flax.linen import partitioning as nn_partitioning

from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sharding import partition
from llmjax.sharding.mesh import make_mesh
from llmjax.sharding.rules import get_rules

SCHEMES = ("learned", "sinusoidal", "rope", "t5_relative", "alibi")
FAMILIES = ("decoder", "encoder", "classifier", "encoder_decoder")
V, T, B = 64, 8, 8
KEY = jax.random.PRNGKey(0)


def _config(family: str, position: str, **changes) -> ModelConfig:
  arch = "encoder" if family == "classifier" else family
  base = dict(architecture=arch, vocab_size=V, num_layers=2, num_heads=8, num_kv_heads=2,
              embed_dim=32, mlp_dim=64, max_seq_len=16, position=position,
              num_classes=3 if family == "classifier" else None)
  return ModelConfig(**(base | changes))


def _batch(family: str) -> dict[str, np.ndarray]:
  """A packed batch (two segments per even row, padding at the end of every third row)."""
  rng = np.random.default_rng(0)
  seg = np.ones((B, T), np.int32)
  seg[::2, 5:] = 2
  seg[1::3, 6:] = 0
  pos = np.where(seg == 2, np.arange(T) - 5, np.arange(T)).astype(np.int32)
  tokens = rng.integers(4, V, (B, T + 1)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "segment_ids": seg, "positions": pos}
  if family == "classifier":
    single = np.where(np.arange(T)[None] < 6, 1, 0).astype(np.int32) * np.ones((B, 1), np.int32)
    return {"inputs": tokens[:, :-1], "segment_ids": single,
            "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
            "labels": rng.integers(0, 3, B).astype(np.int32),
            "weights": np.array([1.0] * (B - 1) + [0.0], np.float32)}
  batch |= {"targets": tokens[:, 1:], "weights": (seg > 0).astype(np.float32)}
  if family == "encoder_decoder":
    enc_seg = np.ones((B, T + 2), np.int32)
    enc_seg[::2, 6:] = 2
    enc_seg[1::3, 7:] = 0
    batch |= {"encoder_inputs": rng.integers(4, V, (B, T + 2)).astype(np.int32),
              "encoder_segment_ids": enc_seg,
              "encoder_positions": np.where(enc_seg == 2, np.arange(T + 2) - 6,
                                            np.arange(T + 2)).astype(np.int32)}
  return batch


def _loss_and_grads(lm):
  def fn(params, batch):
    def loss(p):
      value, aux = lm.loss_fn(p, batch, None, deterministic=True)
      return value, (aux, lm.apply(p, batch)[0])
    return jax.value_and_grad(loss, has_aux=True)(params)
  return fn


# The default run covers every family and every scheme at least once (the diagonal below); the
# full 4 x 5 grid compiles 60 programs and runs in CI's slow step.
_DEFAULT_GRID = {("decoder", "rope"), ("decoder", "alibi"), ("encoder", "learned"),
                 ("classifier", "sinusoidal"), ("encoder_decoder", "t5_relative")}
GRID = [pytest.param(f, p, marks=() if (f, p) in _DEFAULT_GRID else pytest.mark.slow)
        for f in FAMILIES for p in SCHEMES]


@pytest.mark.parametrize("family,position", GRID)
def test_family_scheme_grid(family, position):
  lm = LanguageModel(_config(family, position, use_bias=True, norm="layernorm",
                             tie_embeddings=position != "rope"))
  params = lm.init(jax.random.PRNGKey(0), seq_len=T)
  assert sum(x.size for x in jax.tree.leaves(params)) == lm.num_params()
  batch = _batch(family)
  (loss, (aux, logits)), grads = jax.jit(_loss_and_grads(lm))(params, batch)
  expected_shape = (B, 3) if family == "classifier" else (B, T, V)
  assert logits.shape == expected_shape
  assert np.isfinite(np.asarray(logits)).all() and np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  weight_sum = B - 1 if family == "classifier" else batch["weights"].sum()
  assert float(aux["weight_sum"]) == weight_sum

  # The same computation, sharded over fsdp=2 x tensor=4 (8 heads split, 2 kv heads not).
  mesh, rules = make_mesh({"fsdp": 2, "tensor": 4}), get_rules("fsdp_tp")
  shardings = partition.param_shardings(lm, mesh, rules)
  sharded_batch = jax.device_put(batch, partition.data_sharding(mesh))
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    fn = jax.jit(_loss_and_grads(lm), out_shardings=((None, None), shardings))
    (s_loss, (_, s_logits)), s_grads = fn(jax.device_put(params, shardings), sharded_batch)
  np.testing.assert_allclose(s_loss, loss, rtol=1e-5)
  np.testing.assert_allclose(s_logits, logits, atol=1e-5)
  # Sharded reductions sum in another order: gradients of magnitude ~1 differ by ~1e-6; a
  # sharding error would differ by O(1).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
               jax.device_get(s_grads), jax.device_get(grads))


def _decoder_prompts(max_len: int):
  lengths = np.array([5, 2, 7])
  full = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (3, max_len), 4, V), np.int32)
  prompt = np.where(np.arange(7)[None] < lengths[:, None], full[:, :7], 0)
  return lengths, full, prompt


def _decode_steps(step_fn, params, prompt, lengths, full, cache, steps):
  rows = np.arange(len(lengths))
  pos = np.broadcast_to(np.arange(prompt.shape[1], dtype=np.int32), prompt.shape)
  logits, cache = step_fn(params, prompt, pos, cache)
  prefill = np.asarray(logits)
  decoded = [prefill[rows, lengths - 1]]
  for i in range(steps):
    cur = (lengths + i).astype(np.int32)[:, None]
    logits, cache = step_fn(params, full[rows, lengths + i][:, None], cur, cache)
    decoded.append(np.asarray(logits)[:, 0])
  return prefill, decoded


def _check_against_reference(prefill, decoded, reference, lengths):
  rows = np.arange(len(lengths))
  for b in rows:
    np.testing.assert_allclose(prefill[b, :lengths[b]], reference[b, :lengths[b]], atol=1e-5)
  for i, got in enumerate(decoded):
    np.testing.assert_allclose(got, reference[rows, lengths - 1 + i], atol=1e-5)


@pytest.mark.parametrize("position,window", [(s, None) for s in SCHEMES] + [("rope", 3),
                                                                           ("alibi", 4)])
def test_decoder_cache_decoding_matches_full_forward(position, window):
  lm = LanguageModel(_config("decoder", position, sliding_window=window))
  params = lm.init(jax.random.PRNGKey(0))
  max_len = 16
  lengths, full, prompt = _decoder_prompts(max_len)
  decoder = lm.decoder(params)
  prefill, decoded = _decode_steps(jax.jit(decoder.logits_fn), decoder.params, prompt, lengths,
                                   full, decoder.init_cache(3, max_len), 4)
  reference = np.asarray(jax.jit(lambda p, t: lm.apply(p, t)[0])(params, full))
  _check_against_reference(prefill, decoded, reference, lengths)


@pytest.mark.parametrize("position,window", [("rope", 3), ("t5_relative", None),
                                             ("alibi", 4)])
def test_batch_one_split_cache_decoding_matches_full_forward(position, window):
  """Batch 1 through the sampler's path (LanguageModel.decoder): on CPU its decode steps
  attend to the old cache plus the new token (cpu_kernels.einsum_step_attention)."""
  lm = LanguageModel(_config("decoder", position, sliding_window=window))
  params = lm.init(jax.random.PRNGKey(0))
  lengths, full, prompt = (x[1:2] for x in _decoder_prompts(16))
  decoder = lm.decoder(params)
  prefill, decoded = _decode_steps(jax.jit(decoder.logits_fn), decoder.params, prompt, lengths,
                                   full, decoder.init_cache(1, 16), 6)
  reference = np.asarray(jax.jit(lambda p, t: lm.apply(p, t)[0])(params, full))
  _check_against_reference(prefill, decoded, reference, lengths)


@pytest.mark.parametrize("position", [
    pytest.param(s, marks=() if s in ("t5_relative", "rope") else pytest.mark.slow)
    for s in SCHEMES])
def test_encoder_decoder_cache_decoding_matches_full_forward(position):
  lm = LanguageModel(_config("encoder_decoder", position, num_decoder_layers=3,
                             scan_layers=position != "alibi", use_bias=position == "learned"))
  params = lm.init(jax.random.PRNGKey(0))
  max_len = 16
  lengths, full, prompt = _decoder_prompts(max_len)
  enc = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (3, 10), 4, V), np.int32)
  enc_seg = (np.arange(10)[None] < np.array([[10], [4], [7]])).astype(np.int32)

  decoder = lm.decoder(params)
  cache = jax.jit(decoder.encode, static_argnums=3)(decoder.params, enc, enc_seg, max_len)
  # One [1, b, g, s, k] array per decoder layer: batch at axis 1.
  assert [x.shape for x in cache["cross_k"]] == [(1, 3, 2, 10, 4)] * 3
  assert cache["encoder_mask"].shape == (1, 3, 10)
  prefill, decoded = _decode_steps(jax.jit(decoder.logits_fn), decoder.params, prompt, lengths,
                                   full, cache, 4)
  batch = {"encoder_inputs": enc, "encoder_segment_ids": enc_seg, "inputs": full,
           "encoder_positions": np.broadcast_to(np.arange(10, dtype=np.int32), (3, 10))}
  reference = np.asarray(jax.jit(lambda p, b: lm.apply(p, b)[0])(params, batch))
  _check_against_reference(prefill, decoded, reference, lengths)


def test_bad_inputs_fail_before_compiling():
  with pytest.raises(ValueError, match="architecture='encoder_decoder'"):
    _config("decoder", "rope", num_decoder_layers=2)
  with pytest.raises(ValueError, match="only architecture='encoder'"):
    _config("decoder", "rope", num_classes=2)
  decoder = LanguageModel(_config("decoder", "rope"))
  # Nothing to encode: init_cache starts decoding.
  assert jax.eval_shape(decoder.decoder, jax.eval_shape(decoder.init, KEY)).encode is None
  with pytest.raises(ValueError, match="no encoder to cross-attend"):
    decoder.apply(None, _batch("encoder_decoder"))
  encoder = LanguageModel(_config("encoder", "learned"))
  with pytest.raises(ValueError, match="does not generate text"):
    encoder.decoder(None)
  encdec = LanguageModel(_config("encoder_decoder", "learned"))
  with pytest.raises(ValueError, match="max_seq_len=16"):
    jax.eval_shape(encdec.decoder, jax.eval_shape(encdec.init, KEY)).init_cache(1, 32)


# The options Hugging Face architectures need (BERT: post-norm, embedding norm, token types,
# exact GELU; T5: unscaled attention) on the shared layers: counted right, sharded == unsharded.
HF_STYLE = {
    "bert": dict(architecture="encoder", position="learned", norm="layernorm",
                 norm_position="post", embedding_norm=True, type_vocab_size=2, mlp="gelu",
                 gelu_approximate=False, use_bias=True, num_kv_heads=None),
    "t5": dict(architecture="encoder_decoder", position="t5_relative", norm="rmsnorm",
               mlp="geglu", attention_scale=1.0, num_kv_heads=None, tie_embeddings=False),
}


@pytest.mark.parametrize("style", list(HF_STYLE))
def test_hf_style_options(style):
  options = dict(HF_STYLE[style])
  cfg = _config(options.pop("architecture"), options.pop("position"), **options)
  lm = LanguageModel(cfg)
  params = lm.init(jax.random.PRNGKey(0), seq_len=T)
  assert sum(x.size for x in jax.tree.leaves(params)) == lm.num_params()
  if style == "bert":
    assert "final_norm" not in params and "embed_norm" in params
  batch = _batch(cfg.architecture)
  if style == "bert":
    batch = {k: v for k, v in batch.items() if k in ("inputs", "segment_ids", "positions")}
  logits = np.asarray(jax.jit(lambda p, b: lm.apply(p, b)[0])(params, batch))
  mesh, rules = make_mesh({"fsdp": 2, "tensor": 4}), get_rules("fsdp_tp")
  shardings = partition.param_shardings(lm, mesh, rules)
  sharded = jax.device_put(params, shardings)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    got = jax.jit(lambda p, b: lm.apply(p, b)[0])(sharded, jax.device_put(
        batch, partition.data_sharding(mesh)))
  np.testing.assert_allclose(np.asarray(got), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["encoder", "classifier"])
def test_batch_token_types_reach_the_encoder(family):
  # The token-type embedding is added exactly as given in the batch: a "token_types" batch
  # equals the module called with those types, and differs from the all-type-0 default.
  options = {k: v for k, v in HF_STYLE["bert"].items() if k not in ("architecture", "position")}
  cfg = _config(family, "learned", **options)
  lm = LanguageModel(cfg)
  params = lm.init(jax.random.PRNGKey(0), seq_len=T)
  batch = _batch(family)
  types = (np.arange(T)[None] >= 3).astype(np.int32) * np.ones((B, 1), np.int32)
  typed = batch | {"token_types": types}
  want = lm.module.apply({"params": params}, batch["inputs"], batch["positions"],
                         batch["segment_ids"], token_types=types)[0]
  np.testing.assert_allclose(lm.apply(params, typed)[0], want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(lm.apply(params, batch["inputs"], batch["positions"],
                                      batch["segment_ids"], token_types=types)[0], want,
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(lm.apply(params, batch)[0], want, atol=1e-4)
  weights = batch["weights"] if family == "classifier" else np.ones((B, T), np.float32)
  labels = {"labels": batch["labels"]} if family == "classifier" else {
      "targets": batch["inputs"]}
  loss_typed, _ = lm.loss_fn(params, typed | labels | {"weights": weights}, None,
                             deterministic=True)
  loss_plain, _ = lm.loss_fn(params, batch | labels | {"weights": weights}, None,
                             deterministic=True)
  assert float(loss_typed) != float(loss_plain)
  decoder = LanguageModel(_config("decoder", "rope"))
  with pytest.raises(ValueError, match="no token-type embedding"):
    decoder.apply(jax.eval_shape(decoder.init, KEY), batch["inputs"], token_types=types)
