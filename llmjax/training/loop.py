"""`train()`: the driver that turns four config dataclasses and a workdir into a trained model.

`train()` reads top to bottom in the order it runs:
  1. the workdir: a new one (or one without a checkpoint yet: a first run that failed or was
     stopped early, whose run files are rewritten), or a run this config may continue
     (refused before touching it);
  2. validate: the configs against each other and the devices, and a warm start's source
     against the model's abstract params (computed once, here);
  3. the tokenizer (checked against the model), then the run files;
  4. the mesh's shardings and the sharded state: restored from the latest checkpoint, or fresh
     (and warm-started);
  5. the data iterator (at the checkpoint's position) and the compiled steps;
  6. the loop, which gets everything from one `Run`.
Everything a resumed run needs (params, optimizer state, rng, step, the data iterator's
position) comes from the checkpoint and nothing in the math depends on wall-clock time or on
whether the run was resumed, so a run killed at any point (even kill -9) and restarted ends
with bitwise the same parameters as one that was never interrupted. The checks of steps 1-2
are training/validation.py; the workdir's files are llmjax/workdir.py. The loop is guarded
(training/guard.py): SIGTERM/SIGINT stop it after the current step with a checkpoint, and a
non-finite loss, gradient norm or state halts it (or is skipped, TrainConfig.nan_policy)
before anything non-finite is logged or saved. Steps 1-5 up to compiling are setup: their
errors (ValueError, FileNotFoundError, ...) say what to fix; anything raised from compiling on
is a `RunError` whose cause is the original exception, so a caller keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from llmjax import workdir as workdir_lib
from llmjax.data import pipeline
from llmjax.data.pipeline import DataConfig
from llmjax.data.tokenizer import Tokenizer
from llmjax.models import precision
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sharding import mesh as mesh_lib
from llmjax.sharding import partition
from llmjax.sharding import report as sharding_report
from llmjax.sharding import rules as rules_lib
from llmjax.sharding.mesh import MeshConfig
from llmjax.training import checkpoint as ckpt_lib
from llmjax.training import guard as guard_lib
from llmjax.training import host_data, validation, warm_start
from llmjax.training import metrics as metrics_lib
from llmjax.training import state as state_lib
from llmjax.training import step as step_lib
from llmjax.training.config import TrainConfig
from llmjax.training.optimizer import make_optimizer
from llmjax.training.state import TrainState
from llmjax.training.step import Batch, Metrics, Params


class RunError(RuntimeError):
  """Training failed after setup, while compiling or running the steps: not a config error.

  The message is the original exception's type and message; `__cause__` is the exception
  itself. Checkpoints already written are complete (saves are atomic), so a rerun resumes.
  """


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything the training loop needs, built once by `train()` before the first step.

  The train state is not here: every step donates it and returns the next one.

  Attributes:
    workdir: the run directory (absolute).
    model, data, train: the run's configs.
    lm: the LanguageModel.
    mesh: the device mesh; rules: the logical axis rules.
    abstract_state: the state's `jax.ShapeDtypeStruct`s, carrying their shardings.
    shardings: the state's `NamedSharding`s.
    data_sharding: where a global [b, ...] batch lives.
    tokenizer: the run's tokenizer.
    train_iter: this process's rows of each training batch (`get_state` for checkpoints).
    first_batch: the batch of the first step (read to learn the batch shapes).
    train_step: the compiled `(state, batch) -> (state, metrics)`; the state is donated.
    eval_step: the compiled `(params, batch) -> metrics`, or None without eval batches.
    eval_batches: the fixed held-out batches (global arrays).
    tokens_per_step: positions a step consumes, padding included (encoder and decoder rows
      alike): the deterministic x-axis `tokens` of metrics.jsonl. tokens_per_sec and mfu count
      only non-padding tokens (the steps' num_tokens, `metrics.count_tokens`).
    flops_per_token: model FLOPs per token, for MFU.
    peak_flops: one device's peak FLOP/s, for MFU.
    checkpointer: saves the state and the data iterator's position.
    writer: metrics.jsonl + TensorBoard.
    state_is_finite: the compiled `state -> bool scalar` checked before every save.
  """

  workdir: str
  model: ModelConfig
  data: DataConfig
  train: TrainConfig
  lm: LanguageModel
  mesh: Mesh
  rules: rules_lib.Rules
  abstract_state: TrainState
  shardings: TrainState
  data_sharding: NamedSharding
  tokenizer: Tokenizer
  train_iter: Any  # A Grain iterator (or data.sharded_iterator's): next, get_state, set_state.
  first_batch: dict[str, np.ndarray]
  train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
  eval_step: Callable[[Params, Batch], Metrics] | None
  eval_batches: list[Batch]
  tokens_per_step: int
  flops_per_token: float
  peak_flops: float
  checkpointer: ckpt_lib.Checkpointer
  writer: metrics_lib.MetricsWriter
  state_is_finite: Callable[[TrainState], jax.Array]


