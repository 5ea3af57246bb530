"""Golden PartitionSpecs: every parameter of the tiny configs under every rule set.

A failure means a rule set, a logical name or a parameter changed. If that was intended,
regenerate with `python -m tests.sharding.regen_golden` (or run this file with
LLMJAX_REGEN_GOLDEN=1) and review the diff of tests/sharding/golden/.
"""

import json
import os

import jax
import pytest
import regen_golden
from jax.sharding import PartitionSpec as P

from llmjax.sharding import partition
from llmjax.sharding.mesh import make_mesh
from llmjax.sharding.rules import RULE_SETS, get_rules

CASES = [(c, r) for c in regen_golden.CONFIGS for r in RULE_SETS]
# The design, stated independently of rules.py: which mesh axes each rule set puts each
# parameter dimension on (anything not listed: replicated).
SPLIT_TP = {"heads": "tensor", "kv_heads": "tensor", "mlp": "tensor", "vocab": "tensor"}
INTENDED = {
    "dp": {},
    "fsdp": {"embed": "fsdp"},
    "tp": SPLIT_TP,
    "fsdp_tp": {"embed": "fsdp"} | SPLIT_TP,
    "sp": {"embed": ["fsdp", "sequence"]},
    "sp_tp": {"embed": ["fsdp", "sequence"]} | SPLIT_TP,
}


@pytest.mark.parametrize("config_name,rules_name", CASES)
def test_partition_specs_match_golden(config_name, rules_name):
  got = json.loads(json.dumps(regen_golden.compute(config_name, rules_name)))
  path = regen_golden.path(config_name, rules_name)
  if os.environ.get("LLMJAX_REGEN_GOLDEN") == "1":
    regen_golden.write(config_name, rules_name)
  want = json.loads(path.read_text(encoding="utf-8"))
  changed = sorted(k for k in got["params"].keys() | want["params"].keys()
                   if got["params"].get(k) != want["params"].get(k))
  assert not changed, (f"{path.name}: specs changed for {changed}; if intended, run "
                       "`python -m tests.sharding.regen_golden` and review the diff.")
  assert got == want


@pytest.mark.parametrize("config_name,rules_name", CASES)
def test_golden_follows_the_intended_design(config_name, rules_name):
  record = json.loads(regen_golden.path(config_name, rules_name).read_text(encoding="utf-8"))
  mesh = record["mesh"]
  for name, param in record["params"].items():
    for size, logical, entry in zip(param["shape"], param["logical_axes"], param["spec"],
                                    strict=True):
      intended = INTENDED[rules_name].get(logical)
      names = [intended] if isinstance(intended, str) else intended or []
      ways = 1
      for axis in names:
        ways *= mesh[axis]
      expected = intended if size % ways == 0 else None
      assert entry == expected, (name, logical, size, entry, expected)


def test_golden_specs_are_what_real_shardings_use():
  """report.param_rows (the goldens) == partition.logical_shardings on a real 8-device mesh."""
  mesh = make_mesh(regen_golden.MESH)
  abstract = regen_golden.abstract_params("llama_tiny")
  for rules_name in RULE_SETS:
    shardings = partition.logical_shardings(abstract, mesh, get_rules(rules_name))
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    real = {"/".join(k.key for k in path): s.spec for path, s in flat}
    golden = regen_golden.compute("llama_tiny", rules_name)["params"]
    assert set(real) == set(golden)
    for name, spec in real.items():
      entries = [tuple(e) if isinstance(e, list) else e for e in golden[name]["spec"]]
      assert spec == P(*entries), (rules_name, name)
