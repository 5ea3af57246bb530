"""The optimizer against a NumPy AdamW: schedule, clipping, the weight-decay mask on the real
parameter trees of every family, and fp32 state and master parameters for bf16 checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.models.precision import master_dtype
from llmjax.sharding.mesh import make_mesh
from llmjax.sharding.rules import get_rules
from llmjax.training.config import TrainConfig
from llmjax.training.optimizer import decay_mask, make_optimizer, make_schedule
from llmjax.training.state import create_train_state


def test_schedule_warmup_then_cosine_to_end_ratio():
  cfg = TrainConfig(train_steps=110, warmup_steps=10, learning_rate=1.0,
                    end_learning_rate_ratio=0.1)
  lr = make_schedule(cfg)
  np.testing.assert_allclose(lr(0), 0.1, rtol=1e-6)
  np.testing.assert_allclose(lr(4), 0.5, rtol=1e-6)
  np.testing.assert_allclose(lr(9), 1.0, rtol=1e-6)
  np.testing.assert_allclose(lr(10), 1.0, rtol=1e-6)
  np.testing.assert_allclose(lr(60), 0.1 + 0.9 * 0.5, rtol=1e-6)  # Half way: cos = 0.
  np.testing.assert_allclose(lr(110), 0.1, rtol=1e-6)
  np.testing.assert_allclose(lr(500), 0.1, rtol=1e-6)  # Flat after train_steps.
  assert all(float(lr(s)) >= float(lr(s + 1)) for s in range(10, 110))


def test_schedule_no_warmup_and_constant():
  lr = make_schedule(TrainConfig(train_steps=5, warmup_steps=0, learning_rate=2.0))
  np.testing.assert_allclose(lr(0), 2.0, rtol=1e-6)
  const = make_schedule(TrainConfig(train_steps=5, warmup_steps=0, learning_rate=2.0,
                                    end_learning_rate_ratio=1.0))
  np.testing.assert_allclose([const(s) for s in range(8)], 2.0, rtol=1e-6)


def test_warmup_is_as_train_config_documents_it():
  # TrainConfig.warmup_steps: step s < warmup_steps (0-based) gets learning_rate * (s + 1) /
  # warmup_steps: the first step already moves, the last warmup step is at the peak.
  doc = " ".join(TrainConfig.__doc__.split())
  assert "learning_rate * (s + 1) / warmup_steps" in doc
  cfg = TrainConfig(train_steps=20, warmup_steps=8, learning_rate=3e-4)
  lr = make_schedule(cfg)
  want = [3e-4 * (s + 1) / 8 for s in range(8)]
  np.testing.assert_allclose([float(lr(s)) for s in range(8)], want, rtol=1e-6)
  assert float(lr(0)) > 0.0


# Real parameter trees: every family, biases on, scanned (2-D stacked biases and norm scales)
# and unrolled.
FAMILIES = {
    "gpt2_decoder": dict(position="learned", norm="layernorm", mlp="gelu"),
    "llama_decoder_untied": dict(position="rope", mlp="swiglu", tie_embeddings=False),
    "bert_encoder": dict(architecture="encoder", position="learned", norm="layernorm",
                         norm_position="post", embedding_norm=True, type_vocab_size=2,
                         mlp="gelu"),
    "bert_classifier": dict(architecture="encoder", position="learned", norm="layernorm",
                            norm_position="post", embedding_norm=True, type_vocab_size=2,
                            mlp="gelu", num_classes=3),
    "t5_encoder_decoder": dict(architecture="encoder_decoder", position="t5_relative",
                               mlp="geglu", tie_embeddings=False, num_decoder_layers=3),
}
TINY = dict(vocab_size=64, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_seq_len=16,
            use_bias=True)
# The role of every parameter name the layers create, written out by hand: weight matrices
# and embedding tables are decayed; biases, norm parameters and T5's relative-position bias
# table are not. A parameter the layers add later must be placed here (the test says so).
KERNELS = {"query", "key", "value", "out", "wi", "wi_gate", "wi_up", "wo", "dense", "pooler",
           "classifier", "output_kernel"}
EMBEDDING_TABLES = {"token_embed", "position_embed", "token_type_embed"}
BIASES = {"query_bias", "key_bias", "value_bias", "out_bias", "wi_bias", "wi_gate_bias",
          "wi_up_bias", "wo_bias", "dense_bias", "pooler_bias", "classifier_bias",
          "output_bias"}
NORMS = {"attention_norm", "cross_attention_norm", "mlp_norm", "final_norm", "embed_norm",
         "encoder_norm", "decoder_norm", "norm"}


def expected_decay(path: tuple[str, ...]) -> bool:
  leaf, parent = path[-1], (path[-2] if len(path) > 1 else "")
  if leaf in KERNELS:
    return True
  if leaf == "embedding" and parent in EMBEDDING_TABLES:
    return True
  if leaf in BIASES or (leaf in ("scale", "bias") and parent in NORMS):
    return False
  if leaf == "embedding" and parent == "relpos_bias":
    return False
  raise AssertionError(f"parameter {'/'.join(path)} has no role in this test: add it.")


def real_tree(family: str, scan: bool, **overrides) -> tuple[ModelConfig, dict]:
  cfg = ModelConfig(**TINY, **FAMILIES[family], scan_layers=scan, **overrides)
  return cfg, jax.eval_shape(LanguageModel(cfg).init, jax.random.PRNGKey(0))


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_decay_mask_is_exactly_kernels_and_embeddings(family, scan):
  _, params = real_tree(family, scan)
  flat = traverse_util.flatten_dict(params)
  got = traverse_util.flatten_dict(decay_mask(params))
  want = {path: expected_decay(path) for path in flat}
  wrong = {"/".join(p): got[p] for p in flat if got[p] != want[p]}
  assert not wrong, f"decay mask wrong for (path: decayed?) {wrong}"
  # The trees really have what the test is about: biases, 2-D stacked biases when scanned.
  biases = [p for p in flat if p[-1].endswith("bias")]
  assert biases and all(not got[p] for p in biases)
  if scan:
    assert any(flat[p].ndim == 2 for p in biases)


@pytest.mark.parametrize("family", ["gpt2_decoder", "t5_encoder_decoder"])
def test_weight_decay_moves_exactly_the_kernels_and_embeddings(family):
  # Zero gradients: AdamW's update is then lr * weight_decay * p where decayed, 0 elsewhere.
  # Random values everywhere: biases are initialized to zero, where decay would not show.
  _, shapes = real_tree(family, True)
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 1, x.shape), x.dtype), shapes)
  train = TrainConfig(train_steps=10, warmup_steps=0, learning_rate=0.1, weight_decay=0.5,
                      clip_norm=0.0, end_learning_rate_ratio=1.0)
  tx, _ = make_optimizer(train)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  flat_old, flat_new = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new)
  for path, old in flat_old.items():
    old = np.asarray(old)
    factor = 1.0 - 0.1 * 0.5 if expected_decay(path) else 1.0
    np.testing.assert_allclose(np.asarray(flat_new[path]), old * np.float32(factor),
                               rtol=1e-6, atol=1e-7, err_msg="/".join(path))


def numpy_adamw(params, grads_per_step, *, lr, b1, b2, eps, weight_decay=0.0, mask=None,
                clip_norm=0.0):
  """AdamW (decoupled decay, bias-corrected, optional global-norm clipping) in NumPy float32.

  Args:
    params: {name: array}; grads_per_step: a list of {name: array}; lr: step -> rate.
  """
  f32 = np.float32
  p = {k: np.asarray(v, f32).copy() for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in p.items()}
  nu = {k: np.zeros_like(v) for k, v in p.items()}
  for step, grads in enumerate(grads_per_step):
    g = {k: np.asarray(v, f32) for k, v in grads.items()}
    if clip_norm:
      norm = np.sqrt(sum(np.sum(x.astype(np.float64) ** 2) for x in g.values()))
      if norm > clip_norm:
        g = {k: (x / f32(norm) * f32(clip_norm)).astype(f32) for k, x in g.items()}
    t = step + 1
    for k in p:
      mu[k] = f32(b1) * mu[k] + f32(1 - b1) * g[k]
      nu[k] = f32(b2) * nu[k] + f32(1 - b2) * g[k] * g[k]
      mu_hat = mu[k] / f32(1 - b1 ** t)
      nu_hat = nu[k] / f32(1 - b2 ** t)
      update = mu_hat / (np.sqrt(nu_hat) + f32(eps))
      if weight_decay and (mask is None or mask[k]):
        update = update + f32(weight_decay) * p[k]
      p[k] = p[k] - f32(lr(step)) * update
  return p


def test_clipping_is_applied_before_adam_as_numpy_says():
  # Adam is scale-invariant per coordinate for one gradient, so clipping shows only across
  # steps: a huge first gradient, clipped, no longer dominates the second step's moments.
  cfg = TrainConfig(train_steps=10, warmup_steps=0, learning_rate=0.1, clip_norm=1.0,
                    weight_decay=0.0, end_learning_rate_ratio=1.0)
  tx, schedule = make_optimizer(cfg)
  params = {"w": jnp.zeros((3,), jnp.float32)}
  grads = [{"w": np.full((3,), 1e6, np.float32)}, {"w": np.asarray([1.0, -1.0, 0.5], np.float32)}]
  state, p = tx.init(params), params
  for g in grads:
    updates, state = tx.update({"w": jnp.asarray(g["w"])}, state, p)
    p = optax.apply_updates(p, updates)
  kw = dict(lr=lambda s: float(schedule(s)), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  clipped = numpy_adamw({"w": np.zeros(3)}, grads, clip_norm=1.0, **kw)["w"]
  unclipped = numpy_adamw({"w": np.zeros(3)}, grads, **kw)["w"]
  np.testing.assert_allclose(np.asarray(p["w"]), clipped, rtol=1e-5, atol=1e-7)
  # Without the clip the second step's update is about twice as large: no clip cannot pass.
  assert np.abs(clipped - unclipped).max() > 0.05


# A converted bf16 checkpoint's model.gin says param_dtype='bfloat16'.
BF16_CHECKPOINT = dict(vocab_size=64, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                       max_seq_len=16, param_dtype="bfloat16")


def _train_state(model: ModelConfig, train: TrainConfig, **kwargs):
  tx, schedule = make_optimizer(train)
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  lm = LanguageModel(model)
  state, _ = create_train_state(lambda r: lm.init_boxed(r, seq_len=8), tx, 0, mesh,
                                get_rules("dp"), **kwargs)
  return state, tx, schedule


def test_bf16_checkpoint_trains_fp32_master_params_and_fp32_optimizer_state():
  model = ModelConfig(**BF16_CHECKPOINT)
  assert model.weight_dtype == jnp.bfloat16  # Stored (and served) in bf16 ...
  state, _, _ = _train_state(model, TrainConfig(train_steps=10, warmup_steps=1))
  # ... trained as fp32 master parameters with fp32 optimizer state (counters aside).
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  state_dtypes = {x.dtype for x in jax.tree.leaves(state.opt_state)
                  if jnp.issubdtype(x.dtype, jnp.floating)}
  assert state_dtypes == {jnp.dtype(jnp.float32)}
  assert all(x.ndim == 0 for x in jax.tree.leaves(state.opt_state)
             if not jnp.issubdtype(x.dtype, jnp.floating))  # Step counts only.


def test_many_tiny_updates_move_a_bf16_checkpoint_weight_as_fp32_arithmetic_says():
  # 300 Adam steps of 2e-4 each: every one is below half a bf16 step of weights of this
  # size, so bf16 parameters would never move; fp32 masters move by 0.06.
  model = ModelConfig(**BF16_CHECKPOINT)
  train = TrainConfig(train_steps=300, warmup_steps=0, learning_rate=2e-4, weight_decay=0.1,
                      clip_norm=1.0, end_learning_rate_ratio=1.0)
  state, tx, schedule = _train_state(model, train)
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda x: rng.normal(0, 1e-3, x.shape).astype(np.float32), state.params)

  @jax.jit
  def step(params, opt_state):
    updates, opt_state = tx.update(jax.tree.map(jnp.asarray, grads), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = state.params, state.opt_state
  for _ in range(300):
    params, opt_state = step(params, opt_state)
  flat0 = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
  flat_g = traverse_util.flatten_dict(grads, sep="/")
  mask = traverse_util.flatten_dict(decay_mask(state.params), sep="/")
  want = numpy_adamw(flat0, [flat_g] * 300, lr=lambda s: float(schedule(s)), b1=train.b1,
                     b2=train.b2, eps=train.eps, weight_decay=train.weight_decay, mask=mask,
                     clip_norm=train.clip_norm)
  got = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  for name, value in got.items():
    assert np.abs(value - flat0[name]).max() > 0.05, name  # Really moved.
    np.testing.assert_allclose(value, want[name], rtol=0, atol=2e-5, err_msg=name)


def test_train_step_of_a_bf16_checkpoint_stays_fp32():
  # The real step (2 microbatches): gradient sums, updates, params and moments all fp32.
  from llmjax.training.step import make_train_step

  model = ModelConfig(**BF16_CHECKPOINT)
  train = TrainConfig(train_steps=10, warmup_steps=0, batch_size=4, seq_len=8, microbatches=2)
  state, tx, schedule = _train_state(model, train)
  tokens = np.random.default_rng(0).integers(0, 64, (4, 9)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "weights": np.ones((4, 8), np.float32), "segment_ids": np.ones((4, 8), np.int32),
           "positions": np.tile(np.arange(8, dtype=np.int32), (4, 1))}
  step = jax.jit(make_train_step(LanguageModel(model), tx, train, schedule))
  new, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  for tree in (new.params, new.opt_state):
    assert {x.dtype for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
  assert all(jax.tree.leaves(moved))


def test_pure_bf16_is_asked_for_by_name_and_keeps_fp32_optimizer_state():
  assert master_dtype("auto", "bfloat16") == "float32"
  assert master_dtype("mixed_bfloat16", "bfloat16") == "float32"
  assert master_dtype("bfloat16") == "bfloat16"
  model = ModelConfig(**BF16_CHECKPOINT | {"precision": "bfloat16"})
  assert (model.weight_dtype, model.compute_dtype) == (jnp.bfloat16, jnp.bfloat16)
  state, _, _ = _train_state(model, TrainConfig(train_steps=10, warmup_steps=1),
                             master_dtype=master_dtype(model.precision, model.param_dtype))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(state.opt_state)
          if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("changes, message", [
    ({"train_steps": 0}, "train_steps must be positive"),
    ({"batch_size": 6, "microbatches": 4}, "not divisible by microbatches"),
    ({"warmup_steps": 20, "train_steps": 10}, "exceeds train_steps"),
    ({"end_learning_rate_ratio": 2.0}, "end_learning_rate_ratio"),
])
def test_config_validation_messages(changes, message):
  with pytest.raises(ValueError, match=message):
    TrainConfig(**changes)
