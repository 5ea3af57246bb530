"""THE run-directory format: what a workdir holds, read and written only here.

A workdir, as `llmjax train` writes it (`llmjax convert --from_hf` writes the model part):

  run_config.json   the configs of the run: {"model", "data", "train", "mesh"} sections, or
                    {"model", "converted_from"} for a converted checkpoint
  config.gin        gin's operative config of the run (train)
  model.gin         the ModelConfig as a gin file, to fine-tune from (convert)
  tokenizer/        the tokenizer the run used (data/tokenizer.py's saved form)
  checkpoints/      Orbax steps; each holds a `state` item (a TrainState, or {"params"} for a
                    converted model), from training a `data_iter` item, and llmjax_manifest.json
                    (its files and sizes, checked before every restore); damaged/ holds steps
                    set aside by `llmjax train --allow_fallback_checkpoint`
  metrics.jsonl     one JSON object per logged step; tensorboard/ the same numbers as events
  eval/             `llmjax eval` results: <task>-step<N>.json, one per task and checkpoint step
  provenance.json   where the run came from: code version, command (reserved)
  logs/             error-<UTC time>.log: the full traceback of a run that failed after setup
                    (`llmjax train` names the file in its one-line message)

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
import re
import shutil
import time
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
LOGS = "logs"
# The Orbax items of a checkpoint step.
STATE_ITEM = "state"
DATA_ITER_ITEM = "data_iter"
# Inside each step: every file of the step and its size, written before Orbax commits the step
# (training/checkpoint.py), so a file truncated or deleted later is named before a restore.
CHECKPOINT_MANIFEST = "llmjax_manifest.json"
# checkpoints/damaged/<step>: damaged steps a run set aside to resume from an earlier one
# (`llmjax train --allow_fallback_checkpoint`); never deleted, and not a step Orbax lists.
DAMAGED_CHECKPOINTS = "damaged"
# Everything a workdir may hold; a directory with anything else and no run_config.json is not
# one, and training refuses to write into it.
NAMES = frozenset({RUN_CONFIG, CONFIG_GIN, MODEL_GIN, TOKENIZER, CHECKPOINTS, METRICS,
                   TENSORBOARD, EVAL, PROVENANCE, LOGS})

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


class InvalidJsonError(ValueError):
  """A JSON file that does not parse (or is not UTF-8); the message names the file and where."""


def read_json(path: str) -> Any:
  """The value of a JSON file (a workdir's, or a Hugging Face folder's).

  Raises:
    InvalidJsonError: "PATH is not valid JSON (MESSAGE at line L column C)", or not UTF-8 text;
      callers add what to do about it.
  """
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    where = f"{e.msg} at line {e.lineno} column {e.colno}"
  except UnicodeDecodeError as e:
    where = f"not UTF-8 text at byte {e.start}"
  raise InvalidJsonError(f"{path} is not valid JSON ({where})")


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
    what = "it is a file" if os.path.exists(workdir) else "no such directory"
    raise FileNotFoundError(not_a_workdir(workdir, what, flag))
  if not os.path.isfile(path):
    raise FileNotFoundError(not_a_workdir(workdir, f"{path} not found", flag))
  try:
    sections = read_json(path)
  except InvalidJsonError as e:
    # A damaged file in a real workdir, not a foreign directory: say how to repair it.
    raise ValueError(
        f"{flag}={workdir}: {e}; nothing was changed: repair "
        f"the file there (or restore it from a backup; {CONFIG_GIN} beside it holds the run's "
        "configuration as gin).") from None
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

  A new directory is a missing or empty one, one holding only workdir files without
  run_config.json (a first write that was cut short), or a workdir without a complete
  checkpoint: a first run that failed or was stopped before its first save left nothing to
  resume, so its run files are not read (they may even be damaged) and the next run rewrites
  them, whatever its config. Dotfiles are ignored.

  Raises:
    FileExistsError: the directory holds files that are not a workdir's (a foreign directory,
      which a run would litter), or is a file.
    ValueError / FileNotFoundError: as read_run_config.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  if not os.path.exists(workdir):
    return None
  if not os.path.isdir(workdir):
    raise FileExistsError(not_a_workdir(
        workdir, "it is a file", flag,
        fix="nothing was written; give the path of a directory (new, empty, or a workdir)"))
  if os.path.isfile(run_config_path(workdir)):
    if latest_step(workdir) is None:
      return None
    return read_run_config(workdir, flag=flag)
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
  """Writes run_config.json, the gin files given, and tokenizer/.

  Once the workdir has a checkpoint its saved tokenizer is kept: a resumed run never changes
  the tokenizer its checkpoints mean. Without one (a first run that stopped before its first
  save) the saved tokenizer is replaced like the other run files. Multi-process runs call this
  on process 0 only.
  """
  os.makedirs(workdir, exist_ok=True)
  write_text(workdir, RUN_CONFIG, json.dumps(record, indent=2, sort_keys=True))
  if config_gin is not None:
    write_text(workdir, CONFIG_GIN, config_gin)
  if model_gin is not None:
    write_text(workdir, MODEL_GIN, model_gin)
  if keeps_tokenizer(workdir):
    return
  # Cleared first: a stale tokenizer.model must not outlive a switch to another kind.
  shutil.rmtree(tokenizer_dir(workdir), ignore_errors=True)
  tokenizer.save(tokenizer_dir(workdir))


def check_writable(workdir: str, *, flag: str = "--workdir") -> None:
  """Raises PermissionError (before anything is read or written) if a run cannot write there.

  For a workdir that does not exist yet, the nearest existing parent must let it be created.
  (Permission bits as os.access sees them: root passes every check.)
  """
  workdir = os.path.abspath(os.fspath(workdir))
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if os.access(existing, os.W_OK | os.X_OK):
    return
  if existing == workdir:
    raise PermissionError(
        f"{flag}={workdir} is not writable: nothing was written; make it writable (chmod u+w "
        f"{workdir}) or choose a directory you can write to.")
  raise PermissionError(
      f"{flag}={workdir} cannot be created: {existing} is not writable; nothing was written: "
      "choose a directory you can write to.")


# eval/: one JSON file per evaluated task and checkpoint step (`llmjax eval`).
EVAL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"


def eval_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.fspath(workdir)), EVAL)


def eval_result_path(workdir: str, task_name: str, step: int) -> str:
  """DIR/eval/<task_name>-step<step>.json; task_name must match EVAL_NAME_PATTERN."""
  if not re.fullmatch(EVAL_NAME_PATTERN, task_name):
    raise ValueError(f"task name {task_name!r} cannot name a result file: use letters, digits, "
                     "'_', '.' and '-' (e.g. --name=next_line).")
  return os.path.join(eval_dir(workdir), f"{task_name}-step{int(step)}.json")


def write_eval_result(workdir: str, task_name: str, step: int, result: Mapping[str, Any]) -> str:
  """Writes `result` (JSON values; NaN/inf are refused) atomically to eval_result_path, replacing
  an earlier result of the same task and step; returns the path."""
  path = eval_result_path(workdir, task_name, step)
  text = json.dumps(result, indent=2, allow_nan=False) + "\n"  # Fails before any file exists.
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


# logs/.
def write_error_log(workdir: str, text: str, *, process_index: int = 0) -> str:
  """Writes `text` (a traceback) to DIR/logs/error-<UTC time>[-p<i>].log; returns its path.

  Creates the workdir and logs/ if missing; a name already taken gets a counter, so no log is
  overwritten. Process i > 0 of a multi-process run adds -p<i>.

  Raises:
    OSError: the workdir cannot be written (the caller prints the traceback instead).
  """
  directory = os.path.join(os.path.abspath(os.fspath(workdir)), LOGS)
  os.makedirs(directory, exist_ok=True)
  stem = "error-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
  stem += f"-p{process_index}" if process_index else ""
  n = 0
  while True:
    path = os.path.join(directory, stem + (f".{n}" if n else "") + ".log")
    try:
      with open(path, "x", encoding="utf-8") as f:  # "x": never overwrite another log.
        f.write(text)
      return path
    except FileExistsError:
      n += 1


# tokenizer/.
def has_tokenizer(workdir: str) -> bool:
  return os.path.exists(os.path.join(tokenizer_dir(workdir), tokenizer_lib.CONFIG_FILE))


def keeps_tokenizer(workdir: str) -> bool:
  """Whether a run here must use the saved tokenizer: a checkpoint depends on it."""
  return has_tokenizer(workdir) and latest_step(workdir) is not None


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
  # Orbax's own listing of finalized steps, not a CheckpointManager: creating one is a
  # collective in multi-process runs, and process 0 lists steps alone (write_run_files).
  return sorted(ocp.step.checkpoint_steps(directory))


def latest_step(workdir: str) -> int | None:
  """The newest complete checkpoint step in a workdir, or None."""
  steps = checkpoint_steps(workdir)
  return steps[-1] if steps else None


def resolve_step(workdir: str, step: int | None = None, *, flag: str = "workdir") -> int:
  """`step` if the workdir has that checkpoint intact, the latest one if step is None.

  Raises:
    FileNotFoundError: no checkpoint yet, or not that step.
    DamagedCheckpointError: a file of that step was truncated or deleted after it was written
      (`check_checkpoint`).
  """
  directory = checkpoint_dir(workdir)
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(
        f"no checkpoint in {directory} ({flag}={os.path.dirname(directory)}): run `llmjax train "
        f"--workdir={os.path.dirname(directory)}` first (or wait until it saves its first "
        "checkpoint).")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {directory}; available: "
                            f"{steps}.")
  check_checkpoint(workdir, step, flag=flag)
  return step


# Damaged checkpoints: a step's files checked against its manifest, and errors that name them.
class DamagedCheckpointError(ValueError):
  """A checkpoint step whose files are not as they were written, or that Orbax cannot read.

  Attributes:
    step: the step.
    detail: which file, and what is wrong with it.
  """

  def __init__(self, message: str, *, step: int, detail: str):
    super().__init__(message)
    self.step = step
    self.detail = detail


def step_dir(workdir: str, step: int) -> str:
  """DIR/checkpoints/<step> (Orbax's default step names)."""
  return os.path.join(checkpoint_dir(workdir), str(step))


def write_checkpoint_manifest(directory: str) -> None:
  """Records every file of a checkpoint step's items (state/, data_iter/) and its size.

  The trainer calls it on a step Orbax has written but not yet committed (renamed into place),
  so every committed step carries its manifest. The step's own top-level files are Orbax's
  bookkeeping, rewritten at the commit (a damaged one fails the restore, which names it).
  Sizes, not checksums: a truncated or deleted file (a full disk, a failed copy) is what this
  catches, and checking costs one stat per file. Written atomically.
  """
  files = {}
  for root, dirs, names in os.walk(directory):
    dirs.sort()
    if root == directory:
      continue
    for name in sorted(names):
      path = os.path.join(root, name)
      files[os.path.relpath(path, directory)] = os.path.getsize(path)
  path = os.path.join(directory, CHECKPOINT_MANIFEST)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"version": 1, "files": files}, f, indent=0, sort_keys=True)
  os.replace(path + ".tmp", path)


