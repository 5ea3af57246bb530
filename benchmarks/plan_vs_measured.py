"""The planner's per-device memory against what a real run holds, on fake CPU devices.

  python benchmarks/plan_vs_measured.py [--mesh=data:2,fsdp:4]

For the tiny decoder, encoder and encoder-decoder configs: `llmjax.planning.planner.plan` for
the CPU target (so the precision is the one that actually runs here), then the real thing:
the sharded train state created, the trainer's step compiled and run twice on a synthetic
batch, and the bytes of every live array's addressable shards summed per device
(`jax.live_arrays()`). The planner's XLA argument bytes (state + batch) are compared with the
measured state + batch; XLA's temp bytes (activations, workspace) are reported as predicted
only: the CPU client keeps no per-device allocator statistics (`memory_stats()` is None), so
there is no measured peak to compare them with. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a source checkout.

CONFIGS = {
    "tiny": ("runs/quickstart.gin", ["BATCH_SIZE = 8", "SEQ_LEN = 64"]),
    "bert_tiny": ("runs/pretrain_mlm.gin", ["BATCH_SIZE = 8", "SEQ_LEN = 64"]),
    "t5_tiny": ("runs/pretrain_span.gin", ["BATCH_SIZE = 8", "SEQ_LEN = 64",
                                           "DECODER_SEQ_LEN = 32"]),
}


def _per_device_bytes(arrays) -> dict:
  totals = collections.Counter()
  for array in arrays:
    for shard in array.addressable_shards:
      totals[shard.device.id] += shard.data.nbytes
  return totals


def measure(name: str, mesh_shape: dict) -> dict:
  import jax
  import numpy as np
  from train_throughput import synthetic_batch

  from llmjax.cli import gin_config
  from llmjax.models.interface import LanguageModel
  from llmjax.planning import devices, planner
  from llmjax.sharding import partition
  from llmjax.sharding import rules as rules_lib
  from llmjax.training import state as state_lib
  from llmjax.training import step as step_lib
  from llmjax.training.optimizer import make_optimizer

  gin_file, bindings = CONFIGS[name]
  gin_config.parse([gin_file], bindings)
  c = gin_config.build_all()
  rules_name = c["mesh"].rules
  device = devices.get_device("cpu", num_devices=math.prod(mesh_shape.values()))
  plan = planner.plan(c["model"], c["train"], c["data"], mesh_shape, rules_name, device)

  model = planner.target_model_config(c["model"], "cpu")
  train = c["train"]
  mesh = planner.make_plan_mesh(mesh_shape)
  rules = rules_lib.get_rules(rules_name)
  lm = LanguageModel(model)
  optimizer, schedule = make_optimizer(train)
  boxed_init = lambda rng: lm.init_boxed(rng, batch_size=1, seq_len=train.seq_len)
  abstract_state, shardings = state_lib.state_shardings(boxed_init, optimizer, mesh, rules)
  state, _ = state_lib.create_train_state(boxed_init, optimizer, train.seed, mesh, rules)
  batch_sharding = partition.data_sharding(mesh)
  host = synthetic_batch(np.random.default_rng(0), model, c["data"], train.batch_size,
                         train.seq_len)
  batch = {k: jax.device_put(v, batch_sharding) for k, v in host.items()}
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host.items()}
  step = step_lib.compile_train_step(lm, optimizer, train, mesh, rules, shardings,
                                     abstract_state, abstract_batch, batch_sharding, schedule)
  for _ in range(2):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))

  state_ids = {id(a) for a in jax.tree.leaves(state)}
  batch_ids = {id(a) for a in batch.values()}
  live = jax.live_arrays()
  persistent = _per_device_bytes([a for a in live if id(a) in state_ids | batch_ids])
  state_only = _per_device_bytes([a for a in live if id(a) in state_ids])
  everything = _per_device_bytes(live)
  return {
      "config": name,
      "architecture": model.architecture,
      "num_params": plan.num_params,
      "predicted_argument_bytes": plan.argument_bytes,
      "predicted_state_bytes": plan.param_bytes + plan.opt_state_bytes,
      "measured_state_bytes_max": max(state_only.values()),
      "measured_state_plus_batch_bytes_max": max(persistent.values()),
      "measured_state_plus_batch_bytes_min": min(persistent.values()),
      "measured_all_live_bytes_max": max(everything.values()),
      "argument_ratio_measured_over_predicted": max(persistent.values()) / plan.argument_bytes,
      "predicted_temp_bytes": plan.temp_bytes,
      "predicted_total_bytes": plan.total_bytes,
      "cpu_memory_stats": jax.devices()[0].memory_stats(),
  }


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--mesh", default="data:2,fsdp:4")
  args = parser.parse_args(argv)
  from llmjax.cli.fake_devices import use_fake_cpu_devices
  from llmjax.sharding.mesh import parse_mesh_flag

  shape = parse_mesh_flag(args.mesh)
  use_fake_cpu_devices(math.prod(shape.values()))
  import jax

  rows = []
  for name in CONFIGS:
    row = measure(name, shape)
    print(json.dumps(row), file=sys.stderr)
    rows.append(row)
  return {"benchmark": "plan_vs_measured", "mesh": shape, "jax_version": jax.__version__,
          "results": rows}


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1:])))
