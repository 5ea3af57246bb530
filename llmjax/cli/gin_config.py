"""Gin at the edge: gin files and `--gin.NAME=VALUE` flags -> the library's config dataclasses.

Gin files bind fields of the frozen config dataclasses (`ModelConfig.num_layers = 4`) and
define macros (`TRAIN_STEPS = 300`). Bindings given on the command line are checked against
the known fields and macros before gin sees them, so a typo is reported with the close matches
instead of being silently ignored or failing deep inside gin.

Every error here is a `GinConfigError` with a one-line message that names where the problem is
(the gin file and line, or the `--gin.` flag as typed) and what to write instead: gin's own
parse errors (with their line numbers, tokenizer errors and multi-line context) are rephrased,
and a config field of the wrong type names the macro that set it.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import io
import re
import tokenize
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin

from llmjax.config_checks import ConfigTypeError
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
# Where gin appends its location to an error message ("\n  In file ..., line 3\n    text").
_GIN_LOCATION = re.compile(r'\n  In (?:file "[^"]*",|bindings string) line (\d+)|'
                           r"\n  In call to configurable")
_INCLUDE_WORD = re.compile(r"^\s*include\b")
_SYNTAX_HELP = ("a gin line is `Class.field = VALUE` or `MACRO = VALUE`, with strings in quotes "
                "and brackets closed")
_FLAG_HELP = ("a value is a number, a string, True/False/None, a [list] or a {dict}; quote the "
              "whole flag for the shell, e.g. \"--gin.MeshConfig.shape={'data': -1, 'fsdp': 2}\"")


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
  directory = next((c for c in candidates if c.is_dir()), None)
  if directory is not None:
    inside = sorted(str(p.relative_to(directory)) for p in directory.rglob("*.gin"))[:5]
    raise GinConfigError(
        f"gin file {path!r}{where} is a directory ({directory.resolve()}), not a gin file: name "
        f"a .gin file in it{f', e.g. one of {inside}' if inside else ''}.")
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


def _read_gin_file(path: str) -> str:
  try:
    return Path(path).read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    line = e.object[:e.start].count(b"\n") + 1
    raise GinConfigError(
        f"gin file {path}, line {line}: byte {e.object[e.start]:#04x} is not UTF-8 text (is it "
        "a gin file?): save the file as UTF-8.") from e
  except OSError as e:
    raise GinConfigError(f"cannot read gin file {path}: {e.strerror or e}: check the path and "
                         "its permissions.") from e


def _expand_includes(path: str, stack: tuple[str, ...] = ()) -> list[tuple[str, int, str]]:
  """A gin file's text with its `include` lines replaced by the included files' text, as
  (file, first line number, text) pieces in order, so errors can name the real file and line.

  Includes are resolved here (relative to the including file, the working directory, then
  gin_configs/) rather than by gin, whose resolver first tries an include path as a Python
  package and crashes when a directory such as `models/` is importable from the working
  directory.
  """
  if path in stack:
    raise GinConfigError(f"gin include cycle: {' -> '.join(stack + (path,))}: remove one of "
                         "these include lines.")
  pieces, lines, first = [], [], 1
  for number, line in enumerate(_read_gin_file(path).splitlines(), start=1):
    match = _INCLUDE_LINE.match(line)
    if match is None and _INCLUDE_WORD.match(line):
      raise GinConfigError(f"gin file {path}, line {number}: {line.strip()!r} is not an include "
                           "line: quote the path, e.g. include 'models/tiny.gin'.")
    if match is None:
      lines.append(line)
      continue
    if lines:
      pieces.append((path, first, "\n".join(lines) + "\n"))
    lines, first = [], number + 1
    included = _resolve_file(match.group(1), relative_to=Path(path).parent,
                             included_by=f"{path}, line {number}")
    pieces.extend(_expand_includes(included, stack + (path,)))
  if lines:
    pieces.append((path, first, "\n".join(lines) + "\n"))
  return pieces


def _unclosed_bracket(text: str) -> tuple[str, int] | None:
  """The innermost bracket that `text` opens and never closes, with its line, if any."""
  opened: list[tuple[str, int]] = []
  try:
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
      if token.type == tokenize.OP and token.string in "([{":
        opened.append((token.string, token.start[0]))
      elif token.type == tokenize.OP and token.string in ")]}" and opened:
        opened.pop()
  except (tokenize.TokenError, SyntaxError):
    pass
  return opened[-1] if opened else None


def _gin_message(e: Exception) -> tuple[str, int | None]:
  """A gin parse error as (one-line problem, line number in the parsed text or None)."""
  if isinstance(e, tokenize.TokenError):
    what, (line, _) = e.args
    return ("a string is never closed" if "string" in what
            else "a bracket is never closed"), line
  if isinstance(e, SyntaxError):
    # gin's message may open with a Python parser's ("malformed node or string: <ast...>"):
    # its last line is the one that names the token.
    msg = [part.strip() for part in str(e.msg).splitlines() if part.strip()][-1]
    source = (e.text or "").strip()
    quoted = f" in {source!r}" if source and source not in msg else ""
    return f"{msg.rstrip('.')}{quoted}", e.lineno
  message = str(e)
  location = _GIN_LOCATION.search(message)
  line = int(location.group(1)) if location and location.group(1) else None
  return _without_gin_location(message).rstrip("."), line


def _without_gin_location(message: str) -> str:
  location = _GIN_LOCATION.search(message)
  return (message[:location.start()] if location else message).strip()


def _gin_hint(problem: str, error: Exception) -> str:
  """What to write instead, for the errors gin raises on a parsed line."""
  param = re.search(r"Configurable '(\w+)' doesn't have a parameter named '(\w+)'", problem)
  if param:
    close = difflib.get_close_matches(f"{param.group(1)}.{param.group(2)}", known_fields(), n=5,
                                      cutoff=0.5)
    return (f"did you mean: {', '.join(close)}?" if close else
            f"see the fields of {param.group(1)} (llmjax.{param.group(1)}).")
  unknown = re.search(r"No configurable matching (?:reference )?'@?([\w.]+)", problem)
  if unknown:
    close = difflib.get_close_matches(unknown.group(1), list(CONFIG_CLASSES), n=3, cutoff=0.5)
    hint = f"did you mean: {', '.join(close)}? " if close else ""
    return f"{hint}bindable classes: {sorted(CONFIG_CLASSES)}."
  if isinstance(error, ImportError):
    return "gin files here bind llmjax's config classes only: remove the import line."
  return _SYNTAX_HELP + "."


def _parse_piece(text: str, where: str, lines: bool) -> None:
  """Parses gin `text`; any gin error becomes one line naming `where` (with the line number if
  `lines`: a file, else a flag) and the fix."""
  try:
    gin.parse_config(text)
  except (SyntaxError, tokenize.TokenError, ValueError, ImportError) as e:
    problem, line = _gin_message(e)
    syntax_help = _SYNTAX_HELP if lines else _FLAG_HELP
    if isinstance(e, tokenize.TokenError) and "bracket" in problem:
      bracket = _unclosed_bracket(text)
      if bracket is not None:
        problem = f"the {bracket[0]!r} opened {'here ' if lines else ''}is never closed"
        line = bracket[1]
      hint = f"close it ({syntax_help})."
    elif isinstance(e, SyntaxError | tokenize.TokenError):
      # An error after an unclosed bracket is usually that bracket's fault (gin read on).
      bracket = _unclosed_bracket("\n".join(text.splitlines()[:(line or 1) - 1]))
      if bracket is not None and lines:
        problem += f" (the {bracket[0]!r} opened at line {bracket[1]} is still open there)"
      hint = syntax_help + "."
    else:
      hint = _gin_hint(problem, e)
    if lines and line:
      where = f"{where}, line {line}"
    raise GinConfigError(f"{where}: {problem}: {hint}") from e


def _macro_of(value: Any) -> str | None:
  """The macro name of a gin `%MACRO` reference, else None."""
  if isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
    return value.scoped_selector.rsplit("/", 1)[0]
  return None


def _undefined_macro(value: Any, chain: tuple[str, ...] = ()) -> tuple[str, ...] | None:
  """The chain of macros from `value` to one that is never defined, if any."""
  macro = _macro_of(value)
  if macro is not None:
    if macro in chain:
      return None  # A cycle: gin reports it when the value is used.
    try:
      inner = gin.query_parameter(f"{macro}/gin.macro.value")
    except ValueError:
      return chain + (macro,)
    return _undefined_macro(inner, chain + (macro,))
  items = (value.values() if isinstance(value, dict) else value
           if isinstance(value, list | tuple) else ())
  for item in items:
    found = _undefined_macro(item, chain)
    if found:
      return found
  return None


def _bound(name: str, field: str) -> Any:
  """The value gin binds to `name.field` (a macro reference stays one), or None if unbound."""
  try:
    return gin.query_parameter(f"{name}.{field}")
  except ValueError:
    return None


def _check_macro_references() -> None:
  """Refuses a config field whose value refers (maybe through other macros) to a `%MACRO`
  that nothing defines; gin itself would report a missing 'value' argument of the class."""
  for name, cls in CONFIG_CLASSES.items():
    for field in dataclasses.fields(cls):
      chain = _undefined_macro(_bound(name, field.name))
      if chain:
        missing = chain[-1]
        via = "".join(f" = %{m}" for m in chain)
        macros = _defined_macros()
        close = difflib.get_close_matches(missing, macros, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise GinConfigError(
            f"{name}.{field.name}{via}: the macro %{missing} is not defined: define it in a gin "
            f"file ({missing} = VALUE) or pass --gin.{missing}=VALUE.{hint} Macros defined: "
            f"{sorted(macros)}.")


def parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin files, then validated bindings, into gin's global config (unlocked).

  Raises:
    GinConfigError: a missing or unreadable file, a gin syntax error (naming the file and line,
      or the flag), an unknown class, field or macro, or a reference to an undefined macro.
  """
  if not gin_files:
    raise GinConfigError("no --gin_file given: start from gin_configs/runs/quickstart.gin.")
  gin.clear_config()
  resolved = [_resolve_file(path) for path in gin_files]
  for path in resolved:
    for piece_path, first, text in _expand_includes(path):
      # Blank lines in front keep gin's line numbers those of the file.
      _parse_piece("\n" * (first - 1) + text, f"gin file {piece_path}", lines=True)
  macros = _defined_macros()
  for binding in bindings:
    _check_binding(binding, macros)
  with gin.unlock_config():
    for binding in bindings:
      name, _, value = binding.partition("=")
      _parse_piece(binding, f"--gin.{name.strip()}={value.strip()}", lines=False)
  _check_macro_references()


