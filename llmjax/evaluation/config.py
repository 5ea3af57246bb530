"""`EvalConfig`: one evaluation task (its kind, data and settings), validated on construction."""

from __future__ import annotations

import dataclasses
import os
import re

from llmjax import workdir as workdir_lib
from llmjax.evaluation import fewshot

KINDS = ("perplexity", "multiple_choice", "generation", "classification")
# Kinds whose items can carry few-shot examples and a prompt template.
PROMPTED_KINDS = ("multiple_choice", "generation")
DEFAULT_UNTIL = ("\n\n",)
DEFAULT_FEWSHOT_SEED = 1234  # lm-eval's default --fewshot_seed.


def _is_int(value: object) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
  """An evaluation task and how to run it.

  Attributes:
    kind: one of KINDS.
    data: the task's file(s): a path or glob (evaluation/task_data.py says what each kind
      reads).
    name: names the result file eval/<name>-step<N>.json (default_name(kind, data) if None).
    num_fewshot: examples in each prompt (multiple_choice, generation).
    limit: evaluate only the first `limit` items (documents, for perplexity); None = all.
    fewshot_seed: seeds each item's shot draw (fewshot.py).
    fewshot_data: a JSONL file of the kind's items to draw shots from; None = the evaluated
      file(s), leaving out the item itself.
    batch_size: requests per batch (None: the request API's default).
    template: the prompt template (None: fewshot.MULTIPLE_CHOICE_TEMPLATE /
      fewshot.GENERATION_TEMPLATE).
    target_delimiter: between a prompt and its answer (lm-eval's target_delimiter).
    fewshot_delimiter: after each few-shot example.
    until: generation: stop strings; the output is cut before the first one.
    max_gen_toks: generation: at most this many new tokens (None: lm-eval's 256, capped at
      half the model's max_seq_len; tasks.prepare fills it in).
    ignore_case / ignore_punctuation: generation: exact match compares lowercased /
      punctuation-free text (whitespace is always stripped and collapsed).
  """

  kind: str
  data: str
  name: str | None = None
  num_fewshot: int = 0
  limit: int | None = None
  fewshot_seed: int = DEFAULT_FEWSHOT_SEED
  fewshot_data: str | None = None
  batch_size: int | None = None
  template: str | None = None
  target_delimiter: str = fewshot.TARGET_DELIMITER
  fewshot_delimiter: str = fewshot.FEWSHOT_DELIMITER
  until: tuple[str, ...] = DEFAULT_UNTIL
  max_gen_toks: int | None = None
  ignore_case: bool = False
  ignore_punctuation: bool = False

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"--task={self.kind!r} is not a task kind; use one of {', '.join(KINDS)}.")
    if not isinstance(self.data, str) or not self.data:
      raise ValueError("--data is empty; give the task's file or a glob, e.g. "
                       "--data='eval_data/text/*.py'.")
    for flag, value, low in (("num_fewshot", self.num_fewshot, 0), ("limit", self.limit, 1),
                             ("batch_size", self.batch_size, 1),
                             ("max_gen_toks", self.max_gen_toks, 1),
                             ("fewshot_seed", self.fewshot_seed, 0)):
      if value is not None and (not _is_int(value) or value < low):
        raise ValueError(f"--{flag} must be an int >= {low}, got {value!r}.")
    prompted = self.kind in PROMPTED_KINDS
    for flag, set_ in (("num_fewshot", self.num_fewshot), ("fewshot_data", self.fewshot_data),
                       ("template", self.template is not None)):
      if set_ and not prompted:
        raise ValueError(f"--{flag} is for prompted tasks ({', '.join(PROMPTED_KINDS)}); "
                         f"--task={self.kind} has no prompt: drop it.")
    if self.template is not None:
      fewshot.check_template(self.template, self.prompt_field)
    if any(not isinstance(s, str) or not s for s in self.until):
      raise ValueError(f"--until={list(self.until)!r}: every stop string must be non-empty text.")
    if self.name is not None and not re.fullmatch(workdir_lib.EVAL_NAME_PATTERN, self.name):
      raise ValueError(f"--name={self.name!r}: use letters, digits, '_', '.' and '-' (it names "
                       "the result file eval/<name>-step<N>.json).")

  @property
  def prompt_field(self) -> str:
    return "question" if self.kind == "multiple_choice" else "prompt"

  @property
  def prompt_template(self) -> str:
    if self.template is not None:
      return self.template
    return (fewshot.MULTIPLE_CHOICE_TEMPLATE if self.kind == "multiple_choice"
            else fewshot.GENERATION_TEMPLATE)

  @property
  def task_name(self) -> str:
    return self.name or default_name(self.kind, self.data)

  def settings(self) -> dict:
    """What the result file records under "config": the settings that change the numbers."""
    out = {"num_fewshot": self.num_fewshot, "limit": self.limit, "batch_size": self.batch_size}
    if self.kind in PROMPTED_KINDS:
      out.update(fewshot_seed=self.fewshot_seed, fewshot_data=self.fewshot_data,
                 template=self.prompt_template, target_delimiter=self.target_delimiter,
                 fewshot_delimiter=self.fewshot_delimiter)
    if self.kind == "generation":
      out.update(until=list(self.until), max_gen_toks=self.max_gen_toks,
                 ignore_case=self.ignore_case, ignore_punctuation=self.ignore_punctuation)
    return out


def default_name(kind: str, data: str) -> str:
  """<kind>_<stem of the data file> (e.g. multiple_choice_next_line); a glob's stem is its
  directory's name (perplexity_text for text/*.py)."""
  stem = os.path.basename(data.rstrip("/")).split(".")[0]
  if not stem or any(c in stem for c in "*?["):
    stem = os.path.basename(os.path.dirname(data.rstrip("/")).replace("**", "").rstrip("/"))
  stem = re.sub(r"[^A-Za-z0-9_\-]", "", stem)
  return f"{kind}_{stem}" if stem else kind
