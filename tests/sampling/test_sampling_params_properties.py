"""Property: SamplingParams accepts exactly the valid settings, whatever a user passes.

Each field gets arbitrary values (ints of any size, floats incl. NaN/inf, None, bools, strings,
NumPy scalars, lists) mixed with valid ones; the validator's verdict, its exception type and the
field it names are compared with an independent predicate written out below. Pure Python.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmjax.sampling.params import SamplingParams
from llmjax.sampling.strategies import make_strategy

FIELDS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "num_samples", "num_beams",
          "length_penalty")
DEFAULTS = dict(max_new_tokens=64, temperature=1.0, top_k=0, top_p=1.0, seed=0, num_samples=1,
                num_beams=1, length_penalty=1.0)


# --- The independent predicate. ---------------------------------------------------------------

def _integer(x) -> bool:
  return type(x) is int or isinstance(x, np.integer)


def _real(x):
  """x as a float if it is an int or float type (not bool) of finite value, else None."""
  if not (type(x) in (int, float) or isinstance(x, np.integer | np.floating)):
    return None
  try:
    value = float(x)
  except OverflowError:
    return None
  return value if math.isfinite(value) else None


def _kind(x) -> str:
  """'int', 'real' or 'other' for the type question alone (values come later)."""
  if _integer(x):
    return "int"
  if type(x) is float or isinstance(x, np.floating):
    return "real"
  return "other"


# field -> (wants an int?, check of the value)
RULES = {
    "max_new_tokens": (True, lambda v: v >= 1),
    "temperature": (False, lambda v: v >= 0),
    "top_k": (True, lambda v: v >= 0),
    "top_p": (False, lambda v: 0 < v <= 1),
    "seed": (True, lambda v: 0 <= v < 2**32),
    "num_samples": (True, lambda v: v >= 1),
    "num_beams": (True, lambda v: v >= 1),
    "length_penalty": (False, lambda v: True),
}


def field_error(name, x):
  """None if x is a valid value for the field, else the exception type it deserves."""
  wants_int, ok = RULES[name]
  kind = _kind(x)
  if kind == "other" or (wants_int and kind != "int"):
    return TypeError
  value = int(x) if wants_int else _real(x)
  if value is None or not ok(value):
    return ValueError
  return None


def combination_ok(p: dict) -> bool:
  if p["num_beams"] <= 1:
    return True
  return (p["num_samples"] <= p["num_beams"] and float(p["temperature"]) == 1.0
          and p["top_k"] == 0 and float(p["top_p"]) == 1.0)


# --- Values. ----------------------------------------------------------------------------------

ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
    st.sampled_from([0, 1, 2, 2**32 - 1, 2**32, -1, 10**400, 1e-7, 0.5, 1.0, 1.0000001, -0.0,
                     np.int64(3), np.int32(-1), np.float32(0.5), np.float64(np.nan),
                     np.bool_(True), "1", b"1", [1], (2.0,)]),
)
# Values on and just past each field's edges.
EDGES = dict(
    max_new_tokens=[0, 1, -1, 1.0], temperature=[0, -0.0, -1e-300, 1e-300, 1e308, -1],
    top_k=[0, -1, 1, 2.0], top_p=[0.0, 1e-300, 1, 1.0, 1.0000001, -0.5, 2],
    seed=[-1, 0, 2**32 - 1, 2**32, 2**63, np.uint32(2**32 - 1)], num_samples=[0, 1, -2],
    num_beams=[0, 1, 2, -1], length_penalty=[0, -1e308, 1e308, float("-inf")],
)
SMALL = st.integers(0, 4)
VALID = dict(
    max_new_tokens=st.integers(1, 512), temperature=st.one_of(
        st.sampled_from([0.0, 1.0, 0.7, 1]), st.floats(0, 100)),
    top_k=st.one_of(st.just(0), SMALL), top_p=st.one_of(
        st.just(1.0), st.floats(0, 1, exclude_min=True)),
    seed=st.one_of(st.integers(0, 2**32 - 1)), num_samples=st.integers(1, 5),
    num_beams=st.integers(1, 5), length_penalty=st.floats(-3, 3),
)


@st.composite
def settings_dicts(draw):
  """Mostly-valid settings with 0-2 fields replaced by anything."""
  values = {name: draw(VALID[name]) for name in FIELDS}
  for name in draw(st.sets(st.sampled_from(FIELDS), max_size=2)):
    values[name] = draw(st.one_of(ANYTHING, st.sampled_from(EDGES[name])))
  return values


@settings(max_examples=200, deadline=None)
@given(settings_dicts())
def test_validator_accepts_exactly_the_valid_settings(values):
  errors = [(name, field_error(name, values[name])) for name in FIELDS]
  first_bad = next(((name, error) for name, error in errors if error is not None), None)
  if first_bad is None and combination_ok(values):
    params = SamplingParams(**values)
    for name in FIELDS:  # Stored as plain Python numbers, equal to what was given.
      wants_int = RULES[name][0]
      assert type(getattr(params, name)) is (int if wants_int else float)
      assert getattr(params, name) == values[name]
    return
  if first_bad is None:  # Every field fine, the beam-search combination not.
    with pytest.raises(ValueError, match=r"num_beams"):
      SamplingParams(**values)
    return
  name, error = first_bad  # Fields are checked in declaration order: the first bad one speaks.
  with pytest.raises(error, match=rf"^{name} must be "):
    SamplingParams(**values)


@pytest.mark.parametrize("name, value", [(n, v) for n in FIELDS for v in EDGES[n]])
def test_validator_on_each_edge(name, value):
  """Every edge value, once, with the other fields at their defaults (random draws may miss
  one)."""
  error = field_error(name, value)
  if error is None and combination_ok({**DEFAULTS, name: value}):
    assert getattr(SamplingParams(**{name: value}), name) == value
  else:
    with pytest.raises(error or ValueError, match=rf"^{name} must be |num_beams"):
      SamplingParams(**{name: value})


@settings(max_examples=200, deadline=None)
@given(st.one_of(ANYTHING, VALID["temperature"]), st.one_of(ANYTHING, VALID["top_k"]),
       st.one_of(ANYTHING, VALID["top_p"]))
def test_make_strategy_accepts_exactly_the_valid_filters(temperature, top_k, top_p):
  errors = [(n, field_error(n, v)) for n, v in
            (("temperature", temperature), ("top_k", top_k), ("top_p", top_p))]
  first_bad = next(((n, e) for n, e in errors if e is not None), None)
  if first_bad is None:
    make_strategy(temperature, top_k, top_p)
  else:
    with pytest.raises(first_bad[1], match=rf"^{first_bad[0]} must be "):
      make_strategy(temperature, top_k, top_p)


def test_defaults_are_valid_and_documented():
  assert SamplingParams() == SamplingParams(**DEFAULTS)
