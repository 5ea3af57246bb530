"""The trainer's checks, all made before any data is read, anything compiled or written.

`validate` checks that the four configs fit together and the devices; `check_objective` that
the data objective trains the model family; `check_resume_compatible` that a workdir's saved
run is one this config may continue (`config_diff` lists what changed); `check_tokenizer` that
the model's vocabulary holds the data's ids (through `workdir.check_vocab`, which loading and
sampling share).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from llmjax import workdir as workdir_lib
from llmjax.data import pipeline
from llmjax.data.pipeline import DataConfig
from llmjax.data.tokenizer import Tokenizer
from llmjax.models.config import ModelConfig
from llmjax.models.stack import check_remat_supported
from llmjax.training.config import TrainConfig

# Fields that may differ between a workdir's saved config and a resumed run; any other change
# (model shape, tokenizer, data, seq_len, batch_size, seed, optimizer) is refused because the
# checkpoint would no longer mean what the new config says.
RESUMABLE_CHANGES = frozenset({
    "train.train_steps", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.checkpoint_every", "train.keep_checkpoints", "train.async_checkpointing",
    # The divergence guard's policy: switching to 'skip' is how a halted run gets past a bad step.
    "train.nan_policy", "train.max_consecutive_skips",
    "train.microbatches",  # Same math up to float reassociation; a memory knob.
    # Same math, different memory use or kernels:
    "model.remat_policy", "model.attention_impl", "model.scan_unroll",
    "mesh.shape", "mesh.rules",  # Checkpoints restore onto any mesh.
    "data.cache_dir", "data.tfds_data_dir",  # Where the same data lives.
})

# Which model family each data objective trains (ModelConfig.architecture, classifier head).
OBJECTIVE_FAMILY = {
    "causal_lm": ("decoder", False), "mlm": ("encoder", False),
    "classification": ("encoder", True), "span_corruption": ("encoder_decoder", False),
    "seq2seq": ("encoder_decoder", False)}
_FAMILY_OBJECTIVES = {"decoder": "'causal_lm'", "encoder": "'mlm'",
                      "encoder_decoder": "'span_corruption' or 'seq2seq'"}


def config_diff(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """(dotted field, old value, new value) for every field that differs."""
  diffs = []
  for section in sorted(set(old) | set(new)):
    a, b = old.get(section, {}), new.get(section, {})
    for field in sorted(set(a) | set(b)):
      if a.get(field, "<missing>") != b.get(field, "<missing>"):
        diffs.append((f"{section}.{field}", a.get(field, "<missing>"), b.get(field, "<missing>")))
  return diffs


def check_resume_compatible(saved: workdir_lib.RunRecord | None, new: dict) -> None:
  """Raises ValueError if the workdir's saved run cannot be continued with the run config
  `new` (`workdir.run_record`). `saved` is `workdir.existing_run`'s answer: None for a new
  workdir, including one without a checkpoint (nothing to resume, so any config may start)."""
  if saved is None:
    return
  workdir = saved.workdir
  if saved.converted_from is not None:
    raise ValueError(
        f"{workdir} holds a converted checkpoint (llmjax convert: params only, no optimizer or "
        f"data state), which is not resumed: fine-tune from it into a new workdir with "
        f"--gin_file={workdir_lib.model_gin_path(workdir)} "
        f"--gin.TrainConfig.init_from=\"'{workdir}'\" --workdir=NEW_DIR.")
  bad = [d for d in config_diff(dict(saved.sections), new) if d[0] not in RESUMABLE_CHANGES
         and not _added_at_default(d, new)]
  if bad:
    lines = "\n".join(f"  {name}: {a!r} -> {b!r}" for name, a, b in bad)
    raise ValueError(
        f"{workdir} holds a run with a different configuration; refusing to resume it:\n"
        f"{lines}\nUse a new --workdir, or revert these fields. (Fields that may change on "
        f"resume: {', '.join(sorted(RESUMABLE_CHANGES))}.)")


def _added_at_default(diff: tuple[str, Any, Any], new: dict) -> bool:
  """A field newer than the saved run, at its default value, changes nothing."""
  name, old_value, new_value = diff
  if old_value != "<missing>":
    return False
  section, field = name.split(".", 1)
  cls = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}.get(section)
  defaults = {f.name: f.default for f in dataclasses.fields(cls)} if cls else {}
  return field in defaults and defaults[field] == new_value


def check_objective(model: ModelConfig, data: DataConfig) -> None:
  """The data objective must produce the batches the model family trains on."""
  objective = getattr(data, "objective", "causal_lm")
  arch, classifier = OBJECTIVE_FAMILY[objective]
  if model.architecture != arch:
    raise ValueError(
        f"DataConfig.objective={objective!r} trains an {arch!r} model, but "
        f"ModelConfig.architecture={model.architecture!r}: use an {arch!r} model config, or "
        f"DataConfig.objective={_FAMILY_OBJECTIVES[model.architecture]}.")
  if model.is_classifier != classifier:
    fix = ("set ModelConfig.num_classes to the number of labels (a classification head)"
           if classifier else "unset ModelConfig.num_classes (an MLM head)")
    other = "'mlm'" if classifier else "'classification'"
    raise ValueError(f"DataConfig.objective={objective!r} with ModelConfig.num_classes="
                     f"{model.num_classes}: {fix}, or use DataConfig.objective={other}.")
  if classifier and data.num_classes != model.num_classes:
    raise ValueError(
        f"DataConfig.num_classes={data.num_classes} but ModelConfig.num_classes="
        f"{model.num_classes}: set both to the number of labels in the data.")
  if getattr(data, "text_pair_field", None) is not None and model.type_vocab_size < 2:
    raise ValueError(
        f"DataConfig.text_pair_field={data.text_pair_field!r} gives each row two texts with "
        f"token types 0 and 1, but ModelConfig.type_vocab_size={model.type_vocab_size}: set "
        "type_vocab_size=2 (a warm start from a model without one initializes it fresh).")


def check_tokenizer(model: ModelConfig, data: DataConfig, tokenizer: Tokenizer) -> None:
  """The model's vocabulary must hold the tokenizer's ids plus the objective's extra ids (the
  MLM mask, T5 sentinels): `workdir.check_vocab`."""
  workdir_lib.check_vocab(
      model.vocab_size, tokenizer.vocab_size,
      extra_ids=pipeline.required_vocab_size(data, tokenizer) - tokenizer.vocab_size)


def validate(model: ModelConfig, train: TrainConfig, mesh: jax.sharding.Mesh,
             data: DataConfig | None = None) -> None:
  """Checks that the configs fit together, before any data is read or anything compiled."""
  if train.seq_len > model.max_seq_len:
    raise ValueError(f"TrainConfig.seq_len={train.seq_len} exceeds ModelConfig.max_seq_len="
                     f"{model.max_seq_len}: lower seq_len or raise max_seq_len.")
  if data is not None:
    check_objective(model, data)
    decoder_len = getattr(data, "decoder_seq_len", None)
    if decoder_len is not None and decoder_len > model.max_seq_len:
      raise ValueError(f"DataConfig.decoder_seq_len={decoder_len} exceeds ModelConfig."
                       f"max_seq_len={model.max_seq_len}: lower it or raise max_seq_len.")
  check_remat_supported(model)
  sequence = dict(mesh.shape).get("sequence", 1)
  if train.seq_len % sequence:
    raise ValueError(f"TrainConfig.seq_len={train.seq_len} is not divisible by the mesh's "
                     f"sequence axis ({sequence}): sequence parallelism splits every sequence "
                     f"into {sequence} equal pieces; pick seq_len as a multiple of {sequence}.")
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if train.microbatch_size % shards:
    raise ValueError(
        f"the batch is split over data x fsdp = {shards} devices, but each microbatch has "
        f"{train.microbatch_size} rows (batch_size={train.batch_size} / microbatches="
        f"{train.microbatches}): make batch_size / microbatches a multiple of {shards}.")
  if train.batch_size % jax.process_count():
    raise ValueError(f"TrainConfig.batch_size={train.batch_size} must be divisible by the "
                     f"number of processes ({jax.process_count()}): each process feeds an "
                     "equal share of the batch.")
  streams = getattr(data, "shards", None) if data is not None else None
  if streams is not None and train.batch_size % streams:
    raise ValueError(f"TrainConfig.batch_size={train.batch_size} is not divisible by "
                     f"DataConfig.shards={streams}: each data stream fills batch_size / shards "
                     "rows.")
