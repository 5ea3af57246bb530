"""Per-device FLOPs, bytes and collective traffic of a compiled (SPMD-partitioned) program.

`compiled.cost_analysis()` is per device: the program XLA compiles for a sharded `jax.jit` is
the partitioned one each device runs (an 8-device compile of the llmjax train step reports 1/8
of the 1-device FLOPs; tests/planning/test_hlo_costs.py checks this). But XLA's cost analysis
counts a `while` loop's body ONCE, whatever its trip count, so a scanned stack of l layers (and
a gradient-accumulation scan) is undercounted: the tiny 4-layer decoder's step reports 0.44x
its unscanned FLOPs. `loop_corrected_costs` fixes that with XLA's own numbers: each loop body
with a `known_trip_count` is cut out of the optimized HLO into a module of its own, costed by
XLA, and counted trip-count times (nested loops multiply). Loops of unknown trip count are
counted once, as XLA does.

Collective traffic is read from the same HLO: the bytes each device sends or receives for its
all-gathers (the gathered output), reduce-scatters (the operand), all-reduces (2x, reduce-
scatter + all-gather), all-to-alls and permutes, times their loop trip counts. That is an upper
bound on ring algorithms, which move (n-1)/n of it.

The cutting uses XLA's HLO text parser and cost analysis through jaxlib internals
(`jaxlib._hlo.hlo_module_from_text`, `hlo_module_cost_analysis`); if they are missing in some
JAX version, the uncorrected figures are returned with `loop_corrected=False`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) .*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"\b(pred|[subfc]\d+|bf16|f8\w*)\[([\d,]*)\]")
_CALLEE = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)"
                     r"=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_STACK_FRAME = re.compile(r",?\s*stack_frame_id=\d+")  # Ids whose table is not in the text.
_COLLECTIVES = {"all-gather": 1, "all-reduce": 2, "reduce-scatter": 1, "all-to-all": 1,
                "collective-permute": 1}
_ITEMSIZE = {"pred": 1, "bf16": 2}


@dataclasses.dataclass(frozen=True)
class HloCosts:
  """Per-device costs of one step.

  Attributes:
    flops: FLOPs, loop bodies counted trip-count times.
    bytes_accessed: HBM bytes read + written, loop-corrected the same way.
    collective_bytes: bytes moved by collectives (see the module docstring).
    xla_flops / xla_bytes_accessed: `compiled.cost_analysis()` as XLA reports it (loop bodies
      counted once).
    loop_corrected: whether the loop correction could be applied.
  """

  flops: float
  bytes_accessed: float
  collective_bytes: float
  xla_flops: float
  xla_bytes_accessed: float
  loop_corrected: bool


def _itemsize(dtype: str) -> int:
  if dtype in _ITEMSIZE:
    return _ITEMSIZE[dtype]
  bits = int(re.sub(r"\D", "", dtype.split("e")[0]) or 8)  # f8e4m3 -> 8, s32 -> 32.
  return max(1, bits // 8) * (2 if dtype.startswith("c") else 1)


def _type_bytes(type_text: str) -> int:
  """Bytes of an HLO type: an array, or the largest array of a tuple (async start ops)."""
  sizes = [math.prod(int(d) for d in dims.split(",") if d) * _itemsize(dtype)
           for dtype, dims in _ARRAY.findall(type_text)]
  return max(sizes, default=0)


def _split_computations(text: str) -> tuple[dict[str, list[str]], list[str], str | None]:
  comps: dict[str, list[str]] = {}
  order: list[str] = []
  entry, current = None, None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if current is None and header:
      current = header.group(2)
      comps[current], entry = [line], (current if header.group(1) else entry)
      order.append(current)
    elif current is not None:
      comps[current].append(line)
      if line.strip() == "}":
        current = None
  return comps, order, entry


def _loops(lines: list[str]) -> list[tuple[str, int]]:
  """(body computation, trip count) of every while loop in a computation."""
  loops = []
  for line in lines:
    if " while(" in line and "body=%" in line:
      body = re.search(r"body=%([\w.\-]+)", line).group(1)
      trip = _TRIP_COUNT.search(line)
      loops.append((body, int(trip.group(1)) if trip else 1))
  return loops


def _callees(lines: list[str]) -> set[str]:
  text = "\n".join(lines)
  names = {name for _, name in _CALLEE.findall(text)}
  for group in _BRANCHES.findall(text):
    names.update(re.findall(r"%([\w.\-]+)", group))
  return names


def _collective_bytes(lines: list[str]) -> float:
  types = {}
  total = 0.0
  for line in lines:
    match = _INSTR.match(line)
    if not match:
      continue
    name, type_text, op, rest = match.groups()
    types[name] = type_text
    base = op.removesuffix("-start")
    if base not in _COLLECTIVES:
      continue
    if base == "reduce-scatter":  # The operand (the full, unreduced gradient) moves.
      operand = re.match(r"\s*%([\w.\-]+)", rest)
      total += _type_bytes(types.get(operand.group(1), type_text) if operand else type_text)
    else:
      total += _COLLECTIVES[base] * _type_bytes(type_text)
  return total


class _Analyzer:
  """XLA's cost analysis of sub-computations of one HLO module, by name."""

  def __init__(self, text: str, client: Any):
    from jax._src.lib import xla_client  # noqa: F401  (jaxlib internals; see docstring)
    from jaxlib import _hlo

    self._from_text = _hlo.hlo_module_from_text
    self._cost = xla_client._xla.hlo_module_cost_analysis
    self._client = client
    self.comps, self.order, self.entry = _split_computations(_STACK_FRAME.sub("", text))
    self._memo: dict[str, tuple[float, float]] = {}

  def _closure(self, name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
      for callee in _callees(self.comps[todo.pop()]):
        if callee not in seen and callee in self.comps:
          seen.add(callee)
          todo.append(callee)
    return seen

  def xla_cost(self, name: str) -> tuple[float, float]:
    """(flops, bytes accessed) XLA reports for computation `name` run once as a module."""
    if name not in self._memo:
      deps = self._closure(name)
      parts = ["\n".join(self.comps[c]).replace("ENTRY ", "", 1)
               for c in self.order if c in deps]
      parts.append("ENTRY " + "\n".join(self.comps[name]).replace("ENTRY ", "", 1))
      module = self._from_text("HloModule cost_of_" + name + "\n\n" + "\n\n".join(parts))
      cost = self._cost(self._client, module)
      self._memo[name] = (float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)))
    return self._memo[name]

  def true_cost(self, name: str) -> tuple[float, float]:
    """(flops, bytes) of `name` with every known-trip-count loop counted trip-count times."""
    flops, nbytes = self.xla_cost(name)
    for body, trip in self._direct_loops(name):
      body_xla, body_true = self.xla_cost(body), self.true_cost(body)
      flops += trip * body_true[0] - body_xla[0]
      nbytes += trip * body_true[1] - body_xla[1]
    return flops, nbytes

  def _direct_loops(self, name: str) -> list[tuple[str, int]]:
    """Loops run by `name` itself or by the non-loop computations it calls (not nested ones)."""
    found, todo, seen = [], [name], {name}
    while todo:
      lines = self.comps[todo.pop()]
      loops = _loops(lines)
      found += loops
      bodies = {body for body, _ in loops}
      for callee in _callees(lines) - bodies - seen:
        if callee in self.comps:
          seen.add(callee)
          todo.append(callee)
    return found

  def collective_bytes(self, name: str, multiplier: int = 1) -> float:
    total = multiplier * _collective_bytes(self.comps[name])
    loops = dict(_loops(self.comps[name]))
    for callee in _callees(self.comps[name]):
      if callee in self.comps:
        total += self.collective_bytes(callee, multiplier * loops.get(callee, 1))
    return total


