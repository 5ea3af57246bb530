"""The bad-input corpus's harness: run a CLI command in-process, then assert it failed clearly.

A clear failure: the expected exit code, a message on stderr that names the problem and the fix
(regexes the test gives), no traceback anywhere in the output, and, where a workdir or other
directory exists, not one of its files created, changed or removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

from llmjax.cli import main


@dataclasses.dataclass(frozen=True)
class Outcome:
  code: int
  out: str
  err: str


def run_cli(argv: list[str], capfd) -> Outcome:
  """Runs `llmjax ARGV` in this process; an exception escaping `main` fails the test as-is."""
  capfd.readouterr()
  code = main([str(a) for a in argv])
  out, err = capfd.readouterr()
  return Outcome(code=code, out=out, err=err)


def snapshot(*directories: str | os.PathLike) -> dict[str, str]:
  """{path: sha256 of its bytes} of every file under the directories (missing ones: empty)."""
  files = {}
  for directory in directories:
    for root, _, names in os.walk(directory):
      for name in names:
        path = os.path.join(root, name)
        with open(path, "rb") as f:
          files[path] = hashlib.sha256(f.read()).hexdigest()
  return files


def assert_clear_failure(outcome: Outcome, code: int, *patterns: str,
                         before: dict[str, str] | None = None,
                         dirs: tuple[str | os.PathLike, ...] = ()) -> None:
  """Asserts exit `code`, every regex in `patterns` on stderr (case-insensitive), no traceback,
  and, given `before` (a `snapshot`), that the files under `dirs` are exactly as they were."""
  text = outcome.out + outcome.err
  assert outcome.code == code, f"exit {outcome.code}, wanted {code}; stderr:\n{outcome.err}"
  assert "Traceback (most recent call last)" not in text, text
  for pattern in patterns:
    assert re.search(pattern, outcome.err, re.IGNORECASE | re.DOTALL), (
        f"{pattern!r} not in stderr:\n{outcome.err}")
  if before is not None:
    assert snapshot(*dirs) == before, "files changed under " + ", ".join(map(str, dirs))
