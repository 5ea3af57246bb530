"""Helpers the data tests share: read n batches from an iterator, compare two lists of batches."""

import numpy as np


def take(it, n: int) -> list[dict]:
  """The next `n` batches of `it`."""
  return [next(it) for _ in range(n)]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
  """Equal lists of batches: the same keys, and every array equal exactly."""
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
