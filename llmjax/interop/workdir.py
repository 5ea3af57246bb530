"""`llmjax convert`: a Hugging Face folder -> an llmjax workdir, and a workdir -> an HF folder.

A converted workdir is a normal one for `llmjax.load`, `llmjax sample` and fine-tuning
(`TrainConfig.init_from`): run_config.json (its "model" entry, plus "converted_from"),
checkpoints/0 holding the params, tokenizer/ and model.gin (the ModelConfig as a gin file, for
`llmjax train --gin_file`), all written and read through llmjax/workdir.py. The tokenizer is
the folder's SentencePiece model when it has one (LLaMA, T5); otherwise (GPT-2's BPE, BERT's
WordPiece, which llmjax does not read) an ids-only tokenizer that carries the special ids, so
generation works on token ids; its special ids and a T5's sentinels come from config.json and
the folder's tokenizer files (interop/hf_tokenizer.py).

Both directions build their output in a temporary sibling directory and rename it at the end:
an interrupted conversion leaves nothing half-written, and an existing directory is never
overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import time
from typing import Any

import jax

from llmjax import workdir as workdir_lib
from llmjax.data import tokenizer as tokenizer_lib
from llmjax.interop import hf
from llmjax.interop.hf_tokenizer import hf_tokenizer, special_ids
from llmjax.interop.safetensors_io import SINGLE_FILE, write_safetensors
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel


@dataclasses.dataclass(frozen=True)
class ConversionReport:
  """What a conversion did and cost."""
  source: str
  destination: str
  model_type: str
  num_params: int
  param_bytes: int
  seconds: float
  peak_rss_bytes: int  # Of this process so far (ru_maxrss), an upper bound of the conversion's.
  tokenizer: str
  unused: tuple[str, ...] = ()

  def summary(self) -> str:
    text = (f"converted {self.model_type} {self.source} -> {self.destination}: "
            f"{self.num_params / 1e6:,.1f}M params ({self.param_bytes / 2**20:,.0f} MiB) in "
            f"{self.seconds:.1f} s, peak RSS {self.peak_rss_bytes / 2**20:,.0f} MiB; tokenizer: "
            f"{self.tokenizer}")
    if self.unused:
      text += f"; not used: {', '.join(self.unused)}"
    return text


def _peak_rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB.


def _fresh_destination(path: str, flag: str) -> str:
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise FileExistsError(f"{flag}={path} already exists and is not empty; llmjax convert never "
                          "overwrites: choose a new directory.")
  return path


def _staging(path: str) -> str:
  staging = f"{path}.converting-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  return staging


def _publish(staging: str, path: str) -> None:
  if os.path.isdir(path):
    os.rmdir(path)  # Empty (checked before starting).
  os.rename(staging, path)


def model_gin(config: ModelConfig, source: str) -> str:
  """config as a gin model file (every field bound, so it overrides an earlier model file)."""
  lines = [f"# ModelConfig of the model converted from {source} (llmjax convert).",
           "# Fine-tune: llmjax train --gin_file=RUN.gin --gin_file=THIS_FILE "
           "--gin.TrainConfig.init_from=\"'<this workdir>'\" --workdir=NEW",
           f"VOCAB_SIZE = {config.vocab_size}", f"MAX_SEQ_LEN = {config.max_seq_len}", ""]
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if field.name == "vocab_size":
      text = "%VOCAB_SIZE"
    elif field.name == "max_seq_len":
      text = "%MAX_SEQ_LEN"
    else:
      text = repr(value)
    lines.append(f"ModelConfig.{field.name} = {text}")
  return "\n".join(lines) + "\n"


def import_hf(hf_dir: str, workdir: str, *, mesh: jax.sharding.Mesh | None = None,
              rules: str = "fsdp", **config_overrides: Any) -> ConversionReport:
  """Converts a local HF folder into a new llmjax workdir (see the module docstring).

  Raises:
    FileExistsError: workdir exists and is not empty.
    ValueError / FileNotFoundError: anything wrong with the folder, before writing anything.
  """
  start = time.perf_counter()
  hf_dir = os.path.abspath(os.fspath(hf_dir))
  workdir = _fresh_destination(workdir, "--workdir")
  model = hf.load_hf(hf_dir, mesh=mesh, rules=rules, **config_overrides)
  ids = special_ids(hf_dir, model.hf_config)
  tok, tok_what = hf_tokenizer(hf_dir, model.config, ids, model.model_type)

  staging = _staging(workdir)
  try:
    workdir_lib.save_params(staging, model.params, step=0)
    record = workdir_lib.converted_record(
        model.config, {"hf_dir": hf_dir, "model_type": model.model_type, "special_ids": ids,
                       "hf_config": model.hf_config})
    workdir_lib.write_run_files(staging, record, tokenizer=tok,
                                model_gin=model_gin(model.config, hf_dir))
    _publish(staging, workdir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  leaves = jax.tree.leaves(model.params)
  return ConversionReport(
      source=hf_dir, destination=workdir, model_type=model.model_type,
      num_params=sum(x.size for x in leaves), param_bytes=sum(x.nbytes for x in leaves),
      seconds=time.perf_counter() - start, peak_rss_bytes=_peak_rss(), tokenizer=tok_what,
      unused=model.unused)


def export_hf(workdir: str, out: str, *, step: int | None = None) -> ConversionReport:
  """Writes an llmjax workdir's params as an HF folder (config.json + model.safetensors, and
  tokenizer.model when the workdir has a SentencePiece tokenizer) that `transformers` loads
  with `from_pretrained`, no custom code.

  Raises:
    ValueError: the model has no HF equivalent (naming the fields that rule each one out).
    FileExistsError: `out` exists and is not empty.
  """
  start = time.perf_counter()
  record = workdir_lib.read_run_config(workdir, flag="--workdir")
  workdir, config = record.workdir, record.model
  source = record.converted_from or {}
  module = hf.export_architecture(config, source.get("model_type"))
  out = _fresh_destination(out, "--out")
  step = workdir_lib.resolve_step(workdir, step, flag="--workdir")
  ids = dict(source.get("special_ids") or {})
  tok = None
  if workdir_lib.has_tokenizer(workdir):
    tok = workdir_lib.load_tokenizer(workdir)
    if not ids:
      ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
      if config.architecture == "encoder_decoder":
        ids["decoder_start_token_id"] = tok.bos_id
  params = workdir_lib.restore_params(
      workdir, jax.eval_shape(LanguageModel(config).init, jax.random.PRNGKey(0)), step=step)

  staging = _staging(out)
  try:
    hf_config = module.config_to_hf(config) | ids | {"dtype": config.weight_dtype.name}
    with open(os.path.join(staging, hf.CONFIG_FILE), "w", encoding="utf-8") as f:
      json.dump(hf_config, f, indent=2, sort_keys=True)
    specs = hf.hf_tensor_specs(config, module)
    tensors = hf.hf_tensors(config, params, module)

    def fetch(name: str) -> Any:
      got, array = next(tensors)
      if got != name:  # Both walk the same rules in the same order.
        raise AssertionError(f"export order: expected {name}, got {got}.")
      return array

    size = write_safetensors(os.path.join(staging, SINGLE_FILE), specs, fetch,
                             {"format": "pt"})
    if tok is not None and tok.kind == tokenizer_lib.SentencePieceTokenizer.kind:
      shutil.copy(os.path.join(workdir_lib.tokenizer_dir(workdir), tokenizer_lib.MODEL_FILE),
                  staging)
    _publish(staging, out)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  leaves = jax.tree.leaves(params)
  return ConversionReport(
      source=workdir, destination=out, model_type=module.MODEL_TYPES[0],
      num_params=sum(x.size for x in leaves), param_bytes=size,
      seconds=time.perf_counter() - start, peak_rss_bytes=_peak_rss(),
      tokenizer="tokenizer.model" if tok is not None and tok.kind == "sentencepiece" else "none")
