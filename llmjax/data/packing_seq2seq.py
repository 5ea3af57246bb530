"""Encoder-decoder packing: (encoder_inputs, targets) examples -> fixed [te] / [td] rows.

Unlike causal packing, an example is never split across rows: its encoder and decoder halves
must stay together, so examples are placed whole, first fit in stream order, and a row is
closed as soon as the next example does not fit on BOTH sides (the rest of the row is padding,
segment 0). Example k of a row is segment k + 1 on both sides, so the model lets decoder
segment k attend only to encoder segment k; positions restart at 0 in every segment on both
sides. The decoder input is the target shifted right inside its example, starting with BOS.

An example longer than an empty row (only possible for seq2seq files; span corruption chunks
are cut to fit) is truncated to te / td tokens: the truncated target then ends without EOS.
The pipeline counts such examples up front and warns once, or refuses them
(pipeline.check_truncation, DataConfig.truncate_long_examples).

Parent elements are one example (a dict) or a list of examples (span corruption turns one
document into several chunks). The iterator's state is the parent's state just before the
element holding the next unplaced example, plus that example's index in it: small,
JSON-serializable and exact.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

ENCODER_FEATURES = ("encoder_inputs", "encoder_segment_ids", "encoder_positions")
DECODER_FEATURES = ("inputs", "targets", "segment_ids", "positions", "weights")
FEATURES = ENCODER_FEATURES + DECODER_FEATURES


def empty_rows(num_rows: int, encoder_len: int, decoder_len: int) -> dict[str, np.ndarray]:
  """All-padding encoder-decoder rows (everything 0, weights 0.0)."""
  rows = {k: np.zeros((num_rows, encoder_len), np.int32) for k in ENCODER_FEATURES}
  rows.update({k: np.zeros((num_rows, decoder_len), np.int32) for k in DECODER_FEATURES})
  rows["weights"] = np.zeros((num_rows, decoder_len), np.float32)
  return rows


class Seq2SeqPackIterDataset(grain.IterDataset):
  """Packs {"encoder_inputs", "targets"} examples into [encoder_len] / [decoder_len] rows.

  bos_id starts each decoder input: the tokenizer's bos_id, which is the decoder start id (1 for
  llmjax's own tokenizers, 0 for T5's); required, since no default fits both.
  """

  def __init__(self, parent: grain.IterDataset, encoder_len: int, decoder_len: int, *,
               bos_id: int):
    super().__init__(parent)
    if encoder_len < 1 or decoder_len < 1:
      raise ValueError(f"encoder_len={encoder_len} and decoder_len={decoder_len} must be >= 1.")
    self._lens = (encoder_len, decoder_len)
    self._bos_id = bos_id

  def __iter__(self) -> grain.DatasetIterator:
    return _Seq2SeqPackIterator(self._parent.__iter__(), *self._lens, bos_id=self._bos_id)

  def __str__(self) -> str:
    return f"Seq2SeqPackIterDataset(encoder_len={self._lens[0]}, decoder_len={self._lens[1]})"


class _Seq2SeqPackIterator(grain.DatasetIterator):
  """Fills one row pair per __next__; see the module docstring."""

  def __init__(self, parent: grain.DatasetIterator, encoder_len: int, decoder_len: int, *,
               bos_id: int):
    super().__init__(parent)
    self._te, self._td, self._bos_id = encoder_len, decoder_len, bos_id
    self._element: list[dict[str, np.ndarray]] | None = None  # Examples of the parent element.
    self._element_state = parent.get_state()  # Parent state just before it was read.
    self._index = 0  # Its next unplaced example.

  def _read_element(self) -> bool:
    """Reads the next parent element with at least one example; False at the end."""
    while True:
      state = self._parent.get_state()
      try:
        element = next(self._parent)
      except StopIteration:  # Keep the end state so a restored iterator stays at the end.
        self._element, self._element_state, self._index = None, state, 0
        return False
      examples = element if isinstance(element, list) else [element]
      if examples:
        self._element, self._element_state, self._index = examples, state, 0
        return True

  def _peek(self) -> dict[str, np.ndarray] | None:
    if self._element is None or self._index >= len(self._element):
      if not self._read_element():
        return None
    return self._element[self._index]

  def __next__(self) -> dict[str, np.ndarray]:
    te, td = self._te, self._td
    row = {k: v[0] for k, v in empty_rows(1, te, td).items()}
    enc_filled = dec_filled = segment = 0
    while (example := self._peek()) is not None:
      enc, tgt = example["encoder_inputs"], example["targets"]
      if len(enc) > te - enc_filled or len(tgt) > td - dec_filled:
        if segment:
          break  # Close this row; the example starts the next one.
        enc, tgt = enc[:te], tgt[:td]  # Too long even for an empty row.
      segment += 1
      e, d = slice(enc_filled, enc_filled + len(enc)), slice(dec_filled, dec_filled + len(tgt))
      row["encoder_inputs"][e] = enc
      row["encoder_segment_ids"][e] = segment
      row["encoder_positions"][e] = np.arange(len(enc), dtype=np.int32)
      row["targets"][d] = tgt
      if len(tgt):
        row["inputs"][d] = np.concatenate([[self._bos_id], tgt[:-1]])
      row["segment_ids"][d] = segment
      row["positions"][d] = np.arange(len(tgt), dtype=np.int32)
      row["weights"][d] = 1.0
      enc_filled += len(enc)
      dec_filled += len(tgt)
      self._index += 1
    if not segment:
      raise StopIteration
    return row

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._element_state,
            "index": self._index if self._element is not None else -1}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._element_state, self._element, self._index = state["parent"], None, 0
    if state["index"] >= 0:  # Re-read the element whose examples were being placed.
      if not self._read_element():
        raise ValueError("cannot restore the seq2seq packing iterator: its example is gone (was "
                         "the data changed since the state was saved?).")
      self._index = state["index"]
