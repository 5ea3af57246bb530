"""Will it fit? Plan one training configuration on a mesh of devices that are not here.

The planner compiles exactly the trainer's step (`state_shardings` + `compile_train_step`,
the state donated) ahead of time against a mesh of fake CPU devices shaped like the target
mesh, with abstract inputs only: nothing is read, trained or materialized. From that:

- parameter / optimizer-state / batch bytes per device: the sharded abstract state, summing
  one shard of every leaf (`sharding.shard_shape`);
- XLA's buffer assignment per device (`compiled.memory_analysis()`): arguments (state +
  batch), outputs, aliased outputs (the donated state updated in place), temp (activations,
  gradients, workspace) and generated code. Peak per device = arguments + temp + (output -
  alias) + generated code;
- FLOPs, HBM bytes and collective bytes per device from the optimized HLO, loop-corrected
  (`hlo_costs.py`);
- predicted step time, a roofline assuming compute and collectives overlap perfectly:
  max(flops / peak, collective bytes / interconnect bandwidth), plus HBM bytes / bandwidth on
  a CPU target only (XLA:CPU's traffic overstates a GPU's or TPU's several times, so there it
  is reported, not counted). It is a lower bound: real steps run at 30-60% MFU on well-tuned
  stacks;
- predicted MFU = the trainer's model FLOPs per step / (step time * peak * devices): an upper
  bound.

Caveats: the program is XLA:CPU's, not XLA:GPU's or XLA:TPU's, so fusion and buffer reuse
differ somewhat; attention is compiled as plain XLA (a GPU picks cuDNN flash attention, which
keeps no [t, s] score matrix), so attention temp memory is an overestimate there; and
collectives are assumed to run on the chip-to-chip links of one node (NVLink/ICI).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp

from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel, batch_keys
from llmjax.models.precision import master_dtype, resolve_policy
from llmjax.models.stack import check_remat_supported
from llmjax.planning import hlo_costs
from llmjax.planning.devices import DeviceSpec
from llmjax.sharding import mesh as mesh_lib
from llmjax.sharding import partition
from llmjax.sharding import rules as rules_lib
from llmjax.training import state as state_lib
from llmjax.training import step as step_lib
from llmjax.training.config import TrainConfig
from llmjax.training.optimizer import make_optimizer
from llmjax.training.validation import validate


@dataclasses.dataclass(frozen=True)
class Plan:
  """The planner's answer for one configuration. Bytes and FLOPs are per device.

  `total_bytes` is the predicted peak; `fits` is `total_bytes <= usable_bytes`.
  """

  device: str
  num_devices: int
  mesh: dict[str, int]
  rules: str
  remat_policy: str
  microbatches: int
  precision: str
  batch_size: int
  seq_len: int
  num_params: int
  param_bytes: int
  opt_state_bytes: int
  batch_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  generated_code_bytes: int
  total_bytes: int
  memory_bytes: float
  usable_bytes: float
  fits: bool
  flops_per_device: float
  xla_flops_per_device: float
  bytes_accessed_per_device: float
  collective_bytes_per_device: float
  loop_corrected: bool
  model_flops_per_step: float
  model_flops_6nt: float
  peak_flops: float
  compute_s: float
  memory_s: float
  collective_s: float
  step_time_s: float
  mfu: float
  tokens_per_step: int
  tokens_per_sec: float
  compile_s: float

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def target_model_config(model: ModelConfig, platform: str) -> ModelConfig:
  """The model config as it would run on `platform`: precision resolved, remat checked.

  Raises:
    ValueError: the remat policy cannot run there ('offload' on cpu).
  """
  model = model.replace(precision=resolve_policy(model.precision, platform))
  check_remat_supported(model, platform)
  return model


def abstract_batch(model: ModelConfig, data: Any, batch_size: int,
                   seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of one global batch in the trainer's format for the model's family.

  Encoder-decoder: `encoder_*` keys are [b, seq_len], decoder keys [b, decoder_seq_len]
  (DataConfig, default seq_len); a classifier's labels and weights are [b].
  """
  decoder_len = getattr(data, "decoder_seq_len", None) or seq_len
  shapes = {}
  for key in batch_keys(model):
    if model.is_classifier and key in ("labels", "weights"):
      shape = (batch_size,)
    elif model.architecture == "encoder_decoder" and not key.startswith("encoder_"):
      shape = (batch_size, decoder_len)
    else:
      shape = (batch_size, seq_len)
    shapes[key] = jax.ShapeDtypeStruct(shape, jnp.float32 if key == "weights" else jnp.int32)
  return shapes


def shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (one shard per leaf)."""
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(tree))


def make_plan_mesh(shape: dict[str, int], devices: list | None = None) -> jax.sharding.Mesh:
  """A mesh of `shape` over the first prod(shape) devices (all of them by default).

  Raises:
    ValueError: a -1 axis, or more devices asked for than this process has.
  """
  if any(size == -1 for size in shape.values()):
    raise ValueError(f"--mesh must give every axis size explicitly (no -1): got {shape}.")
  count = math.prod(shape.values())
  devices = list(jax.devices() if devices is None else devices)
  if count > len(devices):
    raise ValueError(f"the mesh {shape} needs {count} devices; this process has {len(devices)} "
                     "(run `llmjax plan` in a fresh process: it fakes as many as the mesh needs).")
  return mesh_lib.make_mesh(shape, devices[:count])


def plan(model: ModelConfig, train: TrainConfig, data: Any, mesh_shape: dict[str, int],
         rules_name: str, device: DeviceSpec, devices: list | None = None) -> Plan:
  """Compiles the train step for the target and predicts its memory and speed per device.

  Args:
    model: the ModelConfig (precision 'auto' is resolved for `device.platform`).
    train: the TrainConfig (batch_size, seq_len, microbatches, optimizer).
    data: the DataConfig (objective, decoder_seq_len) or None.
    mesh_shape: `{axis: size}` of the target mesh, no -1.
    rules_name: a rule set in `llmjax.sharding.rules.RULE_SETS`.
    device: the target chip (`devices.get_device`).
    devices: fake devices to lay the mesh on (default: this process's first ones).

  Returns:
    The Plan.

  Raises:
    ValueError: configs that do not fit together (the trainer's `validate`), an unknown rule
      set, a remat policy the target cannot run, or too few devices in this process.
  """
  model = target_model_config(model, device.platform)
  if model.remat_policy == "offload":
    # The model checks remat support against the backend it is traced on, and the planner's
    # backend is the CPU, which has no pinned host memory space to offload to.
    raise ValueError(
        "remat_policy='offload' cannot be planned: the planner compiles on CPU, which has no "
        "pinned host memory. Plan 'dots_no_batch' (the same policy kept in device memory) "
        "for an upper bound on its memory.")
  rules = rules_lib.get_rules(rules_name)
  mesh = make_plan_mesh(mesh_shape, devices)
  validate(model, train, mesh, data)
  lm = LanguageModel(model)
  optimizer, schedule = make_optimizer(train)
  boxed_init = lambda rng: lm.init_boxed(rng, batch_size=1, seq_len=train.seq_len)
  abstract_state, shardings = state_lib.state_shardings(
      boxed_init, optimizer, mesh, rules,
      master_dtype=master_dtype(model.precision, model.param_dtype))  # As the trainer keeps.
  batch = abstract_batch(model, data, train.batch_size, train.seq_len)
  batch_sharding = partition.data_sharding(mesh)
  start = time.perf_counter()
  compiled = step_lib.compile_train_step(lm, optimizer, train, mesh, rules, shardings,
                                         abstract_state, batch, batch_sharding, schedule)
  compile_s = time.perf_counter() - start

  memory = compiled.memory_analysis()
  costs = hlo_costs.loop_corrected_costs(compiled, mesh.devices.flat[0].client)
  total = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
           + memory.output_size_in_bytes - memory.alias_size_in_bytes
           + memory.generated_code_size_in_bytes)
  sharded_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                   for k, v in batch.items()}

  tokens = sum(v.size for k, v in batch.items() if k.endswith("inputs"))
  decoder_len = batch["inputs"].shape[1] if lm.is_encoder_decoder else None
  model_flops = lm.flops_per_token(train.seq_len, decoder_len) * tokens
  num_params = lm.num_params()
  peak = device.peak_flops(model.compute_dtype.name)
  compute_s = costs.flops / peak
  memory_s = costs.bytes_accessed / device.memory_bandwidth
  collective_s = costs.collective_bytes / device.interconnect_bandwidth
  # The HBM traffic comes from the XLA:CPU program, which fuses less than GPU/TPU compilers and
  # materializes attention scores that flash attention never writes: for accelerator targets
  # it overstates the traffic several times, so it is reported but left out of the bound.
  step_s = (max(compute_s, collective_s) if device.platform != "cpu"
            else max(compute_s, memory_s, collective_s))
  return Plan(
      device=device.name, num_devices=mesh.size, mesh=dict(mesh.shape), rules=rules_name,
      remat_policy=model.remat_policy, microbatches=train.microbatches,
      precision=model.precision, batch_size=train.batch_size, seq_len=train.seq_len,
      num_params=num_params, param_bytes=shard_bytes(abstract_state.params),
      opt_state_bytes=shard_bytes(abstract_state.opt_state),
      batch_bytes=shard_bytes(sharded_batch),
      argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
      alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
      generated_code_bytes=memory.generated_code_size_in_bytes, total_bytes=int(total),
      memory_bytes=device.memory_bytes, usable_bytes=device.usable_bytes,
      fits=total <= device.usable_bytes, flops_per_device=costs.flops,
      xla_flops_per_device=costs.xla_flops, bytes_accessed_per_device=costs.bytes_accessed,
      collective_bytes_per_device=costs.collective_bytes, loop_corrected=costs.loop_corrected,
      model_flops_per_step=float(model_flops), model_flops_6nt=6.0 * num_params * tokens,
      peak_flops=peak, compute_s=compute_s, memory_s=memory_s, collective_s=collective_s,
      step_time_s=step_s, mfu=model_flops / (step_s * peak * mesh.size) if step_s else 0.0,
      tokens_per_step=int(tokens), tokens_per_sec=tokens / step_s if step_s else 0.0,
      compile_s=compile_s)
