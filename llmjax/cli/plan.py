"""`llmjax plan`: will this config fit on that mesh of those chips? (No hardware needed.)

  llmjax plan --gin_file=gin_configs/runs/quickstart.gin \
      --gin_file=gin_configs/models/llama_1b.gin --mesh=fsdp:8 --device=h100 [--search] [--json]

Fakes one CPU device per mesh position, compiles the trainer's step ahead of time against
that mesh (llmjax/planning/planner.py) and prints per-device memory, FLOPs and a roofline step
time. `--search` ranks remat policy x microbatches x rule set (llmjax/planning/search.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from llmjax.cli import gin_config

# Planner compiles are never run, so skip LLVM's expensive passes: 2x faster compiles, and the
# buffer assignment and cost analysis come from the HLO passes, which these flags leave alone.
_FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="llmjax plan",
      description="Predict per-device memory and step time of a training config on a mesh "
      "of accelerators, by compiling its train step against fake CPU devices.")
  parser.add_argument("--gin_file", action="append", default=[], help="gin file(s), in order")
  parser.add_argument("--mesh", required=True, help="target mesh, e.g. data:8,fsdp:4,tensor:2")
  parser.add_argument("--rules", default=None, help="rule set (default: MeshConfig.rules)")
  parser.add_argument("--device", default="h100", help="h100 | h200 | a100 | tpu-v5p | cpu")
  parser.add_argument("--device_memory_gb", type=float, default=None,
                      help="override the device memory (GB = 1e9 bytes)")
  parser.add_argument("--memory_fraction", type=float, default=None,
                      help="usable share of device memory (default 0.75 on GPUs: JAX's "
                      "preallocation; 0.9 elsewhere)")
  parser.add_argument("--search", action="store_true",
                      help="rank remat policy x microbatches x rule set")
  parser.add_argument("--search_remat", default=None, help="comma list (default: all supported)")
  parser.add_argument("--search_microbatches", default=None, help="comma list (default 1,2,4,8)")
  parser.add_argument("--search_rules", default=None, help="comma list (default: all rule sets)")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  return parser


def _csv(text: str | None, cast=str) -> list | None:
  return None if text is None else [cast(x.strip()) for x in text.split(",") if x.strip()]


def _check_flags(args: argparse.Namespace) -> tuple[dict[str, int], list | None]:
  """Everything that needs no JAX backend: raises ValueError with a one-line message."""
  from llmjax.cli.fake_devices import check_fake_device_count
  from llmjax.planning import devices as devices_lib
  from llmjax.sharding import mesh as mesh_lib
  from llmjax.sharding import rules as rules_lib

  try:
    shape = mesh_lib.parse_mesh_flag(args.mesh)
  except ValueError as e:  # Say which flag, e.g. "Mesh axis sizes must be positive".
    raise ValueError(str(e) if "--mesh" in str(e) else f"--mesh={args.mesh}: {e}") from None
  if any(size == -1 for size in shape.values()):
    raise ValueError(f"--mesh={args.mesh}: give every axis size (no -1); the plan is for "
                     "exactly that many devices.")
  # Before any device is built: a million fake devices would take minutes and 12 GB.
  check_fake_device_count(math.prod(shape.values()), f"--mesh={args.mesh}")
  args.device = args.device.strip().lower()  # --device=H100 is h100.
  devices_lib.check_device_args(args.device, memory_gb=args.device_memory_gb,
                                memory_fraction=args.memory_fraction)
  for name in [args.rules] + (_csv(args.search_rules) or []):
    if name is not None:
      rules_lib.get_rules(name)
  try:
    counts = _csv(args.search_microbatches, int)
  except ValueError as e:
    raise ValueError(f"--search_microbatches={args.search_microbatches}: {e}") from None
  return shape, counts


def _gb(n: float) -> str:
  return f"{n / 1e9:,.3f} GB"


def format_plan(p: Any) -> str:
  """A human-readable report of one Plan."""
  mesh = ",".join(f"{k}:{v}" for k, v in p.mesh.items())
  verdict = "FITS" if p.fits else "DOES NOT FIT"
  loops = "" if p.loop_corrected else " (scan loops counted once: XLA's raw figure)"
  lines = [
      f"plan: {p.num_params / 1e6:,.1f}M params on {p.num_devices} x {p.device} "
      f"(mesh {mesh}, rules {p.rules}), {p.precision}, remat {p.remat_policy}, "
      f"microbatches {p.microbatches}, batch {p.batch_size} x {p.seq_len}",
      "memory per device:",
      f"  parameters              {_gb(p.param_bytes)}",
      f"  optimizer state         {_gb(p.opt_state_bytes)}",
      f"  batch                   {_gb(p.batch_bytes)}",
      f"  XLA arguments           {_gb(p.argument_bytes)}  (state + batch)",
      f"  XLA temp                {_gb(p.temp_bytes)}  (activations, gradients, workspace)",
      f"  XLA output - alias      {_gb(p.output_bytes - p.alias_bytes)}  "
      f"(output {_gb(p.output_bytes)}, donated in place {_gb(p.alias_bytes)})",
      f"  XLA generated code      {_gb(p.generated_code_bytes)}",
      f"  total                   {_gb(p.total_bytes)} of {_gb(p.usable_bytes)} usable "
      f"({_gb(p.memory_bytes)} x {p.usable_bytes / p.memory_bytes:.2f})  -> {verdict}",
      "compute per step:",
      f"  FLOPs per device        {p.flops_per_device:.3e}{loops}  (XLA's raw count "
      f"{p.xla_flops_per_device:.3e})",
      f"  model FLOPs / devices   {p.model_flops_per_step / p.num_devices:.3e}  (6*N*tokens: "
      f"{p.model_flops_6nt / p.num_devices:.3e})",
      f"  HBM bytes per device    {p.bytes_accessed_per_device:.3e}",
      f"  collective bytes        {p.collective_bytes_per_device:.3e}",
      f"predicted step time       {p.step_time_s * 1e3:,.2f} ms  (a lower bound: compute "
      f"{p.compute_s * 1e3:,.2f} ms, collectives {p.collective_s * 1e3:,.2f} ms, perfectly "
      "overlapped" + (f"; HBM {p.memory_s * 1e3:,.2f} ms" if p.device == "cpu" else
                      f"; CPU-compiled HBM traffic {p.memory_s * 1e3:,.2f} ms, not counted") + ")",
      f"predicted MFU             {p.mfu:.1%}  (an upper bound; {p.tokens_per_sec:,.0f} "
      f"tokens/s at {p.peak_flops / 1e12:,.0f} TFLOP/s peak per device)",
  ]
  return "\n".join(lines)


def format_search(result: Any) -> str:
  """A ranked table of the plans that fit."""
  lines = [f"{len(result.fitting)} plans fit, best first "
           f"({len(result.not_fitting)} do not fit, {len(result.skipped)} skipped):"]
  lines.append(f"  {'remat':<14}{'micro':>6}  {'rules':<10}{'memory/device':>15}"
               f"{'step ms':>11}{'MFU':>8}")
  for p in result.fitting:
    lines.append(f"  {p.remat_policy:<14}{p.microbatches:>6}  {p.rules:<10}"
                 f"{_gb(p.total_bytes):>15}{p.step_time_s * 1e3:>11.2f}{p.mfu:>8.1%}")
  for cand, reason in result.skipped:
    lines.append(f"  skipped {cand.describe()}: {reason}")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  """Parses flags, plans (or searches) and prints; returns the exit code (2: bad input)."""
  try:
    rest, bindings = gin_config.split_gin_flags(argv)
    args = _parser().parse_args(rest)
    shape, counts = _check_flags(args)
  except SystemExit as e:  # argparse: --help (0) or a bad flag (2, its message printed).
    return int(e.code or 0)
  except (gin_config.GinConfigError, ValueError) as e:
    print(f"llmjax plan: {e}", file=sys.stderr)
    return 2
  from jax._src import xla_bridge  # As in fake_devices: has a backend started already?

  from llmjax.cli.fake_devices import use_fake_cpu_devices

  if not xla_bridge.backends_are_initialized():  # Else too late, and would leak to children.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE_FLAGS}".strip()

  num_devices = math.prod(shape.values())
  try:
    use_fake_cpu_devices(num_devices)
  except RuntimeError:
    pass  # JAX already started in this process (tests): the plan uses its first devices.
  from llmjax.planning import devices as devices_lib
  from llmjax.planning import planner
  from llmjax.planning import search as search_lib

  try:
    gin_config.parse(args.gin_file, bindings)
    configs = gin_config.build_all()
    device = devices_lib.get_device(args.device, num_devices=num_devices,
                                    memory_gb=args.device_memory_gb,
                                    memory_fraction=args.memory_fraction)
    model = planner.target_model_config(configs["model"], device.platform)
    rules = args.rules or configs["mesh"].rules
    from llmjax.training.validation import validate

    validate(model, configs["train"], planner.make_plan_mesh(shape), configs["data"])
    if args.search:
      space = dict(remat=_csv(args.search_remat), microbatches=counts,
                   rules=_csv(args.search_rules))
      search_lib.candidates(model, device.platform, **space)  # Bad names: exit 2 now.
      result = search_lib.search(model, configs["train"], configs["data"], shape, device,
                                 progress=lambda line: print(line, file=sys.stderr), **space)
      print(json.dumps(result.to_dict()) if args.json else format_search(result))
      return 0
    result = planner.plan(model, configs["train"], configs["data"], shape, rules, device)
  except (gin_config.GinConfigError, ValueError, SyntaxError, OSError) as e:
    print(f"llmjax plan: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result.to_dict()) if args.json else format_plan(result))
  return 0
