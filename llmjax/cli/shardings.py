"""`llmjax shardings`: every parameter's and main activation's layout under a rule set and mesh.

    llmjax shardings --gin_file=gin_configs/models/llama_1b.gin --mesh=fsdp:8,tensor:2

With --mesh the layout is computed on that many fake CPU devices (no accelerator needed);
without it, the gin MeshConfig's shape is laid out over this machine's devices. The numbers
come from `llmjax.sharding.report`; this module parses flags and renders text.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from llmjax.cli import gin_config
from llmjax.sharding import report as report_lib
from llmjax.sharding.mesh import parse_mesh_flag
from llmjax.sharding.rules import get_rules


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="llmjax shardings",
      description="Print every parameter's shape, logical axes, mesh axes and bytes per device, "
      "the main activations' layouts, per-device totals, and replicated-parameter warnings.")
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file(s), e.g. gin_configs/models/llama_1b.gin")
  parser.add_argument("--mesh", default=None,
                      help="mesh to lay out on fake CPU devices, e.g. data:2,fsdp:4,tensor:2 "
                      "(every size given, no -1); default: the gin MeshConfig on this machine")
  parser.add_argument("--rules", default=None, help="rule set; default: MeshConfig.rules")
  parser.add_argument("--platform", default=None, choices=("cpu", "gpu", "tpu"),
                      help="platform precision='auto' resolves for (gpu/tpu: bf16 activations); "
                      "default: this process's backend")
  parser.add_argument("--threshold_mib", type=float, default=4.0,
                      help="warn about replicated parameters of at least this many MiB per device")
  parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
  return parser


def _mesh_from_flag(text: str) -> dict[str, int]:
  shape = parse_mesh_flag(text)
  if any(size == -1 for size in shape.values()):
    raise ValueError(f"--mesh={text}: give every axis size (no -1); the layout is computed on "
                     "exactly that many fake devices.")
  return shape


def _use_fake_devices(count: int) -> None:
  from llmjax.cli.fake_devices import use_fake_cpu_devices
  try:
    use_fake_cpu_devices(count)
  except RuntimeError:
    pass  # JAX already runs (an in-process caller): the layout needs only the mesh shape.


def build(argv: Sequence[str]) -> tuple[report_lib.Report, bool]:
  """Parses flags and builds the report; returns (report, as_json).

  Raises:
    ValueError: bad flags, gin bindings, rule set or mesh (the message says what to change).
  """
  rest, bindings = gin_config.split_gin_flags(argv)
  args = _parser().parse_args(rest)
  if args.rules is not None:
    get_rules(args.rules)  # Fail before any JAX work.
  mesh_shape = None
  if args.mesh is not None:
    mesh_shape = _mesh_from_flag(args.mesh)
    _use_fake_devices(math.prod(mesh_shape.values()))
  gin_config.parse(args.gin_file, bindings)
  configs = gin_config.build_all()
  rules = args.rules or configs["mesh"].rules
  get_rules(rules)

  import jax  # After the fake devices are set up.

  from llmjax.models.interface import LanguageModel
  from llmjax.models.precision import resolve_policy
  from llmjax.sharding.mesh import resolve_shape

  if mesh_shape is None:
    try:
      mesh_shape = resolve_shape(configs["mesh"].shape, jax.device_count())
    except ValueError as e:
      raise ValueError(f"MeshConfig.shape does not fit this machine: {e} Pass --mesh=... to lay "
                       "out another machine's mesh.") from e
  model, train = configs["model"], configs["train"]
  if args.platform is not None:
    model = model.replace(precision=resolve_policy(model.precision, args.platform))
  report = report_lib.build_report(
      LanguageModel(model).abstract_init(), model, rules=rules, mesh=mesh_shape,
      batch_size=train.microbatch_size, seq_len=train.seq_len,
      decoder_seq_len=getattr(configs["data"], "decoder_seq_len", None),
      threshold_bytes=int(args.threshold_mib * 2**20))
  return report, args.json


def main(argv: list[str]) -> int:
  """Prints the layout; returns the process exit code (2 for bad input)."""
  try:
    report, as_json = build(argv)
  except SystemExit as e:  # argparse: --help (0) or a bad flag (2, message already printed).
    return int(e.code or 0)
  except (gin_config.GinConfigError, ValueError, SyntaxError, OSError) as e:
    print(f"llmjax shardings: {e}", file=sys.stderr)
    return 2
  print(json.dumps(report.to_json(), indent=1) if as_json else format_table(report))
  return 0


def _spec_text(row: report_lib.Row) -> str:
  """'-, fsdp+sequence, (tensor)': '(axis)' = wanted there, but uneven, so left whole."""
  uneven = {u.index: u.mesh_axes for u in row.uneven}
  out = []
  for i in range(len(row.shape)):
    entry = row.spec[i] if i < len(row.spec) else None
    names = uneven.get(i) or ((entry,) if isinstance(entry, str) else entry or ())
    text = "+".join(names) or "-"
    out.append(f"({text})" if i in uneven else text)
  return ", ".join(out)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
  right = {len(header) - 2, len(header) - 1}  # The byte columns.
  fmt = lambda r: "  ".join(c.rjust(w) if i in right else c.ljust(w)
                            for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
  return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def _cells(row: report_lib.Row) -> list[str]:
  size = report_lib.format_bytes
  return [row.name, "x".join(map(str, row.shape)), row.dtype,
          ", ".join(n or "-" for n in row.logical_axes), _spec_text(row),
          size(row.bytes_per_device), size(row.bytes_total)]


def format_table(report: report_lib.Report) -> str:
  """The report as text: parameter table, activation table, totals, warnings."""
  size = report_lib.format_bytes
  header = ["parameter", "shape", "dtype", "logical axes", "mesh axes", "per device", "total"]
  mesh = " ".join(f"{k}={v}" for k, v in report.mesh_shape.items())
  devices = math.prod(report.mesh_shape.values())
  t = report.totals
  lines = [f"Parameters: rules={report.rules}, mesh {mesh} ({devices} devices)",
           *_table(header, [_cells(r) for r in report.params]), "",
           f"Activations of one layer, (micro)batch {report.batch_size} x {report.seq_len} "
           "tokens",
           *_table(["activation", *header[1:]], [_cells(r) for r in report.activations])]
  if any(r.uneven for r in report.params + report.activations):
    lines.append("(axis): the rule splits this dimension over axis, but its size does not "
                 "divide it, so it is left whole.")
  lines += ["", "Totals per device",
            f"  parameters        {size(t['params_bytes_per_device']):>11}  "
            f"(all devices together hold {size(t['params_bytes_total'])} once)",
            f"  AdamW moments     {size(t['optimizer_bytes_per_device']):>11}  "
            "(2 x fp32, sharded like the parameters)",
            f"  params + moments  {size(t['params_and_optimizer_bytes_per_device']):>11}"]
  if report.warnings:
    lines += ["", "Warnings", *(f"  {w}" for w in report.warnings)]
  return "\n".join(lines)
