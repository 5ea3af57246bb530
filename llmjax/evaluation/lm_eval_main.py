"""`python -m llmjax.evaluation.lm_eval_main ARGS`: lm-eval's CLI with the `llmjax` model.

lm-eval 0.4.13 finds models only in its own table or by import (no plugin entry point), so
this imports lm_eval_adapter (which registers `llmjax`) and hands the command line, unchanged,
to lm-eval's own entry point. Everything after the module name is an `lm_eval` argument:

  python -m llmjax.evaluation.lm_eval_main --model llmjax --model_args workdir=W \
      --tasks my_task --include_path DIR_WITH_YAML [--num_fewshot K] [--limit N]

Nothing is downloaded for local tasks (`dataset_path: json` + `dataset_kwargs.data_files`)
when HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1 are set; they are set here unless the caller
set them, because llmjax never reaches the network at run time.
"""

from __future__ import annotations

import os


def main() -> None:
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  from lm_eval.__main__ import cli_evaluate

  import llmjax.evaluation.lm_eval_adapter  # noqa: F401  (registers the `llmjax` model)

  cli_evaluate()


if __name__ == "__main__":
  main()
