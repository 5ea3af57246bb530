"""The planner's per-device bytes and FLOPs against analytic counts."""

import pytest

from llmjax.models.interface import LanguageModel
from llmjax.models.norms import norm_num_params
from llmjax.planning import devices, planner


@pytest.fixture(scope="module")
def fsdp8_plan(mini_configs):
  c = mini_configs
  return planner.plan(c["model"], c["train"], c["data"], {"fsdp": 8}, "fsdp",
                      devices.get_device("h100"))


def test_param_and_optimizer_bytes_match_analytic_fsdp8(fsdp8_plan, mini_configs):
  cfg = mini_configs["model"]
  n = LanguageModel(cfg).num_params()
  # Every matrix has an embed dimension (64, divisible by 8) split over fsdp; norm scales
  # (2 per layer + the final one) are replicated by every rule set. Params are fp32.
  norms = (2 * cfg.num_layers + 1) * norm_num_params(cfg)
  expected = ((n - norms) // 8 + norms) * 4
  assert fsdp8_plan.param_bytes == expected
  # AdamW: mu and nu like the params, plus int32 step counts.
  extra = fsdp8_plan.opt_state_bytes - 2 * expected
  assert 0 < extra <= 16
  assert fsdp8_plan.precision == "mixed_bfloat16"  # 'auto' resolved for the GPU target.


def test_memory_total_is_arguments_temp_and_undonated_outputs(fsdp8_plan):
  p = fsdp8_plan
  assert p.total_bytes == (p.argument_bytes + p.temp_bytes + p.output_bytes - p.alias_bytes
                           + p.generated_code_bytes)
  # The donated state comes back in place: almost every output byte is aliased.
  assert p.output_bytes - p.alias_bytes < 0.01 * p.output_bytes
  state_and_batch = p.param_bytes + p.opt_state_bytes + p.batch_bytes
  assert abs(p.argument_bytes - state_and_batch) <= 64  # + step and rng scalars.
  assert p.fits and p.total_bytes < 0.01 * p.usable_bytes


def test_flops_within_sane_factor_of_6nt(fsdp8_plan):
  p = fsdp8_plan
  global_flops = p.flops_per_device * p.num_devices
  assert 0.9 < global_flops / p.model_flops_6nt < 2.0
  assert 0.9 < global_flops / p.model_flops_per_step < 1.5
  # XLA counts the scanned layer body once; the correction adds the other layers.
  assert p.loop_corrected and p.xla_flops_per_device < 0.9 * p.flops_per_device


def test_step_time_is_roofline_max(fsdp8_plan):
  p = fsdp8_plan
  # On an accelerator target the CPU-compiled HBM traffic is reported, not counted.
  assert p.step_time_s == max(p.compute_s, p.collective_s)
  assert p.memory_s > 0
  assert p.compute_s == pytest.approx(p.flops_per_device / 989e12)
  assert p.mfu == pytest.approx(p.model_flops_per_step / (p.step_time_s * 989e12 * 8))


def test_bad_configs_raise_before_compiling(mini_configs):
  c = mini_configs
  h100 = devices.get_device("h100")
  with pytest.raises(ValueError, match="multiple of 8"):
    planner.plan(c["model"], c["train"].replace(batch_size=4), c["data"], {"fsdp": 8}, "fsdp",
                 h100)
  with pytest.raises(ValueError, match="valid names"):
    planner.plan(c["model"], c["train"], c["data"], {"fsdp": 8}, "nope", h100)
  with pytest.raises(ValueError, match="offload"):
    planner.plan(c["model"].replace(remat_policy="offload"), c["train"], c["data"],
                 {"fsdp": 8}, "fsdp", devices.get_device("cpu", num_devices=8))
  with pytest.raises(ValueError, match="-1"):
    planner.plan(c["model"], c["train"], c["data"], {"fsdp": -1}, "fsdp", h100)


def test_offload_for_gpu_is_refused_with_the_reason(mini_configs):
  c = mini_configs
  with pytest.raises(ValueError, match="planner compiles on CPU"):
    planner.plan(c["model"].replace(remat_policy="offload"), c["train"], c["data"],
                 {"fsdp": 8}, "fsdp", devices.get_device("h100"))
