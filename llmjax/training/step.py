"""Pure train and eval steps, and their sharded compilation.

`train_step(state, batch) -> (state, metrics)` is a pure function of its inputs: the dropout key
is `fold_in(state.rng, state.step)`, so a resumed run computes exactly what an uninterrupted one
would. Gradient accumulation splits the batch into `microbatches` pieces and runs them in a
`lax.scan`, summing `weight_sum`-weighted gradients and dividing by the total weight sum at the
end, so n microbatches give the gradient of one big batch (up to float reassociation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from flax.linen import partitioning as nn_partitioning
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llmjax.sharding import axes
from llmjax.sharding.partition import constrain
from llmjax.sharding.rules import Rules
from llmjax.training import guard
from llmjax.training import metrics as metrics_lib
from llmjax.training.config import TrainConfig
from llmjax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
Params = Any  # A pytree of arrays: the model's parameters.


class Trainable(Protocol):
  """What the steps need from a model: a LanguageModel, or a test's toy with the same loss."""

  def loss_fn(self, params: Params, batch: Batch, rng: jax.Array | None, *, z_loss: float = 0.0,
              deterministic: bool = False) -> tuple[jax.Array, Metrics]:
    """(loss, aux) with aux holding loss, z_loss, accuracy and weight_sum."""
    ...

# aux entries averaged over tokens (weighted by weight_sum) when combining microbatches.
_MEAN_METRICS = ("loss", "z_loss", "accuracy")


def split_microbatches(batch: Batch, n: int) -> Batch:
  """[b, ...] -> [n, b // n, ...], microbatch i taking rows i, i + n, i + 2n, ...

  Strided rather than contiguous rows: with the batch sharded over devices along b, every
  microbatch then holds rows from every device, so each scan iteration keeps all devices busy
  and no data moves.
  """

  def split(x: jax.Array) -> jax.Array:
    b = x.shape[0]
    x = x.reshape((b // n, n) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return constrain(x, (None, axes.ACT_BATCH) + (None,) * (x.ndim - 2))

  return jax.tree.map(split, batch)


def _grads_and_aux(model: Trainable, cfg: TrainConfig, params: Params, batch: Batch,
                   rng: jax.Array) -> tuple[Params, Metrics]:
  """Gradient of the weighted-mean loss over `batch` and token-weighted aux metrics."""

  def loss_fn(p, mb, key):
    loss, aux = model.loss_fn(p, mb, key, z_loss=cfg.z_loss, deterministic=False)
    return loss, aux

  if cfg.microbatches == 1:
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
    return grads, {k: aux[k] for k in (*_MEAN_METRICS, "weight_sum")}

  def scaled_loss_fn(p, mb, key):
    # loss is a mean over the microbatch's tokens; times its weight sum it becomes a sum, so
    # the summed gradients divided by the total weight sum are the big-batch gradient.
    loss, aux = loss_fn(p, mb, key)
    return loss * aux["weight_sum"], aux

  def body(carry, xs):
    grad_sum, metric_sums = carry
    i, mb = xs
    (_, aux), grads = jax.value_and_grad(scaled_loss_fn, has_aux=True)(
        params, mb, jax.random.fold_in(rng, i))
    ws = aux["weight_sum"]
    grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
    metric_sums = {k: metric_sums[k] + (ws if k == "weight_sum" else aux[k] * ws)
                   for k in metric_sums}
    return (grad_sum, metric_sums), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  metric_zeros = {k: jnp.zeros((), jnp.float32) for k in (*_MEAN_METRICS, "weight_sum")}
  micro = split_microbatches(batch, cfg.microbatches)
  (grad_sum, sums), _ = jax.lax.scan(
      body, (zeros, metric_zeros), (jnp.arange(cfg.microbatches), micro))
  total = jnp.maximum(sums["weight_sum"], 1e-8)
  grads = jax.tree.map(lambda g: g / total.astype(g.dtype), grad_sum)
  metrics = {k: sums[k] / total for k in _MEAN_METRICS}
  metrics["weight_sum"] = sums["weight_sum"]
  return grads, metrics


def make_train_step(model: Trainable, optimizer: optax.GradientTransformation, cfg: TrainConfig,
                    schedule: optax.Schedule | None = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """Returns the pure `train_step(state, batch) -> (state, metrics)`.

  Args:
    model: a LanguageModel (anything with `loss_fn(params, batch, rng, *, z_loss,
      deterministic) -> (loss, aux)`, aux holding loss, z_loss, accuracy, weight_sum).
    optimizer: the optax transformation (from `make_optimizer`).
    cfg: the TrainConfig (microbatches, z_loss).
    schedule: the learning-rate schedule, only to report `learning_rate`.

  Metrics: the loss_fn's loss, z_loss, accuracy and weight_sum, grad_norm, learning_rate (with
  a schedule) and num_tokens, the batch's non-padding tokens (`metrics.count_tokens`: what
  tokens_per_sec and MFU count); with `cfg.nan_policy == 'skip'` also `skipped` (1.0 when the
  loss, the gradient norm or the updated state was non-finite, or the loss was a spike
  (`cfg.loss_spike_window`), and the update was dropped).
  With 'halt' (the default) the step is unchanged: the loop reads loss and grad_norm.
  """

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(state.rng, state.step)
    grads, metrics = _grads_and_aux(model, cfg, state.params, batch, rng)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["num_tokens"] = metrics_lib.count_tokens(batch)
    if cfg.loss_spike_window:  # The optimizer keeps the recent losses (guard.with_loss_window).
      spike = guard.is_loss_spike(state.opt_state, metrics["loss"], cfg.loss_spike_std)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params,
                                            loss=metrics["loss"])
    else:
      spike = jnp.asarray(False)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if cfg.nan_policy == "skip":
      # Drop a non-finite update (or a loss spike's) here, on device: the state stays as it
      # was, so a skipped loss never enters the spike window; the step counter (and with it the
      # schedule, the dropout key and the data) still advances.
      ok = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            & guard.tree_is_finite((params, opt_state)) & ~spike)
      params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                       (params, opt_state), (state.params, state.opt_state))
      metrics["skipped"] = jnp.logical_not(ok).astype(jnp.float32)
    if schedule is not None:
      metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(model: Trainable) -> Callable[[Params, Batch], Metrics]:
  """Returns `eval_step(params, batch) -> metrics` (deterministic; no dropout).

  Metrics: loss and accuracy (token-weighted means over the batch) and weight_sum, so the
  caller can combine several batches with weights.
  """

  def eval_step(params: Params, batch: Batch) -> Metrics:
    _, aux = model.loss_fn(params, batch, jax.random.PRNGKey(0), z_loss=0.0,
                           deterministic=True)
    return {"loss": aux["loss"], "accuracy": aux["accuracy"], "weight_sum": aux["weight_sum"]}

  return eval_step


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)


