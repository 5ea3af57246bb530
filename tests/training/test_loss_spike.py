"""Loss-spike skipping (TrainConfig.loss_spike_window): a spike's update is dropped, the window
keeps accepted losses only, and a run resumed across the window equals an uninterrupted one."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import TOY_RULES, ToyLM, make_test_mesh, toy_batch

from llmjax.data import pipeline
from llmjax.models.interface import LanguageModel
from llmjax.training import guard, loop
from llmjax.training import step as step_lib
from llmjax.training.config import TrainConfig
from llmjax.training.optimizer import make_optimizer
from llmjax.training.state import create_train_state
from tests.training import test_loop
from tests.training.test_loop import _assert_bitwise, _configs, _final_params

corpus = test_loop.corpus  # The fixture (module scope).
_MAKE_TRAIN_ITERATOR, _LOSS_FN = pipeline.make_train_iterator, LanguageModel.loss_fn


class SpikyLM(ToyLM):
  """The toy LM whose loss is multiplied by 1 + batch['spike'] (a spike on demand)."""

  def loss_fn(self, params, batch, rng, **kwargs):
    loss, aux = super().loss_fn(params, batch, rng, **kwargs)
    factor = 1.0 + batch["spike"][0, 0]
    return loss * factor, aux | {"loss": aux["loss"] * factor}


def _toy_run(cfg: TrainConfig, spikes: set[int], steps: int):
  """(states after each step, skipped flags) of the toy model on batches 0..steps-1."""
  model, (tx, schedule) = SpikyLM(), make_optimizer(cfg)
  state, _ = create_train_state(model.init_boxed, tx, cfg.seed, make_test_mesh({"fsdp": 1}),
                                TOY_RULES["fsdp"])
  train_step = jax.jit(step_lib.make_train_step(model, tx, cfg, schedule))
  states, skipped = [state], []
  for i in range(steps):
    batch = toy_batch(i) | {"spike": np.full((8, 8), 9.0 if i in spikes else 0.0, np.float32)}
    state, metrics = train_step(state, batch)
    states.append(state)
    skipped.append(float(metrics.get("skipped", 0.0)))
  return states, skipped


@pytest.mark.parametrize("changes,message", [
    ({"loss_spike_window": 1, "nan_policy": "skip"}, "use 0 \\(off\\) or a window of >= 2"),
    ({"loss_spike_window": -3, "nan_policy": "skip"}, "use 0 \\(off\\)"),
    ({"loss_spike_window": 8, "nan_policy": "skip", "loss_spike_std": 0.0}, "must be positive"),
    ({"loss_spike_window": 8}, "set nan_policy='skip' too"),
])
def test_loss_spike_config_is_validated(changes, message):
  with pytest.raises(ValueError, match=message):
    TrainConfig(**changes)


def test_a_spike_after_the_window_fills_is_skipped_and_leaves_the_state_untouched():
  cfg = TrainConfig(train_steps=8, batch_size=8, seq_len=8, warmup_steps=1, nan_policy="skip",
                    loss_spike_window=2, loss_spike_std=50.0)
  # Step 1's spike comes before the window is full (accepted, and then pushed out of the
  # window by steps 2 and 3); step 5's is 10x the loss of a full window: skipped.
  states, skipped = _toy_run(cfg, spikes={1, 5}, steps=8)
  assert skipped == [0, 0, 0, 0, 0, 1, 0, 0]
  before, after = states[5], states[6]
  assert int(after.step) == 6  # The step counter (schedule, data) still advances.
  _assert_bitwise((before.params, before.opt_state), (after.params, after.opt_state))
  window = states[-1].opt_state
  assert isinstance(window, guard.LossWindowState) and int(window.count) == 7  # Accepted only.
  moved = jax.tree.leaves(states[7].params)[0]  # An accepted step does move the params.
  assert not np.array_equal(moved, jax.tree.leaves(states[6].params)[0])


def _spike_batches(monkeypatch, steps: set[int]) -> None:
  """The real model's loss is 10x on the batches of these 0-based steps (of this train() call):
  batches carry a 'spike' column, which the patched loss_fn reads and removes."""
  make, loss_fn = _MAKE_TRAIN_ITERATOR, _LOSS_FN  # The originals, however often patched.

  def spiky_loss_fn(self, params, batch, rng, **kwargs):
    factor = 1.0 + batch["spike"][0, 0]
    rest = {k: v for k, v in batch.items() if k != "spike"}
    loss, aux = loss_fn(self, params, rest, rng, **kwargs)
    return loss * factor, aux | {"loss": aux["loss"] * factor}

  class Poisoned:
    def __init__(self, inner):
      self.inner, self.step = inner, 0

    def __next__(self):
      batch, self.step = next(self.inner), self.step + 1
      spike = 9.0 if self.step - 1 in steps else 0.0
      return batch | {"spike": np.full((len(batch["inputs"]), 1), spike, np.float32)}

    def __getattr__(self, name):
      return getattr(self.inner, name)

  monkeypatch.setattr(pipeline, "make_train_iterator", lambda *a, **k: Poisoned(make(*a, **k)))
  monkeypatch.setattr(LanguageModel, "loss_fn", spiky_loss_fn)


def _skipped_steps(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    lines = [json.loads(line) for line in f]
  return {r["step"]: r["skipped_steps"] for r in lines if "skipped_steps" in r}


@pytest.mark.slow
def test_resume_across_the_spike_window_matches_an_uninterrupted_run(tmp_path, monkeypatch,
                                                                     corpus):
  changes = dict(nan_policy="skip", loss_spike_window=2, loss_spike_std=6.0, log_every=1,
                 eval_batches=0)
  _spike_batches(monkeypatch, {4})  # Step 5.
  full = str(tmp_path / "full")
  loop.train(**_configs(corpus, **changes), workdir=full)
  assert _skipped_steps(full) == {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 0}

  # Killed after step 4 (its checkpoint holds the window), then resumed: step 5 must be
  # judged against the restored window exactly as in the uninterrupted run.
  resumed = str(tmp_path / "resumed")
  _spike_batches(monkeypatch, {4})
  loop.train(**_configs(corpus, **changes, train_steps=4), workdir=resumed)
  _spike_batches(monkeypatch, {0})  # The resumed run's first batch is step 5's.
  loop.train(**_configs(corpus, **changes), workdir=resumed)
  assert _skipped_steps(resumed) == _skipped_steps(full)
  model = _configs(corpus)["model"]
  _assert_bitwise(_final_params(full, model), _final_params(resumed, model))
