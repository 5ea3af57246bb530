"""Bad sampling flags, prompts and Python-API arguments, and bad `llmjax plan` meshes and devices.

CLI cases exit 2 with one line naming the problem and the fix, no traceback, and leave the
workdir byte-for-byte as it was; Python-API cases raise TypeError (wrong type) or ValueError
(wrong value) naming the argument, the value and what is accepted, before anything compiles.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llmjax
from llmjax.data.tokenizer import ByteTokenizer
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sampling.loading import LoadedModel
from tests.bad_inputs.harness import assert_clear_failure, run_cli, snapshot
from tests.evaluation.fakes import write_workdir

# A one-layer byte-level decoder with a short context, so a long completion overflows it.
_MODEL = ModelConfig(vocab_size=260, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32,
                     mlp_dim=64, max_seq_len=32)
_PLAN = ["plan", "--gin_file=gin_configs/runs/quickstart.gin"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
  """A workdir as `llmjax train` leaves it (run files, byte tokenizer, a step-2 checkpoint),
  written through llmjax/workdir.py with random params: sampling never looks at how the
  weights were trained, and this takes a second instead of a training run."""
  return write_workdir(str(tmp_path_factory.mktemp("bad_sampling") / "run"), _MODEL)


@pytest.fixture(scope="module")
def model(run_dir) -> LoadedModel:
  return llmjax.load(run_dir)


def _sample(run_dir, capfd, *flags):
  before = snapshot(run_dir)
  return run_cli(["sample", f"--workdir={run_dir}", "--prompt=def ", *flags], capfd), before


# --- `llmjax sample` flags: exit 2, one line, the workdir untouched. ---------------------------

@pytest.mark.parametrize("flags, patterns", [
    # Was an IndexError: every beam score NaN, no hypothesis left.
    (["--num_beams=2", "--length_penalty=nan"],
     [r"length_penalty must be a finite float.*got nan"]),
    (["--num_samples=0"], [r"num_samples must be an int >= 1, got 0"]),
    (["--max_new_tokens=-1"], [r"max_new_tokens must be an int >= 1, got -1"]),
    (["--top_p=1.5"], [r"top_p must be a float in \(0, 1\] \(1.0 = off\), got 1.5"]),
    (["--temperature=-1"], [r"temperature must be a finite float >= 0 \(0 = greedy\), got -1"]),
    (["--temperature=inf"], [r"temperature must be a finite float >= 0.*got inf"]),
    # Seeds past 32 bits alias smaller ones in PRNGKey; negative ones alias large ones.
    (["--seed=-1"], [r"seed must be an int in \[0, 2\*\*32 = 4294967296\), got -1"]),
    # Beam search ranks by log-probs: a temperature would be silently ignored.
    (["--num_beams=2", "--temperature=0.5"],
     [r"num_beams=2 runs beam search", r"temperature=0.5 would be ignored",
      r"Drop temperature.*or set num_beams=1"]),
    (["--num_beams=2", "--num_samples=3"], [r"num_samples=3 > num_beams=2.*raise num_beams"]),
    # Needs the model: BOS + "def " (5 tokens) + 30 > max_seq_len=32.
    (["--max_new_tokens=30"],
     [r"prompt of 5 tokens .* \+ max_new_tokens=30 exceeds the model's max_seq_len=32",
      r"lower max_new_tokens to 27"]),
    (["--mode=fill_mask"], [r"fill_mask needs an encoder-only \(MLM\) model.*decoder",
                            r"--mode=generate"]),
])
def test_sample_flag_fails_clearly(run_dir, capfd, flags, patterns):
  outcome, before = _sample(run_dir, capfd, *flags)
  assert_clear_failure(outcome, 2, r"^llmjax sample: ", *patterns, before=before,
                       dirs=(run_dir,))
  assert len(outcome.err.strip().splitlines()) == 1, outcome.err


def test_sample_non_integer_top_k_is_an_argparse_error(run_dir, capfd):
  outcome, before = _sample(run_dir, capfd, "--top_k=2.5")
  assert_clear_failure(outcome, 2, r"argument --top_k: invalid int value: '2.5'",
                       r"\[--top_k TOP_K\]", before=before, dirs=(run_dir,))


def test_sample_out_of_vocab_prompt_ids(run_dir, capfd):
  before = snapshot(run_dir)
  outcome = run_cli(["sample", f"--workdir={run_dir}", "--prompt_ids=1,999",
                     "--max_new_tokens=2"], capfd)
  assert_clear_failure(outcome, 2, r"token_ids\[0\]\[1\] must be a token id in \[0, 260\) "
                       r"\(the model's vocab_size\), got 999", before=before, dirs=(run_dir,))


def test_sample_prompt_ids_with_beams(run_dir, capfd):
  before = snapshot(run_dir)
  outcome = run_cli(["sample", f"--workdir={run_dir}", "--prompt_ids=1,70",
                     "--num_beams=2"], capfd)
  assert_clear_failure(outcome, 2, r"--prompt_ids samples only.*drop --num_beams or use "
                       r"--prompt", before=before, dirs=(run_dir,))


@pytest.mark.parametrize("content", ["", "\n   \n\t\n"])
def test_sample_prompt_file_without_prompts(run_dir, tmp_path, capfd, content):
  prompt_file = tmp_path / "prompts.txt"
  prompt_file.write_text(content, encoding="utf-8")
  before = snapshot(run_dir, tmp_path)
  outcome = run_cli(["sample", f"--workdir={run_dir}", f"--prompt_file={prompt_file}"], capfd)
  assert_clear_failure(outcome, 2, r"--prompt_file=.*holds no non-empty lines",
                       r"one prompt per line", before=before, dirs=(run_dir, tmp_path))


def test_sample_beam_defaults_take_no_temperature(run_dir, capfd, model, monkeypatch):
  """--num_beams alone is accepted (the CLI's sampling temperature 0.8 is not passed on), and
  prints what the Python API's beam search gives."""
  # One beam compilation, not two.
  monkeypatch.setattr(llmjax, "load", lambda workdir, step=None: model)
  outcome, before = _sample(run_dir, capfd, "--num_beams=2", "--max_new_tokens=3")
  assert outcome.code == 0, outcome.err
  expected = model.generate("def ", num_beams=2, max_new_tokens=3)
  assert outcome.out == f"=== prompt 1 ===\ndef {expected[0]}\n"
  assert snapshot(run_dir) == before


# --- The Python API: TypeError / ValueError naming the argument and what it accepts. ---------

@pytest.mark.parametrize("prompts, kwargs, error, match", [
    ([123], {}, TypeError, r"prompts\[0\] must be a str, got 123 \(int\) \(token ids go to "
     r"generate_ids\)"),
    ([], {}, ValueError, r"prompts is empty: give at least one prompt"),
    (b"def ", {}, TypeError, r"prompts must be a str or a list of str, got b'def ' \(bytes\)"),
    (["a"], {"max_new_tokens": "4"}, TypeError,
     r"max_new_tokens must be an int >= 1, got '4' \(str\)"),
    # Was an AttributeError from the shape bucketing (float has no bit_length).
    (["a"], {"max_new_tokens": 4.5}, TypeError,
     r"max_new_tokens must be an int >= 1, got 4.5 \(float\)"),
    (["a"], {"max_new_tokens": True}, TypeError, r"max_new_tokens .*got True \(bool\)"),
    (["a"], {"temperature": None}, TypeError,
     r"temperature must be a finite float >= 0 \(0 = greedy\), got None \(NoneType\)"),
    (["a"], {"top_p": "0.9"}, TypeError, r"top_p must be a float in \(0, 1\].*'0.9' \(str\)"),
    (["a"], {"seed": 1.5}, TypeError, r"seed must be an int in \[0, 2\*\*32.*1.5 \(float\)"),
    (["a"], {"seed": 2**64}, ValueError, r"seed must be an int in \[0, 2\*\*32"),
    (["a"], {"num_samples": 2.0}, TypeError, r"num_samples must be an int >= 1, got 2.0"),
    (["a"], {"num_beams": 2, "length_penalty": float("nan")}, ValueError,
     r"length_penalty must be a finite float"),
    (["a"], {"num_beams": 2, "top_k": 5}, ValueError, r"top_k=5 would be ignored"),
    (["a"], {"max_new_token": 4}, TypeError, r"generate\(\) got an unknown setting "
     r"'max_new_token' \(did you mean max_new_tokens\?\); it accepts max_new_tokens, "
     r"temperature"),
])
def test_generate_rejects(model, prompts, kwargs, error, match):
  with pytest.raises(error, match=match):
    model.generate(prompts, **kwargs)


def test_generate_accepts_a_string_and_empty_prompts(model):
  """A str is one prompt; '' and whitespace are valid prompts (BOS starts a fresh document)."""
  prompts, steps, tok = ["def ", "", "  "], 3, model.tokenizer
  batch = model.generate(prompts, max_new_tokens=steps, temperature=0)
  assert model.generate("def ", max_new_tokens=steps, temperature=0) == batch[:1]
  # The reference: greedy over the full forward pass, BOS first. The model is causal, so a
  # right-padded row of one length (one compilation) gives each position's logits exactly.
  for prompt, text in zip(prompts, batch, strict=True):
    ids = [tok.bos_id] + tok.encode(prompt)
    for _ in range(steps):
      row = np.zeros((16,), np.int32)
      row[:len(ids)] = ids
      next_id = int(np.argmax(model.logits(row)[len(ids) - 1]))
      if next_id == tok.eos_id:
        break
      ids.append(next_id)
    assert text == tok.decode(ids[1 + len(tok.encode(prompt)):])


@pytest.mark.parametrize("token_ids, error, match", [
    ([1, 999], ValueError, r"token_ids holds id 999 at index \(1,\): token ids must be in "
     r"\[0, 260\)"),
    ([[1, -3], [1, 2]], ValueError, r"holds id -3 at index \(0, 1\)"),
    ([[1, 2], [3]], ValueError, r"rows of one length"),
    ([1.5, 2.0], TypeError, r"token_ids must be integers .*got dtype float64"),
    ("def", TypeError, r"token_ids must be token ids .*got the text 'def'.*tokenizer.encode"),
])
def test_logits_rejects(model, token_ids, error, match):
  with pytest.raises(error, match=match):
    model.logits(token_ids)


@pytest.mark.parametrize("token_ids, error, match", [
    ([1, 2], TypeError, r"token_ids\[0\] must be a list of token ids, got 1 \(int\)"),
    ([[1, "a"]], TypeError, r"token_ids\[0\]\[1\] must be a token id in \[0, 260\).*'a' \(str\)"),
    ([[1, 300]], ValueError, r"token_ids\[0\]\[1\] must be a token id in \[0, 260\).*got 300"),
])
def test_generate_ids_rejects(model, token_ids, error, match):
  with pytest.raises(error, match=match):
    model.generate_ids(token_ids, max_new_tokens=2)


def test_generate_ids_takes_no_beam_settings(model):
  with pytest.raises(TypeError, match=r"generate_ids\(\) got an unknown setting 'num_beams'; "
                     r"it accepts max_new_tokens, temperature, top_k, top_p, seed"):
    model.generate_ids([[1, 70]], num_beams=2)


def test_fill_mask_on_a_decoder(model):
  with pytest.raises(ValueError, match=r"fill_mask needs an encoder-only \(MLM\) model; this "
                     r"one is a decoder: generate completions instead"):
    model.fill_mask("def [MASK]():")


@pytest.mark.parametrize("texts, kwargs, error, match", [
    ("no mask here", {}, ValueError, r"no '\[MASK\]' in 'no mask here': mark each token"),
    ([5], {}, TypeError, r"texts\[0\] must be a str, got 5 \(int\)"),
    ("a [MASK]", {"top_k": True}, TypeError, r"top_k must be an int >= 1 .*True \(bool\)"),
    ("a [MASK]", {"mask_token": ""}, ValueError, r"mask_token must be a non-empty str"),
])
def test_fill_mask_rejects(texts, kwargs, error, match):
  config = ModelConfig(vocab_size=261, num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64,
                       max_seq_len=32, architecture="encoder")
  mlm = LanguageModel(config)
  # Every case fails before the forward pass: zero params of the right shapes will do.
  params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                        jax.eval_shape(mlm.init, jax.random.PRNGKey(0)))
  loaded = LoadedModel(config=config, params=params, tokenizer=ByteTokenizer(), model=mlm)
  with pytest.raises(error, match=match):
    loaded.fill_mask(texts, **kwargs)


