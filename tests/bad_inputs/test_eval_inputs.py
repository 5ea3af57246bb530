"""Bad `llmjax eval` inputs: unknown kinds, missing or malformed task files, items that cannot
be scored, and task kinds the workdir's model cannot run.

Each exits 2 with one line naming the problem and the fix, no traceback, before the checkpoint
is read; the workdir is byte-for-byte as it was, and no eval/ directory appears in it.
"""

import json
import os

import pytest

from llmjax.data.pipeline import DataConfig
from llmjax.models.config import ModelConfig
from tests.bad_inputs.harness import assert_clear_failure, run_cli, snapshot
from tests.evaluation.fakes import write_workdir

_SMALL = dict(vocab_size=260, num_layers=1, num_heads=2, num_kv_heads=2, embed_dim=32,
              mlp_dim=64, max_seq_len=32)
_GOOD_MC = {"question": "2+2=", "choices": ["3", "4", "5"], "answer": 1}


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory) -> dict[str, str]:
  root = tmp_path_factory.mktemp("bad_eval")
  classifier_data = DataConfig(objective="classification", train_file="/nonexistent/a.jsonl",
                               num_classes=2, tokenizer="byte")
  return {
      "decoder": write_workdir(str(root / "decoder"), ModelConfig(**_SMALL)),
      "mlm": write_workdir(str(root / "mlm"), ModelConfig(architecture="encoder", **_SMALL)),
      "classifier": write_workdir(str(root / "classifier"),
                                  ModelConfig(architecture="encoder", num_classes=2, **_SMALL),
                                  data=classifier_data),
  }


def _file(tmp_path, name: str, lines: list) -> str:
  path = tmp_path / name
  path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
                  encoding="utf-8")
  return str(path)


def _fails(capfd, workdir: str, flags: list[str], *patterns: str) -> None:
  before = snapshot(workdir)
  outcome = run_cli(["eval", f"--workdir={workdir}", *flags], capfd)
  assert_clear_failure(outcome, 2, r"^llmjax eval: ", *patterns, before=before, dirs=(workdir,))
  assert len(outcome.err.strip().splitlines()) == 1, outcome.err
  assert not os.path.exists(os.path.join(workdir, "eval"))


def test_unknown_task_kind(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "mc.jsonl", [_GOOD_MC])
  _fails(capfd, workdirs["decoder"], ["--task=mmlu", f"--data={data}"],
         r"--task='mmlu' is not a task kind",
         r"use one of perplexity, multiple_choice, generation, classification")


def test_data_file_missing(workdirs, tmp_path, capfd):
  _fails(capfd, workdirs["decoder"], ["--task=multiple_choice", f"--data={tmp_path}/nope.jsonl"],
         r"--data: text file pattern .*nope.jsonl' matched no files", r"check the path")


def test_malformed_jsonl_line_names_file_and_line(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "mc.jsonl", [_GOOD_MC, "", '{"question": "x", "choices": ["a", "b"]'])
  _fails(capfd, workdirs["decoder"], ["--task=multiple_choice", f"--data={data}"],
         r"mc.jsonl:3: bad JSON", r"each line must be one JSON object such as")


def test_answer_index_out_of_range(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "mc.jsonl", [_GOOD_MC, {**_GOOD_MC, "answer": 3}])
  _fails(capfd, workdirs["decoder"], ["--task=multiple_choice", f"--data={data}"],
         r"mc.jsonl:2: answer index 3 is out of range for 3 choices",
         r"must be in \[0, 3\) \(0 = the first choice\)")


def test_answer_given_as_choice_text(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "mc.jsonl", [{**_GOOD_MC, "answer": "4"}])
  _fails(capfd, workdirs["decoder"], ["--task=multiple_choice", f"--data={data}"],
         r"mc.jsonl:1: answer must be the integer index of the right choice \(0 \.\. 2\), "
         r"got '4'")