def train(*, model: ModelConfig, data: DataConfig, train: TrainConfig, mesh: MeshConfig,
          workdir: str, operative_config: str | None = None,
          allow_fallback_checkpoint: bool = False) -> dict[str, Any]:
  """Trains (or resumes) a model in `workdir`; returns the final metrics.

  Args:
    model: the ModelConfig.
    data: the DataConfig.
    train: the TrainConfig.
    mesh: the MeshConfig.
    workdir: run directory; if it holds a checkpoint, training resumes from the latest one.
    operative_config: gin's operative config text, saved as DIR/config.gin.
    allow_fallback_checkpoint: when the newest checkpoint is damaged (a file truncated or
      deleted), resume from the newest intact one; the damaged steps are moved to
      checkpoints/damaged/ (never deleted). Without it such a run stops before writing.

  Returns:
    The last logged training metrics, merged with the last evaluation's (`eval_loss`, ...).

  Raises:
    ValueError: incompatible configs, or a workdir made by an incompatible config.
    FileExistsError: `workdir` holds files that are not an llmjax workdir's.
    FileNotFoundError: a warm start's source is missing (TrainConfig.init_from).
    PermissionError: `workdir` (or the directory to create it in) is not writable.
    DamagedCheckpointError (a ValueError): the newest checkpoint is damaged and no fallback is
      allowed; it names the step, the file and the flag.
    DivergenceError: a non-finite loss, gradient norm or state (TrainConfig.nan_policy); the
      last checkpoint is left untouched.
    RunError: anything else raised once the steps are being compiled or run (the exceptions
      above come before); its __cause__ is the original exception, traceback and all.

  A SIGTERM or SIGINT during the steps stops the run after the current step with a checkpoint
  (saved synchronously); the result then has `preempted: True`.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  record = workdir_lib.run_record(model=model, data=data, train=train, mesh=mesh)

  # 1. The workdir: new (or without a checkpoint yet), or a run this config may continue.
  # Nothing is written before step 3.
  validation.check_resume_compatible(workdir_lib.existing_run(workdir), record)
  workdir_lib.check_writable(workdir)
  # Damaged checkpoints are found here (file sizes against each step's manifest), before
  # anything is written; a fallback is applied in step 4.
  resume_point = ckpt_lib.find_resume_point(workdir, allow_fallback=allow_fallback_checkpoint)
  resuming = resume_point is not None

  # 2. Validate. The abstract params (with their logical axis names) are computed once here.
  device_mesh = mesh_lib.make_mesh(mesh.shape)  # Raises if the shape does not fit the devices.
  rules = rules_lib.get_rules(mesh.rules)
  validation.validate(model, train, device_mesh, data)
  lm = LanguageModel(model)
  boxed_init = functools.partial(lm.init_boxed, batch_size=1, seq_len=train.seq_len)
  abstract_boxed = jax.eval_shape(boxed_init, jax.random.PRNGKey(0))
  warm = None
  if train.init_from and not resuming:  # Shapes checked before anything is written.
    warm = warm_start.plan(train.init_from, nn.unbox(abstract_boxed), train.init_from_step)

  # 3. The tokenizer (a resumed run's own), checked against the model; then the run files.
  train_source, _, _ = pipeline.prepare_dataset(data)
  tokenizer = _load_or_build_tokenizer(data, workdir, train_source)
  if tokenizer is not None:  # Process 0 (other processes load it once it is written).
    validation.check_tokenizer(model, data, tokenizer)
  if jax.process_index() == 0:
    workdir_lib.write_run_files(workdir, record, tokenizer=tokenizer,
                                config_gin=operative_config)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("llmjax: run files written")
    if tokenizer is None:
      tokenizer = workdir_lib.load_tokenizer(workdir)
      validation.check_tokenizer(model, data, tokenizer)

  # 4. Shardings, then the sharded state: restored, or fresh (and warm-started).
  optimizer, schedule = make_optimizer(train)
  master_dtype = precision.master_dtype(model.precision, model.param_dtype)
  abstract_state, shardings = state_lib.abstract_state_shardings(
      abstract_boxed, optimizer, device_mesh, rules, master_dtype=master_dtype)
  if jax.process_index() == 0:
    for warning in sharding_report.layout_warnings(abstract_boxed, device_mesh, rules):
      print(f"llmjax: warning: {warning}", file=sys.stderr)
  data_sharding = partition.data_sharding(device_mesh)
  row_range = host_data.process_row_range(data_sharding, train.batch_size)
  ckpt = ckpt_lib.Checkpointer(workdir, keep=train.keep_checkpoints,
                               async_save=train.async_checkpointing)
  iter_state = None
  if resuming:
    state, iter_state = ckpt.resume(abstract_state, resume_point)
  else:
    state, _ = state_lib.create_train_state(boxed_init, optimizer, train.seed, device_mesh, rules,
                                            master_dtype=master_dtype, shardings=shardings)
    if warm is not None:
      # Adam's moments start at zero whatever the params, so only the params change.
      params, report = warm.apply(state.params)
      state = state.replace(params=params)
      if jax.process_index() == 0:
        print(f"llmjax: {report.summary()}", file=sys.stderr)
  start = int(jax.device_get(state.step))

  # 5. The data iterator, at the checkpoint's position; then the compiled steps.
  # Given the DataConfig (not the source) so it applies shuffle/seed/text_feature; the
  # prepared dataset is cached, so this does not prepare it again.
  train_iter = pipeline.make_train_iterator(
      data, tokenizer, batch_size=train.batch_size, seq_len=train.seq_len,
      model_vocab_size=model.vocab_size, shards=data_streams(data, iter_state),
      row_range=row_range)
  if iter_state is not None:
    train_iter.set_state(iter_state)
  writer = metrics_lib.MetricsWriter(workdir)
  writer.drop_after(start)
  compiling = False
  try:
    if start >= train.train_steps:
      if jax.process_index() == 0:
        print(f"llmjax: {workdir} is already at step {start} >= train_steps={train.train_steps}; "
              "raise TrainConfig.train_steps to continue.", file=sys.stderr)
      return {"step": start}
    first = next(train_iter)  # Its shapes/dtypes (with the global batch size) define the step.
    abstract_batch = {k: jax.ShapeDtypeStruct((train.batch_size,) + np.shape(v)[1:],
                                              np.asarray(v).dtype) for k, v in first.items()}
    eval_batches = _eval_batches(data, tokenizer, train, model, data_sharding, row_range)
    compiling = True  # Setup is over: from here on a failure is a RunError (below).
    train_step = step_lib.compile_train_step(
        lm, optimizer, train, device_mesh, rules, shardings, abstract_state, abstract_batch,
        data_sharding, schedule)
    eval_step = None
    if eval_batches:
      eval_step = step_lib.compile_eval_step(lm, device_mesh, rules, shardings.params,
                                             abstract_state.params, abstract_batch,
                                             data_sharding)
    decoder_len = abstract_batch["inputs"].shape[1] if lm.is_encoder_decoder else None
    run = Run(
        workdir=workdir, model=model, data=data, train=train, lm=lm, mesh=device_mesh,
        rules=rules, abstract_state=abstract_state, shardings=shardings,
        data_sharding=data_sharding, tokenizer=tokenizer, train_iter=train_iter,
        first_batch=first, train_step=train_step, eval_step=eval_step,
        eval_batches=eval_batches, tokens_per_step=_tokens_per_step(abstract_batch),
        flops_per_token=float(lm.flops_per_token(train.seq_len, decoder_len)),
        peak_flops=metrics_lib.device_peak_flops(), checkpointer=ckpt, writer=writer,
        state_is_finite=jax.jit(guard_lib.tree_is_finite,
                                out_shardings=NamedSharding(device_mesh, PartitionSpec())))

    # 6. The loop.
    return _run_loop(run, state, start)
  except Exception as e:
    if not compiling or isinstance(e, guard_lib.DivergenceError):
      raise
    raise RunError(f"{type(e).__name__}: {e}") from e
  finally:
    ckpt.close()  # Waits for async saves.
    writer.close()


def _load_or_build_tokenizer(data: DataConfig, workdir: str,
                             train_source: Any) -> Tokenizer | None:
  """The workdir's tokenizer once a checkpoint depends on it (never retrained), else the one
  the data config says (a workdir without a checkpoint gets it anew, `write_run_files`).

  A new tokenizer is not saved here: the run files are written only after validation. In a
  multi-process run only process 0 builds it (None elsewhere); the others load what it saves.
  """
  if workdir_lib.keeps_tokenizer(workdir):
    return workdir_lib.load_tokenizer(workdir)
  if jax.process_index() != 0:
    return None
  return pipeline.get_or_train_tokenizer(data, train_source, tokenizer_dir=None)


def data_streams(data: DataConfig, iter_state: Any) -> int | None:
  """Data streams of the global batch: the config's, else the checkpoint's (whatever default
  wrote it: older runs used one per process), else None = pipeline.default_streams, which
  does not depend on the process count."""
  saved = host_data.saved_shards(iter_state)
  streams = getattr(data, "shards", None) or saved
  if saved is not None and saved != streams:
    raise ValueError(f"the checkpoint's data iterator has {saved} streams but DataConfig.shards="
                     f"{streams}: resume with DataConfig.shards={saved} (or None).")
  return streams


def _eval_batches(data: DataConfig, tokenizer: Tokenizer, train: TrainConfig,
                  model: ModelConfig, data_sharding: NamedSharding,
                  row_range: tuple[int, int]) -> list[Batch]:
  """The fixed held-out batches as global arrays (none when eval is off or there is no split)."""
  if train.eval_batches <= 0:
    return []
  return [host_data.to_global(b, data_sharding, train.batch_size)
          for b in pipeline.make_eval_batches(
              data, tokenizer, batch_size=train.batch_size, seq_len=train.seq_len,
              num_batches=train.eval_batches, model_vocab_size=model.vocab_size,
              row_range=row_range)]


def _tokens_per_step(abstract_batch: dict[str, jax.ShapeDtypeStruct]) -> int:
  """Positions a step consumes: every row's, padding included, encoder and decoder alike."""
  return sum(int(np.prod(v.shape)) for k, v in abstract_batch.items()
             if k in ("inputs", "encoder_inputs"))


