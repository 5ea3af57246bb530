"""The local-text split: whole files for many-file corpora, each file's tail for few files."""

import hashlib
import os

import pytest

from llmjax.data import pipeline, tfds_text

# "l.txt" hashes to 0.038 < 0.05: under the file split alone a one-file corpus of that name was
# all evaluation and no training (TFDS: "No examples were yielded"); "a.txt" hashes to 0.097, a
# one-file corpus that never evaluated.
_LINES = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(400))


def _write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data.encode() if isinstance(data, str) else data)
  return str(path)


def _texts(src) -> list[str]:
  return [src[i]["text"].decode() for i in range(len(src))]


def _hash_score(name: str) -> float:  # The file split's score, computed independently.
  return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16) / 16**15


@pytest.mark.parametrize("name", ["l.txt", "a.txt"])
def test_one_file_is_split_by_content_whatever_its_name(tmp_path, name, capfd):
  assert (_hash_score(name) < 0.05) == (name == "l.txt")
  path = _write(tmp_path / "c" / name, _LINES)
  cfg = pipeline.DataConfig(text_files=path, tokenizer="byte", cache_dir=str(tmp_path / "d"))
  train, valid, stats = pipeline.prepare_dataset(cfg)
  assert stats["split"] == "content" and stats["num_validation_examples"] == 1
  held_out = "".join(_texts(valid))
  assert "".join(_texts(train)) + held_out == _LINES  # Nothing lost, nothing duplicated.
  # The held-out text is whole lines at the end, about 5% of the characters.
  assert held_out.startswith("line ") and _LINES.endswith(held_out)
  assert abs(len(held_out) - 0.05 * len(_LINES)) <= max(map(len, _LINES.splitlines()))
  assert "too few to hold out whole files" in capfd.readouterr().err
  # Reopening reuses the prepared data and says nothing again.
  assert pipeline.prepare_dataset(cfg)[2] == stats
  assert capfd.readouterr().err == ""


def test_few_files_each_contribute_their_tail(tmp_path):
  texts = {"x.txt": _LINES, "y.txt": "one line without a break"}
  files = [_write(tmp_path / n, t) for n, t in texts.items()]
  builder, stats = tfds_text.prepare_local_text(files, str(tmp_path / "d"), eval_fraction=0.1)
  train = builder.as_data_source(split="train")
  valid = builder.as_data_source(split="validation")
  assert stats["num_validation_files"] == 2
  for path, text in zip(files, texts.values(), strict=True):
    head = "".join(r["text"].decode() for r in train if r["path"].decode() == path)
    tail = "".join(r["text"].decode() for r in valid if r["path"].decode() == path)
    assert head and tail and head + tail == text


@pytest.mark.parametrize("text,fraction,want", [
    ("a", 0.05, ("a", "")),
    ("ab", 0.05, ("a", "b")),
    ("abcdefghij", 0.2, ("abcdefgh", "ij")),  # No line break: cut mid-line.
    # 21 characters: the tail should start at 17; line starts 16 and 18 tie, the later wins.
    ("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n", 0.2, ("1\n2\n3\n4\n5\n6\n7\n8\n9\n", "10\n")),
    ("long first line\nx", 0.3, ("long first line\n", "x")),
    ("abc", 0.0, ("abc", "")),
])
def test_cut_text_holds_out_the_tail_at_a_line_break(text, fraction, want):
  assert tfds_text.cut_text(text, fraction) == want


def test_pieces_end_at_line_breaks_and_cover_the_text():
  text = "".join(f"{'x' * (i % 37)}\n" for i in range(300)) + "y" * 150
  pieces = tfds_text.cut_pieces(text, size=100)
  assert "".join(pieces) == text and all(len(p) <= 100 for p in pieces)
  assert all(p.endswith("\n") for p in pieces[:-2])  # The 150-char last line is cut mid-line.


def test_many_files_keep_the_file_split_and_its_dataset_name():
  files = tfds_text.stdlib_files()
  split = tfds_text.plan_split(files, 0.05)
  assert split.by == "files"
  assert (list(split.train_files), list(split.validation_files)) == tfds_text.split_files(
      files, 0.05)
  # The name of an already-prepared stdlib dataset (the fingerprint before content splits).
  h = hashlib.sha256(b"eval_fraction=0.05\n")
  for f in sorted(files):
    st = os.stat(f)
    h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  assert tfds_text.fingerprint(files, 0.05) == h.hexdigest()[:16]


@pytest.mark.parametrize("num_files,fraction,by", [
    (1, 0.05, "content"), (9, 0.05, "content"), (10, 0.05, "files"), (2, 0.25, "files"),
    (1, 0.0, "files")])
def test_split_mode_depends_only_on_the_file_count(num_files, fraction, by):
  assert tfds_text.plan_split([f"/c/{i}.txt" for i in range(num_files)], fraction).by == by


def test_binary_file_is_refused_before_anything_is_written(tmp_path):
  path = _write(tmp_path / "c" / "model.bin", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
  with pytest.raises(ValueError, match=r"model\.bin is not a text file.*NUL bytes"):
    tfds_text.prepare_local_text([path], str(tmp_path / "d"), eval_fraction=0.05)
  assert not os.path.exists(tmp_path / "d" / "local_text")


def test_directory_instead_of_glob_names_a_glob(tmp_path):
  _write(tmp_path / "corpus" / "a.txt", "text")
  with pytest.raises(ValueError, match=r"is a directory; give a glob .*\*\*"):
    tfds_text.resolve_files(str(tmp_path / "corpus"))
