"""Evaluating a trained (or converted) model: `llmjax eval`'s task kinds and the lm-eval backend.

- config.py: EvalConfig, one task (kind, data, few-shot and generation settings), validated.
- task_data.py: reading and checking each kind's local files (file:line errors).
- fewshot.py: which examples each item's prompt gets, and the prompt layout.
- tasks.py: per kind, building the requests before any model loads, then scoring them with the
  LoadedModel request API (sampling/scoring.py).
- classification.py: batched class predictions of a classifier head.
- metrics.py: the metrics and their standard errors.
- results.py: the result record (eval/<task>-step<N>.json, written through llmjax/workdir.py)
  and its stdout table.
- lm_eval_adapter.py / lm_eval_main.py: the lm-evaluation-harness model `llmjax` and its CLI
  (the optional `eval` extra).

Nothing is imported here, so importing one module (the lm-eval backend, say) loads only what
it needs.
"""