def _evaluate(eval_step: Callable[[Params, Batch], Metrics], params: Params,
              eval_batches: list[Batch]) -> dict[str, float]:
  results = jax.device_get([eval_step(params, batch) for batch in eval_batches])
  total = sum(float(r["weight_sum"]) for r in results)
  denom = max(total, 1e-8)
  return {
      "eval_loss": sum(float(r["loss"]) * float(r["weight_sum"]) for r in results) / denom,
      "eval_accuracy": sum(float(r["accuracy"]) * float(r["weight_sum"]) for r in results) / denom,
      "eval_tokens": total,
  }


def log_record(step_metrics: list[Metrics], seconds: float, *, flops_per_token: float,
               peak_flops: float) -> dict[str, float]:
  """One metrics.jsonl record of the steps since the last log, fetched to the host.

  Args:
    step_metrics: each step's train-step metrics.
    seconds: the steps' wall time (without evaluation and checkpoint pauses).
    flops_per_token: model FLOPs per token (LanguageModel.flops_per_token).
    peak_flops: one device's peak FLOP/s.

  Returns:
    The metrics averaged over the steps (the learning rate: the current one), and
    tokens_per_sec / mfu from the steps' non-padding tokens (num_tokens). With
    nan_policy='skip', `skipped_steps` counts the steps dropped since the last log, and the
    averages leave them out (they are NaN, written as null, only if every step was skipped).
  """
  skipped = sum(float(m.get("skipped", 0.0)) for m in step_metrics)
  kept = [m for m in step_metrics if not float(m.get("skipped", 0.0))] or step_metrics
  record = {k: float(np.mean([m[k] for m in kept]))
            for k in step_metrics[-1] if k not in ("num_tokens", "skipped")}
  if "skipped" in step_metrics[-1]:
    record["skipped_steps"] = skipped
  record["learning_rate"] = float(step_metrics[-1]["learning_rate"])
  tokens = sum(float(m["num_tokens"]) for m in step_metrics)
  record["tokens_per_sec"] = tokens / seconds
  record["mfu"] = metrics_lib.mfu(record["tokens_per_sec"], flops_per_token,
                                  peak_flops=peak_flops)
  return record


