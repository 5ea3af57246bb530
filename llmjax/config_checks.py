"""Type checks for the config dataclasses, read from their field annotations.

Every config class (`ModelConfig`, `DataConfig`, `TrainConfig`, `MeshConfig`) calls
`check_field_types(self)` first thing in `__post_init__`, so a notebook and a gin file get the
same checks before any value is compared or used. The rules, per annotation:

- `int`: a whole number; `True`/`False` are refused (they are ints to Python, never to a
  config); numpy integers are accepted and stored as `int`.
- `float`: an int or a float (numpy floats too, stored as `float`) that is finite: NaN and
  infinity are refused here, so no range check downstream has to remember them.
- `bool`: `True` or `False` only (not 0/1, not the string 'false').
- `str`: a string; a path-like object (`pathlib.Path`) is stored as its string.
- `Literal[...]`: one of the listed values.
- `tuple[X, ...]` / `tuple[X, Y]`: a tuple or a list (gin writes lists) of such items, stored
  as a tuple so the config stays hashable.
- `Mapping[K, V]` / `dict[K, V]`: a mapping whose keys and values have those types.
- `X | Y`, `Optional[X]`: any of the alternatives, tried in order.

Ranges (positive sizes, probabilities in [0, 1)) are each class's own business; this module
only guarantees the types those checks compare.

This module sits below every package (it imports nothing from llmjax) so data, sharding,
models and training can all use it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

_MISSING = object()


class ConfigTypeError(TypeError, ValueError):
  """A config field holding a value of the wrong type (or a non-finite float).

  A `TypeError` for Python callers, and a `ValueError` so the command line's config-error
  handling (which catches `ValueError`) reports it as one line like every other config error.

  Attributes:
    config: the class name, e.g. 'TrainConfig'.
    field: the field name, e.g. 'train_steps'.
    value: the offending value.
    expected: what the field accepts, in words ('an int', 'a finite number', ...).
    fix: what to pass instead, in words.
    example: a valid value for the field, for the message's "e.g." (None: no example).
  """

  def __init__(self, config: str, field: str, value: Any, expected: str, fix: str,
               example: Any = None):
    self.config, self.field, self.value = config, field, value
    self.expected, self.fix, self.example = expected, fix, example
    super().__init__(self.describe(f"{field}={example!r}" if example is not None else None))

  def describe(self, example: str | None, source: str | None = None) -> str:
    """The one-line message, with `example` (e.g. 'train_steps=2') as the suggested fix and
    `source` (e.g. 'set by the macro TRAIN_STEPS') saying where the value came from."""
    got = f"{self.value!r} ({type(self.value).__name__})"
    where = f" ({source})" if source else ""
    tail = f", e.g. {example}" if example is not None else ""
    return (f"{self.config}.{self.field}{where} must be {self.expected}, got {got}: "
            f"{self.fix}{tail}.")


def check_field_types(config: Any) -> None:
  """Checks every field of dataclass instance `config` against its annotation.

  Values in an accepted but non-canonical form are normalized in place (lists to tuples,
  numpy scalars to Python numbers, paths to strings); frozen dataclasses included.

  Raises:
    ConfigTypeError: the first field whose value does not fit its annotation; the message
      names the class and field, what it accepts, and a valid example.
  """
  cls = type(config)
  hints = _type_hints(cls)
  for field in dataclasses.fields(cls):
    value = getattr(config, field.name)
    annotation = hints[field.name]
    normalized = _conform(annotation, value)
    if normalized is _MISSING:
      raise _error(cls.__name__, field, annotation, value)
    if normalized is not value:
      object.__setattr__(config, field.name, normalized)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
  # The config modules use `from __future__ import annotations`: resolve the strings once.
  return typing.get_type_hints(cls)


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _conform(annotation: Any, value: Any) -> Any:
  """`value` (possibly normalized) if it fits `annotation`, else `_MISSING`."""
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if annotation is Any:
    return value
  if annotation is type(None):
    return value if value is None else _MISSING
  if origin in (typing.Union, types.UnionType):
    for option in args:
      fitted = _conform(option, value)
      if fitted is not _MISSING:
        return fitted
    return _MISSING
  if origin is typing.Literal:
    # `True == 1`: compare types too, so Literal[1] does not accept True.
    ok = any(value == choice and type(value) is type(choice) for choice in args)
    return value if ok else _MISSING
  if annotation is bool:
    return value if isinstance(value, bool) else _MISSING
  if annotation is int:
    if not _is_int(value):
      return _MISSING
    return value if type(value) is int else int(value)
  if annotation is float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      return _MISSING
    if not math.isfinite(value):
      return _MISSING
    return value if type(value) in (int, float) else float(value)
  if annotation is str:
    if isinstance(value, str):
      return value
    return os.fspath(value) if isinstance(value, os.PathLike) else _MISSING
  if origin is tuple:
    return _conform_tuple(args, value)
  if origin in (Mapping, dict):
    return _conform_mapping(args, value)
  if origin is None and isinstance(annotation, type):
    return value if isinstance(value, annotation) else _MISSING
  raise TypeError(f"config_checks cannot check the annotation {annotation!r}; add a rule.")


def _conform_tuple(args: tuple[Any, ...], value: Any) -> Any:
  if not isinstance(value, list | tuple):
    return _MISSING
  if len(args) == 2 and args[1] is Ellipsis:
    item_types = (args[0],) * len(value)
  elif args:
    if len(args) != len(value):
      return _MISSING
    item_types = args
  else:
    item_types = (Any,) * len(value)
  items = [_conform(t, item) for t, item in zip(item_types, value, strict=True)]
  if any(item is _MISSING for item in items):
    return _MISSING
  if isinstance(value, tuple) and all(a is b for a, b in zip(items, value, strict=True)):
    return value
  return tuple(items)


def _conform_mapping(args: tuple[Any, ...], value: Any) -> Any:
  if not isinstance(value, Mapping):
    return _MISSING
  key_type, value_type = args or (Any, Any)
  fitted = {}
  for key, item in value.items():
    new_key, new_item = _conform(key_type, key), _conform(value_type, item)
    if new_key is _MISSING or new_item is _MISSING:
      return _MISSING
    fitted[new_key] = new_item
  unchanged = all(k is fk and value[k] is fitted[fk] for k, fk in zip(value, fitted, strict=True))
  return value if unchanged else fitted


def describe_type(annotation: Any) -> str:
  """An annotation in words: int -> 'an int', `int | None` -> 'an int or None'."""
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if annotation is type(None):
    return "None"
  if origin in (typing.Union, types.UnionType):
    words = [describe_type(a) for a in args]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
  if origin is typing.Literal:
    return "one of " + ", ".join(repr(a) for a in args)
  if annotation is float:
    return "a finite number"
  if annotation is bool:
    return "True or False"
  if annotation is int:
    return "an int"
  if annotation is str:
    return "a string"
  if origin is tuple:
    if len(args) == 2 and args[1] is Ellipsis:
      return f"a tuple of {_plural(args[0])}"
    return f"a tuple of {len(args)} items" if args else "a tuple"
  if origin in (Mapping, dict):
    key, value = (_plural(a) for a in (args or (Any, Any)))
    return f"a mapping of {key} to {value}"
  if annotation is Any:
    return "any value"
  return f"a {getattr(annotation, '__name__', annotation)}"


def _plural(annotation: Any) -> str:
  """'an int' -> 'ints', 'a finite number' -> 'finite numbers' (for 'a tuple of ...')."""
  if annotation is Any:
    return "values"
  words = describe_type(annotation)
  for article in ("a ", "an "):
    if words.startswith(article) and " or " not in words:
      return words[len(article):] + "s"
  return f"values ({words})"


def _error(config: str, field: dataclasses.Field, annotation: Any,
           value: Any) -> ConfigTypeError:
  """The error for `value` in `field`, with a fix and an example fitted to the mistake."""
  options = [a for a in typing.get_args(annotation) if a is not type(None)] if typing.get_origin(
      annotation) in (typing.Union, types.UnionType) else [annotation]
  main = options[0] if len(options) == 1 else None
  example = _example(field, main, value)
  if main is int and isinstance(value, bool):
    fix = "pass a whole number, not True/False"
  elif main is int:
    fix = "pass a whole number"
  elif main is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
    fix = "pass a finite number (not NaN or infinity)"
  elif main is float:
    fix = "pass a number"
  elif main is bool:
    fix = "pass True or False"
  elif main is str:
    fix = "pass a quoted string"
  elif typing.get_origin(main) is typing.Literal:
    fix = "pick one of the listed values"
  else:
    fix = f"pass {describe_type(annotation)}"
  return ConfigTypeError(config, field.name, value, describe_type(annotation), fix, example)


def _example(field: dataclasses.Field, main: Any, value: Any) -> Any:
  """A valid value close to what was given: 2.5 -> 2 for an int, else the field's default."""
  default = field.default
  if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
    default = field.default_factory()
  if main is int and isinstance(value, float) and math.isfinite(value) and int(value):
    return int(value)
  if main is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
    return int(value)
  if main is float and isinstance(value, str):
    try:
      number = float(value)
    except ValueError:
      pass
    else:
      if math.isfinite(number):
        return number
  if main is bool and isinstance(value, str) and value.strip().lower() in ("true", "false"):
    return value.strip().lower() == "true"
  if typing.get_origin(main) is typing.Literal:
    return typing.get_args(main)[0]
  if default is not dataclasses.MISSING and default not in (None, (), {}, []):
    return default
  return {int: 1, float: 1.0, bool: True, str: "text"}.get(main)
