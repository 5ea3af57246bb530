"""Golden PartitionSpecs of the tiny configs under every rule set (tests/sharding/golden/).

Regenerate after an intended change to rules, axes or a model's parameters, then review the
diff (tp: heads/kv_heads/mlp/vocab on tensor; fsdp: embed on fsdp; sp: embed on
fsdp+sequence; dp: nothing split):

    python -m tests.sharding.regen_golden          # or: LLMJAX_REGEN_GOLDEN=1 pytest ...
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
# 8 devices with every parameter-sharding axis > 1, so each rule set shows all it splits.
MESH = {"data": 1, "fsdp": 2, "sequence": 2, "tensor": 2}
CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {  # name -> (gin file, bindings)
    "tiny": ("models/tiny.gin", ()),
    "bert_tiny": ("models/bert_tiny.gin", ()),
    "t5_tiny": ("models/t5_tiny.gin", ()),
    # LLaMA-shaped: 8 query heads sharing 2 kv heads (GQA), untied output head.
    "llama_tiny": ("models/tiny.gin", ("ModelConfig.num_heads = 8",
                                       "ModelConfig.num_kv_heads = 2",
                                       "ModelConfig.tie_embeddings = False",
                                       "ModelConfig.norm_eps = 1e-5")),
}


@functools.cache
def abstract_params(config_name: str) -> Any:
  """Boxed abstract params of a golden config."""
  from llmjax.cli import gin_config
  from llmjax.models.interface import LanguageModel

  gin_file, bindings = CONFIGS[config_name]
  gin_config.parse([gin_file], list(bindings))
  return LanguageModel(gin_config.build("ModelConfig")).abstract_init()


def compute(config_name: str, rules_name: str) -> dict[str, Any]:
  """The golden record: every parameter path's shape, logical axes and PartitionSpec."""
  from llmjax.sharding import report
  from llmjax.sharding.rules import get_rules

  rows = report.param_rows(abstract_params(config_name), get_rules(rules_name), MESH)
  return {"config": config_name, "gin_file": CONFIGS[config_name][0],
          "bindings": list(CONFIGS[config_name][1]), "rules": rules_name, "mesh": MESH,
          "params": {r.name: {"shape": list(r.shape), "logical_axes": list(r.logical_axes),
                              "spec": report.spec_to_json(r.spec)} for r in rows}}


def path(config_name: str, rules_name: str) -> Path:
  return GOLDEN_DIR / f"{config_name}__{rules_name}.json"


def dumps(record: dict[str, Any]) -> str:
  """JSON with one parameter per line, so a diff shows exactly which specs changed."""
  head = {k: v for k, v in record.items() if k != "params"}
  lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
  params = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(record["params"].items())]
  return "\n".join(lines + [' "params": {', ",\n".join(params), " }", "}"]) + "\n"


def write(config_name: str, rules_name: str) -> Path:
  target = path(config_name, rules_name)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_text(dumps(compute(config_name, rules_name)), encoding="utf-8")
  return target


def main() -> None:
  from llmjax.sharding.rules import RULE_SETS

  for config_name in CONFIGS:
    for rules_name in RULE_SETS:
      print(write(config_name, rules_name))


if __name__ == "__main__":
  main()
