"""Loop-corrected FLOPs and collective bytes against hand-counted programs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from llmjax.planning import hlo_costs

M, K, N, STEPS = 64, 128, 128, 5
MATMUL = 2 * M * K * N


def _costs(fn, *args):
  compiled = jax.jit(fn).lower(*args).compile()
  return hlo_costs.loop_corrected_costs(compiled, jax.devices()[0].client)


def _scanned(x, w):
  def body(carry, _):
    return jnp.tanh(carry @ w), None
  return jax.lax.scan(body, x, None, length=STEPS)[0]


def test_scan_body_counted_trip_count_times():
  x, w = jnp.ones((M, K)), jnp.ones((K, N))
  costs = _costs(_scanned, x, w)
  assert costs.loop_corrected
  assert costs.xla_flops < 2 * MATMUL  # XLA itself counts the body once...
  assert costs.flops == pytest.approx(STEPS * MATMUL, rel=0.05)  # ...corrected: 5 times.


def test_nested_scans_multiply():
  def outer(x, w):
    def body(carry, _):
      return _scanned(carry, w), None
    return jax.lax.scan(body, x, None, length=3)[0]

  costs = _costs(outer, jnp.ones((M, K)), jnp.ones((K, N)))
  assert costs.flops == pytest.approx(3 * STEPS * MATMUL, rel=0.05)


def test_cost_analysis_is_per_device_and_counts_collectives():
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
  rows = NamedSharding(mesh, PartitionSpec("x"))
  x = jax.device_put(np.ones((8 * M, K), np.float32), rows)
  w = jax.device_put(np.ones((K, N), np.float32), rows)  # Gathered before the matmul.
  costs = _costs(lambda a, b: a @ b, x, w)
  assert costs.flops == pytest.approx(MATMUL, rel=0.05)  # Global work is 8 * MATMUL.
  assert costs.collective_bytes >= K * N * 4  # The all-gathered [K, N] fp32 weight.


def test_type_bytes_of_arrays_and_tuples():
  assert hlo_costs._type_bytes("bf16[4,8]{1,0}") == 64
  assert hlo_costs._type_bytes("(f32[2], s32[10,10])") == 400
  assert hlo_costs._type_bytes("pred[3]") == 3
