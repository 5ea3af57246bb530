"""`llmjax eval`: score a workdir's checkpoint on a local task; write W/eval/<task>-step<N>.json.

  llmjax eval --workdir=W --task=KIND --data=PATH_OR_GLOB [--num_fewshot=k] [--limit=n]
      [--step=s] [--batch_size=b] [--fewshot_seed=s] [--fewshot_data=F] [--name=NAME]

KIND is perplexity, multiple_choice, generation or classification (llmjax/evaluation/ says what
each reads and reports). Everything that can be checked without the checkpoint (flags, the
task's files line by line, the model family against the kind) is checked before it is read;
a bad input exits 2 with one line and writes nothing. On success stdout ends with a table and
then, on its last line, the result JSON, the same record as the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from llmjax.evaluation import config as config_lib


def _unescape(text: str | None) -> str | None:
  r"""Flags take \n, \t and \\ as escapes, so a shell line can hold a newline."""
  if text is None:
    return None
  out, i = [], 0
  while i < len(text):
    if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
      out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
      i += 2
    else:
      out.append(text[i])
      i += 1
  return "".join(out)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="llmjax eval", description="Evaluate a workdir's checkpoint on a local task.",
      epilog=r"Text flags (--template, delimiters, --until) read \n as a newline, \t as a tab.")
  parser.add_argument("--workdir", required=True, help="written by `llmjax train` or `convert`")
  parser.add_argument("--task", required=True, metavar="KIND", help=" | ".join(config_lib.KINDS))
  parser.add_argument("--data", required=True,
                      help="perplexity: text files (a glob); multiple_choice / generation: "
                      "JSONL; classification: JSONL or CSV")
  parser.add_argument("--num_fewshot", type=int, default=0)
  parser.add_argument("--limit", type=int, default=None, help="only the first n items")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
  parser.add_argument("--batch_size", type=int, default=None)
  parser.add_argument("--fewshot_seed", type=int, default=config_lib.DEFAULT_FEWSHOT_SEED)
  parser.add_argument("--fewshot_data", default=None,
                      help="JSONL to draw shots from (default: the --data file, minus the item)")
  parser.add_argument("--name", default=None,
                      help="result name: eval/<name>-step<N>.json (default <kind>_<data stem>)")
  parser.add_argument("--template", default=None,
                      help="prompt template: {question} (multiple_choice, default "
                      "'Question: {question}\\nAnswer:') or {prompt} (generation, default "
                      "'{prompt}')")
  parser.add_argument("--target_delimiter", default=" ",
                      help="between prompt and answer (default ' ', as lm-eval)")
  parser.add_argument("--fewshot_delimiter", default="\\n\\n", help="after each shot")
  parser.add_argument("--until", action="append", default=None,
                      help="generation stop string, repeatable (default '\\n\\n')")
  parser.add_argument("--max_gen_toks", type=int, default=None,
                      help="generation: new tokens at most (default 256, at most max_seq_len/2)")
  parser.add_argument("--ignore_case", action="store_true", help="generation: exact match "
                      "ignores case")
  parser.add_argument("--ignore_punctuation", action="store_true",
                      help="generation: exact match ignores ASCII punctuation")
  return parser


def _config(args: argparse.Namespace) -> config_lib.EvalConfig:
  until = tuple(_unescape(u) for u in args.until) if args.until else config_lib.DEFAULT_UNTIL
  return config_lib.EvalConfig(
      kind=args.task, data=args.data, name=args.name, num_fewshot=args.num_fewshot,
      limit=args.limit, fewshot_seed=args.fewshot_seed, fewshot_data=args.fewshot_data,
      batch_size=args.batch_size, template=_unescape(args.template),
      target_delimiter=_unescape(args.target_delimiter),
      fewshot_delimiter=_unescape(args.fewshot_delimiter), until=until,
      max_gen_toks=args.max_gen_toks, ignore_case=args.ignore_case,
      ignore_punctuation=args.ignore_punctuation)


def main(argv: list[str]) -> int:
  """Checks the task, loads the checkpoint, scores it, prints the table and the JSON."""
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # argparse: --help (0) or a bad flag (2, its message printed).
    return int(e.code or 0)
  try:
    config = _config(args)
    from llmjax import workdir as workdir_lib
    from llmjax.evaluation import results, tasks

    record = workdir_lib.read_run_config(args.workdir)
    step = workdir_lib.resolve_step(record.workdir, args.step)
    start = time.perf_counter()
    train = record.sections.get("train")
    task = tasks.prepare(config, record.model, data_section=record.sections.get("data"),
                         seq_len=train.get("seq_len") if isinstance(train, dict) else None)
    prepare_s = time.perf_counter() - start
    import llmjax

    model = llmjax.load(record.workdir, step=step)
    start = time.perf_counter()
    task_metrics, extra = tasks.run(task, model)
    result = results.make_record(task, workdir=record.workdir, step=step,
                                 task_metrics=task_metrics, extra=extra,
                                 wall_time_s=prepare_s + time.perf_counter() - start)
    workdir_lib.write_eval_result(record.workdir, config.task_name, step, result)
  except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
    print(f"llmjax eval: {e}", file=sys.stderr)
    return 2
  print(results.format_table(result))
  print(json.dumps(result, allow_nan=False))
  return 0
