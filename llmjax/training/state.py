"""The train state and its creation directly in sharded form.

Shapes come first: `jax.eval_shape` on the model's boxed init gives abstract parameters carrying
logical axis names; the rules turn those into `NamedSharding`s; the optimizer state's shardings
follow the parameters (every optimizer subtree shaped like the params, e.g. Adam's mu and nu,
gets the params' shardings; scalars such as step counts are replicated). Then one
`jax.jit(create, out_shardings=...)` builds the state already laid out on the mesh, so no
device ever holds a full unsharded copy.

The state's parameters are the fp32 master copy whatever dtype the model stores them in
(`ModelConfig.param_dtype`, e.g. 'bfloat16' for a converted bf16 checkpoint): the layers cast
them to the compute dtype, and every update lands in fp32. Only an explicit `master_dtype`
(the pure-bf16 precision policy, `models.precision.master_dtype`) keeps them low precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.linen import partitioning as nn_partitioning
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llmjax.sharding import partition


@struct.dataclass
class TrainState:
  """Everything a training run needs to continue bit-exactly (besides the data iterator).

  Attributes:
    step: int32 scalar, the number of optimizer updates applied so far.
    params: the model parameters (plain arrays, unboxed).
    opt_state: the optax state.
    rng: raw uint32 PRNG key data; per-step keys are `fold_in(rng, step)`, so they depend
      only on the step and not on when the run was (re)started.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init key, training key) from the run seed, as raw uint32 key data."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, train_rng


def as_master(params: Any, master_dtype: Any = jnp.float32) -> Any:
  """`params` (arrays or ShapeDtypeStructs) with every floating leaf in `master_dtype`."""
  dtype = jnp.dtype(master_dtype)

  def cast(x: Any) -> Any:
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dtype:
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)

  return jax.tree.map(cast, params)


def opt_state_shardings(abstract_opt_state: Any, params_shardings: Any,
                        replicated: NamedSharding) -> Any:
  """Shardings for an optimizer state: params-shaped subtrees follow the params."""
  params_def = jax.tree.structure(params_shardings)

  def like_params(node: Any) -> bool:
    try:
      return jax.tree.structure(node) == params_def
    except TypeError:
      return False

  return jax.tree.map(lambda node: params_shardings if like_params(node) else replicated,
                      abstract_opt_state, is_leaf=like_params)


def state_shardings(boxed_init: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
                    mesh: Mesh, rules: Any, *, master_dtype: Any = jnp.float32
                    ) -> tuple[TrainState, TrainState]:
  """Abstract state and its shardings, without allocating anything.

  Args:
    boxed_init: `rng -> params` still boxed with logical axis metadata (flax `Partitioned`).
    optimizer: the optax transformation.
    mesh: device mesh.
    rules: logical axis rules (a rule set from `llmjax.sharding.rules`).
    master_dtype: the dtype of the state's floating parameters (fp32 master parameters unless
      a pure low-precision policy asks otherwise).

  Returns:
    (abstract_state, shardings): a TrainState of `jax.ShapeDtypeStruct`s (with `.sharding`
    set, so it can serve as an Orbax restore target) and a TrainState of `NamedSharding`s.
  """
  return abstract_state_shardings(jax.eval_shape(boxed_init, jax.random.PRNGKey(0)), optimizer,
                                  mesh, rules, master_dtype=master_dtype)


def abstract_state_shardings(abstract_boxed: Any, optimizer: optax.GradientTransformation,
                             mesh: Mesh, rules: Any, *, master_dtype: Any = jnp.float32
                             ) -> tuple[TrainState, TrainState]:
  """`state_shardings` from params already abstract: `jax.eval_shape(boxed_init, rng)`."""
  params_shardings = partition.logical_shardings(abstract_boxed, mesh, rules)
  abstract_params = as_master(nn.unbox(abstract_boxed), master_dtype)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  replicated = NamedSharding(mesh, PartitionSpec())
  shardings = TrainState(
      step=replicated,
      params=params_shardings,
      opt_state=opt_state_shardings(abstract_opt, params_shardings, replicated),
      rng=replicated,
  )
  abstract = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32),
      params=abstract_params,
      opt_state=abstract_opt,
      rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
  )
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  return abstract, shardings


def create_train_state(boxed_init: Callable[[jax.Array], Any],
                       optimizer: optax.GradientTransformation, seed: int, mesh: Mesh,
                       rules: Any, *, master_dtype: Any = jnp.float32,
                       shardings: TrainState | None = None) -> tuple[TrainState, TrainState]:
  """Initializes params (in `master_dtype`, see `state_shardings`) + optimizer state already
  sharded on `mesh`.

  Args:
    shardings: the state's shardings, when already computed (`state_shardings`).

  Returns:
    (state, shardings), shardings being a TrainState of `NamedSharding`s.
  """
  if shardings is None:
    _, shardings = state_shardings(boxed_init, optimizer, mesh, rules,
                                   master_dtype=master_dtype)
  init_rng, train_rng = seed_keys(seed)

  def create() -> TrainState:
    params = as_master(nn.unbox(boxed_init(init_rng)), master_dtype)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=train_rng)

  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    state = jax.jit(create, out_shardings=shardings)()
  return state, shardings
