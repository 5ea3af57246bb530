"""TFDS datasets of text documents, read without TensorFlow.

`LocalText` is a TFDS builder over local text files, written as ArrayRecord and read back only
through `builder.as_data_source()`: `tfds.load` / `as_dataset` need TensorFlow, which llmjax
does not install. `open_prepared` opens any TFDS dataset that is already prepared in a
data_dir; nothing here ever downloads.

The train / validation split (`plan_split`) depends only on the files and eval_fraction:
- by file, when there are enough files that holding out whole ones comes within 2x of
  eval_fraction (num_files * eval_fraction >= 0.5: 10 files at the default 0.05): a file is
  held out when a hash of its path relative to the files' root is < eval_fraction (at least one
  file each way), and each file is one document. The stdlib corpus is split this way.
- by content, with fewer files (one file, say): the last eval_fraction of each file's text,
  cut at the nearest line break, is held out, like nanoGPT's first-90% / last-10% split; each
  file's two parts are cut at line breaks into documents of at most PIECE_CHARS characters.
A file with NUL bytes (binary, or UTF-16) is refused; invalid UTF-8 elsewhere is replaced.

`stdlib_files()` is the default corpus: the Python standard library's own `.py` sources,
which every machine running llmjax has.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import itertools
import json
import logging
import os
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from typing import Any

import tensorflow_datasets as tfds

_STATS_FILE = "llmjax_stats.json"
# Content splits cut documents at line breaks into pieces of at most this many characters, so a
# single large file still gives the shuffle (and the data streams) many documents.
PIECE_CHARS = 1 << 16
# Whole files are held out when num_files * eval_fraction reaches this: then the share held out
# is at most about 2x eval_fraction even when the hash picks no file and one is forced out.
MIN_EXPECTED_HELD_OUT_FILES = 0.5
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
    ValueError: a pattern is a directory or matches nothing, or every matched file is empty.
  """
  if isinstance(patterns, str | os.PathLike):
    patterns = [patterns]
  files: set[str] = set()
  for pattern in patterns:
    pattern = os.path.expanduser(os.fspath(pattern))
    if os.path.isdir(pattern):
      raise ValueError(f"text file pattern {pattern!r} is a directory; give a glob of the files "
                       f"in it, e.g. {os.path.join(pattern, '**', '*.txt')!r}.")
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


def split_by_files(num_files: int, eval_fraction: float) -> bool:
  """Whether whole files are held out (else each file's tail; see the module docstring)."""
  return eval_fraction == 0 or num_files * eval_fraction >= MIN_EXPECTED_HELD_OUT_FILES


def split_files(files: Sequence[str], eval_fraction: float) -> tuple[list[str], list[str]]:
  """Splits files into (train, validation) by a hash of each path relative to their root.

  Hashing the relative path (not the absolute one) gives the same split on every machine that
  has the same files, e.g. the stdlib corpus. With >= 2 files and eval_fraction > 0 both
  splits are non-empty. `plan_split` uses this only when `split_by_files`.
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


def cut_text(text: str, eval_fraction: float) -> tuple[str, str]:
  """(head, tail) of a text whose tail, about eval_fraction of it, is held out.

  The cut is the line break nearest to len(text) * (1 - eval_fraction) (a text without one is
  cut mid-line); with eval_fraction > 0 and >= 2 characters both parts are non-empty.
  """
  n = len(text)
  if eval_fraction <= 0 or n < 2:
    return text, ""
  target = n - min(n - 1, max(1, round(n * eval_fraction)))  # In [1, n - 1].
  after = text.find("\n", target - 1) + 1  # Line starts in (0, n): positions after a "\n".
  before = text.rfind("\n", 0, target - 1) + 1
  candidates = [p for p in (after, before) if 0 < p < n]
  cut = min(candidates, key=lambda p: (abs(p - target), -p)) if candidates else target
  return text[:cut], text[cut:]


def cut_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
  """Consecutive pieces of text of at most size characters, each ending at a line break when
  one is in reach (a longer line is cut mid-line)."""
  pieces, start = [], 0
  while start < len(text):
    end = min(start + size, len(text))
    if end < len(text):
      newline = text.rfind("\n", start, end)
      if newline >= start:
        end = newline + 1
    pieces.append(text[start:end])
    start = end
  return pieces


def read_text(path: str) -> tuple[str, bool]:
  """(text, whether the bytes were valid UTF-8): invalid bytes become U+FFFD.

  Raises:
    ValueError: the file has NUL bytes (a binary file, or UTF-16/32 text).
  """
  with open(path, "rb") as f:
    raw = f.read()
  if b"\0" in raw:
    raise ValueError(f"{path} is not a text file (it has NUL bytes: binary, or UTF-16/32 text); "
                     "narrow DataConfig.text_files / --text_files to text files (e.g. '*.txt'), "
                     "or convert the file to UTF-8.")
  try:
    return raw.decode("utf-8"), True
  except UnicodeDecodeError:
    return raw.decode("utf-8", errors="replace"), False


@dataclasses.dataclass(frozen=True)
class Split:
  """Which files feed each split, and how: by='files' (one document per file) or 'content'
  (each file's head trains and its tail is held out, see cut_text)."""
  by: str
  train_files: tuple[str, ...]
  validation_files: tuple[str, ...]


def plan_split(files: Sequence[str], eval_fraction: float) -> Split:
  """The split of a corpus (see the module docstring); deterministic in files + fraction."""
  if split_by_files(len(files), eval_fraction):
    train, valid = split_files(files, eval_fraction)
    return Split("files", tuple(train), tuple(valid))
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}.")
  return Split("content", tuple(sorted(files)), tuple(sorted(files)))


