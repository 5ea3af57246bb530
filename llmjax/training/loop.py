"""`train()`: the driver that turns four config dataclasses and a workdir into a trained model.

Reads top to bottom: check the workdir's saved config -> validate -> write the run files ->
tokenizer + data -> mesh + rules -> sharded state (fresh or restored) -> compile -> loop.
Everything a resumed run needs (params, optimizer state, rng, step, the data iterator's
position) comes from the checkpoint and nothing in the math depends on wall-clock time or on
whether the run was resumed, so a run killed at any point (even kill -9) and restarted ends
with bitwise the same parameters as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from llmjax.data import pipeline
from llmjax.data import tokenizer as tokenizer_lib
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.models.stack import check_remat_supported
from llmjax.sharding import mesh as mesh_lib
from llmjax.sharding import partition
from llmjax.sharding import report as sharding_report
from llmjax.sharding import rules as rules_lib
from llmjax.training import checkpoint as ckpt_lib
from llmjax.training import host_data, warm_start
from llmjax.training import metrics as metrics_lib
from llmjax.training import state as state_lib
from llmjax.training import step as step_lib
from llmjax.training.config import TrainConfig
from llmjax.training.optimizer import make_optimizer

RUN_CONFIG = "run_config.json"
# Fields that may differ between a workdir's saved config and a resumed run; any other change
# (model shape, tokenizer, data, seq_len, batch_size, seed, optimizer) is refused because the
# checkpoint would no longer mean what the new config says.
RESUMABLE_CHANGES = frozenset({
    "train.train_steps", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.checkpoint_every", "train.keep_checkpoints", "train.async_checkpointing",
    "train.microbatches",  # Same math up to float reassociation; a memory knob.
    # Same math, different memory use or kernels:
    "model.remat_policy", "model.attention_impl", "model.scan_unroll",
    "mesh.shape", "mesh.rules",  # Checkpoints restore onto any mesh.
    "data.cache_dir", "data.tfds_data_dir",  # Where the same data lives.
})


def run_config(model: ModelConfig, data: Any, train: TrainConfig, mesh: Any) -> dict:
  """The JSON-able record of all four configs, as written to DIR/run_config.json."""
  record = {name: dataclasses.asdict(cfg) for name, cfg in
            (("model", model), ("data", data), ("train", train), ("mesh", mesh))}
  return json.loads(json.dumps(record))  # Tuples -> lists, as they read back from disk.


def config_diff(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """(dotted field, old value, new value) for every field that differs."""
  diffs = []
  for section in sorted(set(old) | set(new)):
    a, b = old.get(section, {}), new.get(section, {})
    for field in sorted(set(a) | set(b)):
      if a.get(field, "<missing>") != b.get(field, "<missing>"):
        diffs.append((f"{section}.{field}", a.get(field, "<missing>"), b.get(field, "<missing>")))
  return diffs


def check_resume_compatible(workdir: str, new: dict) -> None:
  """Raises ValueError (touching nothing) if the workdir was made by an incompatible config."""
  path = os.path.join(workdir, RUN_CONFIG)
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    old = json.load(f)
  if "converted_from" in old:
    raise ValueError(
        f"{workdir} holds a converted checkpoint (llmjax convert: params only, no optimizer or "
        f"data state), which is not resumed: fine-tune from it into a new workdir with "
        f"--gin_file={os.path.join(workdir, 'model.gin')} "
        f"--gin.TrainConfig.init_from=\"'{workdir}'\" --workdir=NEW_DIR.")
  bad = [d for d in config_diff(old, new) if d[0] not in RESUMABLE_CHANGES
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
  cls = {"model": ModelConfig, "train": TrainConfig, "data": pipeline.DataConfig}.get(section)
  defaults = {f.name: f.default for f in dataclasses.fields(cls)} if cls else {}
  return field in defaults and defaults[field] == new_value


def check_vocab(model: ModelConfig, vocab_size: int) -> None:
  """The model's embedding table must cover every id the data can produce (the tokenizer's,
  plus an objective's extra ids such as the MLM mask or T5 sentinels)."""
  if vocab_size > model.vocab_size:
    raise ValueError(f"the data needs {vocab_size} token ids (tokenizer + objective extra ids) "
                     f"but ModelConfig.vocab_size={model.vocab_size}: set ModelConfig.vocab_size "
                     f">= {vocab_size}.")


