"""The field type checker every config class runs in `__post_init__` (llmjax/config_checks.py)."""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Mapping
from typing import Literal, Optional

import numpy as np
import pytest

from llmjax import DataConfig, MeshConfig, ModelConfig, TrainConfig
from llmjax.config_checks import ConfigTypeError, check_field_types, describe_type


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toy:
  steps: int = 10
  rate: float = 0.5
  flag: bool = False
  name: str = "x"
  mode: Literal["a", "b"] = "a"
  maybe: Optional[int] = None  # noqa: UP045 (the Optional spelling must work too)
  either: int | None = None
  files: str | tuple[str, ...] | None = None
  pair: tuple[int, int] = (1, 2)
  sizes: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"data": 1})

  def __post_init__(self):
    check_field_types(self)


def test_defaults_and_good_values_pass_unchanged():
  toy = Toy(steps=3, rate=2, flag=True, name="y", mode="b", maybe=4, either=None,
            files="a/*.txt", pair=(3, 4), sizes={"data": -1, "fsdp": 2})
  assert (toy.steps, toy.rate, toy.maybe, toy.files, toy.pair) == (3, 2, 4, "a/*.txt", (3, 4))
  assert type(toy.rate) is int  # A float field accepts an int as given.


@pytest.mark.parametrize("field, value", [
    ("steps", 2.5), ("steps", 2.0), ("steps", "4"), ("steps", None), ("steps", True),
    ("steps", False), ("steps", np.bool_(True)),
    ("rate", "0.1"), ("rate", True), ("rate", None), ("rate", float("nan")),
    ("rate", float("inf")), ("rate", -math.inf), ("rate", np.float32("nan")),
    ("flag", 1), ("flag", 0), ("flag", "false"), ("flag", None),
    ("name", 3), ("name", None), ("name", b"x"),
    ("mode", "c"), ("mode", None),
    ("maybe", 1.5), ("maybe", "1"), ("maybe", True),
    ("either", 2.5),
    ("files", 3), ("files", ["a", 1]), ("files", {"a": 1}),
    ("pair", (1,)), ("pair", (1, 2, 3)), ("pair", (1, 2.5)), ("pair", "12"),
    ("sizes", {"data": 2.5}), ("sizes", {"data": True}), ("sizes", {1: 2}), ("sizes", [1, 2]),
])
def test_wrong_types_are_refused_naming_the_field(field, value):
  with pytest.raises(ConfigTypeError, match=rf"^Toy\.{field} must be ") as info:
    Toy(**{field: value})
  assert info.value.field == field and info.value.value is value
  # One exception class serves notebooks (TypeError) and the CLI's config handling (ValueError).
  assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_bools_are_not_ints_and_literal_keeps_types_apart():
  @dataclasses.dataclass(frozen=True)
  class One:
    choice: Literal[1, 2] = 1

    def __post_init__(self):
      check_field_types(self)

  assert One(choice=2).choice == 2
  with pytest.raises(ConfigTypeError):
    One(choice=True)  # True == 1, but it is not the int 1.
  with pytest.raises(ConfigTypeError, match=r"got True \(bool\): pass a whole number, not"):
    Toy(steps=True)


def test_accepted_forms_are_normalized():
  toy = Toy(steps=np.int64(7), rate=np.float32(0.25), files=["a", pathlib.Path("b")],
            pair=[5, np.int32(6)], name=pathlib.Path("dir") / "f", maybe=np.int16(2),
            sizes={"data": np.int64(4)})
  assert toy.steps == 7 and type(toy.steps) is int
  assert toy.rate == 0.25 and type(toy.rate) is float
  assert toy.files == ("a", "b") and toy.pair == (5, 6) and type(toy.pair[1]) is int
  assert toy.name == str(pathlib.Path("dir") / "f") and type(toy.maybe) is int
  assert toy.sizes == {"data": 4} and type(toy.sizes["data"]) is int
  hash(Toy(files=["a"]).files)  # Lists become tuples: the config stays hashable.


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 2.5}, r"Toy\.steps must be an int, got 2\.5 \(float\): pass a whole number, "
                     r"e\.g\. steps=2\."),
    ({"steps": "abc"}, r"got 'abc' \(str\): pass a whole number, e\.g\. steps=10\."),
    ({"steps": "12"}, r"e\.g\. steps=12\."),
    ({"rate": float("nan")}, r"must be a finite number, got nan \(float\): pass a finite number "
                             r"\(not NaN or infinity\), e\.g\. rate=0\.5\."),
    ({"rate": "1e-3"}, r"pass a number, e\.g\. rate=0\.001\."),
    ({"flag": "false"}, r"must be True or False, got 'false' \(str\).*e\.g\. flag=False\."),
    ({"mode": "c"}, r"must be one of 'a', 'b', got 'c'.*e\.g\. mode='a'\."),
    ({"maybe": 1.5}, r"must be an int or None, got 1\.5"),
    ({"files": 3}, r"must be a string, a tuple of strings or None, got 3 \(int\)"),
    ({"sizes": {"data": 2.5}}, r"must be a mapping of strings to ints, got \{'data': 2\.5\}.*"
                               r"e\.g\. sizes=\{'data': 1\}"),
])
def test_message_says_what_the_field_takes_and_gives_an_example(kwargs, message):
  with pytest.raises(ConfigTypeError, match=message):
    Toy(**kwargs)


