"""Gin at the edge: gin files and `--gin.NAME=VALUE` flags -> the library's config dataclasses.

Gin files bind fields of the frozen config dataclasses (`ModelConfig.num_layers = 4`) and
define macros (`TRAIN_STEPS = 300`). Bindings given on the command line are checked against
the known fields and macros before gin sees them, so a typo is reported with the close matches
instead of being silently ignored or failing deep inside gin.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin

from llmjax.data.pipeline import DataConfig
from llmjax.models.config import ModelConfig
from llmjax.sharding.mesh import MeshConfig
from llmjax.training.config import TrainConfig

CONFIG_CLASSES: dict[str, type] = {
    "ModelConfig": ModelConfig,
    "DataConfig": DataConfig,
    "TrainConfig": TrainConfig,
    "MeshConfig": MeshConfig,
}
_CONFIGURABLES = {
    name: gin.external_configurable(cls, name=name, module="llmjax")
    for name, cls in CONFIG_CLASSES.items()
}
# gin_configs/ beside the package (a source checkout or an editable install).
REPO_GIN_DIR = Path(__file__).resolve().parents[2] / "gin_configs"
_INCLUDE_LINE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]\s*(#.*)?$""")
_MACRO_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", re.MULTILINE)


class GinConfigError(ValueError):
  """A gin file or binding that cannot be used, with what to change."""


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.NAME=VALUE` flags (returned as `NAME = VALUE`) from the other flags."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep or not name:
        raise GinConfigError(f"{arg!r} is not of the form --gin.NAME=VALUE.")
      bindings.append(f"{name} = {_as_gin_value(value)}")
    else:
      rest.append(arg)
  return rest, bindings


def _as_gin_value(value: str) -> str:
  """Lets `--gin.X=corpus/*.txt` mean a string: anything that is not a literal, a structure or
  a gin reference (`%MACRO`, `@name`) is quoted, so paths and words need no shell-escaped
  quotes."""
  text = value.strip()
  if not text:
    return "''"
  if text[0] in "[({%@":
    return text
  try:
    ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return repr(text)
  return text


def _resolve_file(path: str, relative_to: Path | None = None,
                  included_by: str | None = None) -> str:
  candidates = [Path(path), REPO_GIN_DIR / path, REPO_GIN_DIR.parent / path]
  if relative_to is not None:
    candidates.insert(0, relative_to / path)
  for candidate in candidates:
    if candidate.is_file():
      return str(candidate.resolve())
  where = f" (included by {included_by})" if included_by else ""
  raise GinConfigError(
      f"gin file {path!r}{where} does not exist (looked in the current directory and "
      f"{REPO_GIN_DIR}). "
      f"Available run configs: {sorted(p.name for p in (REPO_GIN_DIR / 'runs').glob('*.gin'))}.")


def known_fields() -> list[str]:
  """Every `Class.field` a binding may name."""
  return [f"{name}.{field.name}" for name, cls in CONFIG_CLASSES.items()
          for field in dataclasses.fields(cls)]


def _defined_macros() -> list[str]:
  section = gin.config_str().split("# Macros:", 1)
  if len(section) < 2:
    return []
  body = section[1].split("# Parameters for", 1)[0]
  return _MACRO_LINE.findall(body)


def _check_binding(binding: str, macros: list[str]) -> None:
  name = binding.split("=", 1)[0].strip()
  bare = name.rsplit("/", 1)[-1]  # Drop a gin scope.
  if "." in bare:
    known = known_fields()
    if bare not in known:
      close = difflib.get_close_matches(bare, known, n=5, cutoff=0.5)
      hint = f" Did you mean: {', '.join(close)}?" if close else ""
      raise GinConfigError(
          f"Unknown gin binding {name!r}.{hint} Bindable classes: {sorted(CONFIG_CLASSES)}.")
  elif bare not in macros:
    close = difflib.get_close_matches(bare, macros, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise GinConfigError(
        f"Unknown gin macro {name!r}: it is not defined by the gin files given.{hint} "
        f"Macros defined: {sorted(macros)}.")


def _expand_includes(path: str, stack: tuple[str, ...] = ()) -> str:
  """The text of a gin file with its `include` lines replaced by the included files' text.

  Includes are resolved here (relative to the including file, the working directory, then
  gin_configs/) rather than by gin, whose resolver first tries an include path as a Python
  package and crashes when a directory such as `models/` is importable from the working
  directory.
  """
  if path in stack:
    raise GinConfigError(f"gin include cycle: {' -> '.join(stack + (path,))}.")
  lines = []
  for line in Path(path).read_text(encoding="utf-8").splitlines():
    match = _INCLUDE_LINE.match(line)
    if match is None:
      lines.append(line)
      continue
    included = _resolve_file(match.group(1), relative_to=Path(path).parent, included_by=path)
    lines.append(_expand_includes(included, stack + (path,)))
  return "\n".join(lines) + "\n"


def parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin files, then validated bindings, into gin's global config (unlocked)."""
  if not gin_files:
    raise GinConfigError("no --gin_file given: start from gin_configs/runs/quickstart.gin.")
  gin.clear_config()
  resolved = [_resolve_file(path) for path in gin_files]
  for path in resolved:
    gin.parse_config(_expand_includes(path))
  macros = _defined_macros()
  for binding in bindings:
    _check_binding(binding, macros)
  with gin.unlock_config():
    gin.parse_config(list(bindings))


def build(name: str) -> Any:
  """Instantiates config class `name` from the parsed gin bindings, with a clear error."""
  try:
    return _CONFIGURABLES[name]()
  except TypeError as e:
    listed = re.search(r"missing \d+ required [\w-]* ?arguments?: ([^\n]*)", str(e))
    missing = re.findall(r"'(\w+)'", listed.group(1)) if listed else []
    if missing:
      fields = ", ".join(f"{name}.{field}" for field in missing)
      raise GinConfigError(
          f"{fields} must be set: bind it in a gin file (see gin_configs/models/) or pass "
          f"--gin.{name}.{missing[0]}=VALUE.") from e
    raise


def build_all() -> dict[str, Any]:
  """Builds every config class; returns {'model': ..., 'data': ..., 'train': ..., 'mesh': ...}."""
  return {
      "model": build("ModelConfig"),
      "data": build("DataConfig"),
      "train": build("TrainConfig"),
      "mesh": build("MeshConfig"),
  }


def operative_config() -> str:
  """The gin config actually used, for saving beside the run."""
  return gin.operative_config_str()