def _flag_value(value: Any) -> str:
  """`value` as typed after `--gin.NAME=` (bare words need no quotes; see _as_gin_value)."""
  if isinstance(value, str) and re.fullmatch(r"[\w./*-]+", value) and _as_gin_value(
      value) == repr(value):
    return value
  return repr(value)


def _type_error_message(name: str, e: ConfigTypeError) -> str:
  """A config field's type error, naming the macro that set the field and the flag to fix it."""
  macro = _macro_of(_bound(name, e.field))
  target = macro or f"{name}.{e.field}"
  example = f"--gin.{target}={_flag_value(e.example)}" if e.example is not None else None
  return e.describe(example, source=f"set by the macro {macro}" if macro else None)


def build(name: str) -> Any:
  """Instantiates config class `name` from the parsed gin bindings, with a clear error.

  Raises:
    GinConfigError: a required field is unbound, a field has the wrong type, or the class
      refuses the values (its message, without gin's call-site context).
  """
  try:
    return _CONFIGURABLES[name]()
  except ConfigTypeError as e:  # Before TypeError: it is one.
    raise GinConfigError(_type_error_message(name, e)) from e
  except TypeError as e:
    listed = re.search(r"missing \d+ required [\w-]* ?arguments?: ([^\n]*)", str(e))
    missing = re.findall(r"'(\w+)'", listed.group(1)) if listed else []
    if missing:
      fields = ", ".join(f"{name}.{field}" for field in missing)
      raise GinConfigError(
          f"{fields} must be set: bind it in a gin file (see gin_configs/models/) or pass "
          f"--gin.{name}.{missing[0]}=VALUE.") from e
    raise
  except ValueError as e:
    # gin appends "In call to configurable ..." on a second line: the class's message is the
    # whole story (and names the field).
    raise GinConfigError(_without_gin_location(str(e))) from e


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
