"""Named precision policies and remat policies that a backend cannot run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.models.precision import policy_dtypes, resolve_policy
from llmjax.models.stack import check_remat_supported
from llmjax.training.config import TrainConfig
from llmjax.training.optimizer import make_optimizer

TINY = dict(vocab_size=64, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_seq_len=16)


@pytest.mark.parametrize("platform,want", [("cpu", "float32"), ("gpu", "mixed_bfloat16"),
                                           ("cuda", "mixed_bfloat16"), ("tpu", "mixed_bfloat16")])
def test_auto_is_fp32_on_cpu_and_mixed_on_accelerators(platform, want):
  assert resolve_policy("auto", platform) == want


def test_default_config_is_fp32_on_this_cpu():
  cfg = ModelConfig(**TINY)
  assert (cfg.weight_dtype, cfg.compute_dtype) == (jnp.float32, jnp.float32)


def test_mixed_bfloat16_keeps_params_and_optimizer_state_fp32_and_computes_in_bf16():
  cfg = ModelConfig(**TINY, precision="mixed_bfloat16")
  lm = LanguageModel(cfg)
  params = lm.init(jax.random.PRNGKey(0))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  optimizer, _ = make_optimizer(TrainConfig(train_steps=10, warmup_steps=1))
  opt_state = optimizer.init(params)
  assert {x.dtype for x in jax.tree.leaves(opt_state) if x.ndim} == {jnp.dtype(jnp.float32)}
  tokens = jnp.arange(8, dtype=jnp.int32)[None]
  logits_bf16, _ = lm.apply(params, tokens)
  logits_fp32, _ = LanguageModel(cfg.replace(precision="float32")).apply(params, tokens)
  # bf16 matmuls: close to the fp32 model, but not the same numbers.
  diff = np.abs(np.asarray(logits_bf16, np.float32) - np.asarray(logits_fp32))
  assert 0 < diff.max() < 0.1


def test_explicit_dtypes_override_the_policy():
  cfg = ModelConfig(**TINY, precision="mixed_bfloat16", dtype="float32", param_dtype="bfloat16")
  assert (cfg.weight_dtype, cfg.compute_dtype) == (jnp.bfloat16, jnp.float32)
  assert policy_dtypes("float32") == ("float32", "float32")


def test_unknown_precision_names_the_choices():
  with pytest.raises(ValueError, match="precision='fp8' is not one of"):
    ModelConfig(**TINY, precision="fp8")


def test_offload_remat_is_refused_on_cpu_before_compiling():
  cfg = ModelConfig(**TINY, remat_policy="offload")
  with pytest.raises(ValueError, match="use 'dots_no_batch' or 'full' there"):
    check_remat_supported(cfg, "cpu")
  check_remat_supported(cfg, "gpu")  # Fine where pinned host memory exists.
