"""How llmjax parameters and Hugging Face tensors correspond, as data.

An architecture (gpt2.py, llama.py, bert.py, t5.py) lists `Rule`s: which llmjax parameter
paths come from which HF tensors, with the HF shapes the config implies and a pair of exact
transforms (slices, transposes, reshapes: no arithmetic, so HF -> llmjax -> HF is
bit-identical). A rule either stands alone or repeats per layer of a stack; per-layer rules name
HF tensors with an `{i}` placeholder and llmjax paths relative to the layer, and the layer
helpers below place them in a scanned stack ([l, ...] leaves under `<stack>/layers/`) or an
unrolled one (`<stack>/layers_<i>/`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from llmjax.models.config import ModelConfig

Arrays = list[np.ndarray]
Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  """One correspondence between llmjax parameters and HF tensors.

  Attributes:
    params: llmjax leaf paths ('/'-joined; relative to the layer when `stack` is set).
    tensors: HF tensor names (with `{i}` for the layer index when `stack` is set).
    hf_shapes: the shape of each HF tensor the config implies.
    to_llmjax: HF arrays (in `tensors` order) -> llmjax arrays (in `params` order), one layer.
    to_hf: the exact inverse.
    stack: the llmjax stack ('decoder', 'encoder') the rule repeats over, or None.
    num_layers: depth of that stack.
  """

  params: tuple[str, ...]
  tensors: tuple[str, ...]
  hf_shapes: tuple[Shape, ...]
  to_llmjax: Callable[[Arrays], Arrays]
  to_hf: Callable[[Arrays], Arrays]
  stack: str | None = None
  num_layers: int = 0

  def layers(self) -> range:
    """Layer indices the rule covers (a single pass for a stand-alone rule)."""
    return range(self.num_layers) if self.stack else range(1)

  def hf_names(self, layer: int) -> list[str]:
    return [t.format(i=layer) for t in self.tensors]


def param_path(config: ModelConfig, rule: Rule, param: str, layer: int) -> tuple[str, bool]:
  """(llmjax path, stacked?) of a rule's parameter in `layer`: stacked paths hold all layers
  on axis 0."""
  if rule.stack is None:
    return param, False
  if config.scan_layers:
    return f"{rule.stack}/layers/{param}", True
  return f"{rule.stack}/layers_{layer}/{param}", False


# Transforms. Each returns (to_llmjax, to_hf) for one HF tensor <-> one llmjax parameter.
def same() -> tuple[Callable, Callable]:
  """The tensor is the parameter."""
  return (lambda xs: [xs[0]]), (lambda ps: [ps[0]])


def reshaped(hf_shape: Shape, shape: Shape) -> tuple[Callable, Callable]:
  """Same layout, other shape (e.g. a [h * k] bias as [h, k])."""
  return (lambda xs: [xs[0].reshape(shape)]), (lambda ps: [ps[0].reshape(hf_shape)])


def torch_linear(out_in: Shape, shape: Shape) -> tuple[Callable, Callable]:
  """A torch.nn.Linear weight [out, in] as an llmjax kernel [*in, *out] of `shape`: transposed,
  then split into the named axes (e.g. [h * k, d] -> [d, h, k])."""
  def to_llmjax(xs: Arrays) -> Arrays:
    return [np.ascontiguousarray(xs[0].T).reshape(shape)]

  def to_hf(ps: Arrays) -> Arrays:
    rows = math.prod(out_in[1:])  # The kernel's leading `in` axes flatten to the HF columns.
    return [np.ascontiguousarray(ps[0].reshape(rows, -1).T).reshape(out_in)]
  return to_llmjax, to_hf


def split(hf_shape: Shape, axis: int, shapes: Sequence[Shape]) -> tuple[Callable, Callable]:
  """One HF tensor cut into equal parts along `axis` (GPT-2's fused c_attn), each reshaped."""
  def to_llmjax(xs: Arrays) -> Arrays:
    parts = np.split(xs[0], len(shapes), axis=axis)
    return [np.ascontiguousarray(p).reshape(s) for p, s in zip(parts, shapes, strict=True)]

  def to_hf(ps: Arrays) -> Arrays:
    part = list(hf_shape)
    part[axis] //= len(shapes)
    return [np.concatenate([p.reshape(part) for p in ps], axis=axis)]
  return to_llmjax, to_hf


def rule(params: str | Sequence[str], tensors: str | Sequence[str],
         hf_shapes: Shape | Sequence[Shape], transforms: tuple[Callable, Callable], *,
         stack: str | None = None, num_layers: int = 0) -> Rule:
  """A Rule from single names or sequences of them."""
  params = (params,) if isinstance(params, str) else tuple(params)
  tensors = (tensors,) if isinstance(tensors, str) else tuple(tensors)
  if hf_shapes and isinstance(hf_shapes[0], int):
    hf_shapes = (tuple(hf_shapes),)
  return Rule(params, tensors, tuple(tuple(s) for s in hf_shapes), transforms[0], transforms[1],
              stack, num_layers)


def linear_rule(param: str, tensor: str, out_in: Shape, shape: Shape, **kw) -> Rule:
  """A torch Linear weight <-> an llmjax kernel."""
  return rule(param, tensor, out_in, torch_linear(out_in, shape), **kw)


def vector_rule(param: str, tensor: str, shape: Shape, hf_shape: Shape | None = None,
                **kw) -> Rule:
  """A bias/scale/table copied as is (or reshaped from hf_shape)."""
  if hf_shape is None or tuple(hf_shape) == tuple(shape):
    return rule(param, tensor, shape, same(), **kw)
  return rule(param, tensor, hf_shape, reshaped(hf_shape, shape), **kw)


def norm_rules(param: str, tensor: str, width: int, layernorm: bool, **kw) -> list[Rule]:
  """A LayerNorm (weight + bias) or RMSNorm (weight) as llmjax's norm/scale (+ norm/bias)."""
  rules = [vector_rule(f"{param}/scale", f"{tensor}.weight", (width,), **kw)]
  if layernorm:
    rules.append(vector_rule(f"{param}/bias", f"{tensor}.bias", (width,), **kw))
  return rules


# Config checks shared by the architectures' export_problems.
def config_problems(cfg: ModelConfig, name: str, wanted: dict, *,
                    mlps: tuple[str, ...] | None = None, plain_heads: bool = False) -> list[str]:
  """Why `cfg` is not architecture `name`: the fields that differ from `wanted`, an MLP kind
  outside `mlps`, and (plain_heads) grouped-query heads or head_dim * heads != embed_dim."""
  problems = [f"{k}={getattr(cfg, k)!r} ({name}: {v!r})" for k, v in wanted.items()
              if getattr(cfg, k) != v]
  if mlps is not None and cfg.mlp not in mlps:
    problems.append(f"mlp={cfg.mlp!r} ({name}: one of {mlps})")
  if plain_heads and (cfg.kv_heads != cfg.num_heads
                      or cfg.dim_per_head * cfg.num_heads != cfg.embed_dim):
    problems.append(f"grouped-query heads or head_dim * num_heads != embed_dim ({name}: "
                    "neither)")
  return problems


def activation_name(cfg: ModelConfig) -> str:
  """The HF name of a two-matrix MLP's activation: 'relu', 'gelu_new' (tanh) or 'gelu'."""
  if cfg.mlp == "relu":
    return "relu"
  return "gelu_new" if cfg.gelu_approximate else "gelu"
