"""Per-objective featurization: source record -> example(s) -> rows in the batch format.

pipeline.py builds the Grain graph (source -> shuffle -> repeat -> featurize -> rows -> batch)
and delegates everything that depends on DataConfig.objective to `Featurizer`:
- causal_lm / mlm: one shifted / masked document per record, packed by packing.py.
- span_corruption: a document is cut into chunks short enough that the corrupted encoder
  input fits seq_len and the target fits decoder_seq_len (objectives.span_corruption_chunk_
  length), each chunk one example; packed by packing_seq2seq.py.
- seq2seq: encoder = input ids + eos, target = target ids + eos; packed like span corruption.
- classification: one example per row, no packing: inputs = [bos] + text ids (+ eos if it
  fits), truncated to seq_len; with a second text (DataConfig.text_pair_field, sentence-pair
  tasks such as NLI or paraphrase) [bos] a [eos] b [eos], BERT's [CLS] a [SEP] b [SEP], with
  token_types 0 on [bos] a [eos] and 1 on b [eos], the longer text cut first to fit.
Classification and seq2seq examples that do not fit are counted by `count_truncated` (the
pipeline warns once, or refuses them with DataConfig.truncate_long_examples=False).
Random objectives draw from np.random.default_rng([seed, index]) where index is the record's
position in the (repeated, shuffled) stream: every example is a pure function of the seed and
its index, so restoring the iterator's state reproduces it exactly, and each epoch masks the
same document differently.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from llmjax.data import objectives, packing, packing_seq2seq
from llmjax.data import tokenizer as tokenizer_lib

TEXT_OBJECTIVES = ("causal_lm", "mlm", "span_corruption")
FILE_OBJECTIVES = ("classification", "seq2seq")
OBJECTIVES = TEXT_OBJECTIVES + FILE_OBJECTIVES


def required_vocab_size(cfg: Any, tokenizer: Any) -> int:
  """The model vocabulary the objective needs: tokenizer ids plus the objective's extra ids.

  mlm: + 1 for the mask id (tokenizer.vocab_size), unless the tokenizer has its own mask id
  (tokenizer.mask_id); span_corruption: the tokenizer's own first cfg.extra_ids sentinels
  (tokenizer.sentinel_ids, a converted T5's) when it has them, else + cfg.extra_ids (the top ids
  of the model vocabulary); otherwise the tokenizer's vocabulary.
  """
  if cfg.objective == "mlm":
    return max(tokenizer.vocab_size, tokenizer_lib.mask_id(tokenizer) + 1)
  if cfg.objective == "span_corruption":
    own = tokenizer_lib.sentinel_ids(tokenizer)[:cfg.extra_ids]
    if own:
      return max(tokenizer.vocab_size, max(own) + 1)
    return tokenizer.vocab_size + cfg.extra_ids
  return tokenizer.vocab_size


def document_text(record: Any, feature: str = "text") -> str:
  """The text of one source record (TFDS gives Text features as UTF-8 bytes)."""
  if isinstance(record, dict):
    if feature not in record:
      raise KeyError(f"records have no text feature {feature!r}; they have {sorted(record)}. "
                     "Set DataConfig.text_feature.")
    record = record[feature]
  if isinstance(record, np.ndarray) and record.ndim == 0:
    record = record.item()
  if isinstance(record, bytes):
    return record.decode("utf-8", errors="replace")
  if isinstance(record, str):
    return record
  raise TypeError(f"text feature {feature!r} is a {type(record).__name__}, not text.")


def training_text(cfg: Any, record: Any) -> str:
  """The text a tokenizer trains on from one record of the objective's source."""
  if cfg.objective == "classification":
    if "text_pair" in record:
      return document_text(record, "text") + "\n" + document_text(record, "text_pair")
    return document_text(record, "text")
  if cfg.objective == "seq2seq":
    return document_text(record, "input") + "\n" + document_text(record, "target")
  return document_text(record, cfg.text_feature)


