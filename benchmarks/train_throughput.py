"""Training throughput of a gin-configured model: tokens/s, step time, compile time, MFU.

  python benchmarks/train_throughput.py --gin_file=gin_configs/runs/quickstart.gin \
      [--gin_file=gin_configs/models/gpt2_small.gin] [--gin.BATCH_SIZE=8] [--repeats=5]

The model, batch, sequence length, optimizer and mesh come from gin exactly as in
`llmjax train`; the tokens are synthetic (uniform random ids), so no data is prepared and the
input pipeline is out of the measurement (benchmarks/input_pipeline.py measures it). The step
is the trainer's own compiled, donated step. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a source checkout.

from llmjax.cli import gin_config  # noqa: E402
from llmjax.models.interface import LanguageModel  # noqa: E402
from llmjax.sharding import mesh as mesh_lib  # noqa: E402
from llmjax.sharding import partition  # noqa: E402
from llmjax.sharding import rules as rules_lib  # noqa: E402
from llmjax.training import metrics as metrics_lib  # noqa: E402
from llmjax.training import state as state_lib  # noqa: E402
from llmjax.training import step as step_lib  # noqa: E402
from llmjax.training.optimizer import make_optimizer  # noqa: E402
from llmjax.training.validation import validate  # noqa: E402

# PyTorch peers on the 2-core CPU machine of issue 5 (nanoGPT-style training, fp32), keyed by
# (layers, heads, width, context, batch): tokens/s. `ratio_to_pytorch` compares against them.
PYTORCH_ANCHORS = {
    (6, 6, 384, 256, 64): 1450.0,  # models/gpt_baby.gin
    (4, 4, 128, 64, 12): 17000.0,  # models/gpt_cpu_small.gin
}


def _rows(rng: np.random.Generator, batch: int, length: int, vocab: int) -> dict:
  tokens = rng.integers(3, vocab, size=(batch, length + 1), dtype=np.int32)
  return {
      "inputs": tokens[:, :-1],
      "targets": tokens[:, 1:],
      "segment_ids": np.ones((batch, length), np.int32),
      "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
      "weights": np.ones((batch, length), np.float32),
  }


def synthetic_batch(rng: np.random.Generator, model_cfg, data_cfg, batch: int,
                    seq_len: int) -> dict:
  """One batch in the trainer's format for the model's family, one example per row."""
  vocab = model_cfg.vocab_size
  rows = _rows(rng, batch, seq_len, vocab)
  if model_cfg.architecture == "encoder" and model_cfg.num_classes:
    del rows["targets"]
    rows["labels"] = rng.integers(0, model_cfg.num_classes, size=(batch,), dtype=np.int32)
    rows["weights"] = np.ones((batch,), np.float32)
  elif model_cfg.architecture == "encoder_decoder":
    decoder = _rows(rng, batch, data_cfg.decoder_seq_len or seq_len, vocab)
    rows = {f"encoder_{k}": rows[k] for k in ("inputs", "segment_ids", "positions")} | decoder
  return rows


def run_info(lm: LanguageModel, train_cfg, mesh, mesh_cfg) -> dict:
  """The JSON fields every training benchmark reports about its run: shape, mesh, versions."""
  return {
      "num_params": lm.num_params(),
      "batch_size": train_cfg.batch_size,
      "seq_len": train_cfg.seq_len,
      "mesh": dict(mesh.shape),
      "rules": mesh_cfg.rules,
      "device": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(),
      "jax_version": jax.__version__,
      "python": platform.python_version(),
  }


@dataclasses.dataclass
class BenchTrainer:
  """The trainer's own pieces for a gin config: model, sharded state, compiled step, one
  synthetic batch (on device and on host)."""

  lm: LanguageModel
  state: Any
  abstract_state: Any
  step: Any
  batch: dict
  host_batch: dict
  mesh: Any
  compile_s: float


def build_trainer(configs: dict) -> BenchTrainer:
  """Validates the configs like `llmjax train`, creates the sharded train state and compiles
  the trainer's donated step for one synthetic batch (compile seconds in `compile_s`)."""
  model_cfg, train_cfg, mesh_cfg = configs["model"], configs["train"], configs["mesh"]
  data_cfg = configs["data"]
  mesh = mesh_lib.make_mesh(mesh_cfg.shape)
  rules = rules_lib.get_rules(mesh_cfg.rules)
  validate(model_cfg, train_cfg, mesh, data_cfg)
  lm = LanguageModel(model_cfg)
  optimizer, schedule = make_optimizer(train_cfg)
  boxed_init = lambda rng: lm.init_boxed(rng, batch_size=1, seq_len=train_cfg.seq_len)
  abstract_state, shardings = state_lib.state_shardings(boxed_init, optimizer, mesh, rules)
  state, _ = state_lib.create_train_state(boxed_init, optimizer, train_cfg.seed, mesh, rules)
  batch_sharding = partition.data_sharding(mesh)
  host_batch = synthetic_batch(np.random.default_rng(0), model_cfg, data_cfg,
                               train_cfg.batch_size, train_cfg.seq_len)
  batch = {k: jax.device_put(v, batch_sharding) for k, v in host_batch.items()}
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host_batch.items()}
  start = time.perf_counter()
  step = step_lib.compile_train_step(lm, optimizer, train_cfg, mesh, rules, shardings,
                                     abstract_state, abstract_batch, batch_sharding, schedule)
  return BenchTrainer(lm, state, abstract_state, step, batch, host_batch, mesh,
                      time.perf_counter() - start)


