"""Text in, text out: the user-facing sampler and `load(workdir)`, the notebook entry point.

`Sampler` tokenizes prompts (BOS first), right-pads them into one batch, runs the compiled
decoder of decoding.py and decodes the completions. Compiled shapes are bucketed (batch and
prompt length rounded up to powers of two, the cache length likewise, capped at the model's
max_seq_len) so repeated calls with similar prompts reuse one compilation per
(shapes, max_new_tokens, strategy).

`load(DIR)` rebuilds a trained model from a workdir written by `llmjax train`:
DIR/run_config.json (its "model" entry), DIR/tokenizer/ and the newest checkpoint's params.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.models.config import ModelConfig
from llmjax.sampling import decoding
from llmjax.sampling.cache import init_cache
from llmjax.sampling.strategies import make_strategy

MIN_PROMPT_BUCKET = 8


def _bucket(n: int, minimum: int = 1) -> int:
  """Smallest power of two >= max(n, minimum)."""
  return 1 << (max(n, minimum) - 1).bit_length()


def check_vocab(tokenizer: Any, config: ModelConfig) -> None:
  """Raises ValueError when the tokenizer has ids the model's embedding cannot hold."""
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(
        f"tokenizer vocab_size={tokenizer.vocab_size} is larger than the model's "
        f"vocab_size={config.vocab_size}: set ModelConfig.vocab_size >= {tokenizer.vocab_size} "
        "or use the tokenizer the model was trained with.")


class Sampler:
  """Generates text from a LanguageModel, its params and a tokenizer.

  Args:
    model: a LanguageModel (llmjax/models/interface.py): `.config` and `logits_fn`.
    params: its parameters.
    tokenizer: encode/decode/vocab_size/pad_id/bos_id/eos_id (llmjax/data/tokenizer.py).
  """

  def __init__(self, model: Any, params: Any, tokenizer: Any):
    self.model = model
    self.params = params
    self.tokenizer = tokenizer
    self.config: ModelConfig = model.config
    check_vocab(tokenizer, self.config)
    self.num_compilations = 0  # Traces of the decode program (tests check bucketing with it).
    self._decode = jax.jit(self._decode_impl,
                           static_argnames=("max_new_tokens", "strategy", "cache_len"))

  def _logits_fn(self, params: Any, tokens: jax.Array, positions: jax.Array,
                 cache: Any) -> tuple[jax.Array, Any]:
    logits, cache = self.model.logits_fn(params, tokens, positions, cache)
    if self.tokenizer.vocab_size < logits.shape[-1]:
      # Ids past the tokenizer's vocabulary (an embedding padded for speed) cannot be decoded.
      valid = jnp.arange(logits.shape[-1]) < self.tokenizer.vocab_size
      logits = jnp.where(valid, logits, -jnp.inf)
    return logits, cache

  def _decode_impl(self, params, tokens, lengths, rng, *, max_new_tokens, strategy, cache_len):
    self.num_compilations += 1  # Runs only while tracing.
    # The cache is made inside the compiled program: no transfer, and XLA can reuse the memory.
    cache = init_cache(self.model, tokens.shape[0], cache_len)
    return decoding.decode(self._logits_fn, params, tokens, lengths, cache, rng,
                           max_new_tokens=max_new_tokens, strategy=strategy,
                           eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id)

  def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
    """BOS + ids of each prompt (an empty prompt is just BOS: start of a document)."""
    return [[self.tokenizer.bos_id] + list(self.tokenizer.encode(p)) for p in prompts]

  def generate_ids(self, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int = 0) -> list[list[int]]:
    """Completes token-id prompts (BOS already included); returns new ids without EOS/pad."""
    strategy = make_strategy(temperature, top_k, top_p)
    if max_new_tokens <= 0:
      raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}.")
    if not prompt_ids:
      raise ValueError("no prompts given.")
    lengths = [len(p) for p in prompt_ids]
    if min(lengths) == 0:
      raise ValueError("an empty prompt needs at least a BOS token (encode_prompts adds it).")
    max_len = self.config.max_seq_len
    longest = max(lengths)
    if longest + max_new_tokens > max_len:
      raise ValueError(
          f"prompt of {longest} tokens (with BOS) + max_new_tokens={max_new_tokens} exceeds the "
          f"model's max_seq_len={max_len}: lower max_new_tokens to "
          f"{max(max_len - longest, 0)} or shorten the prompt.")
    batch = _bucket(len(prompt_ids))
    padded_len = min(_bucket(longest, MIN_PROMPT_BUCKET), max_len)
    # >= longest + max_new_tokens because padded_len >= longest and max_len was checked above.
    cache_len = min(_bucket(padded_len + max_new_tokens), max_len)
    tokens = np.full((batch, padded_len), self.tokenizer.pad_id, np.int32)
    tokens[:, 0] = self.tokenizer.bos_id  # Filler rows are a lone BOS; their output is dropped.
    row_lengths = np.ones((batch,), np.int32)
    for i, ids in enumerate(prompt_ids):
      tokens[i, :len(ids)] = ids
      row_lengths[i] = len(ids)
    decoding.validate_decode_args(tokens.shape, row_lengths, max_new_tokens=max_new_tokens,
                                  cache_len=cache_len, max_seq_len=max_len)
    out = self._decode(self.params, tokens, row_lengths, jax.random.PRNGKey(seed),
                       max_new_tokens=max_new_tokens, strategy=strategy, cache_len=cache_len)
    out_tokens, out_lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    results = []
    for i in range(len(prompt_ids)):
      ids = out_tokens[i, :out_lengths[i]].tolist()
      if ids and ids[-1] == self.tokenizer.eos_id:
        ids = ids[:-1]
      results.append(ids)
    return results

  def generate(self, prompts: Sequence[str] | str, *, max_new_tokens: int = 64,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               num_samples: int = 1) -> list[str]:
    """Completes each prompt `num_samples` times.

    Args:
      prompts: a string or a list of strings; "" starts a fresh document.
      max_new_tokens: most tokens generated per completion (it stops earlier at EOS).
      temperature: 0 = greedy; top_k: 0 = off; top_p: 1.0 = off (make_strategy).
      seed: PRNG seed; the same seed and settings give the same completions.
      num_samples: completions per prompt.

    Returns:
      The completions only (without the prompt), prompt-major: the j-th sample of prompt i is
      at index i * num_samples + j.
    """
    if isinstance(prompts, str):
      prompts = [prompts]
    if num_samples <= 0:
      raise ValueError(f"num_samples must be positive, got {num_samples}.")
    encoded = self.encode_prompts(list(prompts))
    rows = [ids for ids in encoded for _ in range(num_samples)]
    completions = self.generate_ids(rows, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return [self.tokenizer.decode(ids) for ids in completions]


@dataclasses.dataclass
class LoadedModel:
  """A trained model from a workdir: config, params, tokenizer and convenience methods.

  Attributes:
    config: the ModelConfig it was trained with.
    params: its parameters.
    tokenizer: its tokenizer.
    model: the LanguageModel wrapper.
    step: the checkpoint step the params come from.
  """

  config: ModelConfig
  params: Any
  tokenizer: Any
  model: Any
  step: int | None = None

  def __post_init__(self):
    self.sampler = Sampler(self.model, self.params, self.tokenizer)
    self._forward = jax.jit(self._forward_impl)

  def _forward_impl(self, params: Any, tokens: jax.Array) -> jax.Array:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    logits, _ = self.model.logits_fn(params, tokens, positions, None)
    return logits

  def logits(self, token_ids: Any) -> np.ndarray:
    """Full-forward logits: ids [t] -> [t, v] float32, or [b, t] -> [b, t, v]."""
    tokens = np.asarray(token_ids)
    if tokens.ndim not in (1, 2) or tokens.shape[-1] == 0:
      raise ValueError(f"token_ids must be a non-empty [t] or [b, t] sequence, got shape "
                       f"{tokens.shape}.")
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"token_ids must be integers, got dtype {tokens.dtype}.")
    if tokens.shape[-1] > self.config.max_seq_len:
      raise ValueError(f"{tokens.shape[-1]} tokens exceed max_seq_len={self.config.max_seq_len}.")
    if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
      raise ValueError(f"token ids must be in [0, {self.config.vocab_size}).")
    batched = tokens if tokens.ndim == 2 else tokens[None]
    logits = np.asarray(self._forward(self.params, batched.astype(np.int32)))
    return logits if tokens.ndim == 2 else logits[0]

  def generate(self, prompts: Sequence[str] | str, **sampling_kwargs: Any) -> list[str]:
    """Sampler.generate: max_new_tokens, temperature, top_k, top_p, seed, num_samples."""
    return self.sampler.generate(prompts, **sampling_kwargs)


