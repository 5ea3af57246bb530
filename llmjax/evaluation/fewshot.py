"""Few-shot prompts: which examples each item gets, and how the prompt is laid out.

Layout (lm-evaluation-harness's, with its default delimiters):

  TEMPLATE(shot 1) + target_delimiter + ANSWER(shot 1) + fewshot_delimiter
  ...
  TEMPLATE(shot k) + target_delimiter + ANSWER(shot k) + fewshot_delimiter
  TEMPLATE(item)

and the scored (multiple choice) or expected (generation) continuation is target_delimiter +
answer. TEMPLATE is a str.format template with one field ({question} for multiple choice,
{prompt} for generation; literal braces doubled); the defaults are
"Question: {question}\\nAnswer:" and "{prompt}", target_delimiter " ", fewshot_delimiter "\\n\\n"
(a blank line between examples). For multiple choice a shot's answer is its correct choice,
for generation its first target.

Which shots: item i draws k examples without replacement from the pool with
np.random.default_rng([seed, i]), so an item's prompt depends only on the seed and its index
(not on --limit or the batch order). The pool is the --fewshot_data file, or else the
evaluated file itself; either way the evaluated item is never among its own shots: its own
index is left out of a pool that is the evaluated file, and any pool example with the same
question (prompt) and choices is left out of both.
"""

from __future__ import annotations

import string
from collections.abc import Hashable, Sequence

import numpy as np

MULTIPLE_CHOICE_TEMPLATE = "Question: {question}\nAnswer:"
GENERATION_TEMPLATE = "{prompt}"
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


def check_template(template: str, field: str, flag: str = "--template") -> None:
  """Raises ValueError unless `template` formats with exactly the one field {field}."""
  try:
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
  except ValueError as e:  # Unmatched braces.
    raise ValueError(f"{flag}={template!r} is not a template with one field {{{field}}} ({e}); "
                     "write literal braces as {{ and }}.") from None
  if names != {field}:
    raise ValueError(f"{flag}={template!r} must use the field {{{field}}} and no other "
                     f"(found {sorted(names) or 'none'}); write literal braces as {{{{ and }}}}.")
  try:
    template.format(**{field: ""})
  except (ValueError, KeyError, IndexError, AttributeError) as e:  # {question.x}, {question:d}
    raise ValueError(f"{flag}={template!r}: write the field as plain {{{field}}} ({e}).") from None


def render(template: str, field: str, value: str) -> str:
  return template.format(**{field: value})


def shot_indices(index: int, num_shots: int, pool_size: int, seed: int,
                 excluded: Sequence[int] = ()) -> list[int]:
  """The pool indices of item `index`'s shots: num_shots of range(pool_size) minus `excluded`,
  drawn without replacement by np.random.default_rng([seed, index])."""
  if num_shots == 0:
    return []
  banned = set(excluded)
  candidates = np.asarray([j for j in range(pool_size) if j not in banned], np.int64)
  if len(candidates) < num_shots:
    raise ValueError(f"num_fewshot={num_shots} needs {num_shots} examples besides the item, but "
                     f"the few-shot pool has {len(candidates)}: lower --num_fewshot or give "
                     "a larger --fewshot_data file.")
  rng = np.random.default_rng([seed, index])
  return [int(j) for j in rng.choice(candidates, size=num_shots, replace=False)]


class ShotPool:
  """Examples for few-shot prompts, and the rule that keeps an item out of its own prompt.

  Args:
    examples: (key, text, answer) per pool example: `key` identifies its content (question and
      choices; prompt), `text` is its rendered TEMPLATE, `answer` its answer text.
    same_file: the pool is the evaluated file, so item i is pool example i.
  """

  def __init__(self, examples: Sequence[tuple[Hashable, str, str]], *, same_file: bool):
    self.examples = list(examples)
    self.same_file = same_file
    self._by_key: dict[Hashable, list[int]] = {}
    for j, (key, _, _) in enumerate(self.examples):
      self._by_key.setdefault(key, []).append(j)

  def excluded(self, index: int, key: Hashable) -> list[int]:
    """Pool indices item `index` (content `key`) must not see: itself and its duplicates."""
    out = list(self._by_key.get(key, ()))
    if self.same_file:
      out.append(index)
    return out

  def prefix(self, index: int, key: Hashable, num_shots: int, seed: int, *,
             target_delimiter: str = TARGET_DELIMITER,
             fewshot_delimiter: str = FEWSHOT_DELIMITER) -> str:
    """The text before item `index`'s TEMPLATE: its shots, each followed by the delimiter."""
    picked = shot_indices(index, num_shots, len(self.examples), seed,
                          self.excluded(index, key))
    return "".join(self.examples[j][1] + target_delimiter + self.examples[j][2] +
                   fewshot_delimiter for j in picked)
