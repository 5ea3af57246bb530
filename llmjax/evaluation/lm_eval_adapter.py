"""The lm-evaluation-harness backend: an `lm_eval` model named `llmjax` over any workdir.

`LlmjaxLM` is an `lm_eval.api.model.LM` whose three request types (loglikelihood,
loglikelihood_rolling, generate_until) are `LoadedModel`'s methods of the same names
(sampling/scoring.py): each call hands the harness's whole request list to llmjax at once,
which sorts it by length and buckets it so each shape compiles once. The harness's own
tokenization conventions (context / continuation split, rolling windows from BOS) are
implemented there, not here, so `llmjax eval` and this backend score the same items alike.

lm-eval discovers models only by import (0.4.13 has no plugin entry point), so importing this
module registers the name; `python -m llmjax.evaluation.lm_eval_main` is lm-eval's own CLI
with it imported:

  python -m llmjax.evaluation.lm_eval_main --model llmjax \
      --model_args workdir=W[,step=N][,batch_size=B] --tasks T [--include_path DIR]

In Python, `lm_eval.simple_evaluate(model=LlmjaxLM(workdir=W), tasks=[...])`, or
`model="llmjax"` once this module is imported. This module is the only one in llmjax that
imports lm_eval (the optional `eval` extra: `pip install -e '.[eval]'`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from llmjax.sampling.loading import LoadedModel, load

MODEL_NAME = "llmjax"
MODEL_ARGS = ("workdir", "step", "batch_size")
# The harness adds these to every model's constructor arguments (simple_evaluate's own
# batch_size / max_batch_size / device): accepted, and batch_size used as described below.
_HARNESS_ARGS = ("max_batch_size", "device")


def _check_batch_size(value: Any, name: str) -> int | None:
  """An int >= 1, or None for llmjax's own batching ("auto" and None)."""
  if value is None or value == "auto":
    return None
  if isinstance(value, str) and value.startswith("auto:"):  # lm-eval's "auto:N" recompute.
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be an int >= 1 or 'auto' (llmjax sizes its own batches), "
                     f"got {value!r}.")
  return value


@register_model(MODEL_NAME)
class LlmjaxLM(LM):
  """An llmjax workdir (trained, fine-tuned or converted) as an lm-evaluation-harness model.

  Args:
    workdir: the workdir to load (`llmjax.load`); model_args `workdir=W`.
    step: its checkpoint step; None = the latest. model_args `step=N`.
    batch_size: requests per forward pass; None or "auto" = llmjax's default bucketing.
      lm-eval's CLI always passes --batch_size (default 1) besides model_args, so a
      batch_size in model_args wins, and the harness's value is used only when it is an int
      above 1 (its default of 1 would run one request per forward pass).
    model: an already loaded model instead of workdir (notebooks, tests).
    max_batch_size: the harness's; ignored (llmjax sizes its own batches).
    device: the harness's (its CLI defaults to "cuda:0"); ignored: JAX places the model on
      its default devices.

  Raises:
    ValueError: neither or both of workdir and model, or a bad step / batch_size.
  """

  def __init__(self, workdir: str | None = None, step: int | None = None,
               batch_size: int | str | None = None, *, model: LoadedModel | None = None,
               max_batch_size: int | None = None, device: str | None = None) -> None:
    super().__init__()
    del max_batch_size, device  # See the docstring.
    if (workdir is None) == (model is None):
      raise ValueError("the llmjax lm-eval model needs exactly one of workdir (model_args "
                       "workdir=PATH) and model (a LoadedModel).")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
      raise ValueError(f"step must be a checkpoint step (an int >= 0), got {step!r}.")
    self.batch_size_per_call = _check_batch_size(batch_size, "batch_size")
    # A path of digits alone comes back from lm-eval's arg parser as an int.
    self.workdir = None if workdir is None else os.path.abspath(str(workdir))
    self.model = model if model is not None else load(self.workdir, step=step)

  def get_model_info(self) -> dict[str, Any]:
    """What the harness records under its results' "config": which checkpoint was scored."""
    config = getattr(self.model, "config", None)
    params = getattr(self.model, "params", None)
    return {
        "llmjax_workdir": self.workdir,
        "llmjax_step": getattr(self.model, "step", None),
        "llmjax_architecture": getattr(config, "architecture", None),
        "model_num_parameters": (None if params is None else
                                 int(sum(np.size(x) for x in jax.tree.leaves(params)))),
        "model_dtype": None if config is None else str(config.dtype),
    }

  @classmethod
  def create_from_arg_obj(cls, arg_dict: Mapping[str, Any],
                          additional_config: Mapping[str, Any] | None = None) -> LlmjaxLM:
    """The harness's constructor path (CLI and simple_evaluate(model="llmjax", ...))."""
    unknown = sorted(set(arg_dict) - set(MODEL_ARGS))
    if unknown:
      raise ValueError(f"unknown llmjax model_args {unknown}: it accepts "
                       f"{', '.join(MODEL_ARGS)} (e.g. --model_args workdir=W,step=100).")
    args = dict(arg_dict)
    extra = {k: v for k, v in (additional_config or {}).items()
             if k in (*_HARNESS_ARGS, "batch_size") and v is not None}
    harness_batch = extra.pop("batch_size", None)
    if "batch_size" not in args and harness_batch not in (None, 1, "1"):
      args["batch_size"] = (int(harness_batch) if str(harness_batch).isdigit()
                            else harness_batch)
    return cls(**args, **extra)

  @classmethod
  def create_from_arg_string(cls, arg_string: str,
                             additional_config: Mapping[str, Any] | None = None) -> LlmjaxLM:
    from lm_eval.utils import simple_parse_args_string

    return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

  def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
    """Per (context, continuation): (sum log p(continuation | context), is_greedy)."""
    pairs = [(str(r.args[0]), str(r.args[1])) for r in requests]
    results = self.model.loglikelihood(pairs, batch_size=self.batch_size_per_call)
    out = [(float(logprob), bool(greedy)) for logprob, greedy in results]
    for pair, result in zip(pairs, out, strict=True):
      self.cache_hook.add_partial("loglikelihood", pair, result)
    return out

  def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
    """Per text: its full log-likelihood, the first token predicted from BOS."""
    texts = [str(r.args[0]) for r in requests]
    out = [float(x) for x in
           self.model.loglikelihood_rolling(texts, batch_size=self.batch_size_per_call)]
    for text, result in zip(texts, out, strict=True):
      self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
    return out

  def generate_until(self, requests: list[Instance]) -> list[str]:
    """Per (context, gen_kwargs): the greedy (or sampled) completion, cut at a stop string."""
    calls = [(str(r.args[0]), self._gen_kwargs(r.args[1])) for r in requests]
    out = self.model.generate_until(calls, batch_size=self.batch_size_per_call)
    for request, text in zip(requests, out, strict=True):
      self.cache_hook.add_partial("generate_until", request.args, text)
    return list(out)

  @staticmethod
  def _gen_kwargs(kwargs: Any) -> dict[str, Any]:
    """The harness's gen_kwargs in llmjax's form: `until` always a list of strings."""
    if not isinstance(kwargs, Mapping):
      raise ValueError(f"generate_until requests must be (context, gen_kwargs dict), got "
                       f"gen_kwargs {kwargs!r}.")
    kwargs = dict(kwargs)
    until = kwargs.get("until")
    if isinstance(until, str):  # lm-eval allows a single stop string.
      kwargs["until"] = [until]
    elif until is not None:
      kwargs["until"] = list(until)
    return kwargs
