"""The built-in task kinds: read and check a task before the model loads, then score it.

`prepare(config, model_config, ...)` reads the files, checks every item and the model's family,
and builds every request (prompts, few-shot prefixes, continuations): all of it before a
checkpoint is read or anything compiles. `run(task, model)` sends the requests through the
LoadedModel request API (llmjax/sampling/scoring.py) and turns the answers into metrics:

- perplexity: loglikelihood_rolling of each document -> loss (mean NLL per token, nats),
  perplexity, bits_per_byte (total NLL in bits / total UTF-8 bytes), byte_perplexity,
  word_perplexity; num_tokens counts every token of every document (the first is predicted
  from BOS), as the harness does.
- multiple_choice: loglikelihood of target_delimiter + choice after the prompt, for every
  choice -> acc, acc_norm, acc_bytes (metrics.choice_metrics).
- generation: generate_until (greedy) with the stop strings and max_gen_toks -> exact_match
  after normalization (metrics.normalize_answer).
- classification: the classifier head's argmax (classification.py) -> accuracy, macro_f1, and
  a confusion matrix.
Standard errors: see metrics.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from llmjax.evaluation import classification, metrics, task_data
from llmjax.evaluation.config import EvalConfig
from llmjax.evaluation.fewshot import ShotPool
from llmjax.models.config import ModelConfig
from llmjax.sampling import scoring

# generation: the result file shows the first few predictions next to their targets.
NUM_EXAMPLES = 3


@dataclasses.dataclass
class PreparedTask:
  """A task with its items read and checked and its requests built (no model needed).

  Attributes:
    config: the EvalConfig.
    data_paths: the files the items came from.
    items: the kind's items (task_data.Document / ChoiceItem / GenerationItem / example dict),
      after --limit.
    requests: multiple_choice: [(context, continuation)] for every item's choices, in order;
      generation: [(context, {"until", "max_gen_toks"})]; perplexity: the document texts;
      classification: None.
    seq_len: classification: the row length.
  """

  config: EvalConfig
  data_paths: list[str]
  items: list[Any]
  requests: list[Any] | None = None
  seq_len: int | None = None


def check_model(kind: str, model: ModelConfig) -> None:
  """Raises ValueError when the model's family cannot run a task of this kind."""
  if kind == "classification":
    if not model.is_classifier:
      raise ValueError(f"--task=classification needs a classifier (an encoder with "
                       f"ModelConfig.num_classes); this workdir holds a {model.architecture!r} "
                       "language model: evaluate it with --task=perplexity, multiple_choice or "
                       "generation.")
    return
  if model.architecture == "encoder":
    what = ("a classifier (encoder with num_classes)" if model.is_classifier
            else "an encoder-only (MLM) model")
    fix = ("use --task=classification" if model.is_classifier else
           "evaluate a decoder or encoder_decoder workdir (an MLM gives no left-to-right "
           "log-likelihood), or fine-tune a classifier and use --task=classification")
    raise ValueError(f"--task={kind} scores text left to right; this workdir holds {what}: "
                     f"{fix}.")


def _limited(items: list[Any], limit: int | None) -> list[Any]:
  return items if limit is None else items[:limit]


def _shot_pool(config: EvalConfig, items: list[Any], key, text, answer) -> ShotPool | None:
  if config.num_fewshot == 0:
    return None
  pool = items
  if config.fewshot_data is not None:
    read = (task_data.read_choice_items if config.kind == "multiple_choice"
            else task_data.read_generation_items)
    pool = read(config.fewshot_data, flag="--fewshot_data")
  return ShotPool([(key(p), text(p), answer(p)) for p in pool],
                  same_file=config.fewshot_data is None)


def _prompted_requests(config: EvalConfig, all_items: list[Any]) -> list[tuple[str, Any]]:
  """(context, answers) per item after --limit: the few-shot prefix + the item's prompt."""
  field, template = config.prompt_field, config.prompt_template
  if config.kind == "multiple_choice":
    def key(item):
      return (item.question, item.choices)

    def answer(item):
      return item.choices[item.answer]
  else:
    def key(item):
      return item.prompt

    def answer(item):
      return item.targets[0]

  def text(item):
    return template.format(**{field: getattr(item, field)})

  pool = _shot_pool(config, all_items, key, text, answer)
  out = []
  for index, item in enumerate(_limited(all_items, config.limit)):
    prefix = "" if pool is None else pool.prefix(
        index, key(item), config.num_fewshot, config.fewshot_seed,
        target_delimiter=config.target_delimiter, fewshot_delimiter=config.fewshot_delimiter)
    out.append((prefix + text(item), item))
  return out


