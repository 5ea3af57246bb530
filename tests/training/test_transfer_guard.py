"""The transfer guard around each training step: implicit host<->device copies fail, explicit
ones (the batch's make_array_from_process_local_data, metrics' device_get) pass.

On CPU, device memory is host memory: JAX reports no device-to-host copy there (reading a
device array as a number passes), so these tests show host-to-device ones; on GPU/TPU the guard
refuses both directions.

A normal run under the guard is every other train() test (tests/training/test_loop.py's
`trained` run included); here the guard is shown to bite in the real loop.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from llmjax.sharding.mesh import MeshConfig
from llmjax.training import guard, host_data, loop
from tests.training import test_loop
from tests.training.test_loop import _configs

corpus = test_loop.corpus  # The fixture (module scope).
_DISALLOWED = "Disallowed host-to-device transfer"


def test_guard_refuses_implicit_transfers_and_passes_explicit_ones():
  add_one = jax.jit(lambda x: x + 1)
  on_device = jax.device_put(np.ones(4, np.float32))
  sharding = NamedSharding(jax.make_mesh((8,), ("data",)), PartitionSpec("data"))
  with guard.transfer_guard():
    with pytest.raises(jax.errors.JaxRuntimeError, match=_DISALLOWED):
      add_one(np.ones(4, np.float32))  # A NumPy array handed to a jitted function.
    with pytest.raises(jax.errors.JaxRuntimeError, match=_DISALLOWED):
      on_device * np.arange(4)  # Host data mixed into a device computation.
    with pytest.raises(jax.errors.JaxRuntimeError, match=_DISALLOWED):
      on_device[0]  # Even a Python index is a host value sent to the device.
    # Explicit transfers: what the loop does on purpose.
    batch = host_data.to_global({"inputs": np.arange(16).reshape(8, 2)}, sharding, 8)
    out = jax.device_get(add_one(batch["inputs"]))
    np.testing.assert_array_equal(out, np.arange(16).reshape(8, 2) + 1)
    jax.device_put(np.zeros(2))
  assert float(jnp.sum(on_device)) == 4.0  # Outside, all is allowed again.


def test_jax_flags_set_the_level_instead():
  """JAX_TRANSFER_GUARD (or an enclosing jax.transfer_guard) wins over the default."""
  with jax.transfer_guard("allow"), guard.transfer_guard():
    assert float(jax.jit(lambda x: x.sum())(np.ones(3))) == 3.0


def test_an_implicit_transfer_in_the_training_step_fails_the_run(tmp_path, monkeypatch, corpus):
  # The accident: a batch reaching the compiled step as host NumPy arrays (say, a refactor
  # that drops host_data.to_global). Without the guard jit would copy it silently every step.
  monkeypatch.setattr(host_data, "to_global", lambda batch, sharding, batch_size: batch)
  configs = _configs(corpus, train_steps=1, warmup_steps=1, eval_batches=0, microbatches=1)
  configs["mesh"] = MeshConfig(shape={"data": 8, "fsdp": 1, "tensor": 1}, rules="dp")  # Quick.
  with pytest.raises(Exception, match=_DISALLOWED) as info:
    loop.train(**configs, workdir=str(tmp_path / "run"))
  error = info.value.__cause__ or info.value  # train() may wrap it (loop.RunError).
  assert isinstance(error, jax.errors.JaxRuntimeError)
