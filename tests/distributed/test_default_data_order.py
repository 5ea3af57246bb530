"""The default data order does not depend on the process count: `llmjax train` without
DataConfig.shards in 1 and in 2 processes (jax.distributed on localhost) trains on the same
global batches, so the losses and final parameters match."""

import pytest

from tests.distributed import test_multiprocess as mp

# The multi-process test's flags without its fixed DataConfig.shards=2.
_DEFAULT_FLAGS = [f for f in mp._FLAGS if not f.startswith("--gin.DataConfig.shards")]


@pytest.mark.slow
def test_default_streams_give_the_same_run_on_one_and_two_processes(tmp_path, monkeypatch):
  assert len(_DEFAULT_FLAGS) == len(mp._FLAGS) - 1
  monkeypatch.setattr(mp, "_FLAGS", _DEFAULT_FLAGS)
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(12):
    (corpus / f"doc{i}.py").write_text(mp._CODE * (i + 2) + f"# file {i}\n", encoding="utf-8")
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  mp.run_train(one, str(corpus), 8, 1)
  mp.run_train(two, str(corpus), 8, 2)
  mp.assert_same_run(two, one)