def prepare(config: EvalConfig, model: ModelConfig, *, seq_len: int | None = None,
            data_section: Mapping[str, Any] | None = None) -> PreparedTask:
  """Reads and checks the task's files and builds its requests (see the module docstring).

  Args:
    config: the task.
    model: the workdir's ModelConfig (checked against the kind; classification: num_classes).
    seq_len: classification: row length (the run's TrainConfig.seq_len; None = max_seq_len).
    data_section: classification: the run's run_config "data" section (example field names).

  Raises:
    ValueError: the model cannot run this kind, a file is missing or malformed (file:line),
      or the few-shot pool is too small.
  """
  check_model(config.kind, model)
  paths = task_data.resolve_paths(config.data)
  if config.kind == "perplexity":
    docs = _limited(task_data.read_documents(config.data), config.limit)
    return PreparedTask(config, paths, docs, [d.text for d in docs])
  if config.kind == "classification":
    fields = classification.example_fields(data_section)
    examples = task_data.read_classification_items(config.data, num_classes=model.num_classes,
                                                   **fields)
    return PreparedTask(config, paths, _limited(examples, config.limit),
                        seq_len=seq_len or model.max_seq_len)
  if config.kind == "multiple_choice":
    prompted = _prompted_requests(config, task_data.read_choice_items(config.data))
    requests = [(ctx, config.target_delimiter + choice)
                for ctx, item in prompted for choice in item.choices]
  else:
    config = dataclasses.replace(config, max_gen_toks=_max_gen_toks(config, model))
    prompted = _prompted_requests(config, task_data.read_generation_items(config.data))
    settings = {"until": list(config.until), "max_gen_toks": config.max_gen_toks}
    requests = [(ctx, dict(settings)) for ctx, _ in prompted]
  return PreparedTask(config, paths, [item for _, item in prompted], requests)


def _max_gen_toks(config: EvalConfig, model: ModelConfig) -> int:
  """--max_gen_toks, checked against the context; unset: the request API's default."""
  limit = model.max_seq_len - 1  # At least one prompt token (BOS) stays.
  if config.max_gen_toks is None:
    return max(min(scoring.DEFAULT_MAX_GEN_TOKS, model.max_seq_len // 2), 1)
  if config.max_gen_toks > limit:
    raise ValueError(f"--max_gen_toks={config.max_gen_toks} leaves no room for the prompt in the "
                     f"model's max_seq_len={model.max_seq_len}: set it to at most {limit}.")
  return config.max_gen_toks


def _num_tokens(model: Any, text: str) -> int:
  counter = getattr(model, "num_tokens", None)
  return int(counter(text)) if counter is not None else len(model.tokenizer.encode(text))


def run(task: PreparedTask, model: Any) -> tuple[dict[str, float | None], dict[str, Any]]:
  """Scores a prepared task with a LoadedModel (or any object with its request API).

  Returns:
    (metrics {name: value, name_stderr: value}, extra result fields: "num_tokens" and
    "num_bytes" for perplexity, the first NUM_EXAMPLES "examples" for generation,
    "confusion_matrix" (rows: true label, columns: predicted) for classification).
  """
  config, bs = task.config, task.config.batch_size
  if config.kind == "perplexity":
    texts = task.requests
    logprobs = model.loglikelihood_rolling(texts, batch_size=bs)
    tokens = [_num_tokens(model, t) for t in texts]
    out = metrics.perplexity_metrics(logprobs, tokens, [len(t.encode("utf-8")) for t in texts],
                                     [metrics.count_words(t) for t in texts])
    return out, {"num_tokens": int(sum(tokens)),
                 "num_bytes": int(sum(len(t.encode("utf-8")) for t in texts))}
  if config.kind == "multiple_choice":
    answers = model.loglikelihood(task.requests, batch_size=bs)
    lls, start = [], 0
    for item in task.items:
      lls.append([float(ll) for ll, _ in answers[start:start + len(item.choices)]])
      start += len(item.choices)
    out, _ = metrics.choice_metrics(lls, [item.answer for item in task.items],
                                    [item.choices for item in task.items])
    return out, {}
  if config.kind == "generation":
    outputs = model.generate_until(task.requests, batch_size=bs)
    scores = [metrics.exact_match(o, item.targets, ignore_case=config.ignore_case,
                                  ignore_punctuation=config.ignore_punctuation)
              for o, item in zip(outputs, task.items, strict=True)]
    shown = zip(task.requests[:NUM_EXAMPLES], outputs, task.items, strict=False)
    examples = [{"prompt": ctx, "prediction": o, "targets": list(item.targets)}
                for (ctx, _), o, item in shown]
    return metrics.mean_with_stderr("exact_match", scores), {"examples": examples}
  labels = np.asarray([e["label"] for e in task.items], np.int64)
  preds = classification.predict(model, task.items, seq_len=task.seq_len, batch_size=bs)
  num_classes = model.config.num_classes
  return (metrics.classification_metrics(labels, preds, num_classes),
          {"confusion_matrix": metrics.confusion_matrix(labels, preds, num_classes).tolist()})