def load(workdir: str, step: int | None = None) -> LoadedModel:
  """Loads the model, tokenizer and params (no optimizer state) of a training workdir.

  Args:
    workdir: a directory written by `llmjax train` (run_config.json, tokenizer/, checkpoints/).
    step: the checkpoint step; None means the latest.

  Returns:
    A LoadedModel.

  Raises:
    FileNotFoundError: the workdir, its run_config.json, tokenizer or checkpoint is missing.
    ValueError: the tokenizer's vocabulary does not fit the model.
  """
  # Imported here: Sampler alone should not pull in Orbax and the data stack.
  from llmjax.training import checkpoint

  workdir = os.path.abspath(os.fspath(workdir))
  hint = f"run `llmjax train --workdir={workdir}` first"
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir} does not exist: {hint}.")
  config_path = os.path.join(workdir, "run_config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found, so {workdir} is not a training "
                            f"workdir: {hint}.")
  with open(config_path, encoding="utf-8") as f:
    run_config = json.load(f)
  if "model" not in run_config:
    raise ValueError(f"{config_path} has no 'model' entry (keys: {sorted(run_config)}).")
  model_fields = run_config["model"]
  if isinstance(model_fields, str):
    model_fields = json.loads(model_fields)
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(model_fields) - known)
  if unknown:
    raise ValueError(f"{config_path} has model fields {unknown} this llmjax's ModelConfig does "
                     "not know: it was written by another llmjax version.")
  config = ModelConfig(**model_fields)

  if checkpoint.latest_step(workdir) is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoint.checkpoint_dir(workdir)}: {hint} "
                            "(or wait until it saves its first checkpoint).")
  tokenizer_dir = os.path.join(workdir, "tokenizer")
  if not os.path.isdir(tokenizer_dir):
    raise FileNotFoundError(f"no tokenizer in {tokenizer_dir}: {hint}.")
  from llmjax.data.tokenizer import load_tokenizer
  from llmjax.models.interface import LanguageModel

  tokenizer = load_tokenizer(tokenizer_dir)
  check_vocab(tokenizer, config)
  model = LanguageModel(config)
  abstract_params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  params = checkpoint.restore_params(workdir, abstract_params, step=step)
  if step is None:
    step = checkpoint.latest_step(workdir)
  return LoadedModel(config=config, params=params, tokenizer=tokenizer, model=model, step=step)
