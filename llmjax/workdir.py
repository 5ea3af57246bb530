"""THE run-directory format: what a workdir holds, read and written only here.

A workdir, as `llmjax train` writes it (`llmjax convert --from_hf` writes the model part):

  run_config.json   the configs of the run: {"model", "data", "train", "mesh"} sections, or
                    {"model", "converted_from"} for a converted checkpoint
  config.gin        gin's operative config of the run (train)
  model.gin         the ModelConfig as a gin file, to fine-tune from (convert)
  tokenizer/        the tokenizer the run used (data/tokenizer.py's saved form)
  checkpoints/      Orbax steps; each holds a `state` item (a TrainState, or {"params"} for a
                    converted model) and, from training, a `data_iter` item
  metrics.jsonl     one JSON object per logged step; tensorboard/ the same numbers as events
  eval/             evaluation results, one JSON file per task (reserved for `llmjax eval`)
  provenance.json   where the run came from: code version, command (reserved)

Every other module names these files through this one, and reads run_config.json through
`read_run_config`, which is the single check (and the single error message) for a directory
that is missing, is not an llmjax workdir, or was written by another llmjax version. What a
resumed run may change lives with the trainer (training/validation.py), and saving and
restoring the whole train state and data iterator with training/checkpoint.py. This module
reads and writes params only, so loading, conversion and warm starts need nothing from
training/.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from llmjax.data import tokenizer as tokenizer_lib
from llmjax.models.config import ModelConfig

RUN_CONFIG = "run_config.json"
CONFIG_GIN = "config.gin"
MODEL_GIN = "model.gin"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
EVAL = "eval"
PROVENANCE = "provenance.json"
# The Orbax items of a checkpoint step.
STATE_ITEM = "state"
DATA_ITER_ITEM = "data_iter"
# Everything a workdir may hold; a directory with anything else and no run_config.json is not
# one, and training refuses to write into it.
NAMES = frozenset({RUN_CONFIG, CONFIG_GIN, MODEL_GIN, TOKENIZER, CHECKPOINTS, METRICS,
                   TENSORBOARD, EVAL, PROVENANCE})

_HINT = ("point it at a directory written by `llmjax train` or `llmjax convert --from_hf` (or "
         "run `llmjax train --workdir={workdir}` first)")


def run_config_path(workdir: str) -> str:
  return os.path.join(workdir, RUN_CONFIG)


def config_gin_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_GIN)


def model_gin_path(workdir: str) -> str:
  return os.path.join(workdir, MODEL_GIN)


def tokenizer_dir(workdir: str) -> str:
  return os.path.join(workdir, TOKENIZER)


def metrics_path(workdir: str) -> str:
  return os.path.join(workdir, METRICS)


def tensorboard_dir(workdir: str) -> str:
  return os.path.join(workdir, TENSORBOARD)


def checkpoint_dir(workdir: str) -> str:
  """DIR/checkpoints for a workdir; a directory that already ends in it is returned as is."""
  workdir = os.path.abspath(os.fspath(workdir))
  if os.path.basename(workdir.rstrip("/")) == CHECKPOINTS:
    return workdir
  return os.path.join(workdir, CHECKPOINTS)


# run_config.json.
@dataclasses.dataclass(frozen=True)
class RunRecord:
  """A workdir's run_config.json, read and checked.

  Attributes:
    workdir: the absolute workdir path.
    model: the ModelConfig the run was trained (or converted) with.
    sections: every section as saved (JSON values): "model", and "data", "train", "mesh" for
      a trained run or "converted_from" for a converted checkpoint.
  """

  workdir: str
  model: ModelConfig
  sections: Mapping[str, Any]

  @property
  def converted_from(self) -> Mapping[str, Any] | None:
    """The conversion's source (hf_dir, model_type, special_ids, hf_config), or None."""
    return self.sections.get("converted_from")


def run_record(*, model: ModelConfig, data: Any, train: Any, mesh: Any) -> dict[str, Any]:
  """The JSON-able run_config.json of a training run, from its four config dataclasses.

  (data: DataConfig, train: TrainConfig, mesh: MeshConfig; typed loosely because the trainer
  that owns TrainConfig sits above this module.)
  """
  record = {name: dataclasses.asdict(cfg) for name, cfg in
            (("model", model), ("data", data), ("train", train), ("mesh", mesh))}
  return json.loads(json.dumps(record))  # Tuples -> lists, as they read back from disk.


def converted_record(model: ModelConfig, converted_from: Mapping[str, Any]) -> dict[str, Any]:
  """The run_config.json of a converted checkpoint (params only: nothing to resume)."""
  return json.loads(json.dumps({"model": dataclasses.asdict(model),
                                "converted_from": dict(converted_from)}))


