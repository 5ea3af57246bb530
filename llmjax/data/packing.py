"""Packing: variable-length (inputs, targets) examples -> fixed [t] rows, as a Grain transform.

Documents are laid end to end (concat-then-split): each row is filled to exactly t tokens
from the stream, so there is no padding except at the very end of a finite stream. A document
that does not fit in the rest of a row is split: the rest of it continues at the start of the
next row (and a document longer than t spans several rows). Each piece of a document in a row
is its own segment (segment_ids 1, 2, ... per row; 0 = padding) and its positions restart at 0.
Restarting per piece (rather than continuing the document's positions) keeps every position
< t, so models with learned position tables sized to the training length work; the price is
that a continued piece is modelled without its earlier context, as in any concat-then-split
packer. Because inputs/targets are shifted inside the document before packing
(objectives.py), no target crosses a document boundary. An example may carry per-token
"weights" (MLM: 1 only on the masked positions); without them every real token weighs 1.

The iterator's state is the parent's state just before the document being packed was read,
plus the offset into it: small, JSON-serializable and exact (restoring re-reads and
re-tokenizes one document).
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

FEATURES = ("inputs", "targets", "segment_ids", "positions", "weights")


def empty_rows(num_rows: int, seq_len: int) -> dict[str, np.ndarray]:
  """All-padding rows in the batch format (everything 0, weights 0.0)."""
  rows = {k: np.zeros((num_rows, seq_len), np.int32) for k in FEATURES[:-1]}
  rows["weights"] = np.zeros((num_rows, seq_len), np.float32)
  return rows


class PackIterDataset(grain.IterDataset):
  """Packs a stream of {"inputs", "targets"[, "weights"]} arrays into rows of seq_len tokens."""

  def __init__(self, parent: grain.IterDataset, seq_len: int):
    super().__init__(parent)
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
    self._seq_len = seq_len

  def __iter__(self) -> grain.DatasetIterator:
    return _PackIterator(self._parent.__iter__(), self._seq_len)

  def __str__(self) -> str:
    return f"PackIterDataset(seq_len={self._seq_len})"


class _PackIterator(grain.DatasetIterator):
  """Fills one row per __next__; see the module docstring for the layout and the state."""

  def __init__(self, parent: grain.DatasetIterator, seq_len: int):
    super().__init__(parent)
    self._seq_len = seq_len
    self._doc: dict[str, np.ndarray] | None = None  # The document being packed.
    self._doc_state = parent.get_state()  # Parent state just before _doc was read.
    self._offset = 0  # Tokens of _doc already emitted.
    self._exhausted = False

  def _next_doc(self) -> bool:
    """Reads the next non-empty document into _doc; False at the end of the stream."""
    while True:
      state = self._parent.get_state()
      try:
        doc = next(self._parent)
      except StopIteration:  # Keep the end state so a restored iterator stays at the end.
        self._exhausted, self._doc, self._doc_state, self._offset = True, None, state, 0
        return False
      if len(doc["inputs"]):
        self._doc, self._doc_state, self._offset = doc, state, 0
        return True

  def __next__(self) -> dict[str, np.ndarray]:
    t = self._seq_len
    row = {k: v[0] for k, v in empty_rows(1, t).items()}
    filled, segment = 0, 0
    while filled < t:
      if self._doc is None or self._offset >= len(self._doc["inputs"]):
        if self._exhausted or not self._next_doc():
          break
      n = min(t - filled, len(self._doc["inputs"]) - self._offset)
      piece = slice(self._offset, self._offset + n)
      segment += 1
      row["inputs"][filled:filled + n] = self._doc["inputs"][piece]
      row["targets"][filled:filled + n] = self._doc["targets"][piece]
      row["segment_ids"][filled:filled + n] = segment
      row["positions"][filled:filled + n] = np.arange(n, dtype=np.int32)
      weights = self._doc.get("weights")
      row["weights"][filled:filled + n] = 1.0 if weights is None else weights[piece]
      filled += n
      self._offset += n
    if filled == 0:
      raise StopIteration
    return row

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._doc_state,
            "offset": self._offset if self._doc is not None else -1}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._doc_state, self._doc, self._offset = state["parent"], None, 0
    self._exhausted = False
    if state["offset"] >= 0:  # Re-read the document that was being packed.
      if not self._next_doc():
        raise ValueError("cannot restore the packing iterator: its document is gone (was the "
                         "data changed since the state was saved?).")
      self._offset = state["offset"]