def compile_train_step(model: Trainable, optimizer: optax.GradientTransformation,
                       cfg: TrainConfig, mesh: Mesh, rules: Rules, state_shardings: TrainState,
                       abstract_state: TrainState, abstract_batch: Batch,
                       batch_sharding: NamedSharding, schedule: optax.Schedule | None = None
                       ) -> jax.stages.Compiled:
  """Ahead-of-time compiles the train step for these shapes and shardings.

  The state is donated (updated in place). Tracing happens under the mesh and the logical
  axis rules so `constrain` calls inside the model resolve to mesh axes.

  Returns:
    A compiled `step(state, batch) -> (state, metrics)`; metrics are replicated scalars.
  """
  step_fn = make_train_step(model, optimizer, cfg, schedule)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_shardings = jax.tree.map(lambda _: batch_sharding, abstract_batch)
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    return jitted.lower(_abstract(abstract_state, state_shardings),
                        _abstract(abstract_batch, batch_shardings)).compile()


def compile_eval_step(model: Trainable, mesh: Mesh, rules: Rules, params_shardings: Any,
                      abstract_params: Params, abstract_batch: Batch,
                      batch_sharding: NamedSharding) -> jax.stages.Compiled:
  """Ahead-of-time compiles `eval_step(params, batch) -> metrics` (nothing donated)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_shardings = jax.tree.map(lambda _: batch_sharding, abstract_batch)
  jitted = jax.jit(make_eval_step(model), in_shardings=(params_shardings, batch_shardings),
                   out_shardings=replicated)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    return jitted.lower(_abstract(abstract_params, params_shardings),
                        _abstract(abstract_batch, batch_shardings)).compile()
