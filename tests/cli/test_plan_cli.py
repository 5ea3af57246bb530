"""`llmjax plan`: a 16-device plan in a subprocess, and bad input rejected before compiling."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmjax.cli import gin_config, main
from llmjax.models.interface import LanguageModel
from llmjax.models.norms import norm_num_params

REPO = Path(__file__).resolve().parents[2]
MINI = ["--gin.TrainConfig.batch_size=16", "--gin.TrainConfig.seq_len=32",
        "--gin.ModelConfig.num_layers=2", "--gin.ModelConfig.embed_dim=64",
        "--gin.ModelConfig.mlp_dim=128", "--gin.VOCAB_SIZE=256"]
TINY = ["plan", "--gin_file=gin_configs/models/tiny.gin", *MINI]


def test_plan_16_devices_in_subprocess_reports_not_fitting():
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""  # Drop the test session's 8-device flag: plan fakes its own 16.
  out = subprocess.run(
      [sys.executable, "-m", "llmjax.cli", *TINY, "--mesh=data:2,fsdp:8", "--rules=fsdp",
       "--device=a100", "--device_memory_gb=0.0001", "--json"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr
  plan = json.loads(out.stdout.strip().splitlines()[-1])
  assert plan["num_devices"] == 16 and plan["mesh"]["data"] == 2 and plan["mesh"]["fsdp"] == 8
  assert plan["fits"] is False and plan["total_bytes"] > plan["usable_bytes"] == 0.0001e9 * 0.75
  gin_config.parse(["gin_configs/models/tiny.gin"], gin_config.split_gin_flags(MINI)[1])
  cfg = gin_config.build("ModelConfig")
  n = LanguageModel(cfg).num_params()
  norms = (2 * cfg.num_layers + 1) * norm_num_params(cfg)
  # fsdp shards each matrix 8 ways (data replicates it); fp32 params, AdamW mu + nu.
  assert plan["param_bytes"] == ((n - norms) // 8 + norms) * 4
  assert 0 < plan["opt_state_bytes"] - 2 * plan["param_bytes"] <= 16
  assert plan["batch_bytes"] == (16 // 16) * 32 * 4 * 5  # One row per device, 5 int32/fp32 keys.
  assert plan["peak_flops"] == 312e12 and plan["precision"] == "mixed_bfloat16"


@pytest.mark.parametrize("flags, message", [
    (["--mesh=data:-1,fsdp:8"], "no -1"),
    (["--mesh=data:2,pipeline:4"], "the mesh axes are"),
    (["--mesh=fsdp:8", "--device=v100"], "valid devices: h100, h200, a100, tpu-v5p, cpu"),
    (["--mesh=fsdp:8", "--rules=zero3"], "valid names"),
    (["--mesh=fsdp:8", "--gin.TrainConfig.batch_size=4"], "make batch_size / microbatches a "
     "multiple of 8"),
    (["--mesh=fsdp:8", "--device=cpu", "--gin.ModelConfig.remat_policy='offload'"],
     "remat_policy='offload'"),
])
def test_bad_input_exits_2_with_one_line(flags, message, capsys):
  assert main([*TINY, *flags]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1, err
