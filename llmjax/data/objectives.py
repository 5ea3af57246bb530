"""Training objectives: turn one tokenized document into an (inputs, targets) example.

Shifting happens here, inside each document and before packing, so no target ever crosses a
document boundary no matter how documents are later packed or split into rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def causal_lm_example(ids: Sequence[int] | np.ndarray, *, bos_id: int,
                      eos_id: int) -> dict[str, np.ndarray]:
  """Causal LM: doc = [bos] + ids + [eos]; inputs = doc[:-1], targets = doc[1:].

  Returns:
    {"inputs": int32 [n + 1], "targets": int32 [n + 1]} for a document of n tokens; an empty
    document still teaches bos -> eos.
  """
  doc = np.empty(len(ids) + 2, np.int32)
  doc[0], doc[-1] = bos_id, eos_id
  doc[1:-1] = ids
  return {"inputs": doc[:-1], "targets": doc[1:]}