def loop_corrected_costs(compiled: Any, client: Any) -> HloCosts:
  """Per-device costs of an AOT-compiled step (`jax.jit(...).lower(...).compile()`).

  Args:
    compiled: the compiled executable.
    client: the backend client it was compiled for (`jax.devices()[0].client`).

  Returns:
    The HloCosts; `loop_corrected=False` (and XLA's raw numbers) if the HLO could not be cut.
  """
  raw = compiled.cost_analysis()
  raw = raw[0] if isinstance(raw, list | tuple) else raw
  xla_flops = float(raw.get("flops", 0.0))
  xla_bytes = float(raw.get("bytes accessed", 0.0))
  text = compiled.as_text()
  try:
    analyzer = _Analyzer(text, client)
    flops, nbytes = analyzer.true_cost(analyzer.entry)
    # The entry cut out and re-costed should reproduce XLA's number; the difference is what
    # XLA's whole-module analysis saw that the cut-out text does not (nothing, normally).
    entry_flops, entry_bytes = analyzer.xla_cost(analyzer.entry)
    flops += xla_flops - entry_flops
    nbytes += xla_bytes - entry_bytes
    collectives = analyzer.collective_bytes(analyzer.entry)
    corrected = True
  except Exception:  # noqa: BLE001 -- jaxlib internals changed: fall back to XLA's figures.
    flops, nbytes, corrected = xla_flops, xla_bytes, False
    comps, _, _ = _split_computations(text)
    collectives = sum(_collective_bytes(lines) for lines in comps.values())
  return HloCosts(flops=flops, bytes_accessed=nbytes, collective_bytes=collectives,
                  xla_flops=xla_flops, xla_bytes_accessed=xla_bytes, loop_corrected=corrected)