def _run_loop(run: Run, state: TrainState, start: int) -> dict[str, Any]:
  """Steps `start` .. train_steps: log, evaluate and checkpoint on their schedules.

  Guarded: a non-finite step halts (or is counted as skipped) per TrainConfig.nan_policy, no
  checkpoint holding NaN/Inf is written, and SIGTERM/SIGINT stop after the current step with a
  synchronous checkpoint.
  """
  train = run.train
  guard = guard_lib.DivergenceGuard(train.nan_policy, train.max_consecutive_skips)
  try:
    with guard_lib.StopSignals() as signals:
      return _guarded_loop(run, state, start, guard, signals)
  except guard_lib.DivergenceError as e:
    run.checkpointer.wait_until_finished()  # Saves already started are of finite states.
    hint = guard_lib.resume_hint(run.checkpointer.latest_step(), train.nan_policy)
    raise guard_lib.DivergenceError(f"{e} {hint}") from None


def _save(run: Run, state: TrainState, done: int, guard: guard_lib.DivergenceGuard) -> None:
  """Checkpoint `done`, once every step's metrics and the state itself are known finite."""
  guard.check()
  if not bool(jax.device_get(run.state_is_finite(state))):
    raise guard_lib.DivergenceError(
        f"training diverged at step {done}: the parameters or optimizer state hold NaN/Inf "
        "(the loss and gradient norm were finite, so the update itself overflowed).")
  run.checkpointer.save(done, state, host_data.global_iterator_state(run.train_iter.get_state()))


