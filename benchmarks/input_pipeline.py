"""Does the input pipeline deliver >= 10x the tokens/s the trainer consumes (tokenizing on the fly)?

  python benchmarks/input_pipeline.py [--gin_file=gin_configs/runs/quickstart.gin] \
      [--batches=200] [--warmup=10] [--repeats=3] [--cache_dir=DIR] [--gin.BATCH_SIZE=8]

The training input pipeline is built from gin exactly as `llmjax train` builds it
(training/loop.py): `pipeline.prepare_dataset` (local text -> a TFDS ArrayRecord dataset),
`pipeline.get_or_train_tokenizer` (for runs/quickstart.gin: SentencePiece trained on the Python
standard library's sources), then `pipeline.make_train_iterator` with the trainer's batch size,
length, model vocabulary, data streams and row range. Documents are read, tokenized, featurized
and packed on the fly in the calling thread, as in the train loop. Preparing the dataset and
training the tokenizer are one-time costs, reported apart as `setup_s` (with a breakdown).

Cache: by default the dataset is prepared in a fresh temporary directory that is removed
afterwards (so `setup_s` is always the cold, first-run cost); `--cache_dir` (or a gin-bound
DataConfig.cache_dir) uses that directory instead and keeps it, and then setup is only the
reopen if the dataset is already there.

After `--warmup` batches, `--batches` batches are pulled per repeat; tokens_per_sec counts the
rows' tokens (encoder + decoder inputs for encoder-decoder objectives, as the trainer counts
them). The ceiling it is compared to is the trainer's consumption for the same gin config,
measured in the same run by benchmarks/train_throughput.py (the compiled, donated train step on
synthetic batches): ratio = pipeline / trainer, target 10. Every timed batch is also checked
against the keys, shapes and dtypes the trainer's step is compiled for. The last line of stdout
is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import sentencepiece

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a source checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_throughput, when imported.

import train_throughput  # noqa: E402

from llmjax.cli import gin_config  # noqa: E402
from llmjax.data import pipeline  # noqa: E402
from llmjax.sharding import mesh as mesh_lib  # noqa: E402
from llmjax.sharding import partition  # noqa: E402
from llmjax.training import host_data  # noqa: E402
from llmjax.training.loop import data_streams  # noqa: E402
from llmjax.training.validation import check_tokenizer, validate  # noqa: E402

DEFAULT_GIN_FILES = ["runs/quickstart.gin"]
TARGET_RATIO = 10.0


def batch_spec(batch: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
  """{feature: (shape, dtype name)} of a batch of numpy arrays."""
  return {k: (tuple(np.shape(v)), np.asarray(v).dtype.name) for k, v in sorted(batch.items())}


def trainer_batch_spec(model_cfg: Any, data_cfg: Any, batch_size: int, seq_len: int,
                       rows: int) -> dict[str, tuple[tuple[int, ...], str]]:
  """The spec of this process's rows of the batch the trainer's step is compiled for (the
  synthetic batch train_throughput.py trains on, with `rows` leading rows)."""
  example = train_throughput.synthetic_batch(np.random.default_rng(0), model_cfg, data_cfg,
                                             batch_size, seq_len)
  return {k: ((rows,) + shape[1:], dtype) for k, (shape, dtype) in batch_spec(example).items()}


def _tokens(batch: dict[str, Any]) -> int:
  # As training/loop.py counts a step's tokens: every row's encoder and decoder inputs.
  return sum(int(np.size(v)) for k, v in batch.items() if k in ("inputs", "encoder_inputs"))


def _id_range_ok(batch: dict[str, Any], vocab_size: int) -> bool:
  ids = [np.asarray(v) for k, v in batch.items() if k in ("inputs", "targets", "encoder_inputs")]
  return all(x.size == 0 or (x.min() >= 0 and x.max() < vocab_size) for x in ids)


def main(argv: list[str]) -> dict:
  """Runs the benchmark with command-line style arguments; returns the result dict."""
  rest, bindings = gin_config.split_gin_flags(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--gin_file", action="append", default=[],
                      help=f"default: {' + '.join(DEFAULT_GIN_FILES)}")
  parser.add_argument("--batches", type=int, default=200, help="timed batches per repeat")
  parser.add_argument("--warmup", type=int, default=10, help="untimed batches first")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--cache_dir", default=None,
                      help="dataset cache (kept); default: DataConfig.cache_dir if bound, else a "
                           "temp dir, removed")
  parser.add_argument("--trainer_steps", type=int, default=10,
                      help="train_throughput.py --steps for the trainer's rate")
  parser.add_argument("--trainer_repeats", type=int, default=3,
                      help="train_throughput.py --repeats for the trainer's rate")
  args = parser.parse_args(rest)
  gin_files = args.gin_file or DEFAULT_GIN_FILES
  gin_config.parse(gin_files, bindings)
  configs = gin_config.build_all()
  model_cfg, data_cfg, train_cfg = configs["model"], configs["data"], configs["train"]
  mesh = mesh_lib.make_mesh(configs["mesh"].shape)
  validate(model_cfg, train_cfg, mesh, data_cfg)

  temp_cache = None
  cache_dir = args.cache_dir or data_cfg.cache_dir
  if cache_dir is None:
    temp_cache = cache_dir = tempfile.mkdtemp(prefix="llmjax_pipeline_bench_")
  # cache_dir may differ between runs of the same data (validation.RESUMABLE_CHANGES): it moves
  # the prepared files, never changes the batches.
  data_cfg = dataclasses.replace(data_cfg, cache_dir=cache_dir)
  try:
    # llmjax train's order (loop.train): dataset, tokenizer, vocab check, then the iterator.
    start = time.perf_counter()
    train_source, _, data_stats = pipeline.prepare_dataset(data_cfg)
    prepare_s = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer = pipeline.get_or_train_tokenizer(data_cfg, train_source, tokenizer_dir=None)
    tokenizer_s = time.perf_counter() - start
    check_tokenizer(model_cfg, data_cfg, tokenizer)
    row_range = host_data.process_row_range(partition.data_sharding(mesh),
                                            train_cfg.batch_size)
    streams = data_streams(data_cfg, None)  # As for a fresh (not resumed) run.
    start = time.perf_counter()
    train_iter = pipeline.make_train_iterator(
        data_cfg, tokenizer, batch_size=train_cfg.batch_size, seq_len=train_cfg.seq_len,
        model_vocab_size=model_cfg.vocab_size, shards=streams, row_range=row_range)
    iterator_s = time.perf_counter() - start
    start = time.perf_counter()
    first = next(train_iter)  # The trainer pulls it before compiling; Grain starts up here.
    first_batch_s = time.perf_counter() - start

    for _ in range(args.warmup):
      next(train_iter)
    seconds, tokens, timed = [], [], []
    for _ in range(args.repeats):
      batches = []
      start = time.perf_counter()
      for _ in range(args.batches):
        batches.append(next(train_iter))  # Only a reference: checked after the clock stops.
      seconds.append(time.perf_counter() - start)
      tokens.append(sum(_tokens(b) for b in batches))
      timed.extend(batches)
  finally:
    if temp_cache is not None:
      shutil.rmtree(temp_cache, ignore_errors=True)

  expected = trainer_batch_spec(model_cfg, data_cfg, train_cfg.batch_size, train_cfg.seq_len,
                                row_range[1])
  specs_ok = all(batch_spec(b) == expected for b in [first, *timed])
  ids_ok = all(_id_range_ok(b, model_cfg.vocab_size) for b in [first, *timed])
  weight_fraction = float(np.mean([np.mean(np.asarray(b["weights"]) > 0) for b in timed]))
  del timed

  # The ceiling: what the trainer consumes for this config, timed in this same run.
  trainer = train_throughput.main(
      [f"--gin_file={f}" for f in gin_files]
      + [f"--gin.{b.replace(' = ', '=', 1)}" for b in bindings]
      + [f"--steps={args.trainer_steps}", f"--repeats={args.trainer_repeats}"])

  rates = [n / s for n, s in zip(tokens, seconds, strict=True)]
  median = statistics.median(rates)
  ratio = median / trainer["tokens_per_sec"]
  setup_s = prepare_s + tokenizer_s + iterator_s
  return {
      "benchmark": "input_pipeline",
      "gin_files": gin_files,
      "bindings": bindings,
      "objective": data_cfg.objective,
      "tokenizer": data_cfg.tokenizer,
      "tokenizer_vocab_size": tokenizer.vocab_size,
      "tokens_per_sec": median,
      "tokens_per_sec_min": min(rates),
      "tokens_per_sec_max": max(rates),
      "trainer_tokens_per_sec": trainer["tokens_per_sec"],
      "trainer_tokens_per_sec_min": trainer["tokens_per_sec_min"],
      "trainer_tokens_per_sec_max": trainer["tokens_per_sec_max"],
      "trainer_step_time_s": trainer["step_time_s"],
      "ratio": ratio,
      "ratio_worst": min(rates) / trainer["tokens_per_sec_max"],
      "target_ratio": TARGET_RATIO,
      "meets_target": ratio >= TARGET_RATIO,
      "batch_time_s": statistics.median(seconds) / args.batches,
      "batches_per_repeat": args.batches,
      "warmup_batches": args.warmup,
      "repeats": args.repeats,
      "setup_s": setup_s,
      "prepare_dataset_s": prepare_s,
      "tokenizer_s": tokenizer_s,
      "make_iterator_s": iterator_s,
      "first_batch_s": first_batch_s,
      "cache_dir": "temporary, cold, removed" if temp_cache is not None else cache_dir,
      "dataset": {k: data_stats[k] for k in ("num_files", "num_train_files", "num_bytes")
                  if k in data_stats},
      "batch_spec": {k: [list(shape), dtype] for k, (shape, dtype) in expected.items()},
      "batches_match_trainer_spec": specs_ok,
      "batches_checked": 1 + args.repeats * args.batches,
      "token_ids_in_vocab": ids_ok,
      "nonpadding_fraction": weight_fraction,
      "data_streams": streams,
      "batch_size": train_cfg.batch_size,
      "seq_len": train_cfg.seq_len,
      "model_vocab_size": model_cfg.vocab_size,
      "mesh": dict(mesh.shape),
      "device": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(),
      "jax_version": jax.__version__,
      "grain_version": getattr(grain, "__version__", "unknown"),
      "sentencepiece_version": sentencepiece.__version__,
      "python": platform.python_version(),
  }


if __name__ == "__main__":
  result = main(sys.argv[1:])
  print(json.dumps(result))
