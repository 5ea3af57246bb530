"""Hugging Face checkpoints in and out: GPT-2, LLaMA, BERT (masked LM) and T5.

`load_hf(DIR)` reads a local HF folder (config.json + model.safetensors, or a sharded
model.safetensors.index.json) into a ModelConfig and params, one tensor at a time, placing each
parameter straight into its sharded array when a mesh is given (a model larger than one
device's memory loads under FSDP). `hf_tensors(config, params)` is the way back, and
workdir.py writes either side to disk (`llmjax convert`).

Everything is checked before anything is placed or written: the model_type (named against the
supported ones), every tensor the config implies (a missing one is named), every shape (the
tensor and both shapes are named), tensors nobody maps (a wrong model_type), and tied copies
that disagree with the tensor they repeat.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from llmjax import workdir as workdir_lib
from llmjax.interop import bert, gpt2, llama, t5
from llmjax.interop.mapping import param_path
from llmjax.interop.safetensors_io import SafetensorsFolder
from llmjax.models.config import ModelConfig

CONFIG_FILE = "config.json"
_MODULES = (gpt2, llama, bert, t5)
ARCHITECTURES: dict[str, ModuleType] = {t: m for m in _MODULES for t in m.MODEL_TYPES}
_FLOAT_DTYPES = {"float32", "bfloat16", "float16"}


def supported_model_types() -> str:
  return ", ".join(sorted(ARCHITECTURES))


def read_hf_config(hf_dir: str) -> dict[str, Any]:
  """The config.json of an HF model folder."""
  path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"--from_hf={hf_dir}: no such directory.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{hf_dir} has no {CONFIG_FILE}: not a Hugging Face model folder.")
  try:
    config = workdir_lib.read_json(path)
  except workdir_lib.InvalidJsonError as e:
    raise ValueError(f"{e}; nothing was converted: repair the file, or copy the model folder "
                     "again from its source.") from None
  if not isinstance(config, dict):
    raise ValueError(f"{path} holds a JSON {type(config).__name__}, not the object of a Hugging "
                     "Face config; nothing was converted: copy the model folder again.")
  return config


def architecture(model_type: str | None) -> ModuleType:
  """The mapping module of an HF model_type."""
  if model_type not in ARCHITECTURES:
    raise ValueError(f"model_type {model_type!r} is not supported; llmjax converts "
                     f"{supported_model_types()}.")
  return ARCHITECTURES[model_type]


def config_from_hf(hf_config: dict[str, Any], tensors: set[str] | frozenset = frozenset(),
                   **overrides: Any) -> ModelConfig:
  """The llmjax ModelConfig of an HF config.json and the tensor names of its checkpoint."""
  module = architecture(hf_config.get("model_type"))
  try:
    fields = module.config_from_hf(hf_config, set(tensors))
  except KeyError as e:
    raise ValueError(f"{hf_config.get('model_type')} config.json lacks {e.args[0]!r}.") from None
  return ModelConfig(**(fields | overrides))


@dataclasses.dataclass(frozen=True)
class TensorPlan:
  """What reading an HF folder into a config takes, checked before any tensor is read.

  Attributes:
    resolved: HF name the rules use -> the name in the folder (base-model folders lack the
      task model's prefix, e.g. 'transformer.').
    unused: tensors of the folder no llmjax parameter takes (a pooler, an NSP head).
  """
  resolved: dict[str, str]
  unused: tuple[str, ...]


def plan_tensors(folder: SafetensorsFolder, config: ModelConfig, module: ModuleType
                 ) -> TensorPlan:
  """Checks that the folder has every tensor `config` needs with the right shapes.

  Raises:
    ValueError: a tensor is missing, has the wrong shape or dtype, or is not mapped at all.
  """
  names = set(folder.keys())
  prefix = module.BASE_PREFIX

  fallbacks = getattr(module, "fallbacks", lambda cfg: {})(config)

  def resolve(name: str, fallback: bool = False) -> str | None:
    if name in names:
      return name
    if prefix and name.startswith(prefix) and name[len(prefix):] in names:
      return name[len(prefix):]
    if fallback and name in fallbacks:
      return resolve(fallbacks[name])
    return None

  resolved: dict[str, str] = {}
  for rule in module.rules(config):
    for layer in rule.layers():
      for name, shape in zip(rule.hf_names(layer), rule.hf_shapes, strict=True):
        found = resolve(name, fallback=True)
        if found is None:
          raise ValueError(
              f"{folder.directory}: tensor {name!r} is missing (a {config.architecture} "
              f"{module.MODEL_TYPES[0]} with this config.json needs it for llmjax parameter "
              f"{'/'.join(filter(None, [rule.stack, *rule.params[:1]]))}).")
        if folder.shape(found) != shape:
          raise ValueError(f"{folder.directory}: tensor {found!r} has shape "
                           f"{folder.shape(found)}, but config.json implies {shape}.")
        if folder.dtype(found).name not in _FLOAT_DTYPES:
          raise ValueError(f"{folder.directory}: tensor {found!r} has dtype "
                           f"{folder.dtype(found)}; llmjax reads float32/bfloat16/float16.")
        resolved[name] = found
  duplicates = {d: c for d, c in module.duplicates(config).items() if resolve(d)}
  unused_patterns = [re.compile(p) for p in getattr(module, "UNUSED", ())]
  ignored = [re.compile(p) for p in module.IGNORED] + unused_patterns
  used = set(resolved.values()) | {resolve(d) for d in duplicates}
  unmapped = sorted(n for n in names - used if not any(p.fullmatch(n) for p in ignored))
  if unmapped:
    raise ValueError(
        f"{folder.directory}: {len(unmapped)} tensors have no place in a "
        f"{module.MODEL_TYPES[0]} of this config: {', '.join(unmapped[:8])}"
        f"{' ...' if len(unmapped) > 8 else ''}. Is config.json's model_type right?")
  for dup, canonical in duplicates.items():
    if not np.array_equal(folder.get(resolve(dup)), folder.get(resolved.get(canonical,
                                                                            canonical))):
      raise ValueError(f"{folder.directory}: {resolve(dup)} differs from {canonical}, which it "
                       "should repeat (a tied head): llmjax cannot represent an untied copy for "
                       "this config (set tie_word_embeddings=false in config.json if it is "
                       "really untied).")
  unused = tuple(sorted(n for n in names - used if any(p.fullmatch(n) for p in unused_patterns)))
  return TensorPlan(resolved, unused)


def checkpoint_dtype(folder: SafetensorsFolder, plan: TensorPlan) -> str:
  """The storage dtype of the checkpoint's weights (the most common one)."""
  counts: dict[str, int] = {}
  for name in plan.resolved.values():
    counts[folder.dtype(name).name] = counts.get(folder.dtype(name).name, 0) + 1
  return max(counts, key=counts.get)


def _abstract_params(config: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
  from llmjax.models.interface import LanguageModel

  lm = LanguageModel(config)
  return traverse_util.flatten_dict(jax.eval_shape(lm.init, jax.random.PRNGKey(0)), sep="/")


def _shardings(config: ModelConfig, paths: Any, mesh: jax.sharding.Mesh | None,
               rules: str) -> dict:
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return dict.fromkeys(paths, device)
  from llmjax.models.interface import LanguageModel
  from llmjax.sharding import partition
  from llmjax.sharding.rules import get_rules

  shardings = partition.param_shardings(LanguageModel(config), mesh, get_rules(rules))
  return traverse_util.flatten_dict(shardings, sep="/")


def read_params(folder: SafetensorsFolder, config: ModelConfig, module: ModuleType,
                plan: TensorPlan, *, mesh: jax.sharding.Mesh | None = None,
                rules: str = "fsdp") -> Any:
  """The llmjax params of `config` from the folder's tensors, one rule at a time.

  Each parameter is assembled on the host (all layers of one stacked parameter at most) and
  placed with `jax.make_array_from_callback`, so each device receives only its own shard.
  """
  abstract = _abstract_params(config)
  shardings = _shardings(config, abstract, mesh, rules)
  placed: dict[str, jax.Array] = {}
  for rule in module.rules(config):
    host: dict[str, np.ndarray] = {}
    for layer in rule.layers():
      arrays = [folder.get(plan.resolved[n]) for n in rule.hf_names(layer)]
      for param, value in zip(rule.params, rule.to_llmjax(arrays), strict=True):
        path, stacked = param_path(config, rule, param, layer)
        target = abstract[path]
        if path not in host:
          host[path] = np.empty(target.shape, target.dtype)
        if stacked:
          host[path][layer] = value
        else:
          host[path][...] = value
    for path, value in host.items():
      placed[path] = jax.make_array_from_callback(value.shape, shardings[path],
                                                  lambda index, value=value: value[index])
    del host  # One rule's host arrays at a time.
  missing = sorted(set(abstract) - set(placed))
  if missing:  # A mapping bug, not a user error: every parameter has a rule.
    raise AssertionError(f"no HF tensor maps to llmjax parameters {missing}.")
  return traverse_util.unflatten_dict(placed, sep="/")


@dataclasses.dataclass
class HFModel:
  """An HF checkpoint read into llmjax: config, params and what the conversion noticed."""
  config: ModelConfig
  params: Any
  hf_config: dict[str, Any]
  model_type: str
  unused: tuple[str, ...] = ()


def load_hf(hf_dir: str, *, mesh: jax.sharding.Mesh | None = None, rules: str = "fsdp",
            **config_overrides: Any) -> HFModel:
  """Reads a local HF model folder (no download ever) into llmjax params.

  Args:
    hf_dir: a folder with config.json and model.safetensors (or a sharded index).
    mesh: place every parameter directly into its shards on this mesh; None = one device.
    rules: the logical-axis rule set for the mesh ('fsdp', 'fsdp_tp', ...).
    **config_overrides: ModelConfig fields to set besides the converted ones (e.g.
      scan_layers=False); shape fields must not change.

  Raises:
    ValueError / FileNotFoundError: see `plan_tensors`, `architecture`, SafetensorsFolder.
  """
  hf_config = read_hf_config(hf_dir)
  module = architecture(hf_config.get("model_type"))
  folder = SafetensorsFolder(hf_dir)
  config = config_from_hf(hf_config, set(folder.keys()), **config_overrides)
  plan = plan_tensors(folder, config, module)
  if "param_dtype" not in config_overrides:
    config = config.replace(param_dtype=checkpoint_dtype(folder, plan))
  params = read_params(folder, config, module, plan, mesh=mesh, rules=rules)
  return HFModel(config, params, hf_config, hf_config["model_type"], plan.unused)


def export_architecture(config: ModelConfig, model_type: str | None = None) -> ModuleType:
  """The HF architecture `config` corresponds to (model_type, when given, is checked).

  Raises:
    ValueError: naming, for each supported architecture, the fields that rule it out.
  """
  candidates = [architecture(model_type)] if model_type else list(_MODULES)
  reasons = {}
  for module in candidates:
    problems = module.export_problems(config)
    if not problems:
      return module
    reasons[module.MODEL_TYPES[0]] = problems
  detail = "; ".join(f"{name}: {', '.join(p)}" for name, p in reasons.items())
  raise ValueError(f"this model has no Hugging Face equivalent llmjax can write ({detail}).")


def hf_tensor_specs(config: ModelConfig, module: ModuleType
                    ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """name -> (shape, dtype) of every HF tensor the export writes, in file order."""
  dtype = np.dtype(config.weight_dtype)
  specs = {}
  for rule in module.rules(config):
    for layer in rule.layers():
      for name, shape in zip(rule.hf_names(layer), rule.hf_shapes, strict=True):
        specs[name] = (shape, dtype)
  return specs


def hf_tensors(config: ModelConfig, params: Any, module: ModuleType
               ) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, array) of every tensor of `params`, one rule and layer at a time (the order of
  `hf_tensor_specs`); each llmjax parameter is fetched from its devices once."""
  flat = traverse_util.flatten_dict(params, sep="/")
  for rule in module.rules(config):
    fetched: dict[str, np.ndarray] = {}  # This rule's parameters, on the host.
    for layer in rule.layers():
      values = []
      for param in rule.params:
        path, stacked = param_path(config, rule, param, layer)
        if path not in fetched:
          fetched[path] = np.asarray(jax.device_get(flat[path]))
        values.append(fetched[path][layer] if stacked else fetched[path])
      yield from zip(rule.hf_names(layer), rule.to_hf(values), strict=True)
