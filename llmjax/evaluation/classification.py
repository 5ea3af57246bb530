"""Class predictions of a classifier head (an encoder with ModelConfig.num_classes), batched.

Examples become rows exactly as training featurizes them (data/featurize.py: [bos] text [eos],
or [bos] a [eos] b [eos] with token types for sentence pairs, truncated to the run's seq_len),
are padded to fixed [batch_size, seq_len] batches (segment id 0 marks padding, which the
encoder masks and the pooling skips) so one shape compiles once, and are scored in one jitted
forward pass per batch.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from llmjax.data.featurize import Featurizer

DEFAULT_BATCH_SIZE = 32


def example_fields(data_section: Mapping[str, Any] | None) -> dict[str, Any]:
  """The example-file field names a run trained with (its run_config "data" section), so its
  evaluation files use the same ones; defaults for a converted model."""
  data = dict(data_section or {})
  return {"text_field": data.get("text_field") or "text",
          "label_field": data.get("label_field") or "label",
          "text_pair_field": data.get("text_pair_field")}


def featurizer(tokenizer: Any, *, num_classes: int, seq_len: int, pairs: bool) -> Featurizer:
  """The training featurizer of classification rows for this tokenizer and length."""
  cfg = types.SimpleNamespace(objective="classification", num_classes=num_classes,
                              text_pair_field="text_pair" if pairs else None,
                              decoder_seq_len=None)
  return Featurizer(cfg, tokenizer, seq_len=seq_len, seed=0)


def predict(model: Any, examples: Sequence[Mapping[str, Any]], *, seq_len: int,
            batch_size: int | None = None) -> np.ndarray:
  """Argmax class of each example ({"text", "label"} (+ "text_pair")) under a LoadedModel.

  Args:
    model: a LoadedModel of a classifier (encoder with num_classes).
    examples: as task_data.read_classification_items returns them.
    seq_len: row length (the run's TrainConfig.seq_len; <= max_seq_len).
    batch_size: rows per forward pass (default DEFAULT_BATCH_SIZE).

  Returns:
    [n] int64 predicted classes.
  """
  batch_size = batch_size or DEFAULT_BATCH_SIZE
  pairs = bool(examples) and "text_pair" in examples[0]
  feats = featurizer(model.tokenizer, num_classes=model.config.num_classes,
                     seq_len=min(seq_len, model.config.max_seq_len), pairs=pairs)
  keys = ("inputs", "segment_ids", "positions") + (("token_types",) if pairs else ())
  forward = jax.jit(lambda params, batch: model.model.apply(params, batch)[0])
  preds = []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    rows = feats.empty_rows(batch_size)
    for i, example in enumerate(chunk):
      row = feats.example(start + i, example)
      for key in keys:
        rows[key][i] = row[key]
    logits = np.asarray(forward(model.params, {k: rows[k] for k in keys}))  # [b, c]
    preds.extend(np.argmax(logits[:len(chunk)], axis=-1).tolist())
  return np.asarray(preds, np.int64)
