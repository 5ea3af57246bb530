"""Padding rows never make NaN, even where every key of an attention row is masked.

A packed encoder-decoder batch whose encoder rows are full (no segment 0) gives each decoder
padding position (segment 0) a cross-attention row with no visible key: decoder segment k
sees encoder segment k only. Masked scores are set to a large finite negative (float32's
minimum in the einsum attention, about -0.7 * the dtype's maximum in
jax.nn.dot_product_attention), never -inf, so such a row's softmax is uniform over the
masked keys: finite, not NaN. These tests run the public model on such batches, with both
CPU-runnable attention paths and both precisions, and check that every logit, the loss and
every gradient are finite and that real tokens equal each example run alone.
"""

import jax
import numpy as np
import pytest

from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel

V, S, T = 64, 12, 10


def _model(attention_impl: str, precision: str) -> LanguageModel:
  return LanguageModel(ModelConfig(
      architecture="encoder_decoder", vocab_size=V, num_layers=1, num_decoder_layers=1,
      num_heads=4, embed_dim=32, mlp_dim=64, max_seq_len=16, position="t5_relative",
      norm="rmsnorm", mlp="geglu", attention_impl=attention_impl, precision=precision))


def _examples() -> list[tuple[np.ndarray, np.ndarray]]:
  """(encoder ids, decoder ids) of four examples (decoder ids start with BOS 1)."""
  rng = np.random.default_rng(0)
  lengths = [(S, 6), (7, 4), (5, 3), (S, T)]
  return [(rng.integers(3, V, s).astype(np.int32),
           np.r_[1, rng.integers(3, V, t - 1)].astype(np.int32)) for s, t in lengths]


def _packed(examples) -> dict[str, np.ndarray]:
  """Rows: [ex0], [ex1 + ex2], [ex3]: every encoder row full (no segment 0), decoder rows 0
  and 1 ending in padding (segment 0), row 2 full."""
  rows = [[examples[0]], [examples[1], examples[2]], [examples[3]]]
  batch = {k: np.zeros((len(rows), n), np.int32) for k, n in (
      ("encoder_inputs", S), ("encoder_segment_ids", S), ("encoder_positions", S),
      ("inputs", T), ("targets", T), ("segment_ids", T), ("positions", T))}
  batch["weights"] = np.zeros((len(rows), T), np.float32)
  for r, row in enumerate(rows):
    e = d = 0
    for k, (enc, dec) in enumerate(row, start=1):
      batch["encoder_inputs"][r, e:e + len(enc)] = enc
      batch["encoder_segment_ids"][r, e:e + len(enc)] = k
      batch["encoder_positions"][r, e:e + len(enc)] = np.arange(len(enc))
      batch["inputs"][r, d:d + len(dec)] = dec
      batch["targets"][r, d:d + len(dec)] = np.r_[dec[1:], 2]
      batch["segment_ids"][r, d:d + len(dec)] = k
      batch["positions"][r, d:d + len(dec)] = np.arange(len(dec))
      batch["weights"][r, d:d + len(dec)] = 1.0
      e, d = e + len(enc), d + len(dec)
  return batch


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("attention_impl", ["einsum", "xla"])
def test_fully_masked_cross_attention_rows_stay_finite(attention_impl, precision):
  lm = _model(attention_impl, precision)
  params = lm.init(jax.random.PRNGKey(0), seq_len=T)
  examples = _examples()
  batch = _packed(examples)
  # The case under test: decoder padding rows (segment 0) over encoder rows without padding.
  dec_pad = batch["segment_ids"] == 0
  assert dec_pad[:2].any() and (batch["encoder_segment_ids"] > 0).all()

  @jax.jit
  def run(params, batch):
    def loss(p):
      value, _ = lm.loss_fn(p, batch, None, deterministic=True)
      return value, lm.apply(p, batch)[0]
    return jax.value_and_grad(loss, has_aux=True)(params)

  (loss, logits), grads = run(params, batch)
  logits = np.asarray(logits, np.float32)
  assert np.isfinite(logits).all(), "NaN/inf logits (padding rows included)"
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in jax.tree.leaves(grads))

  # Real tokens see only their own example: equal to the examples one per row, where the
  # encoder is padded too, so padding sees padding and no row is fully masked.
  alone = _one_per_row(examples)
  want = np.asarray(jax.jit(lambda p, b: lm.apply(p, b)[0])(params, alone), np.float32)
  tol = 1e-4 if precision == "float32" else 5e-2
  place = [(0, 0), (1, 0), (1, 4), (2, 0)]  # (row, first decoder column) of each example.
  for i, ((_, dec), (row, start)) in enumerate(zip(examples, place, strict=True)):
    np.testing.assert_allclose(logits[row, start:start + len(dec)], want[i, :len(dec)],
                               atol=tol * np.abs(want).max(), rtol=0)


def _one_per_row(examples) -> dict[str, np.ndarray]:
  """Each example alone in its row, right-padded (segment 0) on both sides."""
  batch = {k: np.zeros((len(examples), n), np.int32) for k, n in (
      ("encoder_inputs", S), ("encoder_segment_ids", S), ("inputs", T), ("segment_ids", T))}
  for r, (enc, dec) in enumerate(examples):
    batch["encoder_inputs"][r, :len(enc)], batch["encoder_segment_ids"][r, :len(enc)] = enc, 1
    batch["inputs"][r, :len(dec)], batch["segment_ids"][r, :len(dec)] = dec, 1
  return batch
