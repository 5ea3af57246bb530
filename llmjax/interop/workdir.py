"""`llmjax convert`: a Hugging Face folder -> an llmjax workdir, and a workdir -> an HF folder.

A converted workdir is a normal one for `llmjax.load`, `llmjax sample` and fine-tuning
(`TrainConfig.init_from`): run_config.json (its "model" entry, plus "converted_from"),
checkpoints/0 holding the params, tokenizer/ and model.gin (the ModelConfig as a gin file, for
`llmjax train --gin_file`). The tokenizer is the folder's SentencePiece `tokenizer.model` when it
has one (LLaMA, T5); otherwise (GPT-2's BPE, BERT's WordPiece, which llmjax does not read) an
ids-only tokenizer that carries the special ids, so generation works on token ids.

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

from llmjax.data import tokenizer as tokenizer_lib
from llmjax.interop import hf
from llmjax.interop.safetensors_io import SINGLE_FILE, write_safetensors
from llmjax.models.config import ModelConfig

RUN_CONFIG = "run_config.json"
MODEL_GIN = "model.gin"
_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


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


def special_ids(hf_dir: str, hf_config: dict[str, Any]) -> dict[str, int]:
  """bos/eos/pad/decoder-start ids from config.json, else generation_config.json."""
  ids = {k: hf_config[k] for k in _SPECIAL_IDS if isinstance(hf_config.get(k), int)}
  path = os.path.join(hf_dir, "generation_config.json")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      generation = json.load(f)
    ids |= {k: generation[k] for k in _SPECIAL_IDS
            if k not in ids and isinstance(generation.get(k), int)}
  return ids


def hf_tokenizer(hf_dir: str, config: ModelConfig, ids: dict[str, int]) -> tuple[Any, str]:
  """(tokenizer, description) for a converted model: the folder's SentencePiece model, or an
  ids-only tokenizer with the model's special ids.

  Raises:
    ValueError: the tokenizer has more ids than the model's vocabulary.
  """
  # T5 has no BOS: its decoder starts from decoder_start_token_id (the pad id).
  bos = ids.get("decoder_start_token_id") if config.architecture == "encoder_decoder" else None
  bos = ids.get("bos_token_id") if bos is None else bos
  eos, pad = ids.get("eos_token_id"), ids.get("pad_token_id")
  path = os.path.join(hf_dir, tokenizer_lib.MODEL_FILE)
  if os.path.isfile(path):
    tok = tokenizer_lib.SentencePieceTokenizer.from_file(path, pad_id=pad, bos_id=bos,
                                                         eos_id=eos)
    what = f"SentencePiece {tokenizer_lib.MODEL_FILE} ({tok.vocab_size} pieces)"
  else:
    tok = tokenizer_lib.IdTokenizer(config.vocab_size, pad_id=pad, bos_id=bos, eos_id=eos)
    what = ("ids only (no SentencePiece tokenizer.model in the folder: generate and score "
            "with token ids)")
  if tok.vocab_size > config.vocab_size:
    raise ValueError(f"{path} has {tok.vocab_size} pieces, more than the model's vocab_size "
                     f"{config.vocab_size} in config.json: ids past {config.vocab_size - 1} "
                     "would have no embedding. Use the tokenizer the model was trained with.")
  return tok, what


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
  from llmjax.training import checkpoint as ckpt_lib

  start = time.perf_counter()
  hf_dir = os.path.abspath(os.fspath(hf_dir))
  workdir = _fresh_destination(workdir, "--workdir")
  model = hf.load_hf(hf_dir, mesh=mesh, rules=rules, **config_overrides)
  ids = special_ids(hf_dir, model.hf_config)
  tok, tok_what = hf_tokenizer(hf_dir, model.config, ids)

  staging = _staging(workdir)
  try:
    with ckpt_lib.Checkpointer(staging, keep=1, async_save=False) as ckpt:
      ckpt.save(0, {"params": model.params})
    tok.save(os.path.join(staging, "tokenizer"))
    record = {"model": dataclasses.asdict(model.config),
              "converted_from": {"hf_dir": hf_dir, "model_type": model.model_type,
                                 "special_ids": ids, "hf_config": model.hf_config}}
    with open(os.path.join(staging, RUN_CONFIG), "w", encoding="utf-8") as f:
      json.dump(record, f, indent=2, sort_keys=True)
    with open(os.path.join(staging, MODEL_GIN), "w", encoding="utf-8") as f:
      f.write(model_gin(model.config, hf_dir))
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


def _read_run_config(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, RUN_CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not an llmjax workdir (made by "
                            "`llmjax train` or `llmjax convert --from_hf`).")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def export_hf(workdir: str, out: str, *, step: int | None = None) -> ConversionReport:
  """Writes an llmjax workdir's params as an HF folder (config.json + model.safetensors, and
  tokenizer.model when the workdir has a SentencePiece tokenizer) that `transformers` loads
  with `from_pretrained`, no custom code.

  Raises:
    ValueError: the model has no HF equivalent (naming the fields that rule each one out).
    FileExistsError: `out` exists and is not empty.
  """
  from llmjax.models.interface import LanguageModel
  from llmjax.training import checkpoint as ckpt_lib

  start = time.perf_counter()
  workdir = os.path.abspath(os.fspath(workdir))
  run_config = _read_run_config(workdir)
  config = ModelConfig(**run_config["model"])
  source = run_config.get("converted_from") or {}
  module = hf.export_architecture(config, source.get("model_type"))
  out = _fresh_destination(out, "--out")
  if ckpt_lib.latest_step(workdir) is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt_lib.checkpoint_dir(workdir)}.")
  ids = dict(source.get("special_ids") or {})
  tokenizer_dir = os.path.join(workdir, "tokenizer")
  tok = None
  if os.path.isfile(os.path.join(tokenizer_dir, tokenizer_lib.CONFIG_FILE)):
    tok = tokenizer_lib.load_tokenizer(tokenizer_dir)
    if not ids:
      ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
      if config.architecture == "encoder_decoder":
        ids["decoder_start_token_id"] = tok.bos_id
  params = ckpt_lib.restore_params(
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
      shutil.copy(os.path.join(tokenizer_dir, tokenizer_lib.MODEL_FILE), staging)
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
