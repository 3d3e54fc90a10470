"""Atomic writes and JSONL helpers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lexlora.errors import LexloraError
from lexlora.io import (
    MADE_BY_LEXLORA,
    atomic_directory,
    atomic_write,
    check_directory_target,
    dumps_canonical,
    read_jsonl,
    write_jsonl,
)


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


def test_atomic_directory_replaces_only_a_lexlora_folder_and_only_on_success(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        (tmp / "old.txt").write_text("old")
    assert (target / MADE_BY_LEXLORA).is_file()
    with pytest.raises(RuntimeError), atomic_directory(target, replace=True) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert sorted(p.name for p in target.iterdir()) == [MADE_BY_LEXLORA, "old.txt"]
    with pytest.raises(LexloraError, match="adapter exists; choose a new path or pass --overwrite"):
        check_directory_target(target)
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == [MADE_BY_LEXLORA, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.parametrize("replace", [False, True])
def test_atomic_directory_never_deletes_a_folder_lexlora_did_not_make(tmp_path, replace):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    refused = pytest.raises(LexloraError, match="mine exists and was not made by lexlora")
    with refused, atomic_directory(mine, replace=replace) as tmp:
        (tmp / "model.safetensors").write_text("weights")
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    (tmp_path / "file").write_text("a file")
    with pytest.raises(LexloraError, match="file exists and was not made by lexlora"):
        check_directory_target(tmp_path / "file", replace=replace)
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(LexloraError, match="link exists and was not made by lexlora"):
        check_directory_target(tmp_path / "link", replace=replace)


# Only targets inside tmp_path go through atomic_directory: were the check ever lost, the old
# behaviour (remove the target) must not be able to reach anything outside the test's folder.
@pytest.mark.parametrize("target", [".", "..", "sub/..", ""])
def test_atomic_directory_refuses_the_current_and_parent_folders(tmp_path, target, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "keep.txt").write_text("keep")
    monkeypatch.chdir(tmp_path / "sub")
    refused = pytest.raises(LexloraError, match="not a folder lexlora can write")
    with refused, atomic_directory(target, replace=True):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "sub"]
    assert list((tmp_path / "sub").iterdir()) == []


def test_the_root_folder_is_never_a_target():
    with pytest.raises(LexloraError, match="'/': not a folder lexlora can write"):
        check_directory_target("/", replace=True)


def test_atomic_directory_refuses_a_lexlora_folder_holding_the_cwd(tmp_path, monkeypatch):
    target = tmp_path / "merged"
    with atomic_directory(target) as tmp:
        (tmp / "inner").mkdir()
    monkeypatch.chdir(target / "inner")
    with pytest.raises(LexloraError, match="holds the current folder"):
        check_directory_target(Path("../../merged"), replace=True)
    assert (target / "inner").is_dir()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


KILLED_WRITER = """
import os, signal, sys
from lexlora.io import atomic_directory, atomic_write
with atomic_write(sys.argv[1] + "/documents.jsonl") as f:
    f.write("half")
    with atomic_directory(sys.argv[1] + "/adapter", replace=True) as tmp:
        (tmp / "adapter_model.safetensors").write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporaries_of_a_killed_process_are_removed_by_the_next_write(tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)])
    assert killed.returncode == -9
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(name.endswith(".tmp") for name in left), left
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        own = {  # temporaries that are not stale, or not lexlora's: never touched
            f".adapter.lexlora-{alive.pid}.abcd1234.tmp": "dir",  # its process is alive
            f".adapter.lexlora-{dead_pid()}.nomarker.tmp": "dir",  # no marker inside
            ".adapter.notes.tmp": "file",  # not lexlora's pattern
            f".adapter.{dead_pid()}.abcd1234.tmp": "file",
            "adapter.1.x.tmp": "file",
        }
        for name, kind in own.items():
            if kind == "dir":
                (tmp_path / name).mkdir()
            else:
                (tmp_path / name).write_text("user")
        (tmp_path / f".adapter.lexlora-{alive.pid}.abcd1234.tmp" / MADE_BY_LEXLORA).write_text("")
        write_jsonl(tmp_path / "documents.jsonl", [{"a": 1}])
        with atomic_directory(tmp_path / "adapter", replace=True) as tmp:
            (tmp / "adapter_model.safetensors").write_text("whole")
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["adapter", "documents.jsonl", *own]
    )