def not_a_workdir(workdir: str, reason: str, flag: str = "workdir", fix: str | None = None
                  ) -> str:
  """The one message for a directory that cannot be read as a workdir: which, why, what to do."""
  fix = _HINT.format(workdir=workdir) if fix is None else fix
  return f"{flag}={workdir} is not an llmjax workdir ({reason}): {fix}."


def read_run_config(workdir: str, *, flag: str = "workdir") -> RunRecord:
  """Reads and checks DIR/run_config.json.

  Args:
    workdir: the run directory.
    flag: how the caller's user named the directory, for the error message (e.g.
      "TrainConfig.init_from", "--workdir").

  Returns:
    The RunRecord.

  Raises:
    FileNotFoundError: the directory or its run_config.json does not exist.
    ValueError: run_config.json is not a run config (not JSON, no "model" section), or its
      model fields are ones this llmjax's ModelConfig does not know (another llmjax version).
  """
  workdir = os.path.abspath(os.fspath(workdir))
  path = run_config_path(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(not_a_workdir(workdir, "no such directory", flag))
  if not os.path.isfile(path):
    raise FileNotFoundError(not_a_workdir(workdir, f"{path} not found", flag))
  try:
    with open(path, encoding="utf-8") as f:
      sections = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(not_a_workdir(workdir, f"{path} is not JSON: {e}", flag)) from None
  if not isinstance(sections, dict) or "model" not in sections:
    keys = sorted(sections) if isinstance(sections, dict) else type(sections).__name__
    raise ValueError(not_a_workdir(workdir, f"{path} has no 'model' entry; keys: {keys}", flag))
  fields = sections["model"]
  if isinstance(fields, str):  # Some writers stored ModelConfig.to_json() as a string.
    try:
      fields = json.loads(fields)
    except json.JSONDecodeError:
      pass  # Refused just below.
  if not isinstance(fields, dict):
    raise ValueError(not_a_workdir(workdir, f"{path}'s 'model' entry is not a ModelConfig's "
                                   "fields", flag))
  unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(ModelConfig)})
  if unknown:
    raise ValueError(not_a_workdir(
        workdir, f"{path} has model fields {unknown} this llmjax's ModelConfig does not know",
        flag, fix="it was written by another llmjax version; read it with that version"))
  return RunRecord(workdir=workdir, model=ModelConfig(**fields), sections=sections)