def fingerprint(files: Sequence[str], eval_fraction: float) -> str:
  """A short hash of the file list, sizes, mtimes and split (the builder config name).

  File splits keep the hash they had before content splits existed, so prepared corpora (the
  stdlib one included) are reused as they are.
  """
  h = hashlib.sha256(f"eval_fraction={eval_fraction!r}\n".encode())
  if not split_by_files(len(files), eval_fraction):
    h.update(f"split=content pieces={PIECE_CHARS}\n".encode())
  for f in sorted(files):
    st = os.stat(f)
    h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


@dataclasses.dataclass(eq=False, repr=False)
class LocalTextConfig(tfds.core.BuilderConfig):
  """Which files make up each split and how (Split.by); the name is a fingerprint of them, so
  changed files always produce a new dataset directory and stale data is never reused."""
  train_files: tuple[str, ...] = ()
  validation_files: tuple[str, ...] = ()
  split_by: str = "files"
  eval_fraction: float = 0.0

  def __repr__(self) -> str:  # TFDS logs the config: keep thousands of paths out of the log.
    return (f"LocalTextConfig(name={self.name!r}, split_by={self.split_by!r}, "
            f"train_files=<{len(self.train_files)}>, "
            f"validation_files=<{len(self.validation_files)}>)")


class LocalText(tfds.core.GeneratorBasedBuilder):
  """Local text files as documents (see the module docstring): features `text` and `path`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Local text files: one document per file, or pieces of few files.",
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "path": tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    if cfg.split_by == "content":
      splits = {"train": self._generate_parts(cfg.train_files, held_out=False)}
      if any(len(read_text(f)[0]) >= 2 for f in cfg.validation_files):
        splits["validation"] = self._generate_parts(cfg.validation_files, held_out=True)
      return splits
    splits = {"train": self._generate_examples(cfg.train_files)}
    if cfg.validation_files:
      splits["validation"] = self._generate_examples(cfg.validation_files)
    return splits

  def _generate_examples(self, files: Iterable[str]):
    for path in files:
      yield path, {"text": read_text(path)[0], "path": path}

  def _generate_parts(self, files: Iterable[str], *, held_out: bool):
    for path in files:
      head, tail = cut_text(read_text(path)[0], self.builder_config.eval_fraction)
      for i, piece in enumerate(cut_pieces(tail if held_out else head)):
        yield f"{path}:{i}", {"text": piece, "path": path}


def prepare_local_text(files: Sequence[str], data_dir: str, *,
                       eval_fraction: float) -> tuple[LocalText, dict[str, Any]]:
  """Prepares (once) a LocalText dataset of `files` under data_dir; returns (builder, stats).

  stats: config_name, split ('files' or 'content'), num_files, num_train_files,
  num_validation_files (files feeding each split), num_train_examples /
  num_validation_examples (documents), num_bytes, replaced_utf8_files (how many files had
  invalid UTF-8 that was replaced by U+FFFD).

  Raises:
    ValueError: a file is not text (NUL bytes).
  """
  split = plan_split(files, eval_fraction)
  name = "files_" + fingerprint(files, eval_fraction)
  config = LocalTextConfig(name=name, version=LocalText.VERSION,
                           description=f"{len(files)} local text files",
                           train_files=split.train_files, validation_files=split.validation_files,
                           split_by=split.by, eval_fraction=eval_fraction)
  builder = LocalText(config=config, data_dir=data_dir, file_format="array_record")
  stats_path = os.path.join(os.fspath(builder.data_dir), _STATS_FILE)
  if builder.is_prepared() and os.path.exists(stats_path):
    with open(stats_path, encoding="utf-8") as f:
      stats = json.load(f)
  else:
    # Refuses binary files before anything is written; keeps only each file's length.
    scanned = {f: (len(text), ok) for f in files for text, ok in [read_text(f)]}
    replaced = [f for f, (_, ok) in scanned.items() if not ok]
    valid_files = split.validation_files
    if split.by == "content":
      valid_files = tuple(f for f in valid_files if scanned[f][0] >= 2)
      print(f"llmjax: {len(files)} text file(s) are too few to hold out whole files at "
            f"eval_fraction={eval_fraction} (that needs >= "
            f"{next(n for n in itertools.count(1) if split_by_files(n, eval_fraction))}): the "
            f"last {eval_fraction * 100:g}% of each file's text is held out for evaluation "
            "instead.", file=sys.stderr)
    builder.download_and_prepare(
        download_dir=os.path.join(data_dir, "downloads"), file_format="array_record")
    splits = builder.info.splits
    stats = {
        "config_name": name,
        "split": split.by,
        "num_files": len(files),
        "num_train_files": len(split.train_files),
        "num_validation_files": len(valid_files),
        "num_train_examples": splits["train"].num_examples,
        "num_validation_examples": (splits["validation"].num_examples
                                    if "validation" in splits else 0),
        "num_bytes": sum(os.path.getsize(f) for f in files),
        "replaced_utf8_files": len(replaced),
    }
    with open(stats_path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(stats, f, indent=2)
    os.replace(stats_path + ".tmp", stats_path)
  if stats["replaced_utf8_files"] and name not in _WARNED:
    _WARNED.add(name)  # Once per dataset and process, not on every reopen.
    logging.warning("llmjax: %d of %d text files had invalid UTF-8; the bad bytes were replaced "
                    "by U+FFFD.", stats["replaced_utf8_files"], stats["num_files"])
  return builder, stats


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