# Which model family each data objective trains (ModelConfig.architecture, classifier head).
OBJECTIVE_FAMILY = {
    "causal_lm": ("decoder", False), "mlm": ("encoder", False),
    "classification": ("encoder", True), "span_corruption": ("encoder_decoder", False),
    "seq2seq": ("encoder_decoder", False)}
_FAMILY_OBJECTIVES = {"decoder": "'causal_lm'", "encoder": "'mlm'",
                      "encoder_decoder": "'span_corruption' or 'seq2seq'"}


def check_objective(model: ModelConfig, data: Any) -> None:
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


def validate(model: ModelConfig, train: TrainConfig, mesh: jax.sharding.Mesh,
             data: Any = None) -> None:
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


def _write_run_files(workdir: str, record: dict, operative_config: str | None,
                     tokenizer: Any) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  _write_text(os.path.join(workdir, RUN_CONFIG), json.dumps(record, indent=2, sort_keys=True))
  if operative_config is not None:
    _write_text(os.path.join(workdir, "config.gin"), operative_config)
  tokenizer_dir = os.path.join(workdir, "tokenizer")
  if not os.path.exists(os.path.join(tokenizer_dir, tokenizer_lib.CONFIG_FILE)):
    tokenizer.save(tokenizer_dir)


def _write_text(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)  # Atomic: a killed write never leaves half a file.


def _evaluate(eval_step, params, eval_batches: list[dict]) -> dict[str, float]:
  results = jax.device_get([eval_step(params, batch) for batch in eval_batches])
  total = sum(float(r["weight_sum"]) for r in results)
  denom = max(total, 1e-8)
  return {
      "eval_loss": sum(float(r["loss"]) * float(r["weight_sum"]) for r in results) / denom,
      "eval_accuracy": sum(float(r["accuracy"]) * float(r["weight_sum"]) for r in results) / denom,
      "eval_tokens": total,
  }