def test_empty_choice_is_an_empty_continuation(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "mc.jsonl", [{**_GOOD_MC, "choices": ["3", "", "5"]}])
  _fails(capfd, workdirs["decoder"], ["--task=multiple_choice", f"--data={data}"],
         r"mc.jsonl:1: choices\[1\] is empty: an empty choice is an empty continuation",
         r"give every choice text")


def test_single_choice_item(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "mc.jsonl", [{**_GOOD_MC, "choices": ["4"], "answer": 0}])
  _fails(capfd, workdirs["decoder"], ["--task=multiple_choice", f"--data={data}"],
         r"mc.jsonl:1: 1 choice\(s\); a multiple-choice item needs at least 2")


def test_more_shots_than_the_file_holds(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "mc.jsonl", [_GOOD_MC, {**_GOOD_MC, "question": "1+1="}])
  _fails(capfd, workdirs["decoder"],
         ["--task=multiple_choice", f"--data={data}", "--num_fewshot=2"],
         r"num_fewshot=2 needs 2 examples besides the item, but the few-shot pool has 1",
         r"lower --num_fewshot or give a larger --fewshot_data")


def test_template_without_its_field(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "mc.jsonl", [_GOOD_MC])
  _fails(capfd, workdirs["decoder"],
         ["--task=multiple_choice", f"--data={data}", "--template=Q: {prompt}\\nA:"],
         r"--template='Q: \{prompt\}\\nA:' must use the field \{question\} and no other")


def test_generation_item_without_target(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "gen.jsonl", [{"prompt": "12+7=", "answer": "19"}])
  _fails(capfd, workdirs["decoder"], ["--task=generation", f"--data={data}"],
         r"gen.jsonl:1: missing field 'target' \(the item has \['answer', 'prompt'\]\); add it")


def test_max_gen_toks_longer_than_the_context(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "gen.jsonl", [{"prompt": "12+7=", "target": "19"}])
  _fails(capfd, workdirs["decoder"],
         ["--task=generation", f"--data={data}", "--max_gen_toks=40"],
         r"--max_gen_toks=40 leaves no room for the prompt in the model's max_seq_len=32",
         r"at most 31")


def test_fewshot_flag_on_perplexity(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "doc.txt", ["some text"])
  _fails(capfd, workdirs["decoder"], ["--task=perplexity", f"--data={data}", "--num_fewshot=2"],
         r"--num_fewshot is for prompted tasks \(multiple_choice, generation\)",
         r"--task=perplexity has no prompt: drop it")


def test_decoder_task_on_an_mlm_encoder(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "mc.jsonl", [_GOOD_MC])
  _fails(capfd, workdirs["mlm"], ["--task=multiple_choice", f"--data={data}"],
         r"--task=multiple_choice scores text left to right; this workdir holds an "
         r"encoder-only \(MLM\) model", r"evaluate a decoder or encoder_decoder workdir")


def test_perplexity_on_a_classifier(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "doc.txt", ["some text"])
  _fails(capfd, workdirs["classifier"], ["--task=perplexity", f"--data={data}"],
         r"this workdir holds a classifier", r"use --task=classification")


def test_classification_on_a_language_model(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "cls.jsonl", [{"text": "great film", "label": 1}])
  _fails(capfd, workdirs["decoder"], ["--task=classification", f"--data={data}"],
         r"--task=classification needs a classifier \(an encoder with ModelConfig.num_classes\)",
         r"'decoder' language model: evaluate it with --task=perplexity")


def test_classification_label_out_of_range(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "cls.jsonl", [{"text": "great film", "label": 1},
                                       {"text": "meh", "label": 2}])
  _fails(capfd, workdirs["classifier"], ["--task=classification", f"--data={data}"],
         r"cls.jsonl:2: label 2 is not an integer in \[0, 2\)")


def test_result_name_with_a_slash(workdirs, tmp_path, capfd):
  data = _file(tmp_path, "mc.jsonl", [_GOOD_MC])
  _fails(capfd, workdirs["decoder"],
         ["--task=multiple_choice", f"--data={data}", "--name=../outside"],
         r"--name='../outside': use letters, digits")
