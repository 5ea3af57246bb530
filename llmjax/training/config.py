"""Training configuration: one frozen, validated dataclass for the optimizer, step and loop.

Configuration only; the optimizer is built in `optimizer.py` and the loop in `loop.py`. Every
field is a plain int/float/bool so the config round-trips through gin and JSON unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from llmjax.config_checks import check_field_types

NAN_POLICIES = ("halt", "skip")
_FLOAT32_MAX = 3.4028234663852886e38  # The schedule is float32: a larger rate would be inf.


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """How long and how to train.

  Attributes:
    train_steps: optimizer steps in the whole run. Raising it and re-running on the same workdir
      extends a run (the cosine decay then stretches to the new end from that step on).
    batch_size: global batch size in sequences (all processes and microbatches together).
    seq_len: tokens per sequence (must be <= ModelConfig.max_seq_len).
    seed: seeds parameter init and dropout (the data order has its own seed in DataConfig).
    learning_rate: peak learning rate, reached at the last warmup step.
    end_learning_rate_ratio: the cosine decay ends at learning_rate * this at train_steps.
    warmup_steps: linear warmup: step s < warmup_steps (0-based) gets
      learning_rate * (s + 1) / warmup_steps, so the first step already moves (at
      learning_rate / warmup_steps) and the last warmup step is at the peak.
    weight_decay: decoupled AdamW weight decay, on weight matrices and embedding tables only
      (not on biases, norm parameters or T5's relative-position bias; training/optimizer.py).
    b1, b2, eps: Adam moments and epsilon.
    clip_norm: clip gradients to this global norm; 0 disables clipping.
    microbatches: gradient accumulation: split each batch into this many sequential pieces.
    z_loss: weight of the log(Z)^2 auxiliary loss (0 disables it).
    log_every: write a metrics.jsonl / TensorBoard line every this many steps.
    eval_every: evaluate every this many steps (0: only at the end).
    eval_batches: number of fixed held-out batches per evaluation (0 disables eval).
    checkpoint_every: save a checkpoint every this many steps (the last step is always saved).
    keep_checkpoints: how many recent checkpoints to keep on disk.
    async_checkpointing: write checkpoints in a background thread while training continues.
    init_from: warm start: a training workdir whose checkpointed params initialize this run's
      matching params (same path and shape) at step 0, e.g. a pretrained encoder for a
      classifier; params it lacks keep their fresh initialization (training/warm_start.py).
    init_from_step: its checkpoint step; None = latest.
    nan_policy: what a step whose loss or gradient norm is NaN/Inf does (training/guard.py).
      'halt': training stops there with an error naming the step and the quantity, the last
      checkpoint (always a finite one) is left as it is, and a rerun resumes from it.
      'skip': the step's update is dropped inside the compiled step (params and optimizer
      state unchanged; the step counter, the learning-rate schedule and the data still
      advance), metrics.jsonl counts it in `skipped_steps`, and training halts after
      max_consecutive_skips skipped steps in a row.
    max_consecutive_skips: with nan_policy='skip', halt after this many skipped steps in a row.
    loss_spike_window: Levanter-style loss-spike skipping (needs nan_policy='skip'); 0 (the
      default) turns it off. Once W = loss_spike_window steps have been accepted, a step whose
      loss exceeds the mean + loss_spike_std standard deviations of the last W accepted
      losses is skipped like a non-finite one (counted in `skipped_steps` and towards
      max_consecutive_skips). The window is part of the optimizer state, so it is checkpointed
      and a resumed run skips exactly the steps an uninterrupted one would.
    loss_spike_std: the threshold, in standard deviations of the window's losses.
  """

  train_steps: int = 1000
  batch_size: int = 32
  seq_len: int = 256
  seed: int = 0
  learning_rate: float = 3e-4
  end_learning_rate_ratio: float = 0.1
  warmup_steps: int = 100
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float = 1.0
  microbatches: int = 1
  z_loss: float = 0.0
  log_every: int = 10
  eval_every: int = 200
  eval_batches: int = 4
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  init_from: str | None = None
  init_from_step: int | None = None
  nan_policy: str = "halt"
  max_consecutive_skips: int = 10
  loss_spike_window: int = 0
  loss_spike_std: float = 6.0

  def __post_init__(self):
    check_field_types(self)  # Ints are ints (not True, not 2.5); floats are finite numbers.
    if self.nan_policy not in NAN_POLICIES:
      raise ValueError(f"TrainConfig.nan_policy={self.nan_policy!r}; choose one of "
                       f"{NAN_POLICIES}.")
    if self.init_from_step is not None and self.init_from_step < 0:
      raise ValueError(f"TrainConfig.init_from_step={self.init_from_step} must be a checkpoint "
                       "step (>= 0), or None for the latest one.")
    if self.max_consecutive_skips <= 0:
      raise ValueError("TrainConfig.max_consecutive_skips must be positive, got "
                       f"{self.max_consecutive_skips}.")
    if self.loss_spike_window < 0 or self.loss_spike_window == 1:
      raise ValueError(f"TrainConfig.loss_spike_window={self.loss_spike_window}: use 0 (off) or "
                       "a window of >= 2 steps (e.g. 100).")
    if self.loss_spike_std <= 0:
      raise ValueError(f"TrainConfig.loss_spike_std={self.loss_spike_std} must be positive "
                       "(e.g. 6.0 standard deviations).")
    if self.loss_spike_window and self.nan_policy != "skip":
      raise ValueError(f"TrainConfig.loss_spike_window={self.loss_spike_window} skips steps, "
                       f"but nan_policy={self.nan_policy!r}: set nan_policy='skip' too (or "
                       "loss_spike_window=0).")
    for name in ("train_steps", "batch_size", "seq_len", "microbatches", "log_every",
                 "checkpoint_every", "keep_checkpoints"):
      if getattr(self, name) <= 0:
        raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}.")
    for name in ("warmup_steps", "eval_every", "eval_batches", "weight_decay", "clip_norm",
                 "z_loss", "eps"):
      if getattr(self, name) < 0:
        raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}.")
    if self.learning_rate <= 0:
      raise ValueError(f"TrainConfig.learning_rate must be positive, got {self.learning_rate}.")
    if self.learning_rate > _FLOAT32_MAX:
      raise ValueError(f"TrainConfig.learning_rate={self.learning_rate} is infinite in float32 "
                       "(the schedule's dtype): use a learning rate below 3.4e38 (typically "
                       "1e-4 to 1e-2).")
    if not 0.0 <= self.end_learning_rate_ratio <= 1.0:
      raise ValueError("TrainConfig.end_learning_rate_ratio must be in [0, 1], got "
                       f"{self.end_learning_rate_ratio}.")
    for name in ("b1", "b2"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}.")
    if self.batch_size % self.microbatches:
      raise ValueError(
          f"TrainConfig.batch_size={self.batch_size} is not divisible by "
          f"microbatches={self.microbatches}: pick microbatches among the divisors of batch_size.")
    if self.warmup_steps > self.train_steps:
      raise ValueError(
          f"TrainConfig.warmup_steps={self.warmup_steps} exceeds train_steps="
          f"{self.train_steps}: lower warmup_steps or raise train_steps.")

  @property
  def microbatch_size(self) -> int:
    return self.batch_size // self.microbatches

  @property
  def tokens_per_step(self) -> int:
    return self.batch_size * self.seq_len

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> TrainConfig:
    return cls(**json.loads(text))

  def replace(self, **changes: Any) -> TrainConfig:
    return dataclasses.replace(self, **changes)