def checkpoint_damage(workdir: str, step: int) -> str | None:
  """What is wrong with a checkpoint step's files, or None when they match its manifest.

  A step without a manifest (saved by an llmjax that wrote none) counts as intact here;
  restoring it then names whatever Orbax cannot read (`read_error`).
  """
  directory = step_dir(workdir, step)
  path = os.path.join(directory, CHECKPOINT_MANIFEST)
  try:
    with open(path, encoding="utf-8") as f:
      files = json.load(f)["files"]
    if not isinstance(files, dict):
      raise TypeError(f"'files' is a {type(files).__name__}")
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"its file list {CHECKPOINT_MANIFEST} is unreadable ({e})"
  problems = []
  for rel, size in sorted(files.items()):
    try:
      actual = os.path.getsize(os.path.join(directory, rel))
    except OSError:
      problems.append(f"{rel} is missing")
      continue
    if actual != size:
      how = "truncated" if actual < size else "longer than written"
      problems.append(f"{rel} is {how} ({actual} of {size} bytes)")
  if not problems:
    return None
  more = len(problems) - 1
  return problems[0] + (f" (and {more} more file{'s' * (more > 1)})" if more else "")


def newest_intact_step(workdir: str, below: int) -> int | None:
  """The newest checkpoint step before `below` whose files match its manifest, or None."""
  for step in reversed(checkpoint_steps(workdir)):
    if step < below and checkpoint_damage(workdir, step) is None:
      return step
  return None


