"""Evaluation metrics and their standard errors, as plain NumPy over per-item values.

Standard errors follow lm-evaluation-harness:
- a mean of per-item scores (acc, acc_norm, exact_match, accuracy): the sample standard error
  of the mean, std(x, ddof=1) / sqrt(n) (lm-eval's `mean_stderr`);
- a statistic that is not a mean of per-item scores (macro-F1; corpus-level loss, perplexity
  and bits per byte, which weight documents by their token / byte counts): the standard
  deviation of the statistic over `BOOTSTRAP_ITERS` resamples of the items with replacement
  (seeded, so a result file is reproducible), as lm-eval's `bootstrap_stderr` does for F1.
  (lm-eval reports no standard error for perplexities.)
Either is None (JSON null) with fewer than two items.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Sequence

import numpy as np

BOOTSTRAP_ITERS = 1000
BOOTSTRAP_SEED = 1234
LN2 = math.log(2.0)


def mean_stderr(values: Sequence[float]) -> float | None:
  """Sample standard error of the mean: std(ddof=1) / sqrt(n); None for n < 2."""
  x = np.asarray(values, np.float64)
  if x.size < 2:
    return None
  return float(np.std(x, ddof=1) / math.sqrt(x.size))


def bootstrap_stderr(statistic: Callable[[np.ndarray], float], num_items: int,
                     iters: int = BOOTSTRAP_ITERS, seed: int = BOOTSTRAP_SEED) -> float | None:
  """Standard deviation of statistic(indices) over `iters` resamples of range(num_items) with
  replacement; None for fewer than two items."""
  if num_items < 2:
    return None
  rng = np.random.default_rng(seed)
  draws = [statistic(rng.integers(0, num_items, num_items)) for _ in range(iters)]
  return float(np.std(np.asarray(draws, np.float64), ddof=1))


def mean_with_stderr(name: str, values: Sequence[float]) -> dict[str, float | None]:
  """{name: mean, name_stderr: mean_stderr}."""
  return {name: float(np.mean(values)), f"{name}_stderr": mean_stderr(values)}


# Perplexity.
def perplexity_metrics(logprobs: Sequence[float], num_tokens: Sequence[int],
                       num_bytes: Sequence[int], num_words: Sequence[int]
                       ) -> dict[str, float | None]:
  """Corpus-level metrics of per-document total log-likelihoods (natural log).

  loss = -sum(logprob) / sum(tokens) (mean NLL per token, nats), perplexity = exp(loss),
  bits_per_byte = -sum(logprob) / ln 2 / sum(UTF-8 bytes), byte_perplexity = 2**bits_per_byte,
  word_perplexity = exp(-sum(logprob) / sum(words)) (words: whitespace-separated, as lm-eval
  counts them). Each with a document-bootstrap standard error.
  """
  nll = -np.asarray(logprobs, np.float64)
  counts = {"tokens": np.asarray(num_tokens, np.float64),
            "bytes": np.asarray(num_bytes, np.float64),
            "words": np.asarray(num_words, np.float64)}

  def stats(idx: np.ndarray) -> dict[str, float]:
    total = nll[idx].sum()
    loss = total / max(counts["tokens"][idx].sum(), 1.0)
    bpb = total / LN2 / max(counts["bytes"][idx].sum(), 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": bpb,
            "byte_perplexity": 2.0 ** min(bpb, 1000.0),
            "word_perplexity": math.exp(min(total / max(counts["words"][idx].sum(), 1.0), 700.0))}

  everything = stats(np.arange(len(nll)))
  metrics: dict[str, float | None] = {}
  for name, value in everything.items():
    metrics[name] = float(value)
    metrics[f"{name}_stderr"] = bootstrap_stderr(lambda idx, n=name: stats(idx)[n], len(nll))
  return metrics


def count_words(text: str) -> int:
  """Whitespace-separated words, as lm-eval's wikitext task counts them (re.split(r'\\s+'))."""
  return len(re.split(r"\s+", text))


# Multiple choice.
def choice_metrics(logprobs: Sequence[Sequence[float]], answers: Sequence[int],
                   choices: Sequence[Sequence[str]]) -> tuple[dict, list[dict]]:
  """acc, acc_norm and acc_bytes of per-item choice log-likelihoods, as lm-eval computes them.

  acc: the argmax of the log-likelihoods is the answer; acc_norm: the argmax of log-likelihood /
  len(choice) in characters; acc_bytes: the same per UTF-8 byte (the choice text without the
  target delimiter in both). Ties go to the first choice, as np.argmax does in the harness.

  Returns:
    ({acc, acc_norm, acc_bytes and their _stderr}, per-item {pred, pred_norm, acc, acc_norm}).
  """
  items = []
  for lls, answer, texts in zip(logprobs, answers, choices, strict=True):
    lls = np.asarray(lls, np.float64)
    chars = np.asarray([len(t) for t in texts], np.float64)
    num_bytes = np.asarray([len(t.encode("utf-8")) for t in texts], np.float64)
    pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / chars))
    items.append({"pred": pred, "pred_norm": pred_norm, "acc": float(pred == answer),
                  "acc_norm": float(pred_norm == answer),
                  "acc_bytes": float(int(np.argmax(lls / num_bytes)) == answer)})
  metrics = {}
  for name in ("acc", "acc_norm", "acc_bytes"):
    metrics.update(mean_with_stderr(name, [i[name] for i in items]))
  return metrics, items


# Generation.
def normalize_answer(text: str, *, ignore_case: bool = False,
                     ignore_punctuation: bool = False) -> str:
  """strip + collapse whitespace runs to one space; optionally lowercase and drop ASCII
  punctuation (string.punctuation), in that order (lowercase, punctuation, whitespace)."""
  if ignore_case:
    text = text.lower()
  if ignore_punctuation:
    text = text.translate(str.maketrans("", "", string.punctuation))
  return " ".join(text.split())


def exact_match(prediction: str, targets: Sequence[str], **normalization: bool) -> float:
  """1.0 if the normalized prediction equals any normalized target, else 0.0."""
  pred = normalize_answer(prediction, **normalization)
  return float(any(pred == normalize_answer(t, **normalization) for t in targets))


# Classification.
def confusion_matrix(labels: Sequence[int], preds: Sequence[int], num_classes: int
                     ) -> np.ndarray:
  """[num_classes, num_classes] counts: row = true label, column = predicted class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
  return matrix


def macro_f1(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> float:
  """Unweighted mean over classes of F1 = 2 tp / (2 tp + fp + fn); a class that is neither
  a label nor a prediction (0 / 0) is left out of the mean (scikit-learn's labels=present)."""
  m = confusion_matrix(labels, preds, num_classes)
  tp = np.diag(m).astype(np.float64)
  denominator = 2 * tp + (m.sum(axis=0) - tp) + (m.sum(axis=1) - tp)
  present = denominator > 0
  if not present.any():
    return 0.0
  return float(np.mean(2 * tp[present] / denominator[present]))


def classification_metrics(labels: Sequence[int], preds: Sequence[int], num_classes: int
                           ) -> dict[str, float | None]:
  """accuracy (mean stderr) and macro_f1 (bootstrap stderr)."""
  labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
  metrics = mean_with_stderr("accuracy", (labels == preds).astype(np.float64))
  metrics["macro_f1"] = macro_f1(labels, preds, num_classes)
  metrics["macro_f1_stderr"] = bootstrap_stderr(
      lambda idx: macro_f1(labels[idx], preds[idx], num_classes), len(labels))
  return metrics