def train(*, model: ModelConfig, data: Any, train: TrainConfig, mesh: Any, workdir: str,
          operative_config: str | None = None) -> dict:
  """Trains (or resumes) a model in `workdir`; returns the final metrics.

  Args:
    model: the ModelConfig.
    data: the DataConfig (llmjax.data.pipeline).
    train: the TrainConfig.
    mesh: the MeshConfig (llmjax.sharding.mesh).
    workdir: run directory; if it holds a checkpoint, training resumes from the latest one.
    operative_config: gin's operative config text, saved as DIR/config.gin.

  Returns:
    The last logged training metrics, merged with the last evaluation's (`eval_loss`, ...).

  Raises:
    ValueError: incompatible configs, or a workdir made by an incompatible config.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  record = run_config(model, data, train, mesh)
  check_resume_compatible(workdir, record)  # Before touching anything.
  device_mesh = mesh_lib.make_mesh(mesh.shape)  # Raises if the shape does not fit the devices.
  rules = rules_lib.get_rules(mesh.rules)
  validate(model, train, device_mesh, data)
  train_source, _, _ = pipeline.prepare_dataset(data)
  tokenizer = _load_or_build_tokenizer(data, workdir, train_source)
  if tokenizer is not None:  # Process 0 (other processes load it once it is written).
    check_vocab(model, pipeline.required_vocab_size(data, tokenizer))
  lm = LanguageModel(model)
  resuming = ckpt_lib.latest_step(workdir) is not None
  if train.init_from and not resuming:  # Shapes checked before anything is written.
    warm_start.check_compatible(train.init_from, jax.eval_shape(lm.init, jax.random.PRNGKey(0)),
                                train.init_from_step)
  _write_run_files(workdir, record, operative_config, tokenizer)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("llmjax: run files written")
    if tokenizer is None:
      tokenizer = tokenizer_lib.load_tokenizer(os.path.join(workdir, "tokenizer"))
      check_vocab(model, pipeline.required_vocab_size(data, tokenizer))

  optimizer, schedule = make_optimizer(train)
  boxed_init = lambda rng: lm.init_boxed(rng, batch_size=1, seq_len=train.seq_len)
  abstract_state, shardings = state_lib.state_shardings(boxed_init, optimizer, device_mesh, rules)
  if jax.process_index() == 0:
    for warning in sharding_report.layout_warnings(
        jax.eval_shape(boxed_init, jax.random.PRNGKey(0)), device_mesh, rules):
      print(f"llmjax: warning: {warning}", file=sys.stderr)
  data_sharding = partition.data_sharding(device_mesh)
  row_range = host_data.process_row_range(data_sharding, train.batch_size)

  ckpt = ckpt_lib.Checkpointer(workdir, keep=train.keep_checkpoints,
                               async_save=train.async_checkpointing)
  iter_state = None
  if ckpt.latest_step() is not None:
    state, iter_state = ckpt.restore(abstract_state)
  else:
    state, _ = state_lib.create_train_state(boxed_init, optimizer, train.seed, device_mesh, rules)
    if train.init_from:
      # Adam's moments start at zero whatever the params, so only the params change.
      params, report = warm_start.load_matching_params(train.init_from, state.params,
                                                       train.init_from_step)
      state = state.replace(params=params)
      if jax.process_index() == 0:
        print(f"llmjax: {report.summary()}", file=sys.stderr)
  streams = data_streams(data, iter_state)
  # Given the DataConfig (not the source) so it applies shuffle/seed/text_feature; the
  # prepared dataset is cached, so this does not prepare it again.
  train_iter = pipeline.make_train_iterator(
      data, tokenizer, batch_size=train.batch_size, seq_len=train.seq_len,
      model_vocab_size=model.vocab_size, shards=streams, row_range=row_range)
  if iter_state is not None:
    train_iter.set_state(iter_state)
  start = int(jax.device_get(state.step))

  writer = metrics_lib.MetricsWriter(workdir)
  writer.drop_after(start)
  final: dict[str, Any] = {"step": start}
  try:
    if start >= train.train_steps:
      if jax.process_index() == 0:
        print(f"llmjax: {workdir} is already at step {start} >= train_steps={train.train_steps}; "
            "raise TrainConfig.train_steps to continue.", file=sys.stderr)
      return final
    final = _run_loop(lm=lm, train=train, data=data, tokenizer=tokenizer, mesh=device_mesh,
                      rules=rules, state=state, abstract_state=abstract_state,
                      shardings=shardings, data_sharding=data_sharding, row_range=row_range,
                      optimizer=optimizer,
                      schedule=schedule, train_iter=train_iter, ckpt=ckpt, writer=writer,
                      start=start)
  finally:
    ckpt.close()  # Waits for async saves.
    writer.close()
  return final


def _load_or_build_tokenizer(data: Any, workdir: str, train_source: Any) -> Any:
  """The workdir's tokenizer on resume (never retrained), else the one the data config says.

  A new tokenizer is not saved here: the run files are written only after validation. In a
  multi-process run only process 0 builds it (None elsewhere); the others load what it saves.
  """
  saved = os.path.join(workdir, "tokenizer")
  if os.path.exists(os.path.join(saved, tokenizer_lib.CONFIG_FILE)):
    return tokenizer_lib.load_tokenizer(saved)
  if jax.process_index() != 0:
    return None
  return pipeline.get_or_train_tokenizer(data, train_source, tokenizer_dir=None)


def data_streams(data: Any, iter_state: Any) -> int:
  """Data streams of the global batch: the config's, else the checkpoint's, else 1 per process."""
  saved = host_data.saved_shards(iter_state)
  streams = getattr(data, "shards", None) or saved or jax.process_count()
  if saved is not None and saved != streams:
    raise ValueError(f"the checkpoint's data iterator has {saved} streams but DataConfig.shards="
                     f"{streams}: resume with DataConfig.shards={saved} (or None).")
  return streams


def _run_loop(*, lm, train, data, tokenizer, mesh, rules, state, abstract_state, shardings,
              data_sharding, row_range, optimizer, schedule, train_iter, ckpt, writer,
              start) -> dict:
  first = next(train_iter)  # Its shapes/dtypes (with the global batch size) define the step.
  abstract_batch = {k: jax.ShapeDtypeStruct((train.batch_size,) + np.shape(v)[1:],
                                            np.asarray(v).dtype) for k, v in first.items()}
  train_step = step_lib.compile_train_step(
      lm, optimizer, train, mesh, rules, shardings, abstract_state, abstract_batch,
      data_sharding, schedule)
  eval_batches, eval_step = [], None
  if train.eval_batches > 0:
    eval_batches = [host_data.to_global(b, data_sharding, train.batch_size)
                    for b in pipeline.make_eval_batches(
                        data, tokenizer, batch_size=train.batch_size, seq_len=train.seq_len,
                        num_batches=train.eval_batches, model_vocab_size=lm.config.vocab_size,
                        row_range=row_range)]
    if eval_batches:
      eval_step = step_lib.compile_eval_step(lm, mesh, rules, shardings.params,
                                             abstract_state.params, abstract_batch,
                                             data_sharding)
  # Tokens a step consumes: every row's tokens, encoder and decoder side alike.
  tokens_per_step = sum(int(np.prod(v.shape)) for k, v in abstract_batch.items()
                        if k in ("inputs", "encoder_inputs"))
  flops_per_token = float(lm.flops_per_token(
      train.seq_len, abstract_batch["inputs"].shape[1] if lm.is_encoder_decoder else None))
  peak = metrics_lib.device_peak_flops()
  is_main = jax.process_index() == 0

  bar = tqdm(total=train.train_steps, initial=start, desc="train", unit="step",
             disable=not is_main, dynamic_ncols=True)
  pending: list[dict] = []  # Device-side metrics since the last log; fetched only at logs.
  last_log_time, last_log_step = time.perf_counter(), start  # Compilation is already done.
  paused = 0.0  # Seconds spent in eval and checkpoint saves since the last log.
  final: dict[str, Any] = {}
  batch = first
  for step in range(start, train.train_steps):
    if step > start:
      batch = next(train_iter)
    state, metrics = train_step(state, host_data.to_global(batch, data_sharding,
                                                           train.batch_size))
    pending.append(metrics)
    done = step + 1
    last = done == train.train_steps
    if done % train.log_every == 0 or last:
      fetched = jax.device_get(pending)
      now = time.perf_counter()
      elapsed = max(now - last_log_time - paused, 1e-9)
      tokens_per_sec = (done - last_log_step) * tokens_per_step / elapsed
      last_log_time, last_log_step, pending, paused = now, done, [], 0.0
      # Averages over the steps since the last log; the learning rate is the current one.
      record = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
      record["learning_rate"] = float(fetched[-1]["learning_rate"])
      record["tokens"] = float(done * tokens_per_step)
      record["tokens_per_sec"] = tokens_per_sec
      record["mfu"] = metrics_lib.mfu(tokens_per_sec, flops_per_token, peak_flops=peak)
      final.update(writer.write(done, record))
      # Advanced only here, where the device has caught up: steps are dispatched
      # asynchronously, so counting dispatches would show a burst and then a stall.
      bar.update(done - bar.n)
      bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{tokens_per_sec:,.0f}")
    if eval_step is not None and ((train.eval_every and done % train.eval_every == 0) or last):
      jax.block_until_ready(metrics)  # So the pause below holds no training compute.
      pause_start = time.perf_counter()
      final.update(writer.write(done, _evaluate(eval_step, state.params, eval_batches)))
      paused += time.perf_counter() - pause_start  # Kept out of tokens/s.
    if done % train.checkpoint_every == 0 or last:
      jax.block_until_ready(metrics)
      pause_start = time.perf_counter()
      ckpt.save(done, state, host_data.global_iterator_state(train_iter.get_state()))
      paused += time.perf_counter() - pause_start
  bar.close()
  final["step"] = int(jax.device_get(state.step))
  return final