def set_aside_path(workdir: str, step: int) -> str:
  """Where `set_aside_checkpoint` moves a damaged step: checkpoints/damaged/<step>[.n]."""
  target = os.path.join(checkpoint_dir(workdir), DAMAGED_CHECKPOINTS, str(step))
  n, path = 0, target
  while os.path.exists(path):  # The same step damaged again in a later run: keep both.
    n += 1
    path = f"{target}.{n}"
  return path


def set_aside_checkpoint(workdir: str, step: int) -> str:
  """Moves a damaged step out of the steps Orbax lists (nothing is deleted); returns where."""
  target = set_aside_path(workdir, step)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  os.rename(step_dir(workdir, step), target)
  return target


def damaged_checkpoint_error(workdir: str, step: int, detail: str, fix: str, *,
                             unreadable: bool = False) -> DamagedCheckpointError:
  """The one-line error for a damaged step: which step, which file, then `fix`."""
  what = "could not be read" if unreadable else "is damaged"
  return DamagedCheckpointError(
      f"checkpoint step {step} in {checkpoint_dir(workdir)} {what}: {detail}. {fix}",
      step=step, detail=detail)


def check_checkpoint(workdir: str, step: int, *, flag: str = "workdir") -> None:
  """Raises DamagedCheckpointError (naming the file, and the step to read instead) when a
  file of checkpoint `step` was truncated or deleted after it was written."""
  detail = checkpoint_damage(workdir, step)
  if detail is not None:
    raise damaged_checkpoint_error(workdir, step, detail, _read_instead(workdir, step, flag))


