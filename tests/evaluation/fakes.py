"""Test doubles for the evaluation tests: a request-API model with known answers, and tiny
workdirs written through llmjax/workdir.py with random (or given) params in well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llmjax import workdir as workdir_lib
from llmjax.data.pipeline import DataConfig
from llmjax.data.tokenizer import ByteTokenizer
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sharding.mesh import MeshConfig
from llmjax.training.config import TrainConfig


class CharTokenizer:
  """One token per character (so token, byte and character counts can all differ)."""

  vocab_size = 1000
  bos_id = 1

  def encode(self, text: str) -> list[int]:
    return [4 + ord(c) % 996 for c in text]


class FakeModel:
  """The LoadedModel request API with answers the test chooses.

  loglikelihood: score(context, continuation) (default 0.0), is_greedy False;
  loglikelihood_rolling: a uniform model over `vocab` ids: -len(encode(text)) * ln(vocab);
  generate_until: reply(context, settings) (default ""). Every call's requests are recorded.
  """

  def __init__(self, *, vocab: int = 1000, score: Callable[[str, str], float] | None = None,
               reply: Callable[[str, dict], str] | None = None):
    self.vocab = vocab
    self.tokenizer = CharTokenizer()
    self.score = score or (lambda context, continuation: 0.0)
    self.reply = reply or (lambda context, settings: "")
    self.calls: list[tuple[str, list, int | None]] = []

  def loglikelihood(self, requests: Sequence[tuple[str, str]], *, batch_size=None):
    self.calls.append(("loglikelihood", list(requests), batch_size))
    return [(float(self.score(c, x)), False) for c, x in requests]

  def loglikelihood_rolling(self, texts: Sequence[str], *, batch_size=None):
    self.calls.append(("loglikelihood_rolling", list(texts), batch_size))
    return [-len(self.tokenizer.encode(t)) * math.log(self.vocab) for t in texts]

  def generate_until(self, requests: Sequence[tuple[str, dict]], *, batch_size=None):
    self.calls.append(("generate_until", list(requests), batch_size))
    return [self.reply(c, s) for c, s in requests]


def write_workdir(path: str, model: ModelConfig, *, step: int = 2, seed: int = 0,
                  params_fn: Callable | None = None, data: DataConfig | None = None) -> str:
  """A workdir as `llmjax train` leaves it (run files, byte tokenizer, one checkpoint) with
  normal(0, 0.5) params, or params_fn(params) of them."""
  data = data or DataConfig(text_files="/nonexistent/*.txt", tokenizer="byte")
  record = workdir_lib.run_record(model=model, data=data,
                                  train=TrainConfig(train_steps=step, warmup_steps=1,
                                                    seq_len=model.max_seq_len),
                                  mesh=MeshConfig())
  workdir_lib.write_run_files(path, record, tokenizer=ByteTokenizer(), config_gin="# run\n")
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.5, x.shape), x.dtype),
                        jax.eval_shape(LanguageModel(model).init, jax.random.PRNGKey(0)))
  if params_fn is not None:
    params = params_fn(params)
  workdir_lib.save_params(path, params, step)
  return path
