"""The local-text TFDS builder: splits, fingerprints, bad input, prepared-dataset errors."""

import os
import time

import pytest

from llmjax.data import tfds_text


def _write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


def _texts(src) -> dict[str, str]:
  return {r["path"].decode(): r["text"].decode() for r in (src[i] for i in range(len(src)))}


def test_prepare_splits_disjoint_and_readable(tmp_path):
  files = [_write(tmp_path / "c" / f"f{i}.py", f"x = {i}\n\tprint(x)\n".encode())
           for i in range(10)]
  builder, stats = tfds_text.prepare_local_text(
      tfds_text.resolve_files(str(tmp_path / "c" / "*.py")), str(tmp_path / "data"),
      eval_fraction=0.2)
  train = _texts(builder.as_data_source(split="train"))
  valid = _texts(builder.as_data_source(split="validation"))
  assert valid and train and not set(train) & set(valid)
  assert set(train) | set(valid) == set(files)
  assert {**train, **valid}[files[0]] == "x = 0\n\tprint(x)\n"
  assert stats["num_files"] == 10 and stats["replaced_utf8_files"] == 0


def test_split_is_deterministic_and_validation_nonempty_for_two_files(tmp_path):
  files = [_write(tmp_path / n, b"a") for n in ("a.txt", "b.txt")]
  train, valid = tfds_text.split_files(files, 0.01)
  assert len(train) == 1 and len(valid) == 1
  assert tfds_text.split_files(files, 0.01) == (train, valid)
  assert tfds_text.split_files(files, 0.0) == (sorted(files), [])


def test_fingerprint_changes_when_a_file_changes(tmp_path):
  path = _write(tmp_path / "a.txt", b"one")
  before = tfds_text.fingerprint([path], 0.1)
  _write(tmp_path / "a.txt", b"one more")
  assert tfds_text.fingerprint([path], 0.1) != before
  assert tfds_text.fingerprint([path], 0.2) != tfds_text.fingerprint([path], 0.1)


def test_empty_glob_raises_naming_it(tmp_path):
  pattern = str(tmp_path / "nothing" / "*.txt")
  with pytest.raises(ValueError, match="matched no files") as e:
    tfds_text.resolve_files(pattern)
  assert pattern in str(e.value)


def test_only_empty_files_raises(tmp_path):
  _write(tmp_path / "e1.txt", b"")
  _write(tmp_path / "e2.txt", b"")
  with pytest.raises(ValueError, match="empty"):
    tfds_text.resolve_files(str(tmp_path / "*.txt"))


def test_empty_files_are_skipped(tmp_path):
  _write(tmp_path / "e.txt", b"")
  full = _write(tmp_path / "f.txt", b"text")
  assert tfds_text.resolve_files([str(tmp_path / "*.txt")]) == [full]


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
  bad = _write(tmp_path / "c" / "bad.txt", b"caf\xe9 \xff\n")
  _write(tmp_path / "c" / "good.txt", "café\n".encode())
  builder, stats = tfds_text.prepare_local_text(
      tfds_text.resolve_files(str(tmp_path / "c" / "*")), str(tmp_path / "data"),
      eval_fraction=0.0)
  assert stats["replaced_utf8_files"] == 1
  texts = _texts(builder.as_data_source(split="train"))
  assert texts[bad] == "caf\ufffd \ufffd\n"
  # A second call reuses the prepared data and still reports the count.
  _, again = tfds_text.prepare_local_text([bad, str(tmp_path / "c" / "good.txt")],
                                          str(tmp_path / "data"), eval_fraction=0.0)
  assert again == stats


def test_unprepared_tfds_dataset_fails_fast_without_network(tmp_path):
  for name in ("mnist", "surely_not_a_dataset"):
    start = time.perf_counter()
    with pytest.raises(ValueError, match="never downloads"):
      tfds_text.open_prepared(name, str(tmp_path), "train")
    assert time.perf_counter() - start < 10


def test_stdlib_files_exclude_site_packages():
  files = tfds_text.stdlib_files()
  assert len(files) > 100
  assert any(f.endswith(os.sep + "os.py") for f in files)
  assert not any(("site-packages" in f or "dist-packages" in f) for f in files)
