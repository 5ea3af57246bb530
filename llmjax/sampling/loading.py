"""`load(workdir)`, the notebook entry point: a trained model of any family as a `LoadedModel`.

It rebuilds the model from a workdir written by `llmjax train` or `llmjax convert`, read through
llmjax/workdir.py: run_config.json (its "model" entry), tokenizer/ and the newest (or a given)
checkpoint's params (never the optimizer state), and offers generation (decoder,
encoder-decoder), fill-mask (MLM encoders) and full-forward logits (all).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax import workdir as workdir_lib
from llmjax.data.tokenizer import Tokenizer
from llmjax.models.config import ModelConfig
from llmjax.models.decoder import Params
from llmjax.models.interface import LanguageModel
from llmjax.sampling.params import SAMPLING_FIELDS, SAMPLING_ONLY_FIELDS, check_setting_names
from llmjax.sampling.sampler import Sampler
from llmjax.sampling.scoring import Scorer, emittable_ids


@dataclasses.dataclass
class LoadedModel:
  """A trained model from a workdir: config, params, tokenizer and convenience methods.

  Attributes:
    config: the ModelConfig it was trained with.
    params: its parameters.
    tokenizer: its tokenizer.
    model: the LanguageModel wrapper.
    step: the checkpoint step the params come from.
    num_sentinels: encoder_decoder: T5 sentinel ids it was trained with (None = all the
      tokenizer's own <extra_id_i>, a converted T5's, else all ids past the tokenizer's
      vocabulary).
  """

  config: ModelConfig
  params: Params
  tokenizer: Tokenizer
  model: LanguageModel
  step: int | None = None
  num_sentinels: int | None = None

  def __post_init__(self):
    # Encoder-only models do not generate: no sampler (generate explains what to use).
    self.sampler = (Sampler(self.model, self.params, self.tokenizer,
                            num_sentinels=self.num_sentinels)
                    if self.model.can_decode else None)
    self._forward = jax.jit(self._forward_impl)

  def _forward_impl(self, params: Params, tokens: jax.Array,
                    decoder_tokens: jax.Array | None,
                    token_types: jax.Array | None) -> jax.Array:
    if decoder_tokens is not None:  # encoder_decoder: teacher-forced decoder logits.
      logits, _ = self.model.apply(params, {"encoder_inputs": tokens, "inputs": decoder_tokens})
    else:  # Decoder: next-token logits; encoder: MLM logits [b, t, v] or class logits [b, c].
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
      logits, _ = self.model.apply(params, tokens, positions, token_types=token_types)
    return logits

  def _check_ids(self, token_ids: Any, name: str) -> np.ndarray:
    """token_ids as a [t] or [b, t] integer array of ids in [0, vocab_size), max_seq_len long
    at most; raises TypeError / ValueError naming `name`, the value and what is accepted."""
    vocab = self.config.vocab_size
    if isinstance(token_ids, str | bytes):
      raise TypeError(f"{name} must be token ids (ints in [0, {vocab})), got the text "
                      f"{token_ids[:40]!r}: encode it with .tokenizer.encode first.")
    try:
      tokens = np.asarray(token_ids)
    except ValueError:  # Ragged rows.
      raise ValueError(f"{name} must be a [t] or [b, t] sequence of ids with rows of one "
                       "length; pad the rows or pass them one at a time.") from None
    if tokens.ndim not in (1, 2) or tokens.shape[-1] == 0:
      raise ValueError(f"{name} must be a non-empty [t] or [b, t] sequence, got shape "
                       f"{tokens.shape}.")
    if not np.issubdtype(tokens.dtype, np.integer):
      raise TypeError(f"{name} must be integers (token ids in [0, {vocab})), got dtype "
                      f"{tokens.dtype}.")
    if tokens.shape[-1] > self.config.max_seq_len:
      raise ValueError(f"{name}: {tokens.shape[-1]} tokens exceed max_seq_len="
                       f"{self.config.max_seq_len}.")
    bad = (tokens < 0) | (tokens >= vocab)
    if bad.any():
      where = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f"{name} holds id {int(tokens[where])} at index {where}: token ids must "
                       f"be in [0, {vocab}) (the model's vocab_size).")
    return tokens

  def logits(self, token_ids: Any, decoder_input_ids: Any = None,
             token_type_ids: Any = None) -> np.ndarray:
    """Full-forward float32 logits of any family.

    Args:
      token_ids: [t] or [b, t] ids. Decoder: the text (BOS first). Encoder: the (masked)
        document. encoder_decoder: the encoder input.
      decoder_input_ids: encoder_decoder only (and required there): the decoder input, its
        start id first (BOS; a converted T5: decoder_start_token_id), [t'] or [b, t'] like
        token_ids.
      token_type_ids: encoder only: token types shaped like token_ids (BERT's segment A = 0,
        B = 1 for sentence pairs, as `transformers` takes them); None = type 0 everywhere.

    Returns:
      [t, v] (or [b, t, v]) next-token / MLM logits; encoder_decoder: [t', v] decoder logits;
      a classifier: [num_classes] (or [b, num_classes]).
    """
    tokens = self._check_ids(token_ids, "token_ids")
    decoder = None
    if self.model.is_encoder_decoder:
      if decoder_input_ids is None:
        raise ValueError("an encoder_decoder model's logits need decoder_input_ids (the decoder "
                         "input, BOS first) besides token_ids (the encoder input).")
      decoder = self._check_ids(decoder_input_ids, "decoder_input_ids")
      if decoder.ndim != tokens.ndim or (tokens.ndim == 2 and len(decoder) != len(tokens)):
        raise ValueError(f"decoder_input_ids shape {decoder.shape} does not match token_ids shape "
                         f"{tokens.shape} (same rank and batch).")
      decoder = (decoder if decoder.ndim == 2 else decoder[None]).astype(np.int32)
    elif decoder_input_ids is not None:
      raise ValueError(f"decoder_input_ids is for encoder_decoder models; this one is "
                       f"{self.config.architecture!r}.")
    types = None if token_type_ids is None else self._check_types(token_type_ids, tokens)
    batched = tokens if tokens.ndim == 2 else tokens[None]
    logits = np.asarray(self._forward(self.params, batched.astype(np.int32), decoder, types))
    return logits if tokens.ndim == 2 else logits[0]

  def _check_types(self, token_type_ids: Any, tokens: np.ndarray) -> np.ndarray:
    """token_type_ids as int32 [b, t], checked against token_ids and the model's type table."""
    if self.config.architecture != "encoder":
      raise ValueError(f"token_type_ids are for encoder models (BERT); this one is "
                       f"{self.config.architecture!r}.")
    types = np.asarray(token_type_ids)
    if types.shape != tokens.shape or not np.issubdtype(types.dtype, np.integer):
      raise ValueError(f"token_type_ids must be integers shaped like token_ids {tokens.shape}, "
                       f"got {types.dtype} {types.shape}.")
    num_types = max(self.config.type_vocab_size, 1)  # Without a table only type 0 exists.
    if types.min() < 0 or types.max() >= num_types:
      raise ValueError(f"token_type_ids must be in [0, {num_types}) (ModelConfig."
                       f"type_vocab_size={self.config.type_vocab_size}).")
    return (types if types.ndim == 2 else types[None]).astype(np.int32)

  def generate(self, prompts: Sequence[str] | str, **sampling_kwargs: Any) -> list[str]:
    """Sampler.generate: max_new_tokens, temperature, top_k, top_p, seed, num_samples,
    num_beams, length_penalty. encoder_decoder: each prompt is the encoder input."""
    if self.sampler is None:
      self._no_sampler()
    check_setting_names(sampling_kwargs, SAMPLING_FIELDS, "generate()")
    return self.sampler.generate(prompts, **sampling_kwargs)

  def _no_sampler(self) -> None:
    """Raises the explanation of why an encoder-only model does not generate."""
    if self.config.is_classifier:
      raise ValueError("this is a classifier (encoder with num_classes): it does not generate "
                       "text; use LoadedModel.logits(token_ids) for class logits.")
    raise ValueError("an encoder-only (MLM) model does not generate text: use "
                     "LoadedModel.fill_mask(texts) or `llmjax sample --mode=fill_mask "
                     "--prompt='... [MASK] ...'`.")

  def generate_ids(self, token_ids: Sequence[Sequence[int]], **sampling_kwargs: Any
                   ) -> list[list[int]]:
    """Completes token-id prompts (no tokenizer involved): per row, the new ids without EOS.

    Decoder: each row is the start of the text (include BOS yourself if the model expects it).
    encoder_decoder: each row is the encoder input; the decoder starts from the tokenizer's
    BOS (a converted T5: its decoder_start_token_id). sampling_kwargs: max_new_tokens,
    temperature (0 = greedy), top_k, top_p, seed.
    """
    if self.sampler is None:
      self._no_sampler()
    check_setting_names(sampling_kwargs, SAMPLING_ONLY_FIELDS, "generate_ids()")
    rows = self.sampler.check_id_rows(token_ids, "token_ids")
    if self.model.is_encoder_decoder:
      return self.sampler.generate_ids([[self.tokenizer.bos_id]] * len(rows), encoder_ids=rows,
                                       **sampling_kwargs)
    return self.sampler.generate_ids(rows, **sampling_kwargs)

  def fill_mask(self, texts: Sequence[str] | str, top_k: int = 5,
                mask_token: str = "[MASK]") -> list[list[list[tuple[str, float]]]]:
    """fill_mask.fill_mask: per text, per mask, the top_k (token text, probability)."""
    from llmjax.sampling.fill_mask import fill_mask

    return fill_mask(self.model, self.params, self.tokenizer, texts, top_k=top_k,
                     mask_token=mask_token)

  # Evaluation requests (lm-evaluation-harness's three, plus embeddings): scoring.Scorer.
  @functools.cached_property
  def scorer(self) -> Scorer:
    """The Scorer behind loglikelihood & co.; its *_tokens methods take token ids."""
    sentinels = () if self.sampler is None else self.sampler.sentinel_ids
    return Scorer(self.model, self.params, self.tokenizer, sampler=self.sampler,
                  emittable=emittable_ids(self.config.vocab_size, self.tokenizer, sentinels))

  def loglikelihood(self, requests: Sequence[tuple[str, str]], *,
                    batch_size: int | None = None) -> list[tuple[float, bool]]:
    """Per (context, continuation): (log p(continuation | context), is_greedy), lm-eval's
    loglikelihood request (Scorer.loglikelihood)."""
    return self.scorer.loglikelihood(requests, batch_size=batch_size)

  def loglikelihood_rolling(self, texts: Sequence[str], *,
                            batch_size: int | None = None) -> list[float]:
    """Full-document log-likelihood per text, rolling windows past max_seq_len
    (Scorer.loglikelihood_rolling)."""
    return self.scorer.loglikelihood_rolling(texts, batch_size=batch_size)

  def generate_until(self, requests: Sequence[tuple[str, dict]], *,
                     batch_size: int | None = None) -> list[str]:
    """Per (context, {"until": [...], "max_gen_toks": n, ...}): the generated text, cut before
    the first stop string; greedy by default (Scorer.generate_until)."""
    return self.scorer.generate_until(requests, batch_size=batch_size)

  def embed(self, texts: Sequence[str], pooling: str = "mean", *,
            batch_size: int | None = None) -> np.ndarray:
    """[n, d] pooled final hidden states ("mean", "first" or "last"; Scorer.embed)."""
    return self.scorer.embed(texts, pooling, batch_size=batch_size)

  def num_tokens(self, text: str) -> int:
    """Tokens of text (no BOS/EOS), for per-token and per-byte figures."""
    if not isinstance(text, str):
      raise TypeError(f"text must be a str, got {type(text).__name__}.")
    return len(self.tokenizer.encode(text))


def _num_sentinels(record: workdir_lib.RunRecord) -> int | None:
  """Sentinel count of a span-corruption run (DataConfig.extra_ids), else None."""
  data = record.sections.get("data")
  if isinstance(data, dict) and data.get("objective") == "span_corruption":
    return data.get("extra_ids")
  return None


def load(workdir: str, step: int | None = None) -> LoadedModel:
  """Loads the model (any family), tokenizer and params (no optimizer state) of a workdir.

  Args:
    workdir: a directory written by `llmjax train` or `llmjax convert --from_hf`
      (run_config.json, tokenizer/, checkpoints/; llmjax/workdir.py).
    step: the checkpoint step; None means the latest.

  Returns:
    A LoadedModel.

  Raises:
    FileNotFoundError: the workdir, its run_config.json, tokenizer or checkpoint is missing.
    ValueError: not an llmjax workdir (or one of another llmjax version), or the tokenizer's
      vocabulary does not fit the model.
  """
  record = workdir_lib.read_run_config(workdir)
  step = workdir_lib.resolve_step(record.workdir, step)
  tokenizer = workdir_lib.load_tokenizer(record.workdir, record.model)
  model = LanguageModel(record.model)
  abstract_params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  params = workdir_lib.restore_params(record.workdir, abstract_params, step=step)
  return LoadedModel(config=record.model, params=params, tokenizer=tokenizer, model=model,
                     step=step, num_sentinels=_num_sentinels(record))