class Featurizer:
  """Turns records into examples and examples into rows for one objective and shape."""

  def __init__(self, cfg: Any, tokenizer: Any, *, seq_len: int, seed: int,
               model_vocab_size: int | None = None):
    self.cfg, self.tok, self.seq_len, self.seed = cfg, tokenizer, seq_len, seed
    self.objective = cfg.objective
    self.decoder_len = cfg.decoder_seq_len or seq_len
    # Sentence pairs: rows carry token_types (see the module docstring).
    self.pairs = (self.objective == "classification"
                  and getattr(cfg, "text_pair_field", None) is not None)
    need = required_vocab_size(cfg, tokenizer)
    if model_vocab_size is not None and model_vocab_size < need:
      raise ValueError(f"model vocab_size={model_vocab_size} is too small for objective "
                       f"{self.objective!r} with a {tokenizer.vocab_size}-id tokenizer: it needs "
                       f">= {need} (pipeline.required_vocab_size); raise ModelConfig.vocab_size.")
    if self.objective == "span_corruption":
      self.sentinels = self._sentinels(model_vocab_size)
      self.chunk_len = objectives.span_corruption_chunk_length(
          seq_len, self.decoder_len, noise_density=cfg.noise_density,
          mean_noise_span_length=cfg.mean_noise_span_length, num_sentinels=cfg.extra_ids)

  def _sentinels(self, model_vocab_size: int | None) -> np.ndarray:
    """Sentinel i's id: the tokenizer's own <extra_id_i> (a converted T5's), else, for
    tokenizers trained here, model vocab_size - 1 - i (T5's layout: the top of the vocab)."""
    own = tokenizer_lib.sentinel_ids(self.tok)
    if own:
      if len(own) < self.cfg.extra_ids:
        raise ValueError(f"DataConfig.extra_ids={self.cfg.extra_ids}, but the tokenizer has "
                         f"only {len(own)} sentinels <extra_id_i>: set extra_ids <= {len(own)}.")
      return np.asarray(own[:self.cfg.extra_ids], np.int32)
    if model_vocab_size is None:
      raise ValueError("span_corruption places its sentinels at the top of the MODEL vocab: "
                       "pass model_vocab_size=ModelConfig.vocab_size to make_train_iterator / "
                       "make_eval_batches.")
    return tokenizer_lib.trained_here_sentinel_ids(model_vocab_size, self.cfg.extra_ids)

  def example(self, index: int, record: Any) -> Any:
    """The example (or list of examples, for span corruption) of the record at index."""
    tok, cfg = self.tok, self.cfg
    if self.objective == "causal_lm":
      ids = tok.encode(document_text(record, cfg.text_feature))
      return objectives.causal_lm_example(ids, bos_id=tok.bos_id, eos_id=tok.eos_id)
    rng = np.random.default_rng([self.seed, index])
    if self.objective == "mlm":
      ids = tok.encode(document_text(record, cfg.text_feature))
      return objectives.mlm_example(ids, rng, mask_id=tokenizer_lib.mask_id(tok),
                                    vocab_size=tok.vocab_size,
                                    mlm_rate=cfg.mlm_rate, bos_id=tok.bos_id, eos_id=tok.eos_id,
                                    special_ids=tok.special_ids)
    if self.objective == "span_corruption":
      ids = np.asarray(tok.encode(document_text(record, cfg.text_feature)), np.int32)
      return [objectives.span_corruption_example(
          ids[i:i + self.chunk_len], rng, noise_density=cfg.noise_density,
          mean_noise_span_length=cfg.mean_noise_span_length, sentinel_ids=self.sentinels,
          eos_id=tok.eos_id) for i in range(0, len(ids), self.chunk_len)]
    if self.objective == "seq2seq":
      enc = tok.encode(document_text(record, "input")) + [tok.eos_id]
      tgt = tok.encode(document_text(record, "target")) + [tok.eos_id]
      return {"encoder_inputs": np.asarray(enc, np.int32), "targets": np.asarray(tgt, np.int32)}
    return self._classification_row(record)

  def _classification_row(self, record: Any) -> dict[str, np.ndarray]:
    label = int(record["label"])
    if self.cfg.num_classes is not None and not 0 <= label < self.cfg.num_classes:
      raise ValueError(f"label {label} is not in [0, {self.cfg.num_classes}); fix the example "
                       "or DataConfig.num_classes.")
    ids = self.tok.encode(document_text(record, "text"))
    row = {k: v[0] for k, v in self.empty_rows(1).items()}
    if self.pairs:
      doc, types = self._pair(ids, self.tok.encode(document_text(record, "text_pair")))
      row["token_types"][:len(doc)] = types
    else:
      doc = [self.tok.bos_id, *ids] + ([self.tok.eos_id] if len(ids) + 2 <= self.seq_len else [])
      doc = doc[:self.seq_len]
    row["inputs"][:len(doc)] = doc
    row["segment_ids"][:len(doc)] = 1
    row["positions"][:len(doc)] = np.arange(len(doc), dtype=np.int32)
    row["labels"], row["weights"] = np.int32(label), np.float32(1.0)
    return row

  def _pair(self, a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    """[bos] a [eos] b [eos] and its token types (0 on [bos] a [eos], 1 on b [eos]), the
    longer text losing its last token until the row fits seq_len (HF's 'longest_first')."""
    a, b = list(a), list(b)
    while len(a) + len(b) + 3 > self.seq_len and (a or b):
      (a if len(a) > len(b) else b).pop()
    bos, eos = self.tok.bos_id, self.tok.eos_id
    doc = [bos, *a, eos, *b, eos][:self.seq_len]
    types = ([0] * (len(a) + 2) + [1] * (len(b) + 1))[:self.seq_len]
    return doc, types

  def count_truncated(self, records: Any) -> dict[str, int]:
    """How many records the objective truncates to fit the row (classification / seq2seq).

    Returns {"examples", "truncated", and per side "inputs" / "targets" (seq2seq) or "texts"
    (classification): how many are too long, "longest_*": the longest in tokens (with the
    specials the row adds)}; all zero counts for the text objectives, which never truncate.
    """
    counts = {"examples": len(records), "truncated": 0}
    if self.objective not in FILE_OBJECTIVES:
      return counts
    tok, fields = self.tok, (("input", "target") if self.objective == "seq2seq" else ("text",))
    if self.pairs:
      fields = ("text", "text_pair")
    texts = [[document_text(records[i], f) for i in range(len(records))] for f in fields]
    encode = getattr(tok, "encode_batch", None) or (lambda ts: [tok.encode(t) for t in ts])
    lengths = [np.fromiter(map(len, encode(t)), np.int64, len(t)) for t in texts]
    if self.objective == "seq2seq":  # Each side gets an EOS.
      sides = {"inputs": (lengths[0] + 1, self.seq_len),
               "targets": (lengths[1] + 1, self.decoder_len)}
    elif self.pairs:  # [bos] a [eos] b [eos]
      sides = {"texts": (lengths[0] + lengths[1] + 3, self.seq_len)}
    else:  # [bos] text; the EOS is added only where it fits, so it is never cut.
      sides = {"texts": (lengths[0] + 1, self.seq_len)}
    too_long = np.zeros(len(records), bool)
    for name, (length, limit) in sides.items():
      counts[name] = int(np.sum(length > limit))
      counts[f"longest_{name}"] = int(length.max(initial=0))
      too_long |= length > limit
    counts["truncated"] = int(too_long.sum())
    return counts

  def rows(self, examples: grain.IterDataset) -> grain.IterDataset:
    """The row stage: packing for every objective but classification (already rows)."""
    if self.objective in ("causal_lm", "mlm"):
      return packing.PackIterDataset(examples, self.seq_len)
    if self.objective in ("span_corruption", "seq2seq"):
      return packing_seq2seq.Seq2SeqPackIterDataset(examples, self.seq_len, self.decoder_len,
                                                    bos_id=self.tok.bos_id)
    return examples

  def empty_rows(self, num_rows: int) -> dict[str, np.ndarray]:
    """All-padding rows of the objective's batch format (weights 0)."""
    if self.objective in ("causal_lm", "mlm"):
      return packing.empty_rows(num_rows, self.seq_len)
    if self.objective in ("span_corruption", "seq2seq"):
      return packing_seq2seq.empty_rows(num_rows, self.seq_len, self.decoder_len)
    keys = ("inputs", "segment_ids", "positions") + (("token_types",) if self.pairs else ())
    rows = {k: np.zeros((num_rows, self.seq_len), np.int32) for k in keys}
    rows["labels"] = np.zeros(num_rows, np.int32)
    rows["weights"] = np.zeros(num_rows, np.float32)
    return rows
