"""Sampling settings and prompts as the user gives them, checked in one place.

`SamplingParams` is the one validator of the settings `Sampler.generate`, `LoadedModel.generate`
and `llmjax sample` accept: its `__post_init__` checks each field's type (ints are ints, bools
are not ints, no strings or None), its range (floats finite), and the combinations, and stores
plain Python ints and floats. `check_prompts` does the same for text prompts. Both raise
TypeError (wrong type) or ValueError (wrong value) naming the argument, the value given and the
values accepted, before anything is compiled.

What is checked here needs no model; the limits that depend on one (prompt + max_new_tokens
within max_seq_len, token ids within the vocabulary) are checked by the Sampler.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# PRNGKey keeps only the low 32 bits of a seed without jax_enable_x64 (2**32 and 0 give the
# same key), so the seeds that give distinct streams everywhere are [0, 2**32).
SEED_LIMIT = 2**32
# Below this temperature, float32 logits / temperature overflow to inf; the sampler draws
# greedily there (the limit of temperature -> 0), see strategies.make_strategy.
MIN_SAMPLING_TEMPERATURE = 1e-6


def _is_bool(value: Any) -> bool:
  return isinstance(value, bool | np.bool_) or getattr(value, "dtype", None) == np.bool_


def _describe(value: Any) -> str:
  return f"{value!r} ({type(value).__name__})"


def check_int(name: str, value: Any, accepted: str,
              ok: Callable[[int], bool] = lambda v: True) -> int:
  """`value` as a Python int, if it is an integer (not a bool) for which `ok` holds.

  Args:
    name: the argument's name, for the message.
    value: what the user passed; numpy / JAX integer scalars count as integers.
    accepted: the accepted values in words, e.g. "an int >= 1".
    ok: the range check on the int.

  Raises:
    TypeError: not an integer (floats like 4.0, strings, None and bools included).
    ValueError: an integer outside the range.
  """
  if _is_bool(value) or isinstance(value, str | bytes):
    raise TypeError(f"{name} must be {accepted}, got {_describe(value)}.")
  try:
    number = operator.index(value)
  except TypeError:
    raise TypeError(f"{name} must be {accepted}, got {_describe(value)}.") from None
  if not ok(number):
    raise ValueError(f"{name} must be {accepted}, got {number}.")
  return number


def check_float(name: str, value: Any, accepted: str,
                ok: Callable[[float], bool] = lambda v: True) -> float:
  """`value` as a finite Python float, if it is a real number (not a bool) for which `ok` holds.

  Raises:
    TypeError: not a real number (strings, None and bools included).
    ValueError: NaN, an infinity, an int too large for a float, or outside the range.
  """
  dtype = getattr(value, "dtype", None)
  real = isinstance(value, numbers.Real) or (  # Else a 0-d NumPy / JAX int or float array.
      dtype is not None and getattr(value, "shape", None) == ()
      and (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)))
  if _is_bool(value) or isinstance(value, str | bytes) or not real:
    raise TypeError(f"{name} must be {accepted}, got {_describe(value)}.")
  try:
    number = float(value)
  except OverflowError:  # An int past 1.8e308.
    number = math.inf
  if not math.isfinite(number) or not ok(number):
    raise ValueError(f"{name} must be {accepted}, got {value!r}.")
  return number


# Each setting: (int or float, the accepted values in words, the range check).
_RULES: dict[str, tuple[type, str, Callable[[Any], bool]]] = {
    "max_new_tokens": (int, "an int >= 1", lambda v: v >= 1),
    "temperature": (float, "a finite float >= 0 (0 = greedy)", lambda v: v >= 0),
    "top_k": (int, "an int >= 0 (0 = off)", lambda v: v >= 0),
    "top_p": (float, "a float in (0, 1] (1.0 = off)", lambda v: 0 < v <= 1),
    "seed": (int, f"an int in [0, 2**32 = {SEED_LIMIT})", lambda v: 0 <= v < SEED_LIMIT),
    "num_samples": (int, "an int >= 1", lambda v: v >= 1),
    "num_beams": (int, "an int >= 1 (1 = sample)", lambda v: v >= 1),
    "length_penalty": (float, "a finite float (0 = rank by summed log-prob)", lambda v: True),
}


def check_setting(name: str, value: Any) -> int | float:
  """One sampling setting (a SamplingParams field) checked alone, as a plain int or float.

  Raises:
    TypeError / ValueError: as check_int / check_float, naming the setting.
  """
  kind, accepted, ok = _RULES[name]
  check = check_int if kind is int else check_float
  return check(name, value, accepted, ok)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
  """Validated generation settings (see `Sampler.generate` for what each does).

  Attributes:
    max_new_tokens: an int >= 1: most tokens generated per completion (it stops earlier at
      EOS); prompt + max_new_tokens must fit the model's max_seq_len (checked by the Sampler).
    temperature: a finite float >= 0; 0 = greedy. Beam search needs the default 1.0.
    top_k: an int >= 0; 0 = off, 1 = greedy; values past the vocabulary keep all of it.
    top_p: a float in (0, 1]; 1.0 = off.
    seed: an int in [0, 2**32); the same seed and settings give the same completions. Beam
      search does not use it.
    num_samples: an int >= 1: completions per prompt (with beam search: the n best, so at most
      num_beams).
    num_beams: an int >= 1; > 1 runs beam search, which is deterministic and ranks by the
      model's own log-probs, so it takes no temperature, top_k or top_p.
    length_penalty: beam search's GNMT alpha, a finite float (0 = rank by summed log-prob).

  Raises:
    TypeError: a field of the wrong type (a bool, str, None, or a float where an int belongs).
    ValueError: a value out of range, or settings that do not go together.
  """

  max_new_tokens: int = 64
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  num_samples: int = 1
  num_beams: int = 1
  length_penalty: float = 1.0

  def __post_init__(self):
    checked = {f.name: check_setting(f.name, getattr(self, f.name))
               for f in dataclasses.fields(self)}
    for name, value in checked.items():
      object.__setattr__(self, name, value)  # Plain ints and floats: hashable, jit-static.
    if self.num_beams > 1:
      self._check_beam_combination()

  def _check_beam_combination(self) -> None:
    beams = self.num_beams
    if self.num_samples > beams:
      raise ValueError(f"num_samples={self.num_samples} > num_beams={beams}: beam search "
                       f"returns at most num_beams hypotheses; raise num_beams.")
    unused = [f"{name}={value}" for name, value, default in (
        ("temperature", self.temperature, 1.0), ("top_k", self.top_k, 0),
        ("top_p", self.top_p, 1.0)) if value != default]
    if unused:
      raise ValueError(
          f"num_beams={beams} runs beam search, which is deterministic and ranks by the "
          f"model's own log-probs: {', '.join(unused)} would be ignored. Drop "
          f"{' and '.join(u.split('=')[0] for u in unused)} to use beam search, or set "
          "num_beams=1 to sample.")

  @property
  def is_beam_search(self) -> bool:
    return self.num_beams > 1


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))
SAMPLING_ONLY_FIELDS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


def check_setting_names(names: Sequence[str], accepted: Sequence[str], where: str) -> None:
  """Raises TypeError for a keyword not in `accepted`, with the closest accepted name.

  Python's own "unexpected keyword argument" names neither the accepted settings nor the one
  meant (`max_new_token`), and a **kwargs pass-through would otherwise report it deep inside.
  """
  for name in names:
    if name not in accepted:
      close = difflib.get_close_matches(name, accepted, n=1)
      hint = f" (did you mean {close[0]}?)" if close else ""
      raise TypeError(f"{where} got an unknown setting {name!r}{hint}; it accepts "
                      f"{', '.join(accepted)}.")


def check_prompts(prompts: Any, name: str = "prompts") -> list[str]:
  """Text prompts as a non-empty list of str; a single str is one prompt.

  "" (and whitespace) is a valid prompt: for a decoder it starts a fresh document after BOS.

  Raises:
    TypeError: not a str or a sequence of str (e.g. token ids, bytes, None).
    ValueError: an empty sequence.
  """
  if isinstance(prompts, str):
    return [prompts]
  if isinstance(prompts, np.ndarray):
    prompts = prompts.tolist()
  if isinstance(prompts, bytes) or not isinstance(prompts, Sequence):
    raise TypeError(f"{name} must be a str or a list of str, got {_describe(prompts)}.")
  if not prompts:
    raise ValueError(f"{name} is empty: give at least one prompt ('' starts a fresh "
                     "document).")
  for i, prompt in enumerate(prompts):
    if not isinstance(prompt, str):
      hint = (" (token ids go to generate_ids)" if isinstance(prompt, numbers.Integral)
              or isinstance(prompt, Sequence) else "")
      raise TypeError(f"{name}[{i}] must be a str, got {_describe(prompt)}{hint}.")
  return list(prompts)