def main(argv: list[str]) -> dict:
  rest, bindings = gin_config.split_gin_flags(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  args = parser.parse_args(rest)
  gin_config.parse(args.gin_file or ["runs/quickstart.gin"], bindings)
  configs = gin_config.build_all()
  model_cfg, train_cfg, mesh_cfg = configs["model"], configs["train"], configs["mesh"]

  bench = build_trainer(configs)
  lm, state, train_step, batch, host_batch, mesh = (
      bench.lm, bench.state, bench.step, bench.batch, bench.host_batch, bench.mesh)
  compile_s = bench.compile_s
  for _ in range(args.warmup):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)

  step_times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = train_step(state, batch)
    jax.block_until_ready((state, metrics))
    step_times.append((time.perf_counter() - start) / args.steps)

  # Tokens the model reads per step (encoder + decoder for encoder-decoder models).
  tokens_per_step = sum(v.size for k, v in host_batch.items() if k.endswith("inputs"))
  rates = [tokens_per_step / t for t in step_times]
  decoder_len = host_batch["inputs"].shape[1] if lm.is_encoder_decoder else None
  flops_per_token = float(lm.flops_per_token(train_cfg.seq_len, decoder_len))
  peak = metrics_lib.device_peak_flops()
  median = statistics.median(rates)
  anchor = PYTORCH_ANCHORS.get((model_cfg.num_layers, model_cfg.num_heads, model_cfg.embed_dim,
                                train_cfg.seq_len, train_cfg.batch_size))
  return {
      "benchmark": "train_throughput",
      "gin_files": args.gin_file,
      "bindings": bindings,
      "architecture": model_cfg.architecture,
      "model_config": json.loads(model_cfg.to_json()),
      "compute_dtype": str(model_cfg.compute_dtype),
      "tokens_per_sec": median,
      "tokens_per_sec_min": min(rates),
      "tokens_per_sec_max": max(rates),
      "step_time_s": statistics.median(step_times),
      "compile_time_s": compile_s,
      "mfu": metrics_lib.mfu(median, flops_per_token, peak_flops=peak),
      "flops_per_token": flops_per_token,
      "peak_flops_per_device": peak,
      "peak_source": "table" if jax.devices()[0].platform != "cpu" else "measured fp32 matmul",
      "pytorch_anchor_tokens_per_sec": anchor,
      "ratio_to_pytorch": median / anchor if anchor else None,
      **run_info(lm, train_cfg, mesh, mesh_cfg),
      "final_loss": float(jax.device_get(metrics["loss"])),
  }


if __name__ == "__main__":
  result = main(sys.argv[1:])
  print(json.dumps(result))
