"""The package order of DESIGN.md, checked on every module's imports (ast, nothing imported).

config_checks.py -> data, sharding -> models -> workdir.py -> training, sampling -> evaluation,
interop, planning, sweeps -> the curated API (llmjax/__init__.py) -> cli. A module may import
its own package and packages of a lower rank only; packages of one rank do not import each
other. Function-local imports count too: a lazy import is still a dependency. Only cli imports
gin.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "llmjax"

RANKS = {
    "config_checks": -1,  # Field type checks every config class uses; imports no llmjax.
    "data": 0, "sharding": 0, "distributed": 0,
    "models": 1,
    "workdir": 2,
    "training": 3, "sampling": 3,
    "evaluation": 4, "interop": 4, "planning": 4, "sweeps": 4,
    "__init__": 5,  # The curated public API: any library package, never cli.
    "cli": 6,
}


def _unit(root: pathlib.Path, parts: tuple[str, ...]) -> str:
  """The package (or top-level module) that llmjax.<parts...> belongs to."""
  if not parts:
    return "__init__"
  head = parts[0]
  if (root / head).is_dir() or (root / f"{head}.py").is_file():
    return head
  return "__init__"  # `from llmjax import load`: a name of the curated API.


def _imports(tree: ast.AST, root: pathlib.Path) -> list[tuple[int, str, str]]:
  """(line, imported name, llmjax unit or 'gin') for every llmjax or gin import in a module."""
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [(alias.name, alias.name.split(".")) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      segs = node.module.split(".")
      if segs == ["llmjax"]:  # `from llmjax import workdir, training`: one unit per name.
        targets = [(f"llmjax.{a.name}", ["llmjax", a.name]) for a in node.names]
      else:
        targets = [(node.module, segs)]
    else:
      continue
    for name, segs in targets:
      if segs[0] == "gin":
        found.append((node.lineno, name, "gin"))
      elif segs[0] == "llmjax":
        found.append((node.lineno, name, _unit(root, tuple(segs[1:]))))
  return found


def violations(root: pathlib.Path) -> list[str]:
  """Every import under `root` (an llmjax/ tree) that runs against the package order."""
  bad = []
  for path in sorted(root.rglob("*.py")):
    parts = path.relative_to(root).parts
    unit = parts[0] if len(parts) > 1 else path.stem
    if unit not in RANKS:
      bad.append(f"{path}: {unit!r} has no rank in the package order; add it to RANKS.")
      continue
    for line, name, target in _imports(ast.parse(path.read_text(encoding="utf-8")), root):
      where = f"{path.relative_to(root.parent)}:{line}"
      if target == "gin":
        if unit != "cli":
          bad.append(f"{where}: {unit} imports gin (only cli parses configs).")
      elif target not in RANKS:
        bad.append(f"{where}: {name} is in no ranked package.")
      elif target != unit and RANKS[target] >= RANKS[unit]:
        bad.append(f"{where}: {unit} (rank {RANKS[unit]}) imports {name} ({target}, rank "
                   f"{RANKS[target]}).")
  return bad


def test_every_import_follows_the_package_order():
  assert violations(ROOT) == []


def test_every_package_has_a_rank():
  units = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
  units |= {p.stem for p in ROOT.glob("*.py")}
  assert units <= set(RANKS), sorted(units - set(RANKS))


def _fake_tree(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
  root = tmp_path / "llmjax"
  for package in ("data", "models", "training", "sampling", "cli"):
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
  (root / "__init__.py").write_text("")
  (root / "workdir.py").write_text("from llmjax.models import config\n")
  for name, text in files.items():
    (root / name).write_text(text)
  return root


@pytest.mark.parametrize("name, text, expected", [
    ("models/interface.py", "from llmjax.training.losses import f\n", "models (rank 1) imports"),
    ("models/x.py", "def f():\n  from llmjax import sampling\n", "llmjax.sampling"),
    ("sampling/loading.py", "import llmjax.training.checkpoint\n", "sampling (rank 3)"),
    ("workdir.py", "from llmjax.training import checkpoint\n", "workdir (rank 2)"),
    ("data/x.py", "from llmjax import workdir\n", "data (rank 0)"),
    ("training/x.py", "import llmjax\n", "training (rank 3) imports llmjax (__init__"),
    ("models/y.py", "import gin\n", "models imports gin"),
])
def test_a_bad_import_is_caught(tmp_path, name, text, expected):
  """The check can fail: each injected back edge is reported."""
  root = _fake_tree(tmp_path, {name: text})
  found = violations(root)
  assert len(found) == 1 and expected in found[0], found


def test_allowed_imports_pass(tmp_path):
  root = _fake_tree(tmp_path, {
      "training/x.py": "from llmjax import workdir\nfrom llmjax.models import config\n",
      "cli/x.py": "import gin\nimport llmjax\nfrom llmjax.training import x\n",
      "sampling/x.py": "from llmjax.sampling import y\nfrom . import z\n"})
  assert violations(root) == []
