"""A mini decoder (tiny.gin shrunk) so each planner compile stays a few seconds."""

import pytest

from llmjax.cli import gin_config

MINI = ["TrainConfig.batch_size = 8", "TrainConfig.seq_len = 32", "ModelConfig.num_layers = 2",
        "ModelConfig.embed_dim = 64", "ModelConfig.mlp_dim = 128", "VOCAB_SIZE = 256",
        # A rolled scan (tiny.gin unrolls it): the tests check the planner's loop correction.
        "ModelConfig.scan_unroll = 1"]


def build_configs(extra=()):
  gin_config.parse(["gin_configs/models/tiny.gin"], MINI + list(extra))
  return gin_config.build_all()


@pytest.fixture(scope="session")
def mini_configs():
  return build_configs()
