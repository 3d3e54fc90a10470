"""Atomic writes and JSONL helpers."""

import json

import pytest

from lexlora.errors import LexloraError
from lexlora.io import atomic_write, dumps_canonical, read_jsonl, write_jsonl


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half a li")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_jsonl_lines_survive_unicode_line_breaks(tmp_path):
    row = {"text": "clause one\u2028clause two\x85three\u2029", "n": 1}
    write_jsonl(tmp_path / "x.jsonl", [row, row])
    raw = (tmp_path / "x.jsonl").read_text(encoding="utf-8")
    assert len(raw.splitlines()) == 2
    assert [json.loads(line) for line in raw.splitlines()] == [row, row]
    assert list(read_jsonl(tmp_path / "x.jsonl")) == [row, row]
    assert dumps_canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{not json}\n')
    with pytest.raises(LexloraError, match=r"bad\.jsonl:2: invalid JSON"):
        list(read_jsonl(path))
    with pytest.raises(LexloraError, match="file not found"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_atomic_directory_replaces_only_on_success(tmp_path):
    from lexlora.io import atomic_directory

    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
