"""TFDS datasets of text documents, read without TensorFlow.

`LocalText` is a TFDS builder over local text files (one document per file), written as
ArrayRecord and read back only through `builder.as_data_source()`: `tfds.load` / `as_dataset`
need TensorFlow, which llmjax does not install. `open_prepared` opens any TFDS dataset that is
already prepared in a data_dir; nothing here ever downloads.

`stdlib_files()` is the default corpus: the Python standard library's own `.py` sources,
which every machine running llmjax has.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import sysconfig
from collections.abc import Iterable, Sequence
from typing import Any

import tensorflow_datasets as tfds

_STATS_FILE = "llmjax_stats.json"
_SKIPPED_DIRS = ("site-packages", "dist-packages")
_WARNED: set[str] = set()


def stdlib_files() -> list[str]:
  """Returns the standard library's `.py` files, sorted, excluding installed packages.

  The stdlib's own tests are kept: with them the corpus is about 30 MB (Python 3.11: about
  1,800 files; 12 MB without them), which is a better size for a quickstart model, and their odd
  files (non-UTF-8 encodings, unusual whitespace) exercise the lossless tokenizer.
  """
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for directory, dirs, names in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and d != "__pycache__")
    files.extend(os.path.join(directory, n) for n in names if n.endswith(".py"))
  if not files:
    raise ValueError(f"found no .py files under the standard library directory {root!r}; set "
                     "DataConfig.text_files to your own text files instead.")
  return sorted(files)


def resolve_files(patterns: str | Sequence[str]) -> list[str]:
  """Expands globs / explicit paths into a sorted list of non-empty files.

  Raises:
    ValueError: a pattern matches nothing, or every matched file is empty.
  """
  if isinstance(patterns, str | os.PathLike):
    patterns = [patterns]
  files: set[str] = set()
  for pattern in patterns:
    pattern = os.path.expanduser(os.fspath(pattern))
    matched = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    if not matched:
      raise ValueError(f"text file pattern {pattern!r} matched no files; check the path (globs "
                       "such as 'corpus/**/*.txt' are expanded relative to the working "
                       f"directory {os.getcwd()!r}).")
    files.update(os.path.abspath(p) for p in matched)
  non_empty = sorted(p for p in files if os.path.getsize(p) > 0)
  if not non_empty:
    raise ValueError(f"every file matched by {list(patterns)!r} is empty ({len(files)} files); "
                     "point DataConfig.text_files at files with text in them.")
  return non_empty


def split_files(files: Sequence[str], eval_fraction: float) -> tuple[list[str], list[str]]:
  """Splits files into (train, validation) by a hash of each path relative to their root.

  Hashing the relative path (not the absolute one) gives the same split on every machine that
  has the same files, e.g. the stdlib corpus. With >= 2 files and eval_fraction > 0 both
  splits are non-empty.
  """
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}.")
  root = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
  score = {
      f: int(hashlib.sha256(os.path.relpath(f, root).encode()).hexdigest()[:15], 16) / 16**15
      for f in files}
  train = [f for f in files if score[f] >= eval_fraction]
  valid = [f for f in files if score[f] < eval_fraction]
  if eval_fraction > 0 and len(files) >= 2:
    if not valid:  # Small corpora: hold out the file with the lowest score.
      lowest = min(train, key=score.__getitem__)
      train.remove(lowest)
      valid.append(lowest)
    if not train:
      highest = max(valid, key=score.__getitem__)
      valid.remove(highest)
      train.append(highest)
  return sorted(train), sorted(valid)


def fingerprint(files: Sequence[str], eval_fraction: float) -> str:
  """A short hash of the file list, sizes, mtimes and split fraction (the builder config name)."""
  h = hashlib.sha256(f"eval_fraction={eval_fraction!r}\n".encode())
  for f in sorted(files):
    st = os.stat(f)
    h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


@dataclasses.dataclass(eq=False, repr=False)
class LocalTextConfig(tfds.core.BuilderConfig):
  """Which files make up each split; the name is a fingerprint of them, so changed files
  always produce a new dataset directory and stale data is never reused."""
  train_files: tuple[str, ...] = ()
  validation_files: tuple[str, ...] = ()

  def __repr__(self) -> str:  # TFDS logs the config: keep thousands of paths out of the log.
    return (f"LocalTextConfig(name={self.name!r}, train_files=<{len(self.train_files)}>, "
            f"validation_files=<{len(self.validation_files)}>)")


class LocalText(tfds.core.GeneratorBasedBuilder):
  """Local text files, one document per file: features `text` and `path`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *args: Any, **kwargs: Any):
    super().__init__(*args, **kwargs)
    self.replaced_files: list[str] = []  # Files that had invalid UTF-8, filled while preparing.

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Local text files, one document per file.",
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "path": tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager  # Nothing to download.
    splits = {"train": self._generate_examples(self.builder_config.train_files)}
    if self.builder_config.validation_files:
      splits["validation"] = self._generate_examples(self.builder_config.validation_files)
    return splits

  def _generate_examples(self, files: Iterable[str]):
    for path in files:
      with open(path, "rb") as f:
        raw = f.read()
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        self.replaced_files.append(path)
      yield path, {"text": text, "path": path}