def test_describe_type():
  assert describe_type(int) == "an int"
  assert describe_type(float | None) == "a finite number or None"
  assert describe_type(tuple[int, ...]) == "a tuple of ints"
  assert describe_type(Mapping[str, int]) == "a mapping of strings to ints"
  assert describe_type(Literal["x", "y"]) == "one of 'x', 'y'"


@pytest.mark.parametrize("cls, kwargs, field", [
    (TrainConfig, {"train_steps": 2.5}, "train_steps"),
    (TrainConfig, {"batch_size": True}, "batch_size"),
    (TrainConfig, {"learning_rate": "3e-4"}, "learning_rate"),
    (TrainConfig, {"async_checkpointing": "no"}, "async_checkpointing"),
    (TrainConfig, {"init_from": 3}, "init_from"),
    (ModelConfig, {"num_layers": "four"}, "num_layers"),
    (ModelConfig, {"rope_theta": float("inf")}, "rope_theta"),
    (ModelConfig, {"num_kv_heads": 1.0}, "num_kv_heads"),
    (DataConfig, {"text_files": ["a", 3]}, "text_files"),
    (DataConfig, {"shuffle": 1}, "shuffle"),
    (DataConfig, {"eval_fraction": float("nan")}, "eval_fraction"),
    (MeshConfig, {"shape": {"data": 2.5}}, "shape"),
    (MeshConfig, {"rules": None}, "rules"),
])
def test_every_config_class_checks_its_field_types(cls, kwargs, field):
  base = {"vocab_size": 64, "num_layers": 1, "num_heads": 2, "embed_dim": 16, "mlp_dim": 32,
          "max_seq_len": 32} if cls is ModelConfig else {}
  with pytest.raises(ConfigTypeError, match=rf"^{cls.__name__}\.{field} must be "):
    cls(**(base | kwargs))


def test_config_classes_normalize_what_they_accept(tmp_path):
  assert DataConfig(text_files=[tmp_path / "a.txt"], cache_dir=tmp_path).text_files == (
      str(tmp_path / "a.txt"),)
  assert MeshConfig(shape={"data": np.int64(2), "fsdp": 4}).shape == {
      "data": 2, "fsdp": 4, "tensor": 1}
  assert TrainConfig(learning_rate=1).learning_rate == 1  # An int is a fine float.


@pytest.mark.parametrize("cls, kwargs, message", [
    (ModelConfig, {"head_dim": 0}, "head_dim must be positive"),
    (ModelConfig, {"rope_theta": -1.0}, "rope_theta must be positive"),
    (ModelConfig, {"norm_eps": -1e-6}, "norm_eps must be >= 0"),
    (TrainConfig, {"init_from_step": -1}, "init_from_step=-1 must be a checkpoint step"),
])
def test_ranges_where_a_range_makes_sense(cls, kwargs, message):
  base = {"vocab_size": 64, "num_layers": 1, "num_heads": 2, "embed_dim": 16, "mlp_dim": 32,
          "max_seq_len": 32} if cls is ModelConfig else {}
  with pytest.raises(ValueError, match=message):
    cls(**(base | kwargs))


def test_an_unknown_annotation_is_a_bug_not_a_pass():
  @dataclasses.dataclass
  class Odd:
    x: set[int] = dataclasses.field(default_factory=set)

  with pytest.raises(TypeError, match="cannot check the annotation"):
    check_field_types(Odd())