def _guarded_loop(run: Run, state: TrainState, start: int, guard: guard_lib.DivergenceGuard,
                  signals: guard_lib.StopSignals) -> dict[str, Any]:
  train, writer = run.train, run.writer
  bar = tqdm(total=train.train_steps, initial=start, desc="train", unit="step",
             disable=jax.process_index() != 0, dynamic_ncols=True)
  pending: list[dict] = []  # Device-side metrics since the last log; fetched only at logs.
  last_log_time = time.perf_counter()  # Compilation is already done.
  paused = 0.0  # Seconds spent in eval and checkpoint saves since the last log.
  final: dict[str, Any] = {}
  batch = run.first_batch
  for step in range(start, train.train_steps):
    if step > start:
      batch = next(run.train_iter)
    # Built outside the guard: on multi-process runs make_array_from_process_local_data
    # copies the local rows through a path the guard counts as implicit.
    global_batch = host_data.to_global(batch, run.data_sharding, train.batch_size)
    with guard_lib.transfer_guard():  # An implicit host<->device copy here is a bug: raise.
      state, metrics = run.train_step(state, global_batch)
    pending.append(metrics)
    done = step + 1
    last = done == train.train_steps
    guard.add(done, metrics)
    stop = signals.requested()  # The same answer on every process.
    log_due = done % train.log_every == 0 or last or stop
    eval_due = run.eval_step is not None and (
        (train.eval_every and done % train.eval_every == 0) or last)
    save_due = done % train.checkpoint_every == 0 or last or stop
    # Checks the steps before this one, which is still in flight (so the device stays busy);
    # before a log, eval or save, this one too, so nothing non-finite is logged or saved.
    guard.check(in_flight=0 if (log_due or eval_due or save_due) else 1)
    if log_due:
      fetched = jax.device_get(pending)
      now = time.perf_counter()
      elapsed = max(now - last_log_time - paused, 1e-9)
      last_log_time, pending, paused = now, [], 0.0
      record = log_record(fetched, elapsed, flops_per_token=run.flops_per_token,
                          peak_flops=run.peak_flops)
      record["tokens"] = float(done * run.tokens_per_step)
      tokens_per_sec = record["tokens_per_sec"]
      final.update(writer.write(done, record))
      # Advanced only here, where the device has caught up: steps are dispatched
      # asynchronously, so counting dispatches would show a burst and then a stall.
      bar.update(done - bar.n)
      bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{tokens_per_sec:,.0f}")
    if eval_due and (last or not stop):  # A preempted run leaves quickly.
      jax.block_until_ready(metrics)  # So the pause below holds no training compute.
      pause_start = time.perf_counter()
      final.update(writer.write(done, _evaluate(run.eval_step, state.params, run.eval_batches)))
      paused += time.perf_counter() - pause_start  # Kept out of tokens/s.
    if save_due:
      jax.block_until_ready(metrics)
      pause_start = time.perf_counter()
      _save(run, state, done, guard)
      paused += time.perf_counter() - pause_start
    if stop and not last:
      run.checkpointer.wait_until_finished()  # On disk before this process exits.
      bar.close()
      if jax.process_index() == 0:
        print(f"llmjax: preempted at step {done}; checkpoint saved; rerun the same command to "
              "resume", file=sys.stderr)
      final.update(step=done, preempted=True)
      return final
  bar.close()
  final["step"] = int(jax.device_get(state.step))
  return final