def existing_run(workdir: str, *, flag: str = "--workdir") -> RunRecord | None:
  """What a directory holds before a run writes into it: None for a new one, else its record.

  A new directory is a missing or empty one, or one holding only workdir files without
  run_config.json (a first write that was cut short). Dotfiles are ignored.

  Raises:
    FileExistsError: the directory holds files that are not a workdir's (a foreign directory,
      which a run would litter), or is a file.
    ValueError / FileNotFoundError: as read_run_config.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  if not os.path.exists(workdir):
    return None
  if os.path.isfile(run_config_path(workdir)):
    return read_run_config(workdir, flag=flag)
  if not os.path.isdir(workdir):
    raise FileExistsError(not_a_workdir(workdir, "it is a file", flag))
  foreign = sorted(name for name in os.listdir(workdir) if not name.startswith(".")
                   and name.removesuffix(".tmp") not in NAMES)
  if foreign:
    shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
    raise FileExistsError(not_a_workdir(
        workdir, f"it holds {shown} and no {RUN_CONFIG}", flag,
        fix="nothing was written; choose a new or empty directory"))
  return None


# Writing.
def write_text(workdir: str, name: str, text: str) -> None:
  """Writes DIR/<name> atomically: a killed write never leaves half a file."""
  if name not in NAMES:
    raise ValueError(f"{name!r} is not a workdir file; known: {sorted(NAMES)}.")
  path = os.path.join(workdir, name)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def write_run_files(workdir: str, record: Mapping[str, Any], *, tokenizer: tokenizer_lib.Tokenizer,
                    config_gin: str | None = None, model_gin: str | None = None) -> None:
  """Writes run_config.json, the gin files given, and tokenizer/ unless one is saved already.

  A saved tokenizer is kept: a resumed run never changes the tokenizer its checkpoints mean.
  Multi-process runs call this on process 0 only.
  """
  os.makedirs(workdir, exist_ok=True)
  write_text(workdir, RUN_CONFIG, json.dumps(record, indent=2, sort_keys=True))
  if config_gin is not None:
    write_text(workdir, CONFIG_GIN, config_gin)
  if model_gin is not None:
    write_text(workdir, MODEL_GIN, model_gin)
  if not has_tokenizer(workdir):
    tokenizer.save(tokenizer_dir(workdir))


# tokenizer/.
def has_tokenizer(workdir: str) -> bool:
  return os.path.exists(os.path.join(tokenizer_dir(workdir), tokenizer_lib.CONFIG_FILE))


def load_tokenizer(workdir: str, model: ModelConfig | None = None, *,
                   flag: str = "workdir") -> tokenizer_lib.Tokenizer:
  """The workdir's tokenizer, checked against `model` (check_vocab) when given.

  Raises:
    FileNotFoundError: the workdir has no saved tokenizer.
    ValueError: the tokenizer has ids the model's embedding cannot hold.
  """
  directory = tokenizer_dir(workdir)
  if not has_tokenizer(workdir):
    raise FileNotFoundError(not_a_workdir(os.path.abspath(workdir),
                                          f"no tokenizer in {directory}", flag))
  tokenizer = tokenizer_lib.load_tokenizer(directory)
  if model is not None:
    check_vocab(model.vocab_size, tokenizer.vocab_size)
  return tokenizer


def check_vocab(model_vocab_size: int, tokenizer_vocab_size: int, *, extra_ids: int = 0) -> None:
  """Raises ValueError when a model's embedding cannot hold every id its data can produce.

  Those are the tokenizer's ids plus an objective's `extra_ids` past them (the MLM mask id, T5
  sentinels). A larger model vocabulary is fine (embeddings may be padded for speed).

  Args:
    model_vocab_size: ModelConfig.vocab_size.
    tokenizer_vocab_size: the tokenizer's vocab_size.
    extra_ids: ids the training objective adds past the tokenizer's.
  """
  need = tokenizer_vocab_size + extra_ids
  if need > model_vocab_size:
    extra = (f" + {extra_ids} objective extra ids (MLM mask / T5 sentinels) = {need} ids"
             if extra_ids else "")
    raise ValueError(
        f"tokenizer vocab_size={tokenizer_vocab_size}{extra} is larger than the model's "
        f"vocab_size={model_vocab_size}: set ModelConfig.vocab_size >= {need} or use the "
        "tokenizer the model was trained with.")


# checkpoints/: listing, and params-only reads and writes (training/checkpoint.py saves and
# restores the whole train state).
def checkpoint_steps(workdir: str) -> list[int]:
  """The complete checkpoint steps of a workdir, ascending, without creating anything."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  # Not read_only=True: that logs warnings; a manager that never saves writes nothing anyway.
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def latest_step(workdir: str) -> int | None:
  """The newest complete checkpoint step in a workdir, or None."""
  steps = checkpoint_steps(workdir)
  return steps[-1] if steps else None


def resolve_step(workdir: str, step: int | None = None, *, flag: str = "workdir") -> int:
  """`step` if the workdir has that checkpoint, the latest one if step is None.

  Raises:
    FileNotFoundError: no checkpoint yet, or not that step.
  """
  directory = checkpoint_dir(workdir)
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(
        f"no checkpoint in {directory} ({flag}={os.path.dirname(directory)}): run `llmjax train "
        f"--workdir={os.path.dirname(directory)}` first (or wait until it saves its first "
        "checkpoint).")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {directory}; available: "
                            f"{steps}.")
  return step


def restore_params(workdir: str, abstract_params: Any, step: int | None = None) -> Any:
  """Reads only the params of a checkpoint (an optimizer state is never loaded).

  Args:
    workdir: the run directory or its checkpoints/ subdirectory.
    abstract_params: tree of `jax.ShapeDtypeStruct` (with `.sharding` where it matters: leaves
      without one are put on the first local device) matching the saved params.
    step: the checkpoint step; None means the latest.

  Returns:
    The params tree with jax arrays.

  Raises:
    FileNotFoundError: no checkpoint (or not that step).
  """
  step = resolve_step(workdir, step)
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract_params = jax.tree.map(
      lambda x: x if getattr(x, "sharding", None) is not None
      else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=default), abstract_params)
  # The state was written by StandardSave, whose on-disk format is PyTreeCheckpointHandler's;
  # reading it through that handler allows a partial restore of the `params` subtree only.
  manager = ocp.CheckpointManager(
      checkpoint_dir(workdir), item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(create=False))
  try:
    item = {"params": abstract_params}
    args = ocp.args.PyTreeRestore(
        item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)
    restored = manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: args}))
  finally:
    manager.close()
  return restored[STATE_ITEM]["params"]


def save_params(workdir: str, params: Any, step: int = 0) -> None:
  """Writes `params` as checkpoint `step` (a state of params only: a converted model)."""
  manager = ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                           create=True))
  try:
    manager.save(step, args=ocp.args.Composite(
        **{STATE_ITEM: ocp.args.StandardSave({"params": params})}), force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
