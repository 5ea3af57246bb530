"""`llmjax shardings`: tables and JSON of every parameter's layout; bad input exits 2."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmjax.cli import gin_config, shardings
from llmjax.models.interface import LanguageModel

REPO = Path(__file__).resolve().parents[2]
TINY = "--gin_file=gin_configs/models/tiny.gin"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
  monkeypatch.chdir(REPO)


def _json(capsys, *argv):
  assert shardings.main([*argv, "--json"]) == 0
  return json.loads(capsys.readouterr().out)


def _check_bytes(record):
  """Every row's per-device bytes == numpy-style size / product of its mesh axes."""
  mesh = record["mesh"]
  for row in record["params"] + record["activations"]:
    itemsize = {"float32": 4, "bfloat16": 2}[row["dtype"]]
    ways = math.prod(mesh[a] for e in row["spec"] if e for a in ([e] if isinstance(e, str) else e))
    assert row["bytes_total"] == math.prod(row["shape"]) * itemsize
    assert row["bytes_per_device"] * ways == row["bytes_total"], row["name"]
  totals = record["totals"]
  assert totals["params_bytes_per_device"] == sum(r["bytes_per_device"] for r in record["params"])
  assert totals["optimizer_bytes_per_device"] == 2 * totals["params_bytes_per_device"]  # fp32


def test_table_lists_every_parameter_and_activation(capsys):
  argv = [TINY, "--mesh=fsdp:4,tensor:2", "--rules=fsdp_tp"]
  record = _json(capsys, *argv)
  assert record["mesh"] == {"data": 1, "fsdp": 4, "sequence": 1, "tensor": 2}
  assert record["devices"] == 8 and record["rules"] == "fsdp_tp"
  _check_bytes(record)
  params = {r["name"]: r for r in record["params"]}
  assert params["token_embed/embedding"]["spec"] == ["tensor", "fsdp"]
  assert params["decoder/layers/mlp/wo"]["spec"] == [None, "tensor", "fsdp"]
  gin_config.parse(["gin_configs/models/tiny.gin"], [])
  expected = LanguageModel(gin_config.build("ModelConfig")).num_params()  # Analytic count.
  assert sum(math.prod(r["shape"]) for r in record["params"]) == expected
  assert [r["name"] for r in record["activations"]] == [
      "residual", "attention q / out", "attention k, v", "mlp hidden", "logits"]
  assert record["activations"][-1]["shape"] == [32, 256, 4096]  # TrainConfig defaults.
  assert record["warnings"] == []

  assert shardings.main(argv) == 0
  text = capsys.readouterr().out
  for name in params:
    assert name in text
  assert "token_embed/embedding" in text and "tensor, fsdp" in text and "4096x256" in text
  assert "Totals per device" in text and "AdamW moments" in text
  assert "data+fsdp, -, tensor" in text  # The MLP hidden activation.


def test_defaults_come_from_gin_and_warnings_are_printed(capsys):
  # No --mesh: the gin MeshConfig (data: -1 -> the 8 test devices) and its rules.
  record = _json(capsys, TINY, "--gin.MeshConfig.shape={'fsdp': -1}",
                 "--gin.MeshConfig.rules='sp'", "--gin.TrainConfig.microbatches=2")
  assert record["mesh"] == {"data": 1, "fsdp": 8, "sequence": 1, "tensor": 1}
  assert record["rules"] == "sp" and record["batch_size"] == 16
  assert shardings.main([TINY, "--gin.VOCAB_SIZE=4099", "--mesh=tensor:4,sequence:2",
                         "--rules=tp"]) == 0
  text = capsys.readouterr().out
  assert "(tensor), -" in text  # The vocab dim the rule wanted split, left whole.
  assert "mesh axis 'sequence' has 2 devices but rule set 'tp' never uses it" in text
  assert "token_embed/embedding [4099, 256] float32: 4.0 MiB per device" in text
  assert "pad vocab_size to a multiple of 4 (e.g. ModelConfig.vocab_size=4100)" in text


@pytest.mark.parametrize("argv,message", [
    (["--rules=zero3"], "Unknown sharding rule set 'zero3'; valid names: ['dp', 'fsdp', "
                        "'fsdp_tp', 'sp', 'sp_tp', 'tp']"),
    (["--mesh=model:8"], "Unknown mesh axes ['model']; the mesh axes are ('data', 'fsdp', "
                         "'sequence', 'tensor')"),
    (["--mesh=data:-1,tensor:2"], "give every axis size (no -1)"),
    (["--mesh=data"], "is not AXIS:SIZE"),
    (["--gin.MeshConfig.shape={'data': 3}"], "uses 3 devices. There are 8 devices"),
    (["--gin.ModelConfig.num_layerz=2"], "Did you mean: ModelConfig.num_layers"),
])
def test_bad_input_exits_2_with_a_message(capsys, argv, message):
  assert shardings.main([TINY, *argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("llmjax shardings: ") and message in err
  assert len(err.strip().splitlines()) == 1


def test_sixteen_device_mesh_in_a_fresh_process():
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  out = subprocess.run(
      [sys.executable, "-m", "llmjax.cli", "shardings", TINY, "--gin.ModelConfig.num_heads=8",
       "--mesh=data:2,fsdp:2,sequence:2,tensor:2", "--rules=sp_tp", "--json"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True)
  record = json.loads(out.stdout)
  assert record["devices"] == 16
  _check_bytes(record)
  params = {r["name"]: r for r in record["params"]}
  assert params["decoder/layers/attention/query"]["spec"] == [None, ["fsdp", "sequence"],
                                                              "tensor", None]
  residual = record["activations"][0]
  assert residual["spec"] == [["data", "fsdp"], "sequence", None]
  assert residual["bytes_per_device"] == 32 * 256 * 256 * 4 // 8
