"""The sampling tests' shared helper: right-pad token-id prompts into one batch."""

import numpy as np


def pad_prompts(prompts: list[list[int]], length: int | None = None,
                pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """([b, length] int32 tokens right-padded with pad_id, [b] int32 prompt lengths).

  length defaults to the longest prompt's.
  """
  length = length or max(map(len, prompts))
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = p
  return tokens, np.array([len(p) for p in prompts], np.int32)
