"""Reading and writing the safetensors format with NumPy alone, one tensor at a time.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw little-endian bytes. Reading reads one
tensor at a time into its own array (bfloat16 comes from ml_dtypes, which JAX ships); writing
streams tensors to disk in header order, so an export never holds a second copy of the model.
Hugging Face folders may split a model over several files listed in
`model.safetensors.index.json`.

No pickle is ever read: a folder that has only `pytorch_model.bin` is refused with the command
that converts it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5",
            "flax_model.msgpack")
_MAX_HEADER = 100 * 1024 * 1024

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def dtype_name(dtype: np.dtype) -> str:
  """The safetensors name of a NumPy dtype ('F32', 'BF16', ...)."""
  try:
    return _NAMES[np.dtype(dtype)]
  except KeyError:
    raise ValueError(f"dtype {dtype} has no safetensors encoding.") from None


class SafetensorsFile:
  """One .safetensors file: `keys()`, `shape(name)`, `dtype(name)` (from the header alone) and
  `get(name)`, which reads that tensor's bytes into a new NumPy array."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      prefix = f.read(8)
      if len(prefix) < 8:
        raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header).")
      (length,) = struct.unpack("<Q", prefix)
      if length > _MAX_HEADER:
        raise ValueError(f"{path} is not a safetensors file (header length {length}).")
      try:
        header = json.loads(f.read(length))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a safetensors file (bad JSON header: {e}).") from e
    self.metadata = header.pop("__metadata__", None) or {}
    self._entries = header
    self._data_start = 8 + length

  def keys(self) -> list[str]:
    return list(self._entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entries[name]["shape"])

  def dtype(self, name: str) -> np.dtype:
    code = self._entries[name]["dtype"]
    if code not in DTYPES:
      raise ValueError(f"{self.path}: tensor {name!r} has dtype {code}, which llmjax does not "
                       f"read (supported: {', '.join(DTYPES)}).")
    return DTYPES[code]

  def get(self, name: str) -> np.ndarray:
    entry = self._entries[name]
    begin, end = entry["data_offsets"]
    dtype, shape = self.dtype(name), tuple(entry["shape"])
    if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
      raise ValueError(f"{self.path}: tensor {name!r} claims {end - begin} bytes for shape "
                       f"{shape} {dtype} (the file is damaged).")
    out = np.empty(shape, dtype.newbyteorder("<"))
    # A plain read into a fresh array (not a memory map): the bytes leave this process's memory
    # as soon as the caller drops the array, so a conversion holds one tensor at a time.
    with open(self.path, "rb") as f:
      f.seek(self._data_start + begin)
      if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != end - begin:
        raise ValueError(f"{self.path}: tensor {name!r} is cut short (the file is truncated).")
    return out


class SafetensorsFolder:
  """The tensors of a Hugging Face model folder: `model.safetensors`, or the files a
  `model.safetensors.index.json` lists. Same methods as SafetensorsFile, over all files."""

  def __init__(self, directory: str):
    self.directory = directory
    index = os.path.join(directory, INDEX_FILE)
    single = os.path.join(directory, SINGLE_FILE)
    self._files: dict[str, SafetensorsFile] = {}
    self._where: dict[str, str] = {}
    if os.path.isfile(index):
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no 'weight_map': not a safetensors index.")
      for filename in sorted(set(weight_map.values())):
        path = os.path.join(directory, filename)
        if not os.path.isfile(path):
          raise FileNotFoundError(f"{index} lists {filename}, which is not in {directory}.")
        self._files[filename] = SafetensorsFile(path)
      for name, filename in weight_map.items():
        if name not in self._files[filename]._entries:
          raise ValueError(f"{index} places tensor {name!r} in {filename}, which lacks it.")
        self._where[name] = filename
    elif os.path.isfile(single):
      self._files[SINGLE_FILE] = SafetensorsFile(single)
      self._where = dict.fromkeys(self._files[SINGLE_FILE].keys(), SINGLE_FILE)
    else:
      pickled = [n for n in _PICKLED if os.path.exists(os.path.join(directory, n))]
      if pickled:
        raise ValueError(
            f"{directory} holds only {', '.join(pickled)} (pickle-based formats), which llmjax "
            "never loads: convert it to safetensors first, e.g. in Python with transformers: "
            "`AutoModel.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)` "
            "(only for a checkpoint you trust: loading a .bin runs its pickle).")
      raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}.")

  def keys(self) -> list[str]:
    return list(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def _file(self, name: str) -> SafetensorsFile:
    return self._files[self._where[name]]

  def shape(self, name: str) -> tuple[int, ...]:
    return self._file(name).shape(name)

  def dtype(self, name: str) -> np.dtype:
    return self._file(name).dtype(name)

  def get(self, name: str) -> np.ndarray:
    return self._file(name).get(name)


def write_safetensors(path: str, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                      fetch: Callable[[str], np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> int:
  """Writes tensors to `path`, fetching them one at a time in `specs` order.

  Args:
    path: the file to write (written to path + '.tmp', then renamed: a failed export never
      leaves a truncated file behind).
    specs: name -> (shape, dtype) of every tensor, in file order.
    fetch: name -> the array (must match its spec); called once per name, in order.
    metadata: string pairs for the header (transformers expects {"format": "pt"}).

  Returns:
    The number of bytes written.
  """
  header: dict = {"__metadata__": dict(metadata or {})}
  offset = 0
  for name, (shape, dtype) in specs.items():
    size = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
    header[name] = {"dtype": dtype_name(dtype), "shape": list(shape),
                    "data_offsets": [offset, offset + size]}
    offset += size
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # Tensor data starts 8-byte aligned.
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for name, (shape, dtype) in specs.items():
      array = np.asarray(fetch(name))
      if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        raise ValueError(f"tensor {name!r} is {array.shape} {array.dtype}, but its header entry "
                         f"says {tuple(shape)} {np.dtype(dtype)}.")
      f.write(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
  os.replace(tmp, path)
  return 8 + len(encoded) + offset


def write_tensors(path: str, tensors: Iterable[tuple[str, np.ndarray]],
                  metadata: Mapping[str, str] | None = None) -> int:
  """Writes (name, array) pairs held in memory (small files and tests)."""
  tensors = dict(tensors)
  specs = {name: (array.shape, array.dtype) for name, array in tensors.items()}
  return write_safetensors(path, specs, tensors.__getitem__, metadata)