def read_error(workdir: str, step: int, error: Exception, *,
               flag: str = "workdir") -> DamagedCheckpointError:
  """An Orbax/TensorStore restore error as one line naming the step and, if it says, the file.

  Orbax raises many types (ValueError, JSONDecodeError, FileNotFoundError, bare Exception)
  with the TensorStore spec attached; the first line and the file are what a user acts on.
  """
  chain, seen = [], error
  while seen is not None and len(chain) < 10:  # Orbax wraps TensorStore's error, which says
    chain.append(seen)                          # which array (and file) failed.
    seen = seen.__cause__ or seen.__context__
  root = next((e for e in reversed(chain) if str(e).strip()), error)
  text = re.split(r" \[tensorstore_spec=| See full TensorStore details", str(root))[0].strip()
  first = text.splitlines()[0][:300] if text else type(root).__name__
  # A file it names under the step (not just an item directory), unless the message has it.
  found = [path for e in chain for path in
           re.findall(re.escape(step_dir(workdir, step)) + r"/([^\"'\s]+)", str(e))
           if not path.endswith("/")]
  where = f"{max(found, key=len)}: " if found and max(found, key=len) not in first else ""
  return damaged_checkpoint_error(workdir, step, f"{where}{first}",
                                  _read_instead(workdir, step, flag), unreadable=True)


def _read_instead(workdir: str, step: int, flag: str) -> str:
  """The fix for a reader (load, sample, convert, a warm start) of a damaged step."""
  previous = newest_intact_step(workdir, below=step)
  if previous is None:
    return ("Nothing was changed; no earlier complete checkpoint exists: restore the file from a "
            "backup.")
  choose = (f"TrainConfig.init_from_step={previous}" if flag == "TrainConfig.init_from"
            else f"step={previous} (--step={previous})")
  return (f"Nothing was changed. Step {previous} is the newest complete checkpoint: choose it "
          f"with {choose}, or move {step_dir(workdir, step)} to "
          f"{set_aside_path(workdir, step)} to make it the latest, or restore the file from a "
          "backup.")


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
    DamagedCheckpointError: a file of the step is truncated or missing, or Orbax cannot read it
      (the message names the step, the file and an intact step to read instead).
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
  except Exception as e:  # Whatever Orbax raises for a file it cannot read (see read_error).
    raise read_error(workdir, step, e) from e
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
  if jax.process_index() == 0:
    # After the commit (a synchronous save has no hook before it): a conversion killed in
    # between leaves a step without a manifest, which still restores (unchecked).
    write_checkpoint_manifest(step_dir(workdir, step))
