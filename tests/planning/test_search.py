"""--search: the space, the ranking, and what is excluded or skipped."""

import pytest

from llmjax.planning import devices, search
from llmjax.sharding import rules as rules_lib


def test_space_reads_rule_sets_and_platform_remat(mini_configs, monkeypatch):
  model = mini_configs["model"]
  assert "offload" not in search.supported_remat_policies(model, "cpu")
  assert "offload" in search.supported_remat_policies(model, "gpu")
  monkeypatch.setitem(rules_lib.RULE_SETS, "added_later", rules_lib.RULE_SETS["dp"])
  space = search.candidates(model, "gpu")
  assert {c.rules for c in space} == set(rules_lib.RULE_SETS)
  assert {c.microbatches for c in space} == {1, 2, 4, 8}
  with pytest.raises(ValueError, match="cannot run on 'cpu'"):
    search.candidates(model, "cpu", remat=["offload"])


def test_search_ranks_fitting_plans_and_excludes_the_rest(mini_configs):
  c = mini_configs
  # The mini decoder needs about 1.0 MB per device without remat and 0.6 MB with full remat
  # (XLA:CPU buffer assignment); 0.8 MB lets exactly the remat plan fit.
  device = devices.get_device("h100", memory_gb=0.0008, memory_fraction=1.0)
  lines = []
  result = search.search(c["model"], c["train"], c["data"], {"fsdp": 8}, device,
                         remat=["none", "full"], microbatches=[1, 3], rules=["fsdp"],
                         progress=lines.append)
  assert len(lines) == 4 and lines[0].startswith("[1/4] remat=none microbatches=1")
  assert len(result.fitting) >= 1
  assert all(p.fits and p.total_bytes <= device.usable_bytes for p in result.fitting)
  times = [p.step_time_s for p in result.fitting]
  assert times == sorted(times)
  assert [p.remat_policy for p in result.fitting] == ["full"]
  assert [p.remat_policy for p in result.not_fitting] == ["none"]
  assert result.not_fitting[0].total_bytes > device.usable_bytes
  # microbatches=3 does not divide batch 8: skipped with the trainer's reason.
  assert len(result.skipped) == 2
  assert all(c.microbatches == 3 and "divisible" in r for c, r in result.skipped)
  record = result.to_dict()
  assert record["not_fitting_count"] == 1 and len(record["fitting"]) == 1