# --- `llmjax plan`: bad meshes and devices, refused before any fake device is built. ----------

@pytest.fixture
def no_fake_devices(monkeypatch):
  """Fails the test if the command gets as far as building fake devices."""
  from llmjax.cli import fake_devices

  def refuse(count):
    raise AssertionError(f"built {count} fake devices before refusing the flags")

  monkeypatch.setattr(fake_devices, "use_fake_cpu_devices", refuse)


@pytest.mark.parametrize("flags, patterns", [
    # Used to build a million CPU devices: minutes and 12 GB before any answer.
    (["--mesh=fsdp:1000000"], [r"--mesh=fsdp:1000000 needs 1,000,000 devices; at most 8,192",
                               r"use a mesh of at most 8,192 devices"]),
    (["--mesh=data:128,fsdp:128"], [r"needs 16,384 devices; at most 8,192"]),
    (["--mesh=fsdp:0"], [r"--mesh=fsdp:0: .*sizes must be positive"]),
    (["--mesh=fsdp:-2"], [r"--mesh=fsdp:-2: .*sizes must be positive"]),
    (["--mesh=fsdp:x"], [r"--mesh entry 'fsdp:x' is not AXIS:SIZE; write e.g. --mesh=data:8"]),
    (["--mesh=nonsense:4"], [r"--mesh=nonsense:4: Unknown mesh axes \['nonsense'\]; the mesh "
                             r"axes are \('data', 'fsdp', 'sequence', 'tensor'\)"]),
    (["--mesh=fsdp:2,fsdp:2"], [r"--mesh names axis 'fsdp' twice"]),
    (["--mesh=fsdp:-1"], [r"give every axis size \(no -1\)"]),
    (["--mesh=fsdp:8", "--device=h900"],
     [r"unknown --device 'h900'; valid devices: h100, h200, a100, tpu-v5p, cpu"]),
    (["--mesh=fsdp:8", "--device_memory_gb=nan"],
     [r"--device_memory_gb must be a finite positive number.*got nan"]),
    (["--mesh=fsdp:8", "--memory_fraction=1.5"], [r"--memory_fraction must be in \(0, 1\]"]),
])
def test_plan_flag_fails_before_building_devices(capfd, no_fake_devices, flags, patterns):
  outcome = run_cli([*_PLAN, *flags], capfd)
  assert_clear_failure(outcome, 2, r"^llmjax plan: ", *patterns)
  assert len(outcome.err.strip().splitlines()) == 1, outcome.err
