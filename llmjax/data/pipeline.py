"""The input pipeline: source -> Grain shuffle -> tokenize + objective -> pack -> batch.

`DataConfig` says where the data comes from (local text files, the stdlib default corpus, a
prepared TFDS dataset, or for classification / seq2seq a local JSONL/CSV example file), how to
tokenize it and which objective turns it into examples (featurize.py). `make_train_iterator`
returns an infinite Grain iterator of numpy batches in the objective's batch format whose
`get_state()` is a small JSON-serializable dict that restores the exact batch sequence;
`make_eval_batches` returns a fixed list of batches from the held-out split. Batch formats
(leading dim = this process's rows b):
- causal_lm, mlm: inputs, targets, segment_ids, positions int32 [b, t]; weights float32 [b, t].
- classification: inputs, segment_ids, positions int32 [b, t]; labels int32 [b]; weights
  float32 [b] (0 = padding row); with DataConfig.text_pair_field also token_types int32
  [b, t] (0 = first text, 1 = second).
- span_corruption, seq2seq: encoder_inputs, encoder_segment_ids, encoder_positions int32
  [b, t]; inputs, targets, segment_ids, positions int32 [b, td]; weights float32 [b, td]
  (td = decoder_seq_len or t).

A global training batch is assembled from `DataConfig.shards` independent streams of the
records (sharded_iterator.py); each process builds only the streams that cover its rows, so
each host reads and tokenizes only its share of the data, and the batch sequence depends on the
number of streams, never on the number of hosts. The trainer's default (shards=None) is
`default_streams`: DEFAULT_STREAMS streams when the batch size allows, so a config and seed give
the same batches on 1, 2, 4 or 8 processes (and on any other count that divides the batch).
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from llmjax.config_checks import check_field_types
from llmjax.data import examples_file, featurize, sharded_iterator, tfds_text
from llmjax.data import tokenizer as tokenizer_lib
from llmjax.data.featurize import FILE_OBJECTIVES, OBJECTIVES, document_text, required_vocab_size

TOKENIZERS = ("sentencepiece", "byte")
# Data streams of the trainer's default: the usual process counts (1, 2, 4, 8) divide it, so
# each of them reads an equal share; more processes share streams (each still reads 1/8).
DEFAULT_STREAMS = 8
__all__ = ["DataConfig", "default_streams", "document_text", "get_or_train_tokenizer",
           "make_eval_batches", "make_tokenizer", "make_train_iterator", "prepare_dataset",
           "required_vocab_size"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  """Where training text comes from and how it is tokenized.

  Attributes:
    text_files: a glob / path or several; None = the Python standard library's .py sources.
    tfds_name: instead of text files, an already-prepared TFDS dataset ("name" or
      "name/config:version"), never downloaded.
    tfds_data_dir: where that dataset is prepared (None = TFDS's default).
    tfds_train_split / tfds_eval_split: its split names (eval None = no evaluation).
    text_feature: the dataset's text feature.
    tokenizer: 'sentencepiece' (trained on the training text) or 'byte'.
    tokenizer_dir: a saved tokenizer to use instead of building one (a directory written by
      `llmjax tokenizer train` or another run's DIR/tokenizer); its kind must match `tokenizer`.
    vocab_size: SentencePiece vocabulary size to train.
    max_train_text_mb: megabytes of text the SentencePiece trainer reads.
    eval_fraction: share of local text files held out (by a hash of the path) for evaluation.
    seed: shuffle seed; each epoch is reshuffled.
    shuffle: shuffle training documents.
    cache_dir: where local text files are prepared as a TFDS dataset; None = $LLMJAX_CACHE_DIR
      or ~/.cache/llmjax/tfds. Datasets are keyed by a hash of the files, never reused stale.
    objective: 'causal_lm' | 'mlm' | 'span_corruption' (from the text corpus) |
      'classification' | 'seq2seq' (from train_file / eval_file).
    mlm_rate: share of tokens MLM predicts (80% masked, 10% random, 10% kept).
    noise_density / mean_noise_span_length: T5 span corruption's noise share and span length.
    extra_ids: span corruption sentinels: the tokenizer's own first extra_ids <extra_id_i>
      (a converted T5's), else the top ids of the model vocabulary.
    decoder_seq_len: encoder-decoder target length td; None = seq_len.
    train_file / eval_file: .jsonl or .csv example files (eval None = hold out eval_fraction
      of the training examples by a seeded hash of each line).
    text_field / label_field: classification fields; input_field / target_field: seq2seq's.
    text_pair_field: classification of sentence pairs (NLI, paraphrase): the field of the
      second text; rows become [bos] text [eos] pair [eos] with token_types 0/1 (BERT's
      [CLS] a [SEP] b [SEP]; the model needs ModelConfig.type_vocab_size=2). None = one text.
    num_classes: classification labels are in [0, num_classes).
    shards: independent data streams a global batch is assembled from (it must divide the
      batch size); each host reads only its streams, and the batches depend on it, not on the
      number of hosts. None = `default_streams` (8 when the batch size and the records allow;
      on resume, what the checkpoint was written with), the same on any number of processes.
      With more than 8 processes each still reads 1/8 of the data: set it to the process count.
    truncate_long_examples: classification / seq2seq examples longer than the sequence are cut
      to fit, with one warning line counting them (True), or refused with that count (False).
  """
  text_files: str | tuple[str, ...] | None = None
  tfds_name: str | None = None
  tfds_data_dir: str | None = None
  tfds_train_split: str = "train"
  tfds_eval_split: str | None = "validation"
  text_feature: str = "text"
  tokenizer: str = "sentencepiece"
  tokenizer_dir: str | None = None
  vocab_size: int = 4096
  max_train_text_mb: float = 8.0
  eval_fraction: float = 0.05
  seed: int = 0
  shuffle: bool = True
  cache_dir: str | None = None
  objective: str = "causal_lm"
  mlm_rate: float = 0.15
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  extra_ids: int = 100
  decoder_seq_len: int | None = None
  train_file: str | None = None
  eval_file: str | None = None
  text_field: str = "text"
  label_field: str = "label"
  input_field: str = "input"
  target_field: str = "target"
  text_pair_field: str | None = None
  num_classes: int | None = None
  shards: int | None = None
  truncate_long_examples: bool = True

  def __post_init__(self):
    check_field_types(self)  # Also turns a list of text_files (gin's) into a hashable tuple.
    if isinstance(self.text_files, list | tuple):  # gin gives lists; keep the config hashable.
      object.__setattr__(self, "text_files", tuple(os.fspath(p) for p in self.text_files))
      if not self.text_files:
        raise ValueError("DataConfig.text_files is empty; give a glob/path or None (stdlib).")
    if self.text_files is not None and self.tfds_name is not None:
      raise ValueError("set DataConfig.text_files or DataConfig.tfds_name, not both.")
    if self.tokenizer not in TOKENIZERS:
      raise ValueError(f"DataConfig.tokenizer={self.tokenizer!r}; choose one of {TOKENIZERS}.")
    if self.tokenizer_dir is not None and not os.path.isfile(
        os.path.join(self.tokenizer_dir, tokenizer_lib.CONFIG_FILE)):
      raise ValueError(f"DataConfig.tokenizer_dir={self.tokenizer_dir!r} holds no saved tokenizer "
                       f"({tokenizer_lib.CONFIG_FILE} is missing); make one with `llmjax tokenizer "
                       "train --output=DIR` or leave tokenizer_dir unset to train one.")
    if self.tokenizer == "sentencepiece" and self.tokenizer_dir is None and self.vocab_size < 300:
      raise ValueError(f"DataConfig.vocab_size={self.vocab_size} is too small for SentencePiece "
                       "(>= 300), or use tokenizer='byte'.")
    if not 0.0 <= self.eval_fraction < 1.0:
      raise ValueError(f"DataConfig.eval_fraction={self.eval_fraction} must be in [0, 1).")
    if self.shards is not None and self.shards <= 0:
      raise ValueError(f"DataConfig.shards={self.shards} must be positive (or None: "
                       "gcd(batch size, 8) streams, the same on any number of processes).")
    if self.max_train_text_mb <= 0:
      raise ValueError(f"DataConfig.max_train_text_mb={self.max_train_text_mb} must be > 0.")
    self._check_objective()

  def _check_objective(self) -> None:
    """Validates the objective settings (see the class docstring)."""
    if self.objective not in OBJECTIVES:
      raise ValueError(f"DataConfig.objective={self.objective!r}; choose one of {OBJECTIVES}.")
    if not 0.0 < self.mlm_rate < 1.0:
      raise ValueError(f"DataConfig.mlm_rate={self.mlm_rate} must be in (0, 1), e.g. 0.15.")
    if not 0.0 < self.noise_density < 1.0:
      raise ValueError(f"DataConfig.noise_density={self.noise_density} must be in (0, 1), "
                       "e.g. 0.15.")
    if self.mean_noise_span_length < 1.0:
      raise ValueError(f"DataConfig.mean_noise_span_length={self.mean_noise_span_length} must be "
                       ">= 1, e.g. 3.0.")
    if self.extra_ids < 0 or (self.objective == "span_corruption" and self.extra_ids < 1):
      raise ValueError(f"DataConfig.extra_ids={self.extra_ids}: span_corruption needs >= 1 "
                       "sentinel ids (T5 uses 100).")
    if self.decoder_seq_len is not None and self.decoder_seq_len < 1:
      raise ValueError(f"DataConfig.decoder_seq_len={self.decoder_seq_len} must be >= 1 or None "
                       "(= seq_len).")
    if self.objective in FILE_OBJECTIVES:
      if self.train_file is None:
        raise ValueError(f"objective {self.objective!r} reads examples from a file: set "
                         "DataConfig.train_file to a .jsonl or .csv file.")
      if self.text_files is not None or self.tfds_name is not None:
        raise ValueError(f"objective {self.objective!r} reads DataConfig.train_file, not "
                         "text_files / tfds_name: unset those.")
      for name in ("train_file", "eval_file"):
        path = getattr(self, name)
        if path is not None and not path.lower().endswith(examples_file.EXTENSIONS):
          raise ValueError(f"DataConfig.{name}={path!r} must end in .jsonl or .csv.")
      if self.objective == "classification" and (self.num_classes is None
                                                  or self.num_classes < 2):
        raise ValueError(f"classification needs DataConfig.num_classes >= 2 (labels are "
                         f"0..num_classes-1); got {self.num_classes}.")
    if self.text_pair_field is not None and self.objective != "classification":
      raise ValueError(f"DataConfig.text_pair_field is for the 'classification' objective, not "
                       f"{self.objective!r}: unset it.")
    if self.objective not in FILE_OBJECTIVES and (self.train_file is not None
                                                  or self.eval_file is not None):
      raise ValueError(f"DataConfig.train_file / eval_file are for the 'classification' and "
                       f"'seq2seq' objectives; {self.objective!r} reads text_files / tfds_name: "
                       "unset them or change DataConfig.objective.")


def default_cache_dir() -> str:
  return os.environ.get("LLMJAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "llmjax", "tfds")


def prepare_dataset(data_cfg: DataConfig,
                    data_dir: str | None = None) -> tuple[Any, Any | None, dict[str, Any]]:
  """Prepares (once) and opens the data: returns (train_source, eval_source or None, stats).

  Sources are random-access TFDS data sources of records with a text feature. Local files are
  prepared under data_dir (default: data_cfg.cache_dir, see DataConfig). For classification
  and seq2seq they are lists of {"text", "label"} / {"input", "target"} dicts read from
  data_cfg.train_file / eval_file (examples_file.py), classification pairs with "text_pair".
  """
  if data_cfg.objective in FILE_OBJECTIVES:
    return examples_file.load_example_files(
        data_cfg.train_file, data_cfg.eval_file, data_cfg.objective,
        eval_fraction=data_cfg.eval_fraction, seed=data_cfg.seed,
        text_field=data_cfg.text_field, label_field=data_cfg.label_field,
        input_field=data_cfg.input_field, target_field=data_cfg.target_field,
        text_pair_field=data_cfg.text_pair_field, num_classes=data_cfg.num_classes)
  if data_cfg.tfds_name is not None:
    train = tfds_text.open_prepared(data_cfg.tfds_name, data_cfg.tfds_data_dir,
                                    data_cfg.tfds_train_split)
    valid = None
    if data_cfg.tfds_eval_split:
      valid = tfds_text.open_prepared(data_cfg.tfds_name, data_cfg.tfds_data_dir,
                                      data_cfg.tfds_eval_split)
    stats = {"tfds_name": data_cfg.tfds_name, "num_train_examples": len(train),
             "num_validation_examples": len(valid) if valid is not None else 0}
    return train, valid, stats
  if data_cfg.text_files is None:
    files = tfds_text.stdlib_files()
  else:
    files = tfds_text.resolve_files(data_cfg.text_files)
  data_dir = data_dir or data_cfg.cache_dir or default_cache_dir()
  os.makedirs(data_dir, exist_ok=True)
  # Processes of one run (or several runs) sharing a cache prepare it one at a time: the
  # first prepares, the others find it ready.
  with open(os.path.join(data_dir, ".prepare.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder, stats = tfds_text.prepare_local_text(files, data_dir,
                                                  eval_fraction=data_cfg.eval_fraction)
  valid = (builder.as_data_source(split="validation")
           if stats["num_validation_files"] else None)
  return builder.as_data_source(split="train"), valid, stats


def get_or_train_tokenizer(data_cfg: DataConfig, source: Any,
                           tokenizer_dir: str | None = None) -> tokenizer_lib.Tokenizer:
  """Loads the tokenizer saved in tokenizer_dir, else builds it (training on source) and saves.

  `data_cfg.tokenizer_dir`, when set, is the tokenizer to use (loaded, never retrained).
  SentencePiece trains on the first data_cfg.max_train_text_mb MB of the source's documents in
  a fixed, seeded order, so the same data and config always give the same model.
  """
  if tokenizer_dir and os.path.exists(os.path.join(tokenizer_dir, tokenizer_lib.CONFIG_FILE)):
    return tokenizer_lib.load_tokenizer(tokenizer_dir)
  if data_cfg.tokenizer_dir is not None:
    tok = tokenizer_lib.load_tokenizer(data_cfg.tokenizer_dir)
    if tok.kind != data_cfg.tokenizer:
      raise ValueError(f"DataConfig.tokenizer_dir={data_cfg.tokenizer_dir!r} holds a {tok.kind!r} "
                       f"tokenizer but DataConfig.tokenizer={data_cfg.tokenizer!r}: set "
                       f"DataConfig.tokenizer = {tok.kind!r}.")
  elif data_cfg.tokenizer == "byte":
    tok = tokenizer_lib.ByteTokenizer()
  else:
    order = np.random.default_rng(data_cfg.seed).permutation(len(source))
    texts = (featurize.training_text(data_cfg, source[int(i)]) for i in order)
    tok = tokenizer_lib.SentencePieceTokenizer.train(
        texts, data_cfg.vocab_size, max_text_mb=data_cfg.max_train_text_mb)
  if tokenizer_dir:
    tok.save(tokenizer_dir)
  return tok


def make_tokenizer(data_cfg: DataConfig, data_dir: str | None = None,
                   tokenizer_dir: str | None = None) -> tokenizer_lib.Tokenizer:
  """prepare_dataset + get_or_train_tokenizer on the training split."""
  train, _, _ = prepare_dataset(data_cfg, data_dir)
  return get_or_train_tokenizer(data_cfg, train, tokenizer_dir)


def _resolve(source: Any, data_dir: str | None, split: str) -> Any:
  if isinstance(source, DataConfig):
    train, valid, _ = prepare_dataset(source, data_dir)
    return train if split == "train" else valid
  return source


def _process_rows(batch_size: int, process_index: int | None,
                  process_count: int | None) -> tuple[int, int]:
  """(first row, rows) of this process's slice of a global batch."""
  if process_index is None or process_count is None:
    import jax  # Only for the defaults; the pipeline itself is numpy.
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if batch_size % process_count:
    raise ValueError(f"global batch_size={batch_size} is not divisible by process_count="
                     f"{process_count}: each process must get the same number of rows.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
  rows = batch_size // process_count
  return process_index * rows, rows


def check_truncation(cfg: DataConfig, feat: featurize.Featurizer, source: Any, split: str, *,
                     warn: bool = True) -> dict[str, int]:
  """Counts the source's examples that do not fit a row (classification / seq2seq) and says so.

  One stderr line per call when some are truncated (warn=False: silent, for all processes but
  the first); a ValueError instead with DataConfig.truncate_long_examples=False. Returns
  Featurizer.count_truncated's counts.
  """
  counts = feat.count_truncated(source)
  if not counts["truncated"]:
    return counts
  where = cfg.train_file if split == "training" or cfg.eval_file is None else cfg.eval_file
  if cfg.objective == "seq2seq":
    detail = (f"inputs over {feat.seq_len} tokens with EOS: {counts['inputs']} (longest "
              f"{counts['longest_inputs']}), targets over {feat.decoder_len}: "
              f"{counts['targets']} (longest {counts['longest_targets']})")
    fix = "raise TrainConfig.seq_len / DataConfig.decoder_seq_len or shorten the examples"
  else:
    detail = (f"over {feat.seq_len} tokens with the special tokens; longest "
              f"{counts['longest_texts']}")
    fix = "raise TrainConfig.seq_len or shorten the texts"
  what = (f"{counts['truncated']:,} of {counts['examples']:,} {cfg.objective} {split} examples"
          f"{f' of {where}' if where else ''} do not fit the sequence ({detail})")
  if not cfg.truncate_long_examples:
    raise ValueError(f"{what}: {fix}, or set DataConfig.truncate_long_examples=True to cut "
                     "them to fit.")
  if warn:
    print(f"llmjax: warning: {what} and are truncated: {fix}, or set "
          "DataConfig.truncate_long_examples=False to refuse such data.", file=sys.stderr)
  return counts


def _objective_cfg(source: Any, data_cfg: DataConfig | None) -> DataConfig:
  if isinstance(source, DataConfig):
    return source
  return data_cfg if data_cfg is not None else DataConfig()


def default_streams(batch_size: int, num_records: int) -> int:
  """The data streams a run uses when DataConfig.shards is None.

  gcd(batch_size, DEFAULT_STREAMS), halved while it exceeds the training records: a function of
  the config and the data only, never of the process count, so every process count that divides
  the batch size sees the same batches (each process building the streams under its rows).
  """
  streams = math.gcd(batch_size, DEFAULT_STREAMS)
  while streams > 1 and streams > num_records:
    streams //= 2
  return streams


def make_train_iterator(source: Any, tokenizer: tokenizer_lib.Tokenizer, *, batch_size: int,
                        seq_len: int, seed: int | None = None, process_index: int | None = None,
                        process_count: int | None = None, data_dir: str | None = None,
                        read_threads: int = 0, model_vocab_size: int | None = None,
                        data_cfg: DataConfig | None = None, shards: int | None = 1,
                        row_range: tuple[int, int] | None = None) -> Any:
  """An infinite iterator of this process's rows of each global training batch.

  Args:
    source: a random-access source of records (e.g. prepare_dataset's train_source), or a
      DataConfig (its training split is prepared/opened under data_dir).
    tokenizer: encodes the text.
    batch_size: the GLOBAL batch size; each batch holds batch_size // process_count rows.
    seq_len: t, tokens per row (the encoder length for encoder-decoder objectives).
    seed: shuffle and masking seed; default: the DataConfig's seed, else 0. Epochs are
      reshuffled (and re-masked).
    process_index / process_count: which slice to keep; default jax.process_index()/count().
    data_dir: with a DataConfig source, where local text is prepared.
    read_threads: Grain read threads (0 = tokenize in the calling thread).
    model_vocab_size: the model's vocab size; required for span_corruption (its sentinels are
      the top ids), checked against required_vocab_size when given.
    data_cfg: the objective settings when source is not a DataConfig (default: causal LM).
    shards: independent data streams the global batch is made of (sharded_iterator.py); a
      process builds only the streams covering its rows. None = default_streams (the
      trainer's default, DataConfig.shards=None).
    row_range: (first row, rows) of the global batch to keep, overriding process_index/count
      (the trainer derives it from the batch sharding).

  Returns:
    An iterator of dicts of numpy arrays in the objective's batch format (see the module
    docstring) whose get_state() is JSON-serializable and set_state() resumes the exact batch
    sequence: a Grain DatasetIterator for shards=1, else a ShardedBatchIterator.
  """
  cfg = _objective_cfg(source, data_cfg)
  seed = cfg.seed if seed is None else seed
  first, rows = row_range or _process_rows(batch_size, process_index, process_count)
  src = _resolve(source, data_dir, "train")
  if src is None or len(src) == 0:
    raise ValueError("the training split is empty.")
  if shards is None:
    shards = default_streams(batch_size, len(src))
  parts = sharded_iterator.stream_slices(batch_size, shards, first, rows)
  if cfg.objective in FILE_OBJECTIVES:
    check_truncation(cfg, featurize.Featurizer(cfg, tokenizer, seq_len=seq_len, seed=seed,
                                               model_vocab_size=model_vocab_size),
                     src, "training", warn=first == 0)
  if len(src) < shards:
    raise ValueError(f"the training split has {len(src)} records, fewer "
                     f"than the {shards} data streams (DataConfig.shards).")

  def stream(k: int) -> grain.DatasetIterator:
    k_seed = sharded_iterator.stream_seed(seed, k)
    feat = featurize.Featurizer(cfg, tokenizer, seq_len=seq_len, seed=k_seed,
                                model_vocab_size=model_vocab_size)
    ds = grain.MapDataset.source(src)
    if shards > 1:
      ds = ds[k::shards]  # Records are dealt round-robin: a host reads only its streams.
    if cfg.shuffle:
      ds = ds.shuffle(seed=k_seed)
    # repeat reseeds the shuffle each epoch; the index after repeat counts across epochs, so
    # the masking rng of every example is fixed by (seed, index) and resumes exactly.
    ds = ds.repeat(None).map_with_index(feat.example)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                 prefetch_buffer_size=max(read_threads, 1) * 4))
    it_ds = feat.rows(it_ds).batch(batch_size // shards, drop_remainder=True)
    if shards == 1 and (first, rows) != (0, batch_size):
      it_ds = it_ds.map(lambda b: {k: v[first:first + rows] for k, v in b.items()})
    return it_ds.__iter__()

  if shards == 1:
    return stream(0)  # The plain Grain iterator (and state format) of a single stream.
  return sharded_iterator.ShardedBatchIterator(shards, stream, parts)


def make_eval_batches(source: Any, tokenizer: tokenizer_lib.Tokenizer, *, batch_size: int,
                      seq_len: int, num_batches: int, process_index: int | None = None,
                      process_count: int | None = None, data_dir: str | None = None,
                      model_vocab_size: int | None = None, data_cfg: DataConfig | None = None,
                      row_range: tuple[int, int] | None = None) -> list[dict[str, np.ndarray]]:
  """The first num_batches batches of the held-out data, in a fixed order (no shuffle).

  Fewer batches are returned if the data runs out; the last one is padded with all-padding
  rows (weights 0). With a DataConfig whose data has no evaluation split: an empty list.
  Arguments are as in make_train_iterator (masking uses the DataConfig's seed). Every process
  builds the whole (small, fixed) evaluation set and keeps its rows.
  """
  cfg = _objective_cfg(source, data_cfg)
  feat = featurize.Featurizer(cfg, tokenizer, seq_len=seq_len, seed=cfg.seed,
                              model_vocab_size=model_vocab_size)
  first, rows = row_range or _process_rows(batch_size, process_index, process_count)
  src = _resolve(source, data_dir, "validation")
  if src is None or len(src) == 0 or num_batches <= 0:
    return []
  if cfg.objective in FILE_OBJECTIVES:
    check_truncation(cfg, feat, src, "evaluation", warn=first == 0)
  ds = grain.MapDataset.source(src).map_with_index(feat.example)
  rows_iter: Iterator[dict[str, np.ndarray]] = iter(
      feat.rows(ds.to_iter_dataset(grain.ReadOptions(num_threads=0))))
  batches = []
  for _ in range(num_batches):
    got = [r for _, r in zip(range(batch_size), rows_iter, strict=False)]
    if not got:
      break
    batch = feat.empty_rows(batch_size)
    for i, r in enumerate(got):
      for k in batch:
        batch[k][i] = r[k]
    batches.append({k: v[first:first + rows] for k, v in batch.items()})
    if len(got) < batch_size:
      break
  return batches