def prepare_local_text(files: Sequence[str], data_dir: str, *,
                       eval_fraction: float) -> tuple[LocalText, dict[str, Any]]:
  """Prepares (once) a LocalText dataset of `files` under data_dir; returns (builder, stats).

  stats: num_files, num_train_files, num_validation_files, num_bytes, replaced_utf8_files (how
  many files had invalid UTF-8 that was replaced by U+FFFD), config_name.
  """
  train, valid = split_files(files, eval_fraction)
  name = "files_" + fingerprint(files, eval_fraction)
  config = LocalTextConfig(name=name, version=LocalText.VERSION,
                           description=f"{len(files)} local text files",
                           train_files=tuple(train), validation_files=tuple(valid))
  builder = LocalText(config=config, data_dir=data_dir, file_format="array_record")
  stats_path = os.path.join(os.fspath(builder.data_dir), _STATS_FILE)
  if builder.is_prepared() and os.path.exists(stats_path):
    with open(stats_path, encoding="utf-8") as f:
      stats = json.load(f)
  else:
    builder.download_and_prepare(
        download_dir=os.path.join(data_dir, "downloads"), file_format="array_record")
    if not builder.replaced_files:  # Prepared by an earlier, interrupted call: count again.
      builder.replaced_files = [f for f in files if not _is_utf8(f)]
    stats = {
        "config_name": name,
        "num_files": len(files),
        "num_train_files": len(train),
        "num_validation_files": len(valid),
        "num_bytes": sum(os.path.getsize(f) for f in files),
        "replaced_utf8_files": len(builder.replaced_files),
    }
    with open(stats_path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(stats, f, indent=2)
    os.replace(stats_path + ".tmp", stats_path)
  if stats["replaced_utf8_files"] and name not in _WARNED:
    _WARNED.add(name)  # Once per dataset and process, not on every reopen.
    logging.warning("llmjax: %d of %d text files had invalid UTF-8; the bad bytes were replaced "
                    "by U+FFFD.", stats["replaced_utf8_files"], stats["num_files"])
  return builder, stats


def _is_utf8(path: str) -> bool:
  with open(path, "rb") as f:
    try:
      f.read().decode("utf-8")
      return True
    except UnicodeDecodeError:
      return False


def open_prepared(name: str, data_dir: str | None, split: str) -> Any:
  """Opens split of an already-prepared TFDS dataset as a random-access data source.

  Never downloads or prepares: a dataset that is not in data_dir raises a ValueError quickly.
  """
  where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
  fix = ("llmjax never downloads datasets: prepare it beforehand with ArrayRecord files (e.g. "
         "`tfds build NAME --file_format=array_record` on a machine with network) and set "
         "DataConfig.tfds_data_dir, or use DataConfig.text_files for local files.")
  try:
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except Exception as e:  # DatasetNotFoundError and friends; their messages list every dataset.
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"TFDS dataset {name!r} not found in {where}: {first_line}\n{fix}") from e
  if not builder.is_prepared():
    raise ValueError(f"TFDS dataset {name!r} is not prepared in {where}.\n{fix}")
  if split not in builder.info.splits:
    raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits)}.")
  try:
    return builder.as_data_source(split=split)
  except Exception as e:
    raise ValueError(f"cannot open TFDS dataset {name!r} split {split!r} in {where} as a "
                     f"random-access source (needs ArrayRecord or Parquet files): {e}") from e
