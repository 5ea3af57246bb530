"""`llmjax convert`: Hugging Face checkpoints in (--from_hf) and out (--to_hf).

  llmjax convert --from_hf=HF_DIR --workdir=OUT [--mesh=fsdp:8 --rules=fsdp]
  llmjax convert --to_hf --workdir=W --out=HF_DIR [--step=N]
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="llmjax convert",
      description="Convert a local Hugging Face model folder (safetensors) into an llmjax "
      "workdir, or a workdir into a folder transformers loads. Supported: "
      "GPT-2, LLaMA, BERT (masked LM), T5 (v1.0 and v1.1).")
  direction = parser.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from_hf", metavar="HF_DIR",
                         help="a local folder with config.json + model.safetensors (or a "
                         "sharded model.safetensors.index.json); nothing is downloaded")
  direction.add_argument("--to_hf", action="store_true", help="export --workdir to --out")
  parser.add_argument("--workdir", required=True,
                      help="--from_hf: the new workdir to write; --to_hf: the workdir to read")
  parser.add_argument("--out", help="--to_hf: the new HF folder to write")
  parser.add_argument("--step", type=int, default=None,
                      help="--to_hf: the checkpoint step (default: the latest)")
  parser.add_argument("--mesh", default=None,
                      help="--from_hf: place the params sharded on this mesh while reading, "
                      "e.g. fsdp:8 (default: one device)")
  parser.add_argument("--rules", default="fsdp", help="sharding rule set for --mesh")
  return parser


def main(argv: list[str]) -> int:
  """Runs one conversion; prints its summary (time, size, peak memory)."""
  args = _parser().parse_args(argv)
  try:
    from llmjax.interop import workdir as convert

    if args.to_hf:
      if not args.out:
        raise ValueError("--to_hf needs --out=DIR (the Hugging Face folder to write).")
      report = convert.export_hf(args.workdir, args.out, step=args.step)
    else:
      mesh = None
      if args.mesh:
        from llmjax.sharding.mesh import make_mesh, parse_mesh_flag
        mesh = make_mesh(parse_mesh_flag(args.mesh))
      report = convert.import_hf(args.from_hf, args.workdir, mesh=mesh, rules=args.rules)
  except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
          PermissionError) as e:
    print(f"llmjax convert: {e}", file=sys.stderr)
    return 2
  print(f"llmjax convert: {report.summary()}")
  return 0
